//! The text frames of contract section 6: what a client may send, and what the server
//! sends back (built from the frames of `wire::frames`).

use narutalk_core::chat::{Message, MessageId};
use narutalk_core::fields::{JsonObject, python_type_name};
use serde::Serialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::wire;

/// The answer to `{"type": "ping"}`.
pub const PONG: Utf8Bytes = Utf8Bytes::from_static(r#"{"type":"pong"}"#);

/// What a client's text frame asks for.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// `{"type": "ping"}`.
    Ping,
    /// `{"message", "message_type"?, "metadata"?}` (other keys ignored): the frame itself,
    /// which the core's `PostInput::from_frame` checks as it checks a REST post.
    Message(JsonObject),
}

/// Reads a client's text frame; the error is the text of the `error` frame to answer.
pub fn parse(text: &str) -> Result<Incoming, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|error| format!("The frame is not valid JSON: {error}."))?;
    let Value::Object(frame) = value else {
        return Err(format!(
            "The frame must be a JSON object, not {}.",
            python_type_name(&value)
        ));
    };
    // A frame with a `message` is a message whatever its `type` says: nothing sent is
    // dropped.
    if frame.contains_key("message") {
        return Ok(Incoming::Message(frame));
    }
    if frame.get("type").and_then(Value::as_str) == Some("ping") {
        return Ok(Incoming::Ping);
    }
    Err("The frame has no \"message\".".to_owned())
}

/// The name a field of the REST body has in a frame.
pub fn frame_field(field: &str) -> &str {
    match field {
        "content" => "message",
        other => other,
    }
}

/// The `chat_message` frame of a stored message, with the seed's keys.
pub fn chat_message(message: &Message) -> Utf8Bytes {
    to_frame(&wire::frames::ChatMessage::from(message))
}

/// An `ai_delta` frame: part of the reply that will be stored as `message_id`.
pub fn ai_delta(message_id: MessageId, delta: &str) -> Utf8Bytes {
    to_frame(&wire::frames::AiDelta::new(message_id, delta))
}

/// An `error` frame.
pub fn error(text: &str) -> Utf8Bytes {
    to_frame(&wire::frames::ErrorFrame::new(text, None))
}

/// The `error` frame of a throttled message: the text and `retry_after`, the whole
/// seconds to wait (contract section 11), as the REST answer's `Retry-After` says them.
pub fn throttled(text: &str, retry_after: u64) -> Utf8Bytes {
    to_frame(&wire::frames::ErrorFrame::new(text, Some(retry_after)))
}

/// Serializing these frames cannot fail: their maps have string keys and their values are
/// JSON already.
fn to_frame(frame: &impl Serialize) -> Utf8Bytes {
    match serde_json::to_string(frame) {
        Ok(text) => text.into(),
        Err(_) => Utf8Bytes::from_static(r#"{"type":"error","error":"A server error occurred."}"#),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> JsonObject {
        match value {
            Value::Object(object) => object,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn a_message_frame_is_kept_whole_for_the_cores_checks() {
        assert_eq!(
            parse(
                r#"{"message": "hi", "sender": "ai", "metadata": {"a": 1}, "message_type": "image"}"#
            ),
            Ok(Incoming::Message(object(json!({
                "message": "hi",
                "sender": "ai",
                "metadata": {"a": 1},
                "message_type": "image",
            }))))
        );
        assert_eq!(
            parse(r#"{"message": 7}"#),
            Ok(Incoming::Message(object(json!({"message": 7}))))
        );
    }

    #[test]
    fn ping_is_recognised_and_everything_else_is_explained() {
        assert_eq!(parse(r#"{"type": "ping"}"#), Ok(Incoming::Ping));
        assert_eq!(
            parse(r#"{"type": "ping", "message": "hi"}"#),
            Ok(Incoming::Message(object(
                json!({"type": "ping", "message": "hi"})
            ))),
            "a message is never dropped for its type"
        );
        assert_eq!(
            parse("[1, 2]"),
            Err("The frame must be a JSON object, not list.".to_owned())
        );
        assert_eq!(
            parse(r#"{"type": "pong"}"#),
            Err("The frame has no \"message\".".to_owned())
        );
        let not_json = parse("{oops").unwrap_err();
        assert!(
            not_json.starts_with("The frame is not valid JSON: key must be a string"),
            "{not_json}"
        );
    }

    #[test]
    fn a_stored_message_has_the_seeds_keys_in_order() {
        let id = MessageId::new_random();
        let message = Message {
            id,
            session_id: narutalk_core::chat::SessionId::new_random(),
            seq: 3,
            content: "두통".to_owned(),
            sender: narutalk_core::chat::Sender::Ai,
            message_type: narutalk_core::chat::MessageType::Text,
            metadata: object(json!({"model": "m"})),
            timestamp: narutalk_core::time::now(),
            reply_to: None,
        };
        let stamp = narutalk_core::time::format_rfc3339(&message.timestamp);
        assert_eq!(
            chat_message(&message).as_str(),
            format!(
                r#"{{"type":"chat_message","message":"두통","sender":"ai","message_type":"text","metadata":{{"model":"m"}},"timestamp":"{stamp}","message_id":"{id}"}}"#
            )
        );
    }

    #[test]
    fn frames_have_the_contract_keys_in_order() {
        let id = MessageId::new_random();
        assert_eq!(
            ai_delta(id, "par").as_str(),
            format!(r#"{{"type":"ai_delta","message_id":"{id}","delta":"par"}}"#)
        );
        assert_eq!(
            error("bad \"x\"").as_str(),
            r#"{"type":"error","error":"bad \"x\""}"#
        );
        assert_eq!(
            throttled("wait", 7).as_str(),
            r#"{"type":"error","error":"wait","retry_after":7}"#
        );
    }
}
