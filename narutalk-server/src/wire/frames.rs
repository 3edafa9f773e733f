//! The frames the server sends on a chat socket (contract section 6): a stored message
//! (`chat_message`, the same message as REST answers it under the seed's keys), part of a
//! reply being produced (`ai_delta`), and an `error`.

use chrono::{DateTime, Utc};
use narutalk_core::chat::{Message as CoreMessage, MessageId};
use narutalk_core::fields::JsonObject;
use serde::Serialize;
use uuid::Uuid;

use super::chat::{Message, MessageType, Sender};

/// The `chat_message` frame of a stored message: the REST message's values under the
/// seed's keys (`message` for `content`, `message_id` for `id`, last).
#[derive(Serialize)]
pub struct ChatMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
    sender: Sender,
    message_type: MessageType,
    metadata: &'a JsonObject,
    #[serde(serialize_with = "super::timestamp")]
    timestamp: &'a DateTime<Utc>,
    message_id: Uuid,
}

impl<'a> From<&'a CoreMessage> for ChatMessage<'a> {
    fn from(message: &'a CoreMessage) -> Self {
        let Message {
            id,
            content,
            sender,
            message_type,
            metadata,
            timestamp,
        } = Message::from(message);
        ChatMessage {
            kind: "chat_message",
            message: content,
            sender,
            message_type,
            metadata,
            timestamp,
            message_id: id,
        }
    }
}

/// An `ai_delta` frame: part of the reply that will be stored as `message_id`.
#[derive(Serialize)]
pub struct AiDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message_id: Uuid,
    delta: &'a str,
}

impl<'a> AiDelta<'a> {
    /// The frame of `delta`, a part of the reply `message_id`.
    pub fn new(message_id: MessageId, delta: &'a str) -> Self {
        AiDelta {
            kind: "ai_delta",
            message_id: message_id.0,
            delta,
        }
    }
}

/// An `error` frame; a throttled message's carries `retry_after`, the whole seconds to
/// wait (contract section 11).
#[derive(Serialize)]
pub struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

impl<'a> ErrorFrame<'a> {
    /// The frame of `error`, with `retry_after` when there is one.
    pub fn new(error: &'a str, retry_after: Option<u64>) -> Self {
        ErrorFrame {
            kind: "error",
            error,
            retry_after,
        }
    }
}
