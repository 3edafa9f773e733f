//! Narutalk's core: every business rule of the Narutalk API (`docs/API.md`), behind a
//! synchronous API that any Rust program can embed with no server at all.
//!
//! [`Narutalk`] is the handle: it owns the store (the storage port of [`store`], on SQLite
//! today), the token keys and the AI responder, and hands out the three areas of the API:
//! [`Narutalk::accounts`] (registration, login, profiles, administration),
//! [`Narutalk::tokens`] (access-token checks, refresh rotation, logout) and
//! [`Narutalk::chat`] (sessions, messages, posting). Operations that take a request body
//! take it as a [`fields::JsonObject`] (or a typed input such as [`chat::PostInput`]) and
//! answer the API's field errors, so a server only translates HTTP.
//!
//! The handle also owns the AI pool, the event bus ([`Narutalk::events`]: every stored
//! change is published there after its commit) and the turn engine ([`turns`]), which a
//! server starts with [`Narutalk::start_turns`]; without it, a post answers its turn on the
//! calling thread.
//!
//! Everything blocks (SQLite, argon2) except awaiting a reply: call it from a thread that
//! may block, such as `tokio::task::spawn_blocking`.
//!
//! ```
//! use narutalk_core::chat::{Category, Sender};
//! use narutalk_core::config::Config;
//! use narutalk_core::store::OpenMode;
//! use narutalk_core::Narutalk;
//! use serde_json::json;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let narutalk = Narutalk::open(&Config::for_tests(dir.path()), OpenMode::CreateIfMissing)?;
//!
//! // Register and log in.
//! let registration = json!({
//!     "username": "kim", "email": "Kim@Example.com", "role": "doctor",
//!     "password": "violet-harbour-42", "password_confirm": "violet-harbour-42",
//! });
//! let user = narutalk.accounts().register_fields(registration.as_object().unwrap())?;
//! assert_eq!(user.email, "kim@example.com");
//! let login = narutalk.accounts().login("kim@example.com", "violet-harbour-42")?;
//! let me = narutalk.tokens().authenticate(&login.tokens.access)?;
//!
//! // Open a session and ask a question: the reply is stored with it.
//! let session = narutalk.chat().create_session(me.id, "Headache", Category::Medical)?;
//! let exchange = narutalk.send_message(me.id, session.session.id, "두통")?;
//! assert_eq!(exchange.reply.sender, Sender::Ai);
//! assert_eq!(exchange.reply.content, "AI 응답: 두통에 대한 의료 정보를 제공합니다.");
//!
//! let stored = narutalk.chat().session(me.id, session.session.id)?;
//! assert_eq!(stored.messages.len(), 2);
//! # Ok(())
//! # }
//! ```

pub mod accounts;
pub mod admin;
pub mod ai;
pub mod chat;
pub mod config;
pub mod error;
pub mod events;
pub mod fields;
pub mod files;
pub mod metrics;
pub mod store;
pub mod time;
pub mod tokens;
pub mod turns;
pub mod workers;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accounts::password::PasswordHashing;
use accounts::{Accounts, UserId};
use ai::http::HttpResponder;
use ai::openai::OpenAiResponder;
use ai::pool::AiPool;
use ai::{Responder, TemplateResponder};
use chat::{Chat, Exchange, PostInput, SessionId};
use config::{AiBackend, Config, ConfigError, SECRET_FILE, Secret};
use error::Error;
use events::{Actor, Event, EventBus, Origin};
use fields::JsonObject;
use store::sqlite::SqliteStore;
use store::{OpenError, OpenMode, Store};
use tokens::{TokenKeys, Tokens};
use turns::{Drained, Engine, Parts};

/// Why a [`Narutalk`] could not start. Each variant's text is one line naming the
/// setting or the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid (the text names it).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// The embedded Narutalk: store, token keys, AI responder and pool, event bus and turn
/// engine.
pub struct Narutalk {
    store: Arc<dyn Store>,
    keys: TokenKeys,
    hashing: PasswordHashing,
    events: Arc<EventBus>,
    turns: Arc<Engine>,
    /// Following other processes' changes, while the engine is started on shared storage.
    feed: Mutex<Option<store::FeedGuard>>,
    origin: Origin,
    content_max_chars: usize,
    history_messages: u32,
    ai_timeout: Duration,
    reply_wait: Duration,
    ai_concurrency: usize,
}

impl std::fmt::Debug for Narutalk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Narutalk")
            .field("store", &self.store)
            .field("responder", &self.responder().name())
            .field("turns_started", &self.turns.is_started())
            .finish_non_exhaustive()
    }
}

impl Narutalk {
    /// Opens the store of `config` (created only with [`OpenMode::CreateIfMissing`]),
    /// applies pending migrations, and takes the signing secret from the configuration
    /// or from `data/secret.key`, generating that file (mode 0600) when `mode` allows
    /// creating.
    pub fn open(config: &Config, mode: OpenMode) -> Result<Narutalk, StartError> {
        config.validate()?;
        // The database first: a missing database is the error to report, not the secret.
        let storage = store::open(config, mode)?;
        let secret =
            config.signing_secret(Path::new(SECRET_FILE), mode == OpenMode::CreateIfMissing)?;
        Narutalk::new(storage, &secret, config)
    }

    /// Builds the handle from an open store and a signing secret; the responder is the one
    /// `config` names. The turn engine is not started ([`Narutalk::start_turns`]).
    pub fn new(
        store: Arc<dyn Store>,
        secret: &Secret,
        config: &Config,
    ) -> Result<Narutalk, StartError> {
        let keys = TokenKeys::new(
            secret,
            config.access_token_minutes,
            config.refresh_token_days,
        )
        .map_err(|_| ConfigError {
            setting: "NARUTALK_SECRET_KEY".into(),
            message: format!("must be at least {} bytes", tokens::MIN_SECRET_BYTES),
        })?;
        // Each responder is built once and shared by every turn: the network ones keep
        // their connections to the service open between turns.
        let responder: Arc<dyn Responder> = match config.ai_backend {
            AiBackend::Template => Arc::new(TemplateResponder),
            AiBackend::Http => Arc::new(HttpResponder::from_config(config)),
            AiBackend::Openai => Arc::new(OpenAiResponder::from_config(config)),
        };
        let events = Arc::new(EventBus::new());
        let ai_timeout = Duration::from_secs(u64::from(config.ai_timeout_seconds));
        // A repeated post waits at most one whole AI call, plus the time to store it.
        let reply_wait = ai_timeout + Duration::from_secs(5);
        let ai_concurrency = usize::try_from(config.ai_concurrency).unwrap_or(usize::MAX);
        let turns = Arc::new(Engine::new(Parts {
            store: store.clone(),
            responder,
            events: events.clone(),
            pool: AiPool::new(ai_concurrency),
            history_messages: config.ai_history_messages,
            ai_timeout,
            reply_wait,
        }));
        Ok(Narutalk {
            store,
            keys,
            // The one bound on password hashing: one thread per core, 64 waiting.
            hashing: PasswordHashing::for_this_machine(),
            events,
            turns,
            feed: Mutex::new(None),
            origin: Origin::default(),
            content_max_chars: config.content_max_chars,
            history_messages: config.ai_history_messages,
            ai_timeout,
            reply_wait,
            ai_concurrency,
        })
    }

    /// Replaces the AI responder (an embedder's own, or a test double). Call it before
    /// [`Narutalk::start_turns`] and before any post: the turn engine is built anew.
    pub fn with_responder(mut self, responder: Arc<dyn Responder>) -> Self {
        self.turns = Arc::new(Engine::new(Parts {
            store: self.store.clone(),
            responder,
            events: self.events.clone(),
            pool: AiPool::new(self.ai_concurrency),
            history_messages: self.history_messages,
            ai_timeout: self.ai_timeout,
            reply_wait: self.reply_wait,
        }));
        self
    }

    /// Records `actor` as the author of every change this handle makes, whoever the
    /// change acts for (the outbox's actor): the CLI records [`Actor::Cli`].
    pub fn acting_as(mut self, actor: Actor) -> Self {
        self.origin.actor = Some(actor);
        self
    }

    /// Starts the turn engine ([`turns`]): from now on each session's turns are answered
    /// on the AI pool, and a post returns as soon as its message is stored. It first frees
    /// every lease on a pending turn (on SQLite this process owns the database, so they
    /// are its dead predecessor's) and answers the turns left pending, each session's in
    /// order. The server starts it; [`Narutalk::open_for_administration`] and the CLI never
    /// do. Starting a started engine does nothing.
    ///
    /// On storage other processes share (PostgreSQL), it also starts following their
    /// changes: each reaches the event bus (a stored message without its body, a deleted
    /// session, a revocation, and [`events::Event::MayHaveMissed`] when some may have been
    /// lost), their replies reach the waits of this process, and turns whose process died
    /// are taken over once their leases expire.
    pub fn start_turns(&self) -> Result<(), Error> {
        self.turns.start()?;
        let mut feed = self
            .feed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if feed.is_none() && self.store.shared() {
            *feed = self.store.follow(self.feed_sink());
        }
        Ok(())
    }

    /// What the storage's feed does with another process's change.
    fn feed_sink(&self) -> Box<dyn Fn(store::Notice) + Send + Sync> {
        let events = self.events.clone();
        let turns = Arc::downgrade(&self.turns);
        Box::new(move |notice| {
            let event = match notice {
                store::Notice::MessageStored {
                    session,
                    seq,
                    id,
                    from_user,
                } => {
                    if !from_user && let Some(turns) = turns.upgrade() {
                        turns.stored_elsewhere(session);
                    }
                    Event::MessageStored {
                        session,
                        seq,
                        id,
                        message: None,
                    }
                }
                store::Notice::SessionDeleted { session, owner } => {
                    Event::SessionDeleted { session, owner }
                }
                store::Notice::UserRevoked { user, cause } => Event::UserRevoked { user, cause },
                store::Notice::LoginEnded { user, family } => Event::LoginEnded { user, family },
                store::Notice::MayHaveMissed => {
                    if let Some(turns) = turns.upgrade() {
                        turns.look_again();
                    }
                    Event::MayHaveMissed
                }
            };
            events.publish(&event);
        })
    }

    /// Stops the turn engine: a reply the database refuses is given up (its turn stays
    /// pending, answered after the next start), and turns posted from now on are answered
    /// on their posting thread. Turns in progress go on; [`Narutalk::turns_drained`]
    /// completes when they are done.
    ///
    /// On shared storage it also stops following other processes' changes, and waits for
    /// the thread that follows them (a fraction of a second): like every other blocking
    /// call of the core, call it off an async runtime's threads.
    pub fn stop_turns(&self) {
        self.turns.stop();
        // Stops following other processes' changes (waits for the feed's thread).
        let feed = self
            .feed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop(feed);
    }

    /// Completes (await it, or [`Drained::wait_timeout`]) once no session's turns are
    /// being answered.
    pub fn turns_drained(&self) -> Drained {
        self.turns.drained()
    }

    /// The event bus: every stored change is published on it after its commit, and each
    /// reply's deltas as the responder produces them.
    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    /// The AI pool the turn engine runs responders on.
    pub fn ai_pool(&self) -> &AiPool {
        self.turns.pool()
    }

    /// Where this handle's calls come from ([`Narutalk::acting_as`]).
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Registration, login, profiles and administration.
    pub fn accounts(&self) -> Accounts<'_> {
        Accounts {
            store: &*self.store,
            keys: &self.keys,
            hashing: &self.hashing,
            events: &self.events,
            origin: self.origin.clone(),
        }
    }

    /// Access-token checks, refresh rotation and logout.
    pub fn tokens(&self) -> Tokens<'_> {
        Tokens {
            store: &*self.store,
            keys: &self.keys,
            events: &self.events,
            origin: self.origin.clone(),
        }
    }

    /// Sessions, messages and posting.
    pub fn chat(&self) -> Chat<'_> {
        Chat {
            store: &*self.store,
            turns: &self.turns,
            events: &self.events,
            origin: self.origin.clone(),
            content_max_chars: self.content_max_chars,
            asked_at: None,
        }
    }

    /// The store: every read and write of the rules goes through it.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The SQLite store, when the store is one: its hooks for tests and tools.
    pub fn sqlite(&self) -> Option<&SqliteStore> {
        self.store.sqlite()
    }

    /// The AI responder in use.
    pub fn responder(&self) -> &Arc<dyn Responder> {
        self.turns.responder()
    }

    /// How long a repeated idempotent post waits for the reply of the turn it repeats:
    /// one whole AI call (`ai_timeout_seconds`) plus the time to store it.
    pub fn reply_wait(&self) -> Duration {
        self.reply_wait
    }

    /// The whole AI turn (`docs/API.md`, Chat) in one blocking call: posts the checked
    /// REST body `{"content", "message_type"?, "metadata"?}` ([`Chat::post`]) and waits for
    /// its reply. A repeated idempotency key answers the first exchange without asking the
    /// AI again (waiting for its reply at most [`Narutalk::reply_wait`]).
    pub fn send_message_fields(
        &self,
        owner: UserId,
        session: SessionId,
        body: &JsonObject,
        idempotency_key: Option<&str>,
    ) -> Result<Exchange, Error> {
        let input = PostInput::from_fields(body, idempotency_key, self.content_max_chars);
        self.send(owner, session, input)
    }

    /// [`Narutalk::send_message_fields`] for a plain text message.
    pub fn send_message(
        &self,
        owner: UserId,
        session: SessionId,
        content: &str,
    ) -> Result<Exchange, Error> {
        self.send(
            owner,
            session,
            PostInput::text(content, self.content_max_chars),
        )
    }

    fn send(
        &self,
        owner: UserId,
        session: SessionId,
        input: Result<PostInput, Error>,
    ) -> Result<Exchange, Error> {
        let posting = self.chat().post(owner, session, input)?;
        let reply = posting.reply.wait()?;
        Ok(Exchange {
            message: posting.message,
            reply,
        })
    }
}
