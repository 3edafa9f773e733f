//! Chat sessions and messages, as `/api/chat/` answers them (contract section 3).

use chrono::{DateTime, Utc};
use narutalk_core::chat::{self as core, Page};
use narutalk_core::fields::JsonObject;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// A category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Medical.
    Medical,
    /// The default.
    General,
    /// Emergency.
    Emergency,
    /// Consultation.
    Consultation,
}

impl From<core::Category> for Category {
    fn from(category: core::Category) -> Self {
        match category {
            core::Category::Medical => Category::Medical,
            core::Category::General => Category::General,
            core::Category::Emergency => Category::Emergency,
            core::Category::Consultation => Category::Consultation,
        }
    }
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Sender {
    /// The user.
    User,
    /// The AI.
    Ai,
    /// The server (error messages).
    System,
}

impl From<core::Sender> for Sender {
    fn from(sender: core::Sender) -> Self {
        match sender {
            core::Sender::User => Sender::User,
            core::Sender::Ai => Sender::Ai,
            core::Sender::System => Sender::System,
        }
    }
}

/// What a message holds (`error` is the server's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    /// Text.
    Text,
    /// An image.
    Image,
    /// A file.
    File,
    /// The system error message.
    Error,
}

impl From<core::MessageType> for MessageType {
    fn from(message_type: core::MessageType) -> Self {
        match message_type {
            core::MessageType::Text => MessageType::Text,
            core::MessageType::Image => MessageType::Image,
            core::MessageType::File => MessageType::File,
            core::MessageType::Error => MessageType::Error,
        }
    }
}

/// A stored message.
#[derive(Serialize, ToSchema)]
pub struct Message<'a> {
    /// The id.
    pub id: Uuid,
    /// Exactly as sent.
    pub content: &'a str,
    /// Who wrote it.
    pub sender: Sender,
    /// What it holds.
    pub message_type: MessageType,
    /// A JSON object; a system error message's holds the `reason`.
    #[schema(value_type = serde_json::Map<String, serde_json::Value>)]
    pub metadata: &'a JsonObject,
    /// When it was stored.
    #[serde(serialize_with = "super::timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: &'a DateTime<Utc>,
}

impl<'a> From<&'a core::Message> for Message<'a> {
    fn from(message: &'a core::Message) -> Self {
        Message {
            id: message.id.0,
            content: &message.content,
            sender: message.sender.into(),
            message_type: message.message_type.into(),
            metadata: &message.metadata,
            timestamp: &message.timestamp,
        }
    }
}

/// The stored user message with the reply stored for it.
#[derive(Serialize, ToSchema)]
pub struct MessageWithReply<'a> {
    /// The id.
    pub id: Uuid,
    /// Exactly as sent.
    pub content: &'a str,
    /// Always `user`.
    pub sender: Sender,
    /// What it holds.
    pub message_type: MessageType,
    /// A JSON object.
    #[schema(value_type = serde_json::Map<String, serde_json::Value>)]
    pub metadata: &'a JsonObject,
    /// When it was stored.
    #[serde(serialize_with = "super::timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: &'a DateTime<Utc>,
    /// The AI's reply, or the system error message.
    pub reply: Message<'a>,
}

impl<'a> MessageWithReply<'a> {
    /// The answer to a posted message: the message, and its reply under `reply`.
    pub fn new(message: &'a core::Message, reply: &'a core::Message) -> Self {
        let message = Message::from(message);
        MessageWithReply {
            id: message.id,
            content: message.content,
            sender: message.sender,
            message_type: message.message_type,
            metadata: message.metadata,
            timestamp: message.timestamp,
            reply: reply.into(),
        }
    }
}

/// A session with its messages, oldest first.
#[derive(Serialize, ToSchema)]
pub struct SessionDetail<'a> {
    /// The id.
    pub id: Uuid,
    /// The title.
    #[schema(min_length = 1, max_length = 200)]
    pub title: &'a str,
    /// The category.
    pub category: Category,
    /// A label the user sets.
    pub is_active: bool,
    /// When it was made.
    #[serde(serialize_with = "super::timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: &'a DateTime<Utc>,
    /// Moves with every message and update.
    #[serde(serialize_with = "super::timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: &'a DateTime<Utc>,
    /// How many.
    pub message_count: u64,
    /// Its messages in storage order.
    pub messages: Vec<Message<'a>>,
}

impl<'a> From<&'a core::SessionDetail> for SessionDetail<'a> {
    fn from(detail: &'a core::SessionDetail) -> Self {
        let session = &detail.session;
        SessionDetail {
            id: session.id.0,
            title: &session.title,
            category: session.category.into(),
            is_active: session.is_active,
            created_at: &session.created_at,
            updated_at: &session.updated_at,
            message_count: session.message_count,
            messages: detail.messages.iter().map(Message::from).collect(),
        }
    }
}

/// A session in the list.
#[derive(Serialize, ToSchema)]
pub struct SessionListItem<'a> {
    /// The id.
    pub id: Uuid,
    /// The title.
    #[schema(min_length = 1, max_length = 200)]
    pub title: &'a str,
    /// The category.
    pub category: Category,
    /// When it was made.
    #[serde(serialize_with = "super::timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: &'a DateTime<Utc>,
    /// Moves with every message and update.
    #[serde(serialize_with = "super::timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: &'a DateTime<Utc>,
    /// The message stored last.
    pub last_message: Option<Message<'a>>,
    /// How many messages.
    pub message_count: u64,
}

impl<'a> From<&'a core::SessionSummary> for SessionListItem<'a> {
    fn from(summary: &'a core::SessionSummary) -> Self {
        let session = &summary.session;
        SessionListItem {
            id: session.id.0,
            title: &session.title,
            category: session.category.into(),
            created_at: &session.created_at,
            updated_at: &session.updated_at,
            last_message: summary.last_message.as_ref().map(Message::from),
            message_count: session.message_count,
        }
    }
}

/// A page of sessions.
#[derive(Serialize, ToSchema)]
pub struct SessionPage<'a> {
    /// Sessions in the whole list.
    pub count: u64,
    /// The next page's absolute URL.
    #[schema(format = "uri")]
    pub next: Option<String>,
    /// The previous page's absolute URL.
    #[schema(format = "uri")]
    pub previous: Option<String>,
    /// Up to 20 sessions.
    #[schema(max_items = 20)]
    pub results: Vec<SessionListItem<'a>>,
}

impl<'a> SessionPage<'a> {
    /// The page `page` with its `next` and `previous` links.
    pub fn new(page: &'a Page<core::SessionSummary>, links: Links) -> Self {
        SessionPage {
            count: page.count,
            next: links.next,
            previous: links.previous,
            results: page.results.iter().map(SessionListItem::from).collect(),
        }
    }
}

/// A page of messages.
#[derive(Serialize, ToSchema)]
pub struct MessagePage<'a> {
    /// Messages in the whole list.
    pub count: u64,
    /// The next page's absolute URL.
    #[schema(format = "uri")]
    pub next: Option<String>,
    /// The previous page's absolute URL.
    #[schema(format = "uri")]
    pub previous: Option<String>,
    /// Up to 20 messages, oldest first.
    #[schema(max_items = 20)]
    pub results: Vec<Message<'a>>,
}

impl<'a> MessagePage<'a> {
    /// The page `page` with its `next` and `previous` links.
    pub fn new(page: &'a Page<core::Message>, links: Links) -> Self {
        MessagePage {
            count: page.count,
            next: links.next,
            previous: links.previous,
            results: page.results.iter().map(Message::from).collect(),
        }
    }
}

/// The absolute URLs of a page's neighbours, as DRF builds them; `None` at either end.
#[derive(Debug, Default)]
pub struct Links {
    /// The next page's URL.
    pub next: Option<String>,
    /// The previous page's URL.
    pub previous: Option<String>,
}

#[cfg(test)]
mod tests {
    use narutalk_core::accounts::UserId;
    use narutalk_core::chat::{ChatSession, MessageId, SessionDetail as Detail, SessionId};
    use narutalk_core::time;
    use serde_json::{Value, json};

    use super::*;

    fn session() -> ChatSession {
        let at = time::now();
        ChatSession {
            id: SessionId::new_random(),
            user_id: UserId(7),
            title: "Shape".to_owned(),
            category: core::Category::Medical,
            is_active: true,
            created_at: at,
            updated_at: at,
            message_count: 1,
        }
    }

    fn message(session: &ChatSession) -> core::Message {
        core::Message {
            id: MessageId::new_random(),
            session_id: session.id,
            seq: 1,
            content: " q ".to_owned(),
            sender: core::Sender::Ai,
            message_type: core::MessageType::Text,
            metadata: JsonObject::new(),
            timestamp: time::now(),
            reply_to: Some(MessageId::new_random()),
        }
    }

    /// The keys of a serialized object, in the order they were written.
    fn keys(value: &impl Serialize) -> Vec<String> {
        let text = serde_json::to_string(value).unwrap();
        let Ok(Value::Object(object)) = serde_json::from_str(&text) else {
            panic!("not an object: {text}");
        };
        // serde_json's map is sorted: order the keys by where each first appears.
        let mut placed: Vec<(usize, String)> = object
            .into_iter()
            .map(|(key, _)| (text.find(&format!("\"{key}\":")).unwrap(), key))
            .collect();
        placed.sort();
        placed.into_iter().map(|(_, key)| key).collect()
    }

    #[test]
    fn a_message_has_exactly_the_contracts_keys_in_order() {
        let session = session();
        let message = message(&session);
        let wire = Message::from(&message);
        assert_eq!(
            keys(&wire),
            [
                "id",
                "content",
                "sender",
                "message_type",
                "metadata",
                "timestamp"
            ]
        );
        assert_eq!(
            serde_json::to_value(&wire).unwrap(),
            json!({
                "id": message.id.to_string(),
                "content": " q ",
                "sender": "ai",
                "message_type": "text",
                "metadata": {},
                "timestamp": time::format_rfc3339(&message.timestamp),
            })
        );
        let reply = message.clone();
        assert_eq!(
            keys(&MessageWithReply::new(&message, &reply)),
            [
                "id",
                "content",
                "sender",
                "message_type",
                "metadata",
                "timestamp",
                "reply"
            ]
        );
    }

    #[test]
    fn a_session_and_a_list_item_have_exactly_the_contracts_keys_in_order() {
        let session = session();
        let message = message(&session);
        let detail = Detail {
            session: session.clone(),
            messages: vec![message.clone()],
        };
        assert_eq!(
            keys(&SessionDetail::from(&detail)),
            [
                "id",
                "title",
                "category",
                "is_active",
                "created_at",
                "updated_at",
                "message_count",
                "messages"
            ]
        );
        let value = serde_json::to_value(SessionDetail::from(&detail)).unwrap();
        assert_eq!(
            value["created_at"],
            time::format_rfc3339(&session.created_at)
        );
        assert_eq!(
            value["messages"][0],
            serde_json::to_value(Message::from(&message)).unwrap()
        );
        let empty = core::SessionSummary {
            session,
            last_message: None,
        };
        assert_eq!(
            keys(&SessionListItem::from(&empty)),
            [
                "id",
                "title",
                "category",
                "created_at",
                "updated_at",
                "last_message",
                "message_count"
            ]
        );
        assert_eq!(
            serde_json::to_value(SessionListItem::from(&empty)).unwrap()["last_message"],
            Value::Null
        );
    }

    /// The JSON text of a wire choice, without its quotes.
    fn text(value: impl Serialize) -> String {
        serde_json::to_value(value)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    #[test]
    fn every_choice_is_named_as_the_core_stores_it() {
        for &category in core::Category::ALL {
            assert_eq!(text(Category::from(category)), category.as_str());
        }
        for &sender in core::Sender::ALL {
            assert_eq!(text(Sender::from(sender)), sender.as_str());
        }
        for &message_type in core::MessageType::ALL {
            assert_eq!(text(MessageType::from(message_type)), message_type.as_str());
        }
    }
}
