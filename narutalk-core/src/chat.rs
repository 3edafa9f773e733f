//! Chat sessions and messages, and the storage side of the AI turn (`docs/API.md`, Chat).
//!
//! Every operation takes the acting user and treats another user's session exactly like a
//! missing one ([`Error::NotFound`]). Every message gets a per-session sequence number when
//! it is stored; "oldest first", "after", replay and broadcast follow it, whatever the
//! timestamps. Each session row carries its message count and last sequence number,
//! updated in the same transaction as every insert, so that a page of the session list is
//! two queries (count and page) however many sessions it shows.
//!
//! The AI turn is three calls, so that a server can broadcast between them and hold no
//! database connection while the responder works: [`Chat::post_message_fields`] stores and
//! commits the user message, [`Chat::prepare_reply`] builds the responder's request, and
//! [`Chat::store_reply`] stores the reply or the system error message.
//! [`crate::Narutalk::send_message_fields`] runs the whole turn for embedders and the CLI.
//!
//! A reply that the database will not take (it answers [`Error::Unavailable`]) need not be
//! lost: [`ReplyTurn::into_reply`] and [`Chat::store_pending_reply`] give it back, still
//! claimed, so that the caller can store it once writes work again. Meanwhile a repeated
//! idempotent post of its message answers [`Error::Unavailable`] at once.

pub(crate) mod admin;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;
use uuid::Uuid;

use crate::accounts::{UnknownChoice, UserId};
use crate::ai::{AiError, AiReply, AiRequest, HistoryTurn};
use crate::error::{Error, FieldErrors, TokenProblem};
use crate::fields::{self, FieldReader, JsonObject, Text};
use crate::store::sqlite::{SqliteStore, WriteTx};
use crate::time;

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatSession {
    /// Its id.
    pub id: SessionId,
    /// Its owner; nobody else can see it.
    #[serde(skip)]
    pub user_id: UserId,
    /// 1-200 characters, trimmed.
    pub title: String,
    /// What it is about.
    pub category: Category,
    /// A label the user sets (archived or not); an inactive session still works.
    pub is_active: bool,
    /// When it was made.
    #[serde(serialize_with = "time::serialize")]
    pub created_at: DateTime<Utc>,
    /// Moves forward with every message and every update.
    #[serde(serialize_with = "time::serialize")]
    pub updated_at: DateTime<Utc>,
    /// Messages stored in it, of every sender.
    pub message_count: u64,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Its id.
    pub id: MessageId,
    /// The session it belongs to.
    #[serde(skip)]
    pub session_id: SessionId,
    /// Its place in the session's storage order, from 1.
    #[serde(skip)]
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
    #[serde(serialize_with = "time::serialize")]
    pub timestamp: DateTime<Utc>,
    /// For an AI or system reply: the user message it answers.
    #[serde(skip)]
    pub reply_to: Option<MessageId>,
}

/// A session with every message, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionDetail {
    /// The session.
    #[serde(flatten)]
    pub session: ChatSession,
    /// Its messages in storage order.
    pub messages: Vec<Message>,
}

/// A session as the list shows it: with its last message. It serializes as the API's
/// list item (`ChatSessionListSerializer`), which has no `is_active`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session.
    pub session: ChatSession,
    /// The message stored last, if any.
    pub last_message: Option<Message>,
}

impl Serialize for SessionSummary {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct ListItem<'a> {
            id: SessionId,
            title: &'a str,
            category: Category,
            #[serde(serialize_with = "time::serialize")]
            created_at: DateTime<Utc>,
            #[serde(serialize_with = "time::serialize")]
            updated_at: DateTime<Utc>,
            last_message: Option<&'a Message>,
            message_count: u64,
        }
        let session = &self.session;
        ListItem {
            id: session.id,
            title: &session.title,
            category: session.category,
            created_at: session.created_at,
            updated_at: session.updated_at,
            last_message: self.last_message.as_ref(),
            message_count: session.message_count,
        }
        .serialize(serializer)
    }
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

    /// The page number for a list of `count` items, or [`Error::InvalidPage`] past the end.
    fn resolve(self, count: u64) -> Result<(u32, u32), Error> {
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

/// What storing a user message did.
#[derive(Debug, PartialEq)]
pub enum PostOutcome {
    /// A new message was stored and committed; its reply is still to be produced, by the
    /// holder of the [`TurnClaim`].
    Stored(Message, TurnClaim),
    /// The `Idempotency-Key` was used on this session in the last 24 hours: nothing was
    /// stored; this is the first result. Its reply is `None` while it is still being
    /// produced: [`Chat::wait_for_reply`] waits for it rather than asking the AI again.
    Replayed {
        /// The message stored the first time.
        message: Message,
        /// Its stored reply, if any yet.
        reply: Option<Message>,
    },
}

/// A user message and the reply stored for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// The user message.
    pub message: Message,
    /// The AI reply, or the system error message.
    pub reply: Message,
}

/// Everything needed to produce and store one reply: built by [`Chat::prepare_reply`]
/// from the turn's [`TurnClaim`], which it holds until [`Chat::store_reply`] consumes it,
/// so the claim cannot be let go while the AI works.
#[derive(Debug)]
pub struct ReplyTurn {
    /// The session.
    pub session_id: SessionId,
    /// The user message being answered.
    pub reply_to: MessageId,
    /// The id the reply will be stored under (streamed deltas can name it in advance).
    pub reply_id: MessageId,
    /// What the responder gets.
    pub request: AiRequest,
    claim: TurnClaim,
}

impl ReplyTurn {
    /// The message to store for the responder's `outcome`: its reply (`sender: "ai"`), or
    /// for a failure the system error message with `{"reason": ...}` metadata, under
    /// [`ReplyTurn::reply_id`], with the turn's claim.
    pub fn into_reply(self, outcome: Result<AiReply, AiError>) -> PendingReply {
        let ReplyTurn {
            session_id,
            reply_to,
            reply_id,
            claim,
            ..
        } = self;
        let new = match outcome {
            Ok(reply) => NewMessage {
                id: reply_id,
                sender: Sender::Ai,
                message_type: MessageType::Text,
                content: reply.content,
                metadata: reply.metadata,
                reply_to: Some(reply_to),
            },
            Err(error) => NewMessage {
                id: reply_id,
                sender: Sender::System,
                message_type: MessageType::Error,
                content: AI_UNAVAILABLE.to_owned(),
                metadata: error_metadata(&error),
                reply_to: Some(reply_to),
            },
        };
        PendingReply {
            session_id,
            reply_to,
            new,
            claim,
        }
    }
}

/// A turn's reply (or system error message), produced but not stored yet, with the turn's
/// claim: [`Chat::store_pending_reply`] stores it.
pub struct PendingReply {
    session_id: SessionId,
    reply_to: MessageId,
    new: NewMessage,
    claim: TurnClaim,
}

impl fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the content: it may be logged.
        f.debug_struct("PendingReply")
            .field("session_id", &self.session_id)
            .field("reply_to", &self.reply_to)
            .field("reply_id", &self.new.id)
            .finish_non_exhaustive()
    }
}

impl PendingReply {
    /// The session.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The user message it answers.
    pub fn reply_to(&self) -> MessageId {
        self.reply_to
    }

    /// The id it will be stored under.
    pub fn reply_id(&self) -> MessageId {
        self.new.id
    }
}

/// Why [`Chat::store_pending_reply`] stored nothing.
#[derive(Debug)]
pub struct ReplyNotStored {
    /// What went wrong.
    pub error: Error,
    /// For [`Error::Unavailable`], the reply, still claimed, to store later; `None` for
    /// any other error, which ended the turn's claim.
    pub pending: Option<Box<PendingReply>>,
}

/// What [`Chat::wait_for_reply`] found.
#[derive(Debug)]
pub enum ReplyWait {
    /// The stored reply.
    Ready(Message),
    /// Nobody is producing the reply: the caller now holds the turn and must produce it.
    YourTurn(TurnClaim),
}

/// Proof that this caller is producing the reply to one user message in this process.
/// While it is held, a repeated idempotent post of that message waits for the reply
/// instead of asking the AI a second time. [`Chat::store_reply`] completes the turn;
/// dropping the claim without a stored reply hands the turn to a waiter.
pub struct TurnClaim {
    turns: Arc<Turns>,
    message_id: MessageId,
    slot: Arc<TurnSlot>,
}

impl fmt::Debug for TurnClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnClaim")
            .field("message_id", &self.message_id)
            .finish()
    }
}

/// Two claims are equal when they are for the same message.
impl PartialEq for TurnClaim {
    fn eq(&self, other: &Self) -> bool {
        self.message_id == other.message_id
    }
}

impl TurnClaim {
    /// The user message whose reply this claim is for.
    pub fn message_id(&self) -> MessageId {
        self.message_id
    }

    /// Tells waiters that the reply is produced but the database would not take it.
    fn set_unstored(&self) {
        let mut state = self.slot.lock();
        if matches!(*state, TurnState::Running) {
            *state = TurnState::Unstored;
        }
        drop(state);
        self.slot.changed.notify_all();
    }
}

impl Drop for TurnClaim {
    fn drop(&mut self) {
        let mut running = self.turns.lock();
        if running
            .get(&self.message_id)
            .is_some_and(|slot| Arc::ptr_eq(slot, &self.slot))
        {
            running.remove(&self.message_id);
        }
        drop(running);
        let mut state = self.slot.lock();
        if matches!(*state, TurnState::Running | TurnState::Unstored) {
            *state = TurnState::Abandoned;
        }
        drop(state);
        self.slot.changed.notify_all();
    }
}

/// The replies being produced in this process, by the user message they answer. It lives
/// in the [`crate::Narutalk`] handle; another process (the CLI) has its own.
#[derive(Default)]
pub(crate) struct Turns {
    running: Mutex<HashMap<MessageId, Arc<TurnSlot>>>,
}

#[derive(Default)]
struct TurnSlot {
    state: Mutex<TurnState>,
    changed: Condvar,
}

#[derive(Default)]
enum TurnState {
    #[default]
    Running,
    /// Produced, but the database would not take it yet: its producer keeps trying.
    Unstored,
    Replied(Message),
    Abandoned,
}

impl TurnSlot {
    fn lock(&self) -> MutexGuard<'_, TurnState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Turns {
    fn lock(&self) -> MutexGuard<'_, HashMap<MessageId, Arc<TurnSlot>>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a turn for a message just stored (its id is new, so nobody else runs it).
    fn claim(self: &Arc<Self>, message_id: MessageId) -> TurnClaim {
        let slot = Arc::new(TurnSlot::default());
        self.lock().insert(message_id, slot.clone());
        TurnClaim {
            turns: self.clone(),
            message_id,
            slot,
        }
    }

    /// Registers a turn for `message_id` unless one is already running.
    fn try_claim(self: &Arc<Self>, message_id: MessageId) -> Option<TurnClaim> {
        let mut running = self.lock();
        if running.contains_key(&message_id) {
            return None;
        }
        let slot = Arc::new(TurnSlot::default());
        running.insert(message_id, slot.clone());
        Some(TurnClaim {
            turns: self.clone(),
            message_id,
            slot,
        })
    }

    /// Publishes a stored reply to everyone waiting for it.
    fn finish(&self, message_id: MessageId, reply: &Message) {
        let slot = self.lock().remove(&message_id);
        if let Some(slot) = slot {
            *slot.lock() = TurnState::Replied(reply.clone());
            slot.changed.notify_all();
        }
    }
}

/// Chat operations on a database (returned by [`crate::Narutalk::chat`]).
pub struct Chat<'a> {
    pub(crate) db: &'a SqliteStore,
    pub(crate) turns: &'a Arc<Turns>,
    pub(crate) content_max_chars: usize,
    pub(crate) history_messages: u32,
    pub(crate) asked_at: Option<Instant>,
}

impl Chat<'_> {
    /// These operations for a caller that asked at `asked_at` and has waited in a queue
    /// of its own since (a server's per-session order of stores): their writes' bound,
    /// [`crate::store::WRITE_DEADLINE`], runs from then rather than from each call.
    pub fn asked_at(self, asked_at: Instant) -> Self {
        Chat {
            asked_at: Some(asked_at),
            ..self
        }
    }

    /// `POST /api/chat/sessions/`: `{"title", "category"?}`.
    pub fn create_session_fields(
        &self,
        owner: UserId,
        body: &JsonObject,
    ) -> Result<SessionDetail, Error> {
        let mut reader = FieldReader::new(body);
        let title = reader.text("title", Text::REQUIRED.max(TITLE_MAX_CHARS));
        let category = reader
            .choice::<Category>("category", false)
            .unwrap_or_default();
        reader.finish()?;
        let title =
            title.ok_or_else(|| Error::internal("title passed its checks without a value"))?;
        self.insert_session(owner, &title, category)
    }

    /// Creates a session with a checked title (trimmed, 1-200 characters).
    pub fn create_session(
        &self,
        owner: UserId,
        title: &str,
        category: Category,
    ) -> Result<SessionDetail, Error> {
        let body = serde_json::json!({"title": title, "category": category.as_str()});
        self.create_session_fields(owner, body.as_object().unwrap_or(&JsonObject::new()))
    }

    /// `GET /api/chat/sessions/{id}/`: the session with every message, oldest first.
    pub fn session(&self, owner: UserId, id: SessionId) -> Result<SessionDetail, Error> {
        self.db.read(|conn| {
            let session = owned_session(conn, owner, id)?.session;
            let messages = all_messages(conn, id)?;
            Ok(SessionDetail { session, messages })
        })
    }

    /// True when the session exists and belongs to `owner`: one indexed lookup, for
    /// callers that must notice a deleted session without loading its messages.
    pub fn exists(&self, owner: UserId, id: SessionId) -> Result<bool, Error> {
        self.db.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM chat_sessions WHERE id = ?1 AND user_id = ?2")?
                .query_row(params![id.to_string(), owner.0], |_| Ok(()))
                .optional()?
                .is_some())
        })
    }

    /// `GET /api/chat/sessions/`: the owner's sessions, most recently updated first (ties:
    /// newest creation first), with their counts and last messages, in two queries.
    pub fn list_sessions(
        &self,
        owner: UserId,
        filter: SessionFilter,
        page: PageRequest,
    ) -> Result<Page<SessionSummary>, Error> {
        self.db
            .read(|conn| list_sessions_on(conn, owner, filter, page))
    }

    /// `PATCH /api/chat/sessions/{id}/`: `{"title"?, "category"?, "is_active"?}`. Every
    /// update, even an empty one, moves `updated_at` forward.
    pub fn update_session_fields(
        &self,
        owner: UserId,
        id: SessionId,
        body: &JsonObject,
    ) -> Result<SessionDetail, Error> {
        let mut reader = FieldReader::new(body);
        let title = reader.text("title", Text::REQUIRED.optional().max(TITLE_MAX_CHARS));
        let category = reader.choice::<Category>("category", false);
        let is_active = reader.boolean("is_active", false);
        let checked = reader.finish();
        let now = time::now();
        self.write(|tx| {
            // The addressed session answers before the fields (contract section 1.1).
            let session = owned_session(tx, owner, id)?;
            checked?;
            let updated_at = advance(&session.updated_at, &now);
            tx.prepare_cached(
                "UPDATE chat_sessions SET title = ?1, category = ?2, is_active = ?3, updated_at = ?4 WHERE id = ?5",
            )?
            .execute(params![
                title.as_deref().unwrap_or(&session.title),
                category.unwrap_or(session.category).as_str(),
                is_active.unwrap_or(session.is_active),
                time::to_micros(&updated_at),
                id.to_string()
            ])?;
            let session = owned_session(tx, owner, id)?.session;
            let messages = all_messages(tx, id)?;
            Ok(SessionDetail { session, messages })
        })
    }

    /// `DELETE /api/chat/sessions/{id}/`: the session and its messages are gone.
    pub fn delete_session(&self, owner: UserId, id: SessionId) -> Result<(), Error> {
        self.write(|tx| {
            match tx
                .prepare_cached("DELETE FROM chat_sessions WHERE id = ?1 AND user_id = ?2")?
                .execute(params![id.to_string(), owner.0])?
            {
                0 => Err(Error::NotFound),
                _ => Ok(()),
            }
        })
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
        self.db.read(|conn| {
            let session = owned_session(conn, owner, id)?;
            let after_seq = match after {
                None => 0,
                Some(after) => message_seq(conn, id, after)?.ok_or_else(|| {
                    Error::Invalid(FieldErrors::single("after", UNKNOWN_MESSAGE_ID))
                })?,
            };
            let count = if after_seq == 0 {
                session.message_count
            } else {
                let n: i64 = conn
                    .prepare_cached(
                        "SELECT count(*) FROM chat_messages WHERE session_id = ?1 AND seq > ?2",
                    )?
                    .query_row(params![id.to_string(), after_seq], |row| row.get(0))?;
                u64::try_from(n).unwrap_or_default()
            };
            let (number, num_pages) = page.resolve(count)?;
            let offset = i64::from(number - 1) * i64::from(PAGE_SIZE);
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = ?1 AND seq > ?2 \
                 ORDER BY seq LIMIT ?3 OFFSET ?4"
            ))?;
            let rows = statement.query_map(
                params![id.to_string(), after_seq, PAGE_SIZE, offset],
                |row| message_from_row(row, 0),
            )?;
            Ok(Page {
                count,
                number,
                num_pages,
                results: rows.collect::<Result<Vec<_>, _>>()?,
            })
        })
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
        self.db.read(|conn| {
            owned_session(conn, owner, id)?;
            match after {
                None => Ok(0),
                Some(after) => message_seq(conn, id, after)?.ok_or_else(|| {
                    Error::Invalid(FieldErrors::single("after", UNKNOWN_MESSAGE_ID))
                }),
            }
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
        self.db.read(|conn| {
            owned_session(conn, owner, id)?;
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = ?1 AND seq > ?2 \
                 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = statement.query_map(params![id.to_string(), after_seq, limit], |row| {
                message_from_row(row, 0)
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// For each `(owner, session)`, whether the session still exists and belongs to that
    /// owner: one read transaction for callers that watch many sessions (open sockets) and
    /// must notice deletions made anywhere, also by another process.
    pub fn sessions_exist(&self, sessions: &[(UserId, SessionId)]) -> Result<Vec<bool>, Error> {
        self.db.read(|conn| {
            let mut statement =
                conn.prepare_cached("SELECT 1 FROM chat_sessions WHERE id = ?1 AND user_id = ?2")?;
            sessions
                .iter()
                .map(|(owner, id)| {
                    Ok(statement
                        .query_row(params![id.to_string(), owner.0], |_| Ok(()))
                        .optional()?
                        .is_some())
                })
                .collect()
        })
    }

    /// `POST /api/chat/sessions/{id}/messages/`: checks `{"content", "message_type"?,
    /// "metadata"?}` (a `sender` in the body is ignored: it is always `user`) and stores the
    /// message, committed, moving the session's `updated_at` forward. With an
    /// `idempotency_key` used by this user on this session in the last 24 hours, stores
    /// nothing and answers the first result.
    pub fn post_message_fields(
        &self,
        owner: UserId,
        id: SessionId,
        body: &JsonObject,
        idempotency_key: Option<&str>,
    ) -> Result<PostOutcome, Error> {
        let mut reader = FieldReader::new(body);
        let content = reader.text(
            "content",
            Text {
                required: true,
                trim: false,
                allow_blank: false,
                max_chars: Some(self.content_max_chars),
            },
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
        let checked = reader.finish();
        let now = time::now();
        self.write(|tx| {
            let session = owned_session(tx, owner, id)?;
            checked?;
            if let Some(key) = idempotency_key
                && let Some(replayed) = replay(tx, owner, id, key, &now)?
            {
                return Ok(replayed);
            }
            let content = content
                .ok_or_else(|| Error::internal("content passed its checks without a value"))?;
            let message = insert_message(
                tx,
                &session,
                NewMessage {
                    id: MessageId::new_random(),
                    sender: Sender::User,
                    message_type,
                    content,
                    metadata,
                    reply_to: None,
                },
                &now,
            )?;
            if let Some(key) = idempotency_key {
                remember_key(tx, owner, id, key, message.id, &now)?;
            }
            // Claimed before the writer is released, so a repeat of this post (whose replay
            // check also runs under the writer) always finds the turn running. A failed
            // commit drops the claim again.
            let claim = self.turns.claim(message.id);
            Ok(PostOutcome::Stored(message, claim))
        })
    }

    /// For a [`PostOutcome::Replayed`] message without a reply: waits until the turn that
    /// is producing it in this process stores it, and answers [`ReplyWait::Ready`]. When no
    /// turn is running for it (its producer gave up, or the process stopped mid-turn) and
    /// no reply is stored, the caller gets the [`TurnClaim`] and produces the reply itself.
    /// [`Error::Unavailable`] when `timeout` passes first, and at once while the reply is
    /// produced but waiting for the database ([`Chat::store_pending_reply`]).
    pub fn wait_for_reply(&self, message: &Message, timeout: Duration) -> Result<ReplyWait, Error> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let running = self.turns.lock().get(&message.id).cloned();
            let Some(slot) = running else {
                // Nobody here runs the turn: take it (under the registry lock only, never
                // across the database read below, which may wait for a reader), then see
                // whether its reply is already stored.
                let Some(claim) = self.turns.try_claim(message.id) else {
                    continue;
                };
                if let Some(reply) = self.db.read(|conn| reply_for(conn, message.id))? {
                    self.turns.finish(message.id, &reply);
                    return Ok(ReplyWait::Ready(reply));
                }
                return Ok(ReplyWait::YourTurn(claim));
            };
            let mut state = slot.lock();
            loop {
                match &*state {
                    TurnState::Replied(reply) => return Ok(ReplyWait::Ready(reply.clone())),
                    TurnState::Abandoned => break,
                    TurnState::Unstored => {
                        return Err(Error::Unavailable(
                            "the reply is waiting for the database".into(),
                        ));
                    }
                    TurnState::Running => {
                        let remaining = deadline.map_or(Duration::MAX, |d| {
                            d.saturating_duration_since(Instant::now())
                        });
                        if remaining.is_zero() {
                            return Err(Error::Unavailable(
                                "the reply is still being produced".into(),
                            ));
                        }
                        state = slot
                            .changed
                            .wait_timeout(state, remaining)
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .0;
                    }
                }
            }
        }
    }

    /// Builds the responder's request for a stored user message: the session's category,
    /// the last N messages stored before it (system messages left out), and the message.
    /// Takes the message's [`TurnClaim`] (from [`PostOutcome::Stored`] or
    /// [`ReplyWait::YourTurn`]); a claim for another message is [`Error::Internal`].
    pub fn prepare_reply(&self, message: &Message, claim: TurnClaim) -> Result<ReplyTurn, Error> {
        if claim.message_id != message.id {
            return Err(Error::internal(format!(
                "a turn claim for message {} cannot answer message {}",
                claim.message_id, message.id
            )));
        }
        let limit = self.history_messages;
        self.db.read(|conn| {
            let category: String = conn
                .prepare_cached("SELECT category FROM chat_sessions WHERE id = ?1")?
                .query_row([message.session_id.to_string()], |row| row.get(0))
                .optional()?
                .ok_or(Error::NotFound)?;
            let mut statement = conn.prepare_cached(
                "SELECT sender, content FROM chat_messages \
                 WHERE session_id = ?1 AND seq < ?2 AND sender != 'system' ORDER BY seq DESC LIMIT ?3",
            )?;
            let rows = statement.query_map(params![message.session_id.to_string(), message.seq, limit], |row| {
                let sender: String = row.get(0)?;
                Ok(HistoryTurn {
                    sender: sender.parse().unwrap_or(Sender::User),
                    content: row.get(1)?,
                })
            })?;
            let mut history = rows.collect::<Result<Vec<_>, _>>()?;
            history.reverse();
            Ok(AiRequest {
                session_id: message.session_id,
                category: category.parse().unwrap_or_default(),
                history,
                message: message.content.clone(),
            })
        })
        .map(|request| ReplyTurn {
            session_id: message.session_id,
            reply_to: message.id,
            reply_id: MessageId::new_random(),
            request,
            claim,
        })
    }

    /// Stores the outcome of a turn: the AI reply (`sender: "ai"`), or for a failure the
    /// system error message with `{"reason": ...}` metadata, and hands it to everyone
    /// waiting for it; the turn's claim ends here, stored or not (a failure hands the turn
    /// to a waiter). A reply already stored for the same user message (by another
    /// process) is returned instead of storing a second one. [`Error::NotFound`] when the
    /// session was deleted meanwhile. [`Chat::store_pending_reply`] keeps a reply that the
    /// database would not take.
    pub fn store_reply(
        &self,
        turn: ReplyTurn,
        outcome: Result<AiReply, AiError>,
    ) -> Result<Message, Error> {
        self.store_pending_reply(turn.into_reply(outcome))
            .map_err(|not_stored| not_stored.error)
    }

    /// Stores a produced reply ([`ReplyTurn::into_reply`]) as [`Chat::store_reply`] does.
    /// When the database does not take it ([`Error::Unavailable`]: locked, busy, full,
    /// failing), the reply comes back in [`ReplyNotStored::pending`], its claim still held,
    /// to be stored by a later call once writes work again; until then a repeated
    /// idempotent post of its message ([`Chat::wait_for_reply`]) answers
    /// [`Error::Unavailable`] instead of waiting. Any other failure ends the claim.
    pub fn store_pending_reply(&self, pending: PendingReply) -> Result<Message, ReplyNotStored> {
        let PendingReply {
            session_id,
            reply_to,
            new,
            claim,
        } = pending;
        let now = time::now();
        let stored = self.write(|tx| {
            let session = session_by_id(tx, session_id)?.ok_or(Error::NotFound)?;
            if let Some(existing) = reply_for(tx, reply_to)? {
                return Ok(existing);
            }
            insert_message(tx, &session, new.clone(), &now)
        });
        match stored {
            Ok(reply) => {
                self.turns.finish(reply_to, &reply);
                // Published: the claim ends here.
                drop(claim);
                Ok(reply)
            }
            Err(error @ Error::Unavailable(_)) => {
                claim.set_unstored();
                Err(ReplyNotStored {
                    error,
                    pending: Some(Box::new(PendingReply {
                        session_id,
                        reply_to,
                        new,
                        claim,
                    })),
                })
            }
            // Any other failure ends the claim: it hands the turn on to a waiter.
            Err(error) => Err(ReplyNotStored {
                error,
                pending: None,
            }),
        }
    }

    /// Runs `f` as a write, bounded from [`Chat::asked_at`] when it was given.
    fn write<T>(&self, f: impl FnOnce(&WriteTx<'_>) -> Result<T, Error>) -> Result<T, Error> {
        match self.asked_at {
            Some(asked_at) => self.db.write_asked_at(asked_at, f),
            None => self.db.write(f),
        }
    }

    fn insert_session(
        &self,
        owner: UserId,
        title: &str,
        category: Category,
    ) -> Result<SessionDetail, Error> {
        let id = SessionId::new_random();
        let now = time::to_micros(&time::now());
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO chat_sessions (id, user_id, title, category, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )?
            .execute(params![
                id.to_string(),
                owner.0,
                title,
                category.as_str(),
                now
            ])
            .map_err(|error| match error.sqlite_error_code() {
                // The acting user was deleted after their token was checked: their
                // credentials are no longer valid.
                Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    Error::InvalidToken(TokenProblem::Invalid)
                }
                _ => error.into(),
            })?;
            let session = owned_session(tx, owner, id)?.session;
            Ok(SessionDetail {
                session,
                messages: Vec::new(),
            })
        })
    }
}

/// The session list's two queries (count, then the page joined to each session's last
/// message) on one connection.
fn list_sessions_on(
    conn: &Connection,
    owner: UserId,
    filter: SessionFilter,
    page: PageRequest,
) -> Result<Page<SessionSummary>, Error> {
    let category = filter.category.map(Category::as_str);
    let count: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM chat_sessions \
             WHERE user_id = ?1 AND (?2 IS NULL OR category = ?2) AND (?3 IS NULL OR is_active = ?3)",
        )?
        .query_row(params![owner.0, category, filter.is_active], |row| row.get(0))?;
    let count = u64::try_from(count).unwrap_or_default();
    let (number, num_pages) = page.resolve(count)?;
    let offset = i64::from(number - 1) * i64::from(PAGE_SIZE);
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {SESSION_COLUMNS_S}, {MESSAGE_COLUMNS_M} FROM chat_sessions s \
         LEFT JOIN chat_messages m ON m.session_id = s.id AND m.seq = s.last_seq \
         WHERE s.user_id = ?1 AND (?2 IS NULL OR s.category = ?2) AND (?3 IS NULL OR s.is_active = ?3) \
         ORDER BY s.updated_at DESC, s.created_at DESC, s.rowid DESC LIMIT ?4 OFFSET ?5"
    ))?;
    let rows = statement.query_map(
        params![owner.0, category, filter.is_active, PAGE_SIZE, offset],
        |row| {
            let session = session_from_row(row, 0)?;
            let last_message = match row.get::<_, Option<String>>(SESSION_COLUMN_COUNT)? {
                Some(_) => Some(message_from_row(row, SESSION_COLUMN_COUNT)?),
                None => None,
            };
            Ok(SessionSummary {
                session,
                last_message,
            })
        },
    )?;
    let results = rows.collect::<Result<Vec<_>, _>>()?;
    Ok(Page {
        count,
        number,
        num_pages,
        results,
    })
}

/// True for 1-64 visible ASCII characters (`!` to `~`).
pub fn is_valid_idempotency_key(key: &str) -> bool {
    (1..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

fn error_metadata(error: &AiError) -> JsonObject {
    let mut metadata = JsonObject::new();
    metadata.insert(
        "reason".into(),
        serde_json::Value::String(error.reason().to_owned()),
    );
    metadata
}

fn compact_json_len(object: &JsonObject) -> usize {
    serde_json::to_string(object).map_or(usize::MAX, |s| s.len())
}

/// The next `updated_at`: now, but always strictly after the previous value, so that
/// "moves forward" holds even within one microsecond or under a clock step back.
fn advance(previous: &DateTime<Utc>, now: &DateTime<Utc>) -> DateTime<Utc> {
    let floor = *previous + chrono::Duration::microseconds(1);
    if *now > floor { *now } else { floor }
}

#[derive(Clone)]
struct NewMessage {
    id: MessageId,
    sender: Sender,
    message_type: MessageType,
    content: String,
    metadata: JsonObject,
    reply_to: Option<MessageId>,
}

/// Inserts a message with the session's next sequence number and moves the session's
/// count, last sequence and `updated_at` in the same transaction.
fn insert_message(
    tx: &WriteTx<'_>,
    session: &StoredSession,
    new: NewMessage,
    now: &DateTime<Utc>,
) -> Result<Message, Error> {
    let seq = session.last_seq + 1;
    let metadata = serde_json::to_string(&new.metadata)
        .map_err(|e| Error::Internal(crate::error::InternalError::from_error(e)))?;
    tx.prepare_cached(
        "INSERT INTO chat_messages (id, session_id, seq, sender, message_type, content, metadata, created_at, reply_to) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        new.id.to_string(),
        session.session.id.to_string(),
        seq,
        new.sender.as_str(),
        new.message_type.as_str(),
        new.content,
        metadata,
        time::to_micros(now),
        new.reply_to.map(|id| id.to_string()),
    ])?;
    let updated_at = advance(&session.session.updated_at, now);
    tx.prepare_cached(
        "UPDATE chat_sessions SET last_seq = ?1, message_count = message_count + 1, updated_at = ?2 WHERE id = ?3",
    )?
    .execute(params![seq, time::to_micros(&updated_at), session.session.id.to_string()])?;
    Ok(Message {
        id: new.id,
        session_id: session.session.id,
        seq,
        content: new.content,
        sender: new.sender,
        message_type: new.message_type,
        metadata: new.metadata,
        timestamp: *now,
        reply_to: new.reply_to,
    })
}

fn replay(
    tx: &WriteTx<'_>,
    owner: UserId,
    id: SessionId,
    key: &str,
    now: &DateTime<Utc>,
) -> Result<Option<PostOutcome>, Error> {
    let since = time::to_micros(&(*now - IDEMPOTENCY_WINDOW));
    let message_id: Option<String> = tx
        .prepare_cached(
            "SELECT message_id FROM idempotency_keys \
             WHERE session_id = ?1 AND user_id = ?2 AND key = ?3 AND created_at >= ?4",
        )?
        .query_row(params![id.to_string(), owner.0, key, since], |row| {
            row.get(0)
        })
        .optional()?;
    let Some(message_id) = message_id else {
        return Ok(None);
    };
    let message = tx
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE id = ?1"
        ))?
        .query_row([&message_id], |row| message_from_row(row, 0))
        .optional()?;
    let Some(message) = message else {
        return Ok(None);
    };
    let reply = reply_for(tx, message.id)?;
    Ok(Some(PostOutcome::Replayed { message, reply }))
}

fn remember_key(
    tx: &WriteTx<'_>,
    owner: UserId,
    id: SessionId,
    key: &str,
    message_id: MessageId,
    now: &DateTime<Utc>,
) -> Result<(), Error> {
    let now_micros = time::to_micros(now);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO idempotency_keys (session_id, user_id, key, message_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id.to_string(), owner.0, key, message_id.to_string(), now_micros])?;
    // Forget a few expired keys each time one is remembered, so the table stays small
    // without a separate sweeper.
    tx.prepare_cached(
        "DELETE FROM idempotency_keys WHERE (session_id, user_id, key) IN \
         (SELECT session_id, user_id, key FROM idempotency_keys WHERE created_at < ?1 LIMIT 100)",
    )?
    .execute([now_micros - IDEMPOTENCY_WINDOW.num_microseconds().unwrap_or(i64::MAX)])?;
    Ok(())
}

fn reply_for(conn: &Connection, message_id: MessageId) -> Result<Option<Message>, Error> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE reply_to = ?1 ORDER BY seq LIMIT 1"
        ))?
        .query_row([message_id.to_string()], |row| message_from_row(row, 0))
        .optional()?)
}

fn message_seq(
    conn: &Connection,
    session: SessionId,
    message_id: &str,
) -> Result<Option<i64>, Error> {
    let Some(message_id) = parse_canonical_uuid(message_id) else {
        return Ok(None);
    };
    Ok(conn
        .prepare_cached("SELECT seq FROM chat_messages WHERE id = ?1 AND session_id = ?2")?
        .query_row(
            params![message_id.hyphenated().to_string(), session.to_string()],
            |row| row.get(0),
        )
        .optional()?)
}

fn all_messages(conn: &Connection, id: SessionId) -> Result<Vec<Message>, Error> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = ?1 ORDER BY seq"
    ))?;
    let rows = statement.query_map([id.to_string()], |row| message_from_row(row, 0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// A session row with the bookkeeping the API does not show.
struct StoredSession {
    session: ChatSession,
    last_seq: i64,
}

impl std::ops::Deref for StoredSession {
    type Target = ChatSession;

    fn deref(&self) -> &ChatSession {
        &self.session
    }
}

const SESSION_COLUMNS: &str =
    "id, user_id, title, category, is_active, created_at, updated_at, message_count, last_seq";
const SESSION_COLUMNS_S: &str = "s.id, s.user_id, s.title, s.category, s.is_active, s.created_at, s.updated_at, s.message_count, s.last_seq";
const SESSION_COLUMN_COUNT: usize = 9;
const MESSAGE_COLUMNS: &str =
    "id, session_id, seq, sender, message_type, content, metadata, created_at, reply_to";
const MESSAGE_COLUMNS_M: &str = "m.id, m.session_id, m.seq, m.sender, m.message_type, m.content, m.metadata, m.created_at, m.reply_to";

fn owned_session(conn: &Connection, owner: UserId, id: SessionId) -> Result<StoredSession, Error> {
    session_by_id(conn, id)?
        .filter(|stored| stored.session.user_id == owner)
        .ok_or(Error::NotFound)
}

fn session_by_id(conn: &Connection, id: SessionId) -> Result<Option<StoredSession>, Error> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE id = ?1"
        ))?
        .query_row([id.to_string()], |row| {
            Ok(StoredSession {
                session: session_from_row(row, 0)?,
                last_seq: row.get(8)?,
            })
        })
        .optional()?)
}

fn uuid_column(row: &Row<'_>, index: usize) -> rusqlite::Result<Uuid> {
    let text: String = row.get(index)?;
    Uuid::parse_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn session_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<ChatSession> {
    let category: String = row.get(at + 3)?;
    let message_count: i64 = row.get(at + 7)?;
    Ok(ChatSession {
        id: SessionId(uuid_column(row, at)?),
        user_id: UserId(row.get(at + 1)?),
        title: row.get(at + 2)?,
        category: category.parse().unwrap_or_default(),
        is_active: row.get(at + 4)?,
        created_at: time::from_micros(row.get(at + 5)?),
        updated_at: time::from_micros(row.get(at + 6)?),
        message_count: u64::try_from(message_count).unwrap_or_default(),
    })
}

fn message_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<Message> {
    let sender: String = row.get(at + 3)?;
    let message_type: String = row.get(at + 4)?;
    let metadata: String = row.get(at + 6)?;
    let reply_to: Option<String> = row.get(at + 8)?;
    Ok(Message {
        id: MessageId(uuid_column(row, at)?),
        session_id: SessionId(uuid_column(row, at + 1)?),
        seq: row.get(at + 2)?,
        sender: sender.parse().unwrap_or(Sender::System),
        message_type: message_type.parse().unwrap_or(MessageType::Text),
        content: row.get(at + 5)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        timestamp: time::from_micros(row.get(at + 7)?),
        reply_to: reply_to
            .and_then(|id| Uuid::parse_str(&id).ok())
            .map(MessageId),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rusqlite::trace::{TraceEvent, TraceEventCodes};

    use super::*;
    use crate::Narutalk;
    use crate::accounts::{NewUser, Role};
    use crate::config::Config;
    use crate::store::OpenMode;

    /// Counts the statements SQLite runs on `conn` while `f` runs.
    fn statements_run(conn: &mut Connection, f: impl FnOnce(&Connection)) -> usize {
        let counter = Arc::new(AtomicUsize::new(0));
        let seen = counter.clone();
        conn.trace_v2(
            TraceEventCodes::SQLITE_TRACE_STMT,
            Some(move |event: TraceEvent<'_>| {
                if let TraceEvent::Stmt(..) = event {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }),
        )
        .unwrap();
        f(conn);
        conn.trace_v2(TraceEventCodes::empty(), None::<fn(TraceEvent<'_>)>)
            .unwrap();
        counter.load(Ordering::Relaxed)
    }

    #[test]
    fn a_reply_the_database_refuses_stays_claimed_until_a_later_try_stores_it() {
        // Arrange: a stored message with an idempotency key and its produced reply.
        let dir = tempfile::tempdir().unwrap();
        let config = Config::for_tests(dir.path());
        let narutalk = Narutalk::open(&config, OpenMode::CreateIfMissing).unwrap();
        let user = narutalk
            .accounts()
            .create(&NewUser {
                email: "kim@example.com".into(),
                username: "kim".into(),
                password: "violet-harbour-42".into(),
                role: Role::Doctor,
                department: String::new(),
                is_verified: false,
            })
            .unwrap();
        let session = narutalk
            .chat()
            .create_session(user.id, "s", Category::General)
            .unwrap()
            .session
            .id;
        let body = serde_json::json!({"content": "hello"});
        let body = body.as_object().unwrap();
        let post = || {
            narutalk
                .chat()
                .post_message_fields(user.id, session, body, Some("k1"))
                .unwrap()
        };
        let PostOutcome::Stored(message, claim) = post() else {
            panic!("the first post stores")
        };
        let turn = narutalk.chat().prepare_reply(&message, claim).unwrap();
        let pending = turn.into_reply(Ok(AiReply {
            content: "hi".into(),
            metadata: JsonObject::new(),
        }));
        let reply_id = pending.reply_id();
        // Another process holds the write lock; the store asked almost 5 s ago.
        let other = Connection::open(&config.database).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let almost_due = Instant::now()
            .checked_sub(crate::store::WRITE_DEADLINE - Duration::from_millis(200))
            .unwrap();

        // Act
        let refused = narutalk
            .chat()
            .asked_at(almost_due)
            .store_pending_reply(pending)
            .unwrap_err();
        other.execute_batch("ROLLBACK").unwrap();

        // Assert: the reply is kept, and a repeat hears at once that it is not stored.
        assert!(
            matches!(refused.error, Error::Unavailable(_)),
            "{refused:?}"
        );
        let pending = *refused.pending.unwrap();
        let PostOutcome::Replayed { reply: None, .. } = post() else {
            panic!("the repeat finds the message without its reply")
        };
        let waited = narutalk
            .chat()
            .wait_for_reply(&message, Duration::from_secs(600));
        assert!(matches!(waited, Err(Error::Unavailable(_))), "{waited:?}");
        let reply = narutalk.chat().store_pending_reply(pending).unwrap();
        assert_eq!((reply.id, reply.content.as_str()), (reply_id, "hi"));
        let PostOutcome::Replayed {
            reply: Some(replayed),
            ..
        } = post()
        else {
            panic!("the repeat finds the reply")
        };
        assert_eq!(replayed, reply);
        let contents: Vec<String> = narutalk
            .chat()
            .session(user.id, session)
            .unwrap()
            .messages
            .into_iter()
            .map(|m| m.content)
            .collect();
        assert_eq!(contents, ["hello", "hi"]);
    }

    #[test]
    fn a_page_of_the_session_list_is_two_queries_however_many_sessions_it_shows() {
        // Arrange: a user with 50 sessions, each with a message and its reply.
        let dir = tempfile::tempdir().unwrap();
        let config = Config::for_tests(dir.path());
        let narutalk = Narutalk::open(&config, OpenMode::CreateIfMissing).unwrap();
        let user = narutalk
            .accounts()
            .create(&NewUser {
                email: "kim@example.com".into(),
                username: "kim".into(),
                password: "violet-harbour-42".into(),
                role: Role::Doctor,
                department: String::new(),
                is_verified: false,
            })
            .unwrap();
        for n in 0..50 {
            let session = narutalk
                .chat()
                .create_session(user.id, &format!("s{n}"), Category::General)
                .unwrap();
            narutalk
                .send_message(user.id, session.session.id, "hello")
                .unwrap();
        }
        let mut conn = Connection::open(&config.database).unwrap();

        // Act
        let mut pages = Vec::new();
        let first = statements_run(&mut conn, |conn| {
            pages.push(
                list_sessions_on(
                    conn,
                    user.id,
                    SessionFilter::default(),
                    PageRequest::Number(1),
                )
                .unwrap(),
            );
        });
        let last = statements_run(&mut conn, |conn| {
            pages.push(
                list_sessions_on(conn, user.id, SessionFilter::default(), PageRequest::Last)
                    .unwrap(),
            );
        });

        // Assert
        assert_eq!((first, last), (2, 2));
        assert_eq!(pages[0].results.len(), 20);
        assert_eq!(pages[1].results.len(), 10);
        assert!(
            pages
                .iter()
                .flat_map(|p| &p.results)
                .all(|s| s.last_message.is_some())
        );
    }
}
