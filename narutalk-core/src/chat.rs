//! Chat sessions and messages, and the storage side of the AI turn (`docs/API.md`, Chat).
//!
//! Every operation takes the acting user and treats another user's session exactly like a
//! missing one ([`Error::NotFound`]). Every message gets a per-session sequence number when
//! it is stored; "oldest first", "after", replay and broadcast follow it, whatever the
//! timestamps. The store keeps them ([`crate::store::ChatStore`]): each call is one of its
//! transactions.
//!
//! Posting ([`Chat::post`]) stores the user message and its pending turn in one
//! transaction and hands the turn to the turn engine ([`crate::turns`]), which answers the
//! session's turns in order and stores each reply; the post answers the message with a
//! [`crate::turns::ReplyCompletion`] of its reply. Every stored change is published on the
//! handle's event bus after its commit ([`crate::events`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::accounts::{UnknownChoice, UserId};
use crate::error::{Error, FieldErrors, TokenProblem};
use crate::events::{Actor, Event, EventBus, Origin};
use crate::fields::{self, Checked, FieldReader, JsonObject, Text};
use crate::store::{
    Audit, ChatStore, ClaimedTurn, IdempotencyKey, NewSession, Posted, SessionChange, UserPost,
};
use crate::time;
use crate::turns::{Engine, ReplyCompletion};

/// Items per page of every paginated list.
pub const PAGE_SIZE: u32 = 20;
/// The longest session title, in characters, after trimming.
pub const TITLE_MAX_CHARS: usize = 200;
/// The largest `metadata` object, in bytes of compact UTF-8 JSON.
pub const METADATA_MAX_BYTES: usize = 16_384;
/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_WINDOW: chrono::Duration = chrono::Duration::hours(24);
/// The content of the system message stored when the responder fails.
pub const AI_UNAVAILABLE: &str = "The assistant is unavailable right now. Please try again later.";
/// `Unknown message id.` (under `after`).
pub const UNKNOWN_MESSAGE_ID: &str = "Unknown message id.";
/// `Ensure this value has at most 16384 bytes.` (under `metadata`).
pub const METADATA_TOO_LARGE: &str = "Ensure this value has at most 16384 bytes.";
/// The message for a malformed `Idempotency-Key` (the API allows 1-64 visible ASCII
/// characters and names no message; this one says what is allowed).
pub const IDEMPOTENCY_KEY_INVALID: &str = "Must be 1 to 64 visible ASCII characters.";
/// The field name under which a malformed idempotency key is reported.
pub const IDEMPOTENCY_KEY_FIELD: &str = "Idempotency-Key";

// Ids and choices serialize as their text, the form the export file
// ([`crate::admin::ExportedSession`]) and the CLI's JSON write them in.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new random (v4) id.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            /// Lower-case and hyphenated, as stored and shown.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            /// Accepts only the canonical form (36 characters, lower-case hex, hyphenated), as
            /// Django's `<uuid:>` path converter does; anything else is [`Error::NotFound`].
            fn from_str(s: &str) -> Result<Self, Error> {
                parse_canonical_uuid(s).map(Self).ok_or(Error::NotFound)
            }
        }
    };
}

uuid_id!(
    /// A chat session's id: a UUID v4.
    SessionId
);
uuid_id!(
    /// A message's id: a UUID v4.
    MessageId
);

fn parse_canonical_uuid(s: &str) -> Option<Uuid> {
    let canonical = s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        });
    if canonical {
        Uuid::parse_str(s).ok()
    } else {
        None
    }
}

macro_rules! choice_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in the API's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and shown name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownChoice;

            fn from_str(s: &str) -> Result<Self, UnknownChoice> {
                match s { $($text => Ok($name::$variant),)+ _ => Err(UnknownChoice) }
            }
        }
    };
}

choice_enum!(
    /// What a session is about.
    Category {
        /// Medical questions.
        Medical => "medical",
        /// Anything else (the default).
        General => "general",
        /// Emergencies.
        Emergency => "emergency",
        /// Consultations.
        Consultation => "consultation",
    }
);

choice_enum!(
    /// Who wrote a message.
    Sender {
        /// The session's owner.
        User => "user",
        /// The AI responder.
        Ai => "ai",
        /// The server itself (error notices).
        System => "system",
    }
);

choice_enum!(
    /// What kind of content a message holds.
    MessageType {
        /// Plain text (the default).
        Text => "text",
        /// An image reference.
        Image => "image",
        /// A file reference.
        File => "file",
        /// A server error notice; never accepted from a client.
        Error => "error",
    }
);

// Written by hand because `choice_enum!` cannot place `#[default]` on one variant.
#[allow(clippy::derivable_impls)]
impl Default for Category {
    fn default() -> Self {
        Category::General
    }
}

/// A message type a client may send: anything but `error`.
struct ClientMessageType(MessageType);

impl FromStr for ClientMessageType {
    type Err = UnknownChoice;

    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s.parse()? {
            MessageType::Error => Err(UnknownChoice),
            kind => Ok(ClientMessageType(kind)),
        }
    }
}

/// A stored chat session (without its messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatSession {
    /// Its id.
    pub id: SessionId,
    /// Its owner; nobody else can see it.
    pub user_id: UserId,
    /// 1-200 characters, trimmed.
    pub title: String,
    /// What it is about.
    pub category: Category,
    /// A label the user sets (archived or not); an inactive session still works.
    pub is_active: bool,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Moves forward with every message and every update.
    pub updated_at: DateTime<Utc>,
    /// Messages stored in it, of every sender.
    pub message_count: u64,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its id.
    pub id: MessageId,
    /// The session it belongs to.
    pub session_id: SessionId,
    /// Its place in the session's storage order, from 1.
    pub seq: i64,
    /// Exactly as sent (whitespace kept).
    pub content: String,
    /// Who wrote it.
    pub sender: Sender,
    /// What it holds.
    pub message_type: MessageType,
    /// A JSON object.
    pub metadata: JsonObject,
    /// When it was stored.
    pub timestamp: DateTime<Utc>,
    /// For an AI or system reply: the user message it answers.
    pub reply_to: Option<MessageId>,
}

/// A session with every message, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionDetail {
    /// The session.
    pub session: ChatSession,
    /// Its messages in storage order.
    pub messages: Vec<Message>,
}

/// A session as the list shows it: with its last message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session.
    pub session: ChatSession,
    /// The message stored last, if any.
    pub last_message: Option<Message>,
}

/// One page of a list (DRF's `PageNumberPagination`, 20 a page).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// Items in the whole list.
    pub count: u64,
    /// This page's number, from 1.
    pub number: u32,
    /// Pages in the list; 1 for an empty list.
    pub num_pages: u32,
    /// This page's items.
    pub results: Vec<T>,
}

impl<T> Page<T> {
    /// True when a later page exists.
    pub fn has_next(&self) -> bool {
        self.number < self.num_pages
    }

    /// True when an earlier page exists.
    pub fn has_previous(&self) -> bool {
        self.number > 1
    }
}

/// Which page to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRequest {
    /// Page N, from 1.
    Number(u32),
    /// The last page (`?page=last`).
    Last,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest::Number(1)
    }
}

impl PageRequest {
    /// Reads the `page` query parameter: missing or empty is page 1, exactly `last` the last
    /// page, a positive integer that page (surrounding spaces and a leading `+` allowed, as
    /// Python's `int()` allows); anything else, a blank value included, is
    /// [`Error::InvalidPage`].
    pub fn parse(page: Option<&str>) -> Result<Self, Error> {
        let Some(page) = page.filter(|p| !p.is_empty()) else {
            return Ok(PageRequest::Number(1));
        };
        if page == "last" {
            return Ok(PageRequest::Last);
        }
        let page = page.trim();
        let digits = page.strip_prefix('+').unwrap_or(page);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::InvalidPage);
        }
        match digits.parse::<u32>() {
            Ok(0) | Err(_) => Err(Error::InvalidPage),
            Ok(number) => Ok(PageRequest::Number(number)),
        }
    }

    /// The page number and the number of pages for a list of `count` items, or
    /// [`Error::InvalidPage`] past the end. Stores pick a page with it between counting a
    /// list and reading the page, in one snapshot.
    pub fn resolve(self, count: u64) -> Result<(u32, u32), Error> {
        let num_pages =
            u32::try_from(count.div_ceil(u64::from(PAGE_SIZE)).max(1)).unwrap_or(u32::MAX);
        let number = match self {
            PageRequest::Last => num_pages,
            PageRequest::Number(n) if (1..=num_pages).contains(&n) => n,
            PageRequest::Number(_) => return Err(Error::InvalidPage),
        };
        Ok((number, num_pages))
    }
}

/// Filters of the session list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only this category.
    pub category: Option<Category>,
    /// Only active (`true`) or inactive (`false`) sessions.
    pub is_active: Option<bool>,
}

impl SessionFilter {
    /// Reads the `category` and `is_active` query parameters with the API's messages;
    /// an empty value means no filter.
    pub fn parse(category: Option<&str>, is_active: Option<&str>) -> Result<Self, Error> {
        let mut errors = FieldErrors::new();
        let category = match category.filter(|c| !c.is_empty()) {
            None => None,
            Some(raw) => match raw.parse() {
                Ok(category) => Some(category),
                Err(UnknownChoice) => {
                    errors.add(
                        "category",
                        format!(
                            "Select a valid choice. {raw} is not one of the available choices."
                        ),
                    );
                    None
                }
            },
        };
        let is_active = match is_active.filter(|a| !a.is_empty()) {
            None => None,
            Some(raw) => match raw.to_ascii_lowercase().as_str() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => {
                    errors.add("is_active", fields::NOT_A_BOOLEAN);
                    None
                }
            },
        };
        errors.into_result()?;
        Ok(SessionFilter {
            category,
            is_active,
        })
    }
}

/// A session title that passed its checks: trimmed, 1-200 characters, not only
/// whitespace, no NUL character.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionTitle(String);

impl SessionTitle {
    /// The rule of a title, as the API checks it.
    const RULE: Text = Text::REQUIRED.max(TITLE_MAX_CHARS);

    /// Checks a title; a field error under `title`, with the API's message, otherwise.
    pub fn new(title: &str) -> Result<SessionTitle, Error> {
        fields::check_text(title, Self::RULE)
            .map(SessionTitle)
            .map_err(|message| FieldErrors::single("title", message).into())
    }

    /// The title.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The title, as a string.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// A new session whose fields passed their checks: `POST /api/chat/sessions/`'s body
/// ([`NewSessionInput::from_fields`]), or a title checked with [`SessionTitle::new`].
/// [`Chat::new_session`] creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSessionInput {
    /// The title.
    pub title: SessionTitle,
    /// The category (`general` when the body left it out).
    pub category: Category,
}

impl NewSessionInput {
    /// Checks `{"title", "category"?}`.
    pub fn from_fields(body: &JsonObject) -> Result<NewSessionInput, Error> {
        let mut reader = FieldReader::new(body);
        let title = reader.required_text("title", SessionTitle::RULE);
        let category = reader
            .optional_choice::<Category>("category")
            .map(Option::unwrap_or_default);
        let (title, category) = reader.finish_with(both(title, category))?;
        Ok(NewSessionInput {
            title: SessionTitle(title),
            category,
        })
    }
}

/// A change of a session whose fields passed their checks: `PATCH
/// /api/chat/sessions/{id}/`'s body ([`SessionUpdate::from_fields`]). `None` keeps the
/// stored value; every update, even an empty one, moves `updated_at` forward.
/// [`Chat::update_session`] applies it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionUpdate {
    /// A new title.
    pub title: Option<SessionTitle>,
    /// A new category.
    pub category: Option<Category>,
    /// A new active label.
    pub is_active: Option<bool>,
}

impl SessionUpdate {
    /// Checks `{"title"?, "category"?, "is_active"?}`.
    pub fn from_fields(body: &JsonObject) -> Result<SessionUpdate, Error> {
        let mut reader = FieldReader::new(body);
        let title = reader.optional_text("title", SessionTitle::RULE);
        let category = reader.optional_choice::<Category>("category");
        let is_active = reader.optional_boolean("is_active");
        let (title, (category, is_active)) =
            reader.finish_with(both(title, both(category, is_active)))?;
        Ok(SessionUpdate {
            title: title.map(SessionTitle),
            category,
            is_active,
        })
    }
}

/// Both checked values, or a failure when either failed.
fn both<A, B>(a: Checked<A>, b: Checked<B>) -> Checked<(A, B)> {
    Ok((a?, b?))
}

/// A user message and the reply stored for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// The user message.
    pub message: Message,
    /// The AI reply, or the system error message.
    pub reply: Message,
}

/// A user message to post, checked: its content, type and metadata, and the
/// `Idempotency-Key` it comes with. Built only by its checks ([`PostInput::from_fields`]
/// for a REST body, [`PostInput::from_frame`] for a WebSocket `chat_message` frame,
/// [`PostInput::text`] for plain text), which answer the API's field errors.
#[derive(Clone, Debug, PartialEq)]
pub struct PostInput {
    content: String,
    message_type: MessageType,
    metadata: JsonObject,
    idempotency_key: Option<String>,
}

impl PostInput {
    /// Checks a REST body `{"content", "message_type"?, "metadata"?}` (a `sender` is
    /// ignored: it is always `user`) and an `Idempotency-Key` (1-64 visible ASCII
    /// characters, reported under [`IDEMPOTENCY_KEY_FIELD`]): content non-blank and at
    /// most `content_max_chars` characters, `message_type` one the client may send,
    /// `metadata` an object of at most [`METADATA_MAX_BYTES`] with no NUL character.
    pub fn from_fields(
        body: &JsonObject,
        idempotency_key: Option<&str>,
        content_max_chars: usize,
    ) -> Result<PostInput, Error> {
        PostInput::read(body, "content", idempotency_key, content_max_chars)
    }

    /// Checks a WebSocket frame `{"message", "message_type"?, "metadata"?}` (its other
    /// keys, such as `type`, ignored) with the same rules as [`PostInput::from_fields`];
    /// the content's errors are reported under `message`.
    pub fn from_frame(frame: &JsonObject, content_max_chars: usize) -> Result<PostInput, Error> {
        PostInput::read(frame, "message", None, content_max_chars)
    }

    /// A plain text message, checked like the REST body's `content`.
    pub fn text(content: &str, content_max_chars: usize) -> Result<PostInput, Error> {
        let mut body = JsonObject::new();
        body.insert("content".into(), serde_json::Value::String(content.into()));
        PostInput::from_fields(&body, None, content_max_chars)
    }

    /// The same message with an `Idempotency-Key` (checked).
    pub fn with_idempotency_key(mut self, key: &str) -> Result<PostInput, Error> {
        if !is_valid_idempotency_key(key) {
            return Err(FieldErrors::single(IDEMPOTENCY_KEY_FIELD, IDEMPOTENCY_KEY_INVALID).into());
        }
        self.idempotency_key = Some(key.to_owned());
        Ok(self)
    }

    /// The content, exactly as sent.
    pub fn content(&self) -> &str {
        &self.content
    }

    /// The message type.
    pub fn message_type(&self) -> MessageType {
        self.message_type
    }

    /// The metadata object.
    pub fn metadata(&self) -> &JsonObject {
        &self.metadata
    }

    /// The `Idempotency-Key`, if any.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    fn read(
        fields: &JsonObject,
        content_field: &str,
        idempotency_key: Option<&str>,
        content_max_chars: usize,
    ) -> Result<PostInput, Error> {
        let mut reader = FieldReader::new(fields);
        let content = reader.required_text(
            content_field,
            Text::REQUIRED_VERBATIM.max(content_max_chars),
        );
        let message_type = reader
            .choice::<ClientMessageType>("message_type", false)
            .map_or(MessageType::Text, |t| t.0);
        let metadata = reader.object("metadata", false).unwrap_or_default();
        if !reader.failed("metadata") && compact_json_len(&metadata) > METADATA_MAX_BYTES {
            reader.fail("metadata", METADATA_TOO_LARGE);
        }
        reader.refuse_nul_within("metadata", &metadata);
        if let Some(key) = idempotency_key
            && !is_valid_idempotency_key(key)
        {
            reader.fail(IDEMPOTENCY_KEY_FIELD, IDEMPOTENCY_KEY_INVALID);
        }
        let content = reader.finish_with(content)?;
        Ok(PostInput {
            content,
            message_type,
            metadata,
            idempotency_key: idempotency_key.map(str::to_owned),
        })
    }
}

/// Where a socket opening on a session starts ([`Chat::socket_start`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketStart {
    /// The sequence number the replay starts after: the message named by `after`, or 0
    /// (the whole session) when none was.
    pub replay_from: i64,
    /// The session's last sequence number when it was read.
    pub last_seq: i64,
}

/// A posted user message and its reply to come.
#[derive(Debug)]
pub struct Posting {
    /// The user message (the first one, for a repeated `Idempotency-Key`).
    pub message: Message,
    /// True when the `Idempotency-Key` was used on this session in the last 24 hours:
    /// nothing was stored, and the reply is the first one's.
    pub repeated: bool,
    /// The reply: await it, or [`ReplyCompletion::wait`] for it. Ready at once when it is
    /// stored already, or when no turn engine runs (the post answered the turn itself).
    pub reply: ReplyCompletion,
}

/// Chat operations on a store (returned by [`crate::Narutalk::chat`]).
pub struct Chat<'a> {
    pub(crate) store: &'a dyn ChatStore,
    pub(crate) turns: &'a Arc<Engine>,
    pub(crate) events: &'a EventBus,
    pub(crate) origin: Origin,
    pub(crate) content_max_chars: usize,
    pub(crate) asked_at: Option<Instant>,
}

impl Chat<'_> {
    /// Records `request_id` with the changes these calls make (the outbox's request id).
    pub fn with_request(mut self, request_id: &str) -> Self {
        self.origin.request_id = Some(request_id.into());
        self
    }

    /// The longest content a message may have, in characters (`NARUTALK_CONTENT_MAX_CHARS`):
    /// what [`PostInput`]'s checks take.
    pub fn content_max_chars(&self) -> usize {
        self.content_max_chars
    }

    /// These operations for a caller that asked at `asked_at` and has waited in a queue
    /// of its own since (a server's per-session order of stores): their writes' bound,
    /// [`crate::store::WRITE_DEADLINE`], runs from then rather than from each call.
    pub fn asked_at(self, asked_at: Instant) -> Self {
        Chat {
            asked_at: Some(asked_at),
            ..self
        }
    }

    /// `POST /api/chat/sessions/`: checks `{"title", "category"?}`
    /// ([`NewSessionInput::from_fields`]) and creates the session.
    pub fn create_session_fields(
        &self,
        owner: UserId,
        body: &JsonObject,
    ) -> Result<SessionDetail, Error> {
        self.new_session(owner, NewSessionInput::from_fields(body)?)
    }

    /// Creates a session, checking its title (trimmed, 1-200 characters) as the API does.
    pub fn create_session(
        &self,
        owner: UserId,
        title: &str,
        category: Category,
    ) -> Result<SessionDetail, Error> {
        let title = SessionTitle::new(title)?;
        self.new_session(owner, NewSessionInput { title, category })
    }

    /// Creates a checked session for `owner`, with no messages.
    pub fn new_session(
        &self,
        owner: UserId,
        input: NewSessionInput,
    ) -> Result<SessionDetail, Error> {
        self.insert_session(owner, input.title.into_string(), input.category)
    }

    /// `GET /api/chat/sessions/{id}/`: the session with every message, oldest first.
    pub fn session(&self, owner: UserId, id: SessionId) -> Result<SessionDetail, Error> {
        self.store.session_detail(owner, id)
    }

    /// True when the session exists and belongs to `owner`: one indexed lookup, for
    /// callers that must notice a deleted session without loading its messages.
    pub fn exists(&self, owner: UserId, id: SessionId) -> Result<bool, Error> {
        Ok(self
            .store
            .last_seqs(&[(owner, id)])?
            .first()
            .is_some_and(Option::is_some))
    }

    /// `GET /api/chat/sessions/`: the owner's sessions, most recently updated first (ties:
    /// newest creation first), with their counts and last messages, in two queries.
    pub fn list_sessions(
        &self,
        owner: UserId,
        filter: SessionFilter,
        page: PageRequest,
    ) -> Result<Page<SessionSummary>, Error> {
        self.store.session_page(owner, filter, page)
    }

    /// `PATCH /api/chat/sessions/{id}/`: checks `{"title"?, "category"?, "is_active"?}`
    /// ([`SessionUpdate::from_fields`]) and applies it. A session that is not the owner's
    /// is [`Error::NotFound`] before any field error (contract section 1.1).
    pub fn update_session_fields(
        &self,
        owner: UserId,
        id: SessionId,
        body: &JsonObject,
    ) -> Result<SessionDetail, Error> {
        let update = self.owned_before_fields(owner, id, SessionUpdate::from_fields(body))?;
        self.update_session(owner, id, update)
    }

    /// Applies a checked change to the owner's session. Every update, even an empty one,
    /// moves `updated_at` forward.
    pub fn update_session(
        &self,
        owner: UserId,
        id: SessionId,
        update: SessionUpdate,
    ) -> Result<SessionDetail, Error> {
        let change = SessionChange {
            title: update.title.map(SessionTitle::into_string),
            category: update.category,
            is_active: update.is_active,
        };
        self.store
            .update_session(owner, id, &change, time::now(), self.asked())
    }

    /// `DELETE /api/chat/sessions/{id}/`: the session and its messages are gone.
    pub fn delete_session(&self, owner: UserId, id: SessionId) -> Result<(), Error> {
        let audit = Audit::now(&self.origin, Actor::User(owner));
        self.store.delete_session(owner, id, &audit, self.asked())?;
        self.events
            .publish(&Event::SessionDeleted { session: id, owner });
        Ok(())
    }

    /// `GET /api/chat/sessions/{id}/messages/`: messages oldest first, 20 a page; with
    /// `after` (a message id of this session), only those stored after it.
    pub fn messages(
        &self,
        owner: UserId,
        id: SessionId,
        after: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Message>, Error> {
        let after = match after {
            None => None,
            Some(after) => Some(self.message_id_of(owner, id, after)?),
        };
        self.store
            .message_page(owner, id, after, page)?
            .ok_or_else(unknown_after)
    }

    /// Every message of the session stored after `after` (all of them for `None`), in
    /// storage order. `after` as the client sent it; one that is not a message of this
    /// session is a field error under `after`. For long sessions, [`Chat::replay_start`]
    /// and [`Chat::messages_after_seq`] read the same thing a page at a time.
    pub fn messages_after(
        &self,
        owner: UserId,
        id: SessionId,
        after: Option<&str>,
    ) -> Result<Vec<Message>, Error> {
        let after_seq = self.replay_start(owner, id, after)?;
        self.messages_after_seq(owner, id, after_seq, u32::MAX)
    }

    /// Where the replay of a reconnecting socket starts: the sequence number
    /// ([`Message::seq`]) of the message `after` names, or 0 for `None` (the whole session).
    /// [`Error::NotFound`] for a session that is not the owner's; a field error under
    /// `after` for an id that is not a message of this session.
    pub fn replay_start(
        &self,
        owner: UserId,
        id: SessionId,
        after: Option<&str>,
    ) -> Result<i64, Error> {
        Ok(self.socket_start(owner, id, after)?.replay_from)
    }

    /// Where a socket opening on the session now starts, in one read: the replay start of
    /// [`Chat::replay_start`] (with its errors), and the session's last sequence number,
    /// after which the socket's live messages begin.
    pub fn socket_start(
        &self,
        owner: UserId,
        id: SessionId,
        after: Option<&str>,
    ) -> Result<SocketStart, Error> {
        let after = match after {
            None => None,
            Some(after) => Some(self.message_id_of(owner, id, after)?),
        };
        let bounds = self.store.replay_bounds(owner, id, after)?;
        let replay_from = match (after, bounds.after_seq) {
            (None, _) => 0,
            (Some(_), Some(seq)) => seq,
            (Some(_), None) => return Err(unknown_after()),
        };
        Ok(SocketStart {
            replay_from,
            last_seq: bounds.last_seq,
        })
    }

    /// Up to `limit` messages of the session whose sequence number is above `after_seq`,
    /// in storage order: one page of a replay. [`Error::NotFound`] once the session is gone.
    pub fn messages_after_seq(
        &self,
        owner: UserId,
        id: SessionId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Message>, Error> {
        self.store.messages_after_seq(owner, id, after_seq, limit)
    }

    /// For each `(owner, session)`, whether the session still exists and belongs to that
    /// owner: one read transaction for callers that watch many sessions (open sockets) and
    /// must notice deletions made anywhere, also by another process.
    pub fn sessions_exist(&self, sessions: &[(UserId, SessionId)]) -> Result<Vec<bool>, Error> {
        Ok(self
            .store
            .last_seqs(sessions)?
            .iter()
            .map(Option::is_some)
            .collect())
    }

    /// For each `(owner, session)`, the sequence number of the session's last stored
    /// message (0 before the first) when it still exists and belongs to that owner, `None`
    /// otherwise: one read for callers that follow many sessions (a server's rooms) and
    /// look for messages stored by another process.
    pub fn last_seqs(&self, sessions: &[(UserId, SessionId)]) -> Result<Vec<Option<i64>>, Error> {
        self.store.last_seqs(sessions)
    }

    /// `POST /api/chat/sessions/{id}/messages/`: stores a user message with its pending
    /// turn (committed, moving the session's `updated_at` forward) and answers it with
    /// the reply to come. `input` is the message as its check answered ([`PostInput`]):
    /// field errors are reported only once the session is known to be the owner's
    /// (contract section 1.1), and a session that is not is [`Error::NotFound`] whatever
    /// the fields say.
    ///
    /// The turn is the engine's ([`crate::turns`]): with the engine started, the reply is
    /// produced on the AI pool and the returned [`Posting::reply`] completes when it is
    /// stored; without it, this call answers the session's pending turns itself, on this
    /// thread, before it returns. With an `Idempotency-Key` used by this user on this
    /// session in the last 24 hours, nothing is stored and the first result comes back: its
    /// reply at once when stored, or else a completion that waits for it at most
    /// [`crate::Narutalk::reply_wait`].
    pub fn post(
        &self,
        owner: UserId,
        id: SessionId,
        input: Result<PostInput, Error>,
    ) -> Result<Posting, Error> {
        let input = match input {
            Ok(input) => input,
            Err(error) if self.exists(owner, id)? => return Err(error),
            Err(_) => return Err(Error::NotFound),
        };
        let now = time::now();
        let message = NewMessage {
            id: MessageId::new_random(),
            sender: Sender::User,
            message_type: input.message_type,
            content: input.content,
            metadata: input.metadata,
            reply_to: None,
        };
        // Registered before the write: once the message is stored, a driver at work on
        // the session may answer it before this call goes on.
        let reply = self.turns.register(id, message.id);
        let lease = self.turns.lease();
        let audit = Audit::now(&self.origin, Actor::User(owner));
        let post = UserPost {
            owner,
            session: id,
            message: &message,
            idempotency_key: input.idempotency_key.as_deref().map(|key| IdempotencyKey {
                key,
                since: now - IDEMPOTENCY_WINDOW,
            }),
            now,
            audit: &audit,
            lease: Some(&lease),
        };
        let posted = self.store.post_message(&post, self.asked());
        if !matches!(posted, Ok(Posted::Stored { .. })) {
            self.turns.forget(message.id);
        }
        match posted? {
            Posted::Stored { message, claimed } => {
                self.events.publish(&Event::stored(message.clone()));
                let claimed = claimed.then(|| ClaimedTurn {
                    message: message.clone(),
                });
                self.turns.kick(message.session_id, claimed);
                Ok(Posting {
                    message,
                    repeated: false,
                    reply,
                })
            }
            Posted::Replayed {
                message,
                reply: stored,
            } => {
                drop(reply);
                let reply = match stored {
                    Some(stored) => Engine::ready(stored),
                    None => {
                        let waiting = self.turns.register_repeat(&message)?;
                        // Without a running engine, nobody else may be answering it.
                        if !waiting.is_ready() && !self.turns.is_started() {
                            self.turns.kick(message.session_id, None);
                        }
                        waiting
                    }
                };
                Ok(Posting {
                    message,
                    repeated: true,
                    reply,
                })
            }
        }
    }

    /// When a write asks for storage: [`Chat::asked_at`], or now.
    fn asked(&self) -> Instant {
        self.asked_at.unwrap_or_else(Instant::now)
    }

    /// The addressed session answers before the fields (contract section 1.1): a session
    /// that is not the owner's is [`Error::NotFound`] whatever the fields say, so fields
    /// that failed their checks cost one lookup of the session.
    fn owned_before_fields<T>(
        &self,
        owner: UserId,
        id: SessionId,
        checked: Result<T, Error>,
    ) -> Result<T, Error> {
        match checked {
            Ok(checked) => Ok(checked),
            Err(_) if !self.exists(owner, id)? => Err(Error::NotFound),
            Err(fields) => Err(fields),
        }
    }

    /// The message id an `after` parameter names; one that is not an id at all is a field
    /// error under `after`, once the session is known to be the owner's.
    fn message_id_of(&self, owner: UserId, id: SessionId, after: &str) -> Result<MessageId, Error> {
        match parse_canonical_uuid(after) {
            Some(uuid) => Ok(MessageId(uuid)),
            None if self.exists(owner, id)? => Err(unknown_after()),
            None => Err(Error::NotFound),
        }
    }

    fn insert_session(
        &self,
        owner: UserId,
        title: String,
        category: Category,
    ) -> Result<SessionDetail, Error> {
        let new = NewSession {
            id: SessionId::new_random(),
            title,
            category,
            created_at: time::now(),
        };
        let session = self
            .store
            .create_session(owner, &new, self.asked())
            .map_err(|error| match error {
                // The acting user was deleted after their token was checked: their
                // credentials are no longer valid.
                Error::NotFound => Error::InvalidToken(TokenProblem::Invalid),
                other => other,
            })?;
        Ok(SessionDetail {
            session,
            messages: Vec::new(),
        })
    }
}

/// The field error of an `after` that is not a message of the session.
fn unknown_after() -> Error {
    Error::Invalid(FieldErrors::single("after", UNKNOWN_MESSAGE_ID))
}

/// True for 1-64 visible ASCII characters (`!` to `~`).
pub fn is_valid_idempotency_key(key: &str) -> bool {
    (1..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

fn compact_json_len(object: &JsonObject) -> usize {
    serde_json::to_string(object).map_or(usize::MAX, |s| s.len())
}

/// The next `updated_at` of a session: now, but always strictly after the previous value,
/// so that "moves forward" holds even within one microsecond or under a clock step back.
/// Stores apply it in the transaction that changes the session.
pub fn next_updated_at(previous: &DateTime<Utc>, now: &DateTime<Utc>) -> DateTime<Utc> {
    let floor = *previous + chrono::Duration::microseconds(1);
    if *now > floor { *now } else { floor }
}

/// A message to store: the fields its author decides (the store adds its sequence number
/// and time).
#[derive(Clone, Debug, PartialEq)]
pub struct NewMessage {
    /// Its new id.
    pub id: MessageId,
    /// Who wrote it.
    pub sender: Sender,
    /// What it holds.
    pub message_type: MessageType,
    /// Its content, exactly as sent.
    pub content: String,
    /// Its metadata object.
    pub metadata: JsonObject,
    /// For a reply: the user message it answers.
    pub reply_to: Option<MessageId>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(value: serde_json::Value) -> JsonObject {
        value.as_object().cloned().unwrap_or_default()
    }

    fn errors<T: fmt::Debug>(result: Result<T, Error>) -> FieldErrors {
        match result {
            Err(Error::Invalid(errors)) => errors,
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn a_title_is_trimmed_and_checked_with_the_apis_messages() {
        assert_eq!(
            SessionTitle::new("  Headache ").unwrap().as_str(),
            "Headache"
        );
        assert_eq!(errors(SessionTitle::new(" ")).get("title"), [fields::BLANK]);
        assert_eq!(
            errors(SessionTitle::new(&"x".repeat(TITLE_MAX_CHARS + 1))).get("title"),
            [fields::too_long(TITLE_MAX_CHARS)]
        );
        assert_eq!(
            errors(SessionTitle::new("a\u{0}")).get("title"),
            [fields::NUL_NOT_ALLOWED]
        );
    }

    #[test]
    fn a_new_session_body_becomes_a_checked_input_or_every_fields_errors() {
        let input = NewSessionInput::from_fields(&body(json!({"title": " T ", "x": 1}))).unwrap();
        assert_eq!(
            (input.title.as_str(), input.category),
            ("T", Category::General)
        );
        let errors = errors(NewSessionInput::from_fields(&body(
            json!({"category": "nope"}),
        )));
        assert_eq!(errors.get("title"), [fields::REQUIRED]);
        assert_eq!(errors.get("category"), [fields::invalid_choice("nope")]);
    }

    #[test]
    fn an_update_body_keeps_what_it_leaves_out_and_reports_every_bad_field() {
        assert_eq!(
            SessionUpdate::from_fields(&JsonObject::new()).unwrap(),
            SessionUpdate::default()
        );
        let update =
            SessionUpdate::from_fields(&body(json!({"title": " New ", "is_active": false})))
                .unwrap();
        assert_eq!(
            update.title.map(SessionTitle::into_string).as_deref(),
            Some("New")
        );
        assert_eq!((update.category, update.is_active), (None, Some(false)));
        let errors = errors(SessionUpdate::from_fields(&body(
            json!({"title": null, "category": 3, "is_active": "true"}),
        )));
        assert_eq!(errors.get("title"), [fields::NOT_NULL]);
        assert_eq!(errors.get("category"), [fields::NOT_A_STRING]);
        assert_eq!(errors.get("is_active"), [fields::NOT_A_BOOLEAN]);
    }
}
