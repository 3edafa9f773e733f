//! Narutalk's core: every business rule of the Narutalk API (`docs/API.md`), behind a
//! synchronous API that any Rust program can embed with no server at all.
//!
//! [`Narutalk`] is the handle: it owns the store (the storage port of [`store`], on SQLite
//! today), the token keys and the AI responder, and hands out the three areas of the API:
//! [`Narutalk::accounts`] (registration, login, profiles, administration),
//! [`Narutalk::tokens`] (access-token checks, refresh rotation, logout) and
//! [`Narutalk::chat`] (sessions, messages, the storage side of the AI turn). Operations
//! that take a request body take it as a [`fields::JsonObject`] and answer the API's
//! field errors, so a server only translates HTTP.
//!
//! Everything blocks (SQLite, argon2): call it from a thread that may block, such as
//! `tokio::task::spawn_blocking`.
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
pub mod workers;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use accounts::password::PasswordHashing;
use accounts::{Accounts, UserId};
use ai::http::HttpResponder;
use ai::openai::OpenAiResponder;
use ai::{Responder, TemplateResponder};
use chat::{Chat, Exchange, PostOutcome, ReplyWait, SessionId, Turns};
use config::{AiBackend, Config, ConfigError, SECRET_FILE, Secret};
use error::Error;
use fields::JsonObject;
use store::sqlite::SqliteStore;
use store::{OpenError, OpenMode, Store};
use tokens::{TokenKeys, Tokens};

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

/// The embedded Narutalk: store, token keys and AI responder.
pub struct Narutalk {
    store: Arc<dyn Store>,
    keys: TokenKeys,
    responder: Arc<dyn Responder>,
    hashing: PasswordHashing,
    turns: Arc<Turns>,
    content_max_chars: usize,
    history_messages: u32,
    reply_wait: Duration,
}

impl std::fmt::Debug for Narutalk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Narutalk")
            .field("store", &self.store)
            .field("responder", &self.responder.name())
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
    /// `config` names.
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
        Ok(Narutalk {
            store,
            keys,
            responder,
            // The one bound on password hashing: one thread per core, 64 waiting.
            hashing: PasswordHashing::for_this_machine(),
            turns: Arc::default(),
            content_max_chars: config.content_max_chars,
            history_messages: config.ai_history_messages,
            // A repeated post waits at most one whole AI call, plus the time to store it.
            reply_wait: Duration::from_secs(u64::from(config.ai_timeout_seconds) + 5),
        })
    }

    /// Replaces the AI responder (an embedder's own, or a test double).
    pub fn with_responder(mut self, responder: Arc<dyn Responder>) -> Self {
        self.responder = responder;
        self
    }

    /// Registration, login, profiles and administration.
    pub fn accounts(&self) -> Accounts<'_> {
        Accounts {
            store: &*self.store,
            keys: &self.keys,
            hashing: &self.hashing,
        }
    }

    /// Access-token checks, refresh rotation and logout.
    pub fn tokens(&self) -> Tokens<'_> {
        Tokens {
            store: &*self.store,
            keys: &self.keys,
        }
    }

    /// Sessions, messages and the storage side of the AI turn.
    pub fn chat(&self) -> Chat<'_> {
        Chat {
            store: &*self.store,
            turns: &self.turns,
            content_max_chars: self.content_max_chars,
            history_messages: self.history_messages,
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
        &self.responder
    }

    /// How long a repeated idempotent post waits for the reply of the turn it repeats:
    /// one whole AI call (`ai_timeout_seconds`) plus the time to store it.
    pub fn reply_wait(&self) -> Duration {
        self.reply_wait
    }

    /// The whole AI turn (`docs/API.md`, Chat) in one call: stores the user message
    /// (committed before the responder runs), asks the responder, stores its reply or the
    /// system error message. A repeated idempotency key answers the first exchange without
    /// asking the AI again: if that turn is still running in this process, this call waits
    /// for its reply; if it stopped without one, this call produces it. Turns of one
    /// session must not run concurrently; the server orders them itself.
    pub fn send_message_fields(
        &self,
        owner: UserId,
        session: SessionId,
        body: &JsonObject,
        idempotency_key: Option<&str>,
    ) -> Result<Exchange, Error> {
        let chat = self.chat();
        let (message, claim) =
            match chat.post_message_fields(owner, session, body, idempotency_key)? {
                PostOutcome::Stored(message, claim) => (message, claim),
                PostOutcome::Replayed {
                    message,
                    reply: Some(reply),
                } => return Ok(Exchange { message, reply }),
                PostOutcome::Replayed {
                    message,
                    reply: None,
                } => match chat.wait_for_reply(&message, self.reply_wait)? {
                    ReplyWait::Ready(reply) => return Ok(Exchange { message, reply }),
                    ReplyWait::YourTurn(claim) => (message, claim),
                },
            };
        let turn = chat.prepare_reply(&message, claim)?;
        let outcome = ai::run_responder(self.responder.as_ref(), &turn.request, &mut |_| {});
        let reply = chat.store_reply(turn, outcome)?;
        Ok(Exchange { message, reply })
    }

    /// [`Narutalk::send_message_fields`] for a plain text message.
    pub fn send_message(
        &self,
        owner: UserId,
        session: SessionId,
        content: &str,
    ) -> Result<Exchange, Error> {
        let body = serde_json::json!({ "content": content });
        self.send_message_fields(
            owner,
            session,
            body.as_object().unwrap_or(&JsonObject::new()),
            None,
        )
    }
}
