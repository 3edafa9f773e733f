//! The storage port: what the rules ask of storage, and its two backends: [`sqlite`] (one
//! server, the embedded default) and [`postgres`] (several servers on one database).
//!
//! The rules (`accounts`, `tokens`, `chat`, `admin`) hold no SQL and name no database
//! type: they call the traits of this module, one per area: [`AccountStore`],
//! [`TokenStore`], [`ChatStore`], [`AdminStore`], and [`Maintenance`] for the storage
//! itself. A backend is one type that implements them all, which makes it a [`Store`];
//! the [`crate::Narutalk`] handle owns one as an `Arc<dyn Store>`.
//!
//! One trait per area rather than one store with every method: each rule module depends
//! on its own area only (`Accounts` holds a `&dyn AccountStore`, `Chat` a
//! `&dyn ChatStore`), so a test double, or a second backend, can be written and reviewed
//! one area at a time; and each trait stays short enough to read as the contract it is.
//! Object-safe traits rather than a generic handle keep `Narutalk` one type for embedders
//! and the server, whatever the backend.
//!
//! Every method is one business operation, not one table: it runs as one transaction of
//! the backend, and a check that must see the same state as the write (who owns a
//! session, whether a refresh token was used, whether a password hash is still the one
//! verified) runs inside it. What happens before or after stays with the rules: field
//! checks, hashing, the ids and tokens drawn in advance, signing, the words of an error.
//! So a backend on a database server can run each call as one transaction and retry it
//! whole on a serialization failure: a method's inputs are fixed before it runs, and it
//! does nothing outside its transaction. The methods are synchronous and may block.
//!
//! What every backend answers alike:
//!
//! - [`Error::NotFound`] when an addressed user or session does not exist (or, where a
//!   method takes an owner, is another user's), unless the method says it answers `None`.
//! - [`Error::Unavailable`] when the storage is busy, locked, full or unreachable, or a
//!   write could not commit within [`WRITE_DEADLINE`] of when it was asked for; such a
//!   write was not applied and never will be.
//! - [`Error::Internal`] (with its cause) for anything else that fails.
//!
//! **The outbox.** Every write that the outside must hear about (a message stored, a
//! session deleted, a user's tokens revoked or the user deactivated or deleted, a login
//! family ended) records it in the same transaction, as a row of the outbox with the
//! [`Audit`] the rules pass in (the actor, the time, the request id where there is one).
//! The rules publish the matching [`crate::events::Event`] once the method has returned,
//! that is after the commit. A backend keeps outbox rows for its retention
//! (`outbox_retention_days`) and forgets a few older ones in the writes that add rows.
//!
//! **Pending turns.** Storing a user message stores its pending turn in the same
//! transaction; storing its reply marks it answered (how is the backend's: SQLite keeps
//! them on the session row). A turn is answered under a lease (a holder
//! and an expiry written to its row, [`Lease`]): [`ChatStore::claim_turn`] takes the
//! oldest pending turn of a session when its lease is free, expired or the holder's own;
//! [`ChatStore::void_leases`] frees every lease when a process that owns the database alone
//! starts (SQLite). A backend shared by several processes keeps the leases, and a process
//! that dies leaves its turns to be claimed once their leases expire.

pub mod copy;
pub(crate) mod outbox;
pub mod postgres;
pub mod sqlite;

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};

use crate::accounts::devices::Device;
use crate::accounts::{Dashboard, Role, User, UserFilter, UserId};
use crate::admin::{
    CategoryCount, DayCount, ExportedMessage, ExportedSession, OwnedSession, RoleCount,
    SessionQuery, UserActivity,
};
use crate::ai::HistoryTurn;
use crate::chat::{
    Category, ChatSession, Message, MessageId, NewMessage, Page, PageRequest, SessionDetail,
    SessionFilter, SessionId, SessionSummary,
};
use crate::config::Config;
use crate::error::{Error, TokenProblem};
use crate::events::{Actor, Origin};
use crate::tokens::Family;
pub use copy::{CopyError, Dump};
use sqlite::SqliteStore;

/// The bound on a write (`docs/API.md`, Limits and throttling): a write that has not
/// committed this long after it asked for storage answers [`Error::Unavailable`], and is
/// then not applied and never will be. It covers the wait behind the other writes of this
/// process and the wait for another process's lock; it starts after any password hashing
/// (done before the write asks) and never includes an AI call (no write is open while the
/// responder works).
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// Opens the store the settings name (`database`: a SQLite file, with
/// `sqlite_synchronous`, or a PostgreSQL URL, with `database_pool`), created only with
/// [`OpenMode::CreateIfMissing`] (on PostgreSQL: the schema), and applies pending
/// migrations.
pub fn open(config: &Config, mode: OpenMode) -> Result<Arc<dyn Store>, OpenError> {
    if config.is_postgres() {
        let store = postgres::PostgresStore::open_with(
            &config.database.to_string_lossy(),
            config.database_pool,
            mode,
        )?
        .with_outbox_retention(config.outbox_retention_days);
        return Ok(Arc::new(store));
    }
    let store = SqliteStore::open(&config.database, config.sqlite_synchronous, mode)?
        .with_outbox_retention(config.outbox_retention_days);
    Ok(Arc::new(store))
}

/// Refuses a database that a newer build migrated, or whose history differs from this
/// build's migrations (both backends, before any migration runs).
pub(crate) fn check_history(
    applied: &[AppliedMigration],
    embedded: &[refinery::Migration],
) -> Result<(), String> {
    for migration in applied {
        match embedded
            .iter()
            .find(|m| i64::from(m.version()) == migration.version)
        {
            None => {
                return Err(format!(
                    "it was migrated by a newer Narutalk (V{} {} is unknown to this build)",
                    migration.version, migration.name
                ));
            }
            Some(known) if known.checksum().to_string() != migration.checksum => {
                return Err(format!(
                    "its migration V{} {} differs from this build's",
                    migration.version, migration.name
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Whether opening may create a database that does not exist yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the database (and its folder) when missing: the server and `narutalk migrate`.
    CreateIfMissing,
    /// Fail with [`OpenError::Missing`] when the database does not exist: every other tool,
    /// so that a mistyped path never silently yields an empty database.
    MustExist,
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The database does not exist and the mode forbids creating it.
    #[error("database {0} does not exist (run `narutalk migrate` to create it)")]
    Missing(PathBuf),
    /// The database (or its folder) could not be created or opened.
    #[error("cannot open database {path}: {message}")]
    Open {
        /// The database.
        path: PathBuf,
        /// What the database or the file system said.
        message: String,
    },
    /// A migration failed or the database's history diverges from this build's migrations.
    #[error("cannot migrate database {path}: {message}")]
    Migration {
        /// The database.
        path: PathBuf,
        /// What the migration runner said.
        message: String,
    },
}

/// What a write records in the outbox beside its change: who made it, when, and the
/// request that asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    /// Who made the change.
    pub actor: Actor,
    /// When.
    pub at: DateTime<Utc>,
    /// The id of the request that asked for it, if any.
    pub request_id: Option<Arc<str>>,
}

impl Audit {
    /// A change made now by `actor`, for the request of `origin` (whose own actor, if it
    /// fixes one, wins).
    pub fn now(origin: &Origin, actor: Actor) -> Audit {
        Audit {
            actor: origin.actor_for(actor),
            at: crate::time::now(),
            request_id: origin.request_id.clone(),
        }
    }
}

/// A lease on a pending turn: who answers it, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The holder: the answering process's random id.
    pub holder: Arc<str>,
    /// The time the claim is made.
    pub now: DateTime<Utc>,
    /// When the lease expires (another holder may claim the turn after it).
    pub until: DateTime<Utc>,
}

/// A session's replay bounds ([`ChatStore::replay_bounds`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayBounds {
    /// The sequence number of the message the replay starts after; `None` when none was
    /// named or it is not one of the session's messages.
    pub after_seq: Option<i64>,
    /// The sequence number of the session's last message (0 for none).
    pub last_seq: i64,
}

/// A pending turn, claimed: the user message to answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimedTurn {
    /// The user message.
    pub message: Message,
}

/// What [`ChatStore::store_reply`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredReply {
    /// The reply as stored (or the one stored before, by another process).
    pub reply: Message,
    /// True when this call stored it (false: it was stored already).
    pub stored_now: bool,
    /// The session's next pending turn, claimed in the same transaction when a lease was
    /// asked for and the turn was free.
    pub next: Option<ClaimedTurn>,
}

/// A migration recorded as applied in the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedMigration {
    /// The `V<version>` number.
    pub version: i64,
    /// The name after `__` in the file name.
    pub name: String,
    /// The migration runner's checksum of the migration's name, version and SQL, as
    /// recorded.
    pub checksum: String,
}

/// Users, their passwords and device tokens (the rules in [`crate::accounts`]).
///
/// A method that addresses a user by id answers [`Error::NotFound`] when there is none,
/// unless it answers an `Option`.
pub trait AccountStore: Send + Sync {
    /// The user with this id.
    fn user(&self, id: UserId) -> Result<Option<User>, Error>;

    /// The user with this email (lower-cased, as stored) and their password hash.
    fn credentials_by_email(&self, email: &str) -> Result<Option<Credentials>, Error>;

    /// The user with this id and their password hash.
    fn credentials_by_id(&self, id: UserId) -> Result<Option<Credentials>, Error>;

    /// Whether `username` and `email` belong to a user other than `except`, in one read.
    fn names_taken(
        &self,
        username: Option<&str>,
        email: Option<&str>,
        except: Option<UserId>,
    ) -> Result<NamesTaken, Error>;

    /// Stores a new user, active, with no login yet and no revocation time; answers the
    /// stored user, or [`Taken`] when the username or email is another user's (two
    /// registrations at once: the check before hashing saw neither).
    fn insert_user(&self, account: &NewAccount) -> Result<Result<User, Taken>, Error>;

    /// Whether `device` is a device token of the account whose email is `email`, last used
    /// after `valid_after`.
    fn device_of_email(
        &self,
        device: Device,
        email: &str,
        valid_after: DateTime<Utc>,
    ) -> Result<bool, Error>;

    /// The write of a login, after its password was verified, in one transaction: it
    /// answers `None` (and changes nothing) when the user is gone or inactive, or their
    /// password hash is no longer the one verified (a reset or a change landed while the
    /// password was hashed). Otherwise it sets the last login to `now`; stores the new
    /// family's refresh token, issued at [`crate::tokens::issued_at`] of now and the user's
    /// revocation time, with a few refresh tokens that expired
    /// ([`TokenStore::purge_expired`]'s rule, at most 100); renews the honoured device
    /// token when it is a valid token of this user (its last use moves to now), or else
    /// stores `new_device`, keeps the user's
    /// [`crate::accounts::devices::DEVICE_TOKENS_PER_ACCOUNT`] most recently used device
    /// tokens and deletes a few expired ones of anyone.
    fn record_login(&self, login: &LoginRecord<'_>) -> Result<Option<RecordedLogin>, Error>;

    /// Changes the fields of a profile that are given (two concurrent partial updates of
    /// different fields both take effect); [`Taken`] when the new username or email is
    /// another user's.
    fn update_profile(
        &self,
        id: UserId,
        change: &ProfileChange,
    ) -> Result<Result<User, Taken>, Error>;

    /// Stores a new password hash and revokes every token of the user
    /// ([`AccountStore::revoke_all`]), in one transaction. With `replacing`, only while the
    /// stored hash is still that one: [`Error::NotFound`] otherwise.
    fn replace_password(
        &self,
        id: UserId,
        password_hash: &str,
        replacing: Option<&str>,
        audit: &Audit,
    ) -> Result<(), Error>;

    /// The user, their sessions updated at or after `recent_since`, and the messages in
    /// all their sessions, in one snapshot.
    fn dashboard(&self, id: UserId, recent_since: DateTime<Utc>) -> Result<Dashboard, Error>;

    /// The users matching `filter` (its search is literal text, case-insensitive for
    /// ASCII, in the username or the email), by id.
    fn users(&self, filter: &UserFilter) -> Result<Vec<User>, Error>;

    /// Changes one thing about a user and answers the user as changed; deactivating also
    /// revokes every token ([`AccountStore::revoke_all`]), in the same transaction, and
    /// records it in the outbox.
    fn change_user(&self, id: UserId, change: UserChange, audit: &Audit) -> Result<User, Error>;

    /// Refuses every token of the user issued until now: the revocation time becomes
    /// `now` in whole seconds, or one second past the previous one when that is not
    /// before now (tokens issued since carry the previous time + 1, and are refused too);
    /// the user's live refresh tokens are marked revoked and their device tokens deleted.
    /// Recorded in the outbox. (`audit.at` is the time.)
    fn revoke_all(&self, id: UserId, audit: &Audit) -> Result<(), Error>;

    /// Deletes a user with their sessions, messages and tokens; recorded in the outbox.
    fn delete_user(&self, id: UserId, audit: &Audit) -> Result<(), Error>;
}

/// Refresh tokens and what makes tokens refused (the rules in [`crate::tokens`]). Every
/// refresh token is stored; access tokens are not, and are judged by their user's state
/// and their login family's.
pub trait TokenStore: Send + Sync {
    /// The user of an access token and whether its login family is revoked (false
    /// without a family), in one snapshot; `None` when there is no such user.
    fn token_holder(
        &self,
        user_id: UserId,
        family: Option<Family>,
    ) -> Result<Option<TokenHolder>, Error>;

    /// The state of each of `users` and which of `families` are revoked, in one snapshot
    /// (one lookup per user and per family): what holders of many long-lived connections
    /// ask to learn which of their tokens were revoked since.
    fn revocation_facts(
        &self,
        users: &[UserId],
        families: &[Family],
    ) -> Result<RevocationFacts, Error>;

    /// Uses a refresh token once, in one transaction that commits whatever it answers.
    /// The token is refused as [`TokenProblem::Invalid`] when it is not stored for its
    /// user, or its user is gone; as [`TokenProblem::Blacklisted`] when it was revoked,
    /// its user is inactive or revoked every token since it was issued, and when it was
    /// used already: that is reuse, and revokes every refresh token of its family first.
    /// Otherwise it is marked used and `next_jti` is stored in its family, issued at
    /// [`crate::tokens::issued_at`] of now and the user's revocation time. A family ended
    /// by reuse is recorded in the outbox with `audit`.
    fn rotate_refresh(
        &self,
        presented: &PresentedRefresh<'_>,
        next_jti: &str,
        lifetimes: TokenLifetimes,
        now_seconds: i64,
        audit: &Audit,
    ) -> Result<RefreshUse, Error>;

    /// Revokes the login family of a refresh token (logout), in one transaction that
    /// commits whatever it answers: the token is judged as by
    /// [`TokenStore::rotate_refresh`] (a used one is reuse, which revokes the family and
    /// is refused), and when it may be used, every refresh token of its family is revoked.
    /// The family ended (either way) is recorded in the outbox with `audit`.
    fn end_family(
        &self,
        presented: &PresentedRefresh<'_>,
        now_seconds: i64,
        audit: &Audit,
    ) -> Result<FamilyEnd, Error>;

    /// Deletes at most `limit` refresh tokens that expired before `now_seconds` and whose
    /// access token (issued with them) expired too: the row is what tells that its family
    /// was revoked, so it stays while that access token may be presented. Answers how
    /// many.
    fn purge_expired(
        &self,
        now_seconds: i64,
        lifetimes: TokenLifetimes,
        limit: u32,
    ) -> Result<usize, Error>;
}

/// The user of an access token, and whether its family is revoked.
#[derive(Clone, Debug)]
pub struct TokenHolder {
    /// The user.
    pub user: User,
    /// True when the token's login family is revoked.
    pub family_revoked: bool,
}

/// What refuses the tokens of a user: whether it is active, and its revocation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserStamp {
    /// An inactive user's tokens are refused.
    pub is_active: bool,
    /// Tokens issued at or before this second (Unix time) are refused.
    pub tokens_revoked_at: i64,
}

/// The answer of [`TokenStore::revocation_facts`].
#[derive(Clone, Debug, Default)]
pub struct RevocationFacts {
    /// Every user asked about, with its stamp; `None` for a user that does not exist.
    pub users: HashMap<UserId, Option<UserStamp>>,
    /// The families asked about that are revoked.
    pub revoked_families: HashSet<Family>,
}

/// A refresh token presented with a valid signature: who it claims to be.
#[derive(Clone, Copy, Debug)]
pub struct PresentedRefresh<'a> {
    /// Its `jti`.
    pub jti: &'a str,
    /// Its `user_id`.
    pub user_id: UserId,
    /// Its `iat`, in whole seconds since the epoch.
    pub issued_at: i64,
}

/// What [`TokenStore::rotate_refresh`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshUse {
    /// The token was used and the next one stored.
    Rotated {
        /// The next token's `iat`.
        issued_at: i64,
        /// The login family, as stored (32 hex digits; older rows may hold other text).
        family: String,
    },
    /// The token was refused (after revoking its family, when it was reuse).
    Refused {
        /// Why.
        problem: TokenProblem,
        /// The family (as stored) that the refusal ended: the token was reused.
        ended: Option<String>,
    },
}

/// What [`TokenStore::end_family`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyEnd {
    /// Why the token was refused, if it was (after ending its family, for reuse).
    pub refused: Option<TokenProblem>,
    /// The family (as stored) that this call ended, if it ended one.
    pub ended: Option<String>,
}

/// A stored user and their password hash.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The user.
    pub user: User,
    /// Their argon2id PHC string.
    pub password_hash: String,
}

/// Which of a username and an email belong to another user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamesTaken {
    /// The username is another user's.
    pub username: bool,
    /// The email is another user's.
    pub email: bool,
}

/// The unique name a write found to be another user's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// The email.
    Email,
    /// The username.
    Username,
}

/// A user to store.
#[derive(Clone, Debug)]
pub struct NewAccount {
    /// The checked username.
    pub username: String,
    /// The checked, lower-cased email.
    pub email: String,
    /// The argon2id PHC string of the password.
    pub password_hash: String,
    /// The role.
    pub role: Role,
    /// The department, may be empty.
    pub department: String,
    /// Whether the account starts verified.
    pub is_verified: bool,
    /// When the account is made.
    pub date_joined: DateTime<Utc>,
}

/// The fields of a profile to change; `None` keeps the stored value.
#[derive(Clone, Debug, Default)]
pub struct ProfileChange {
    /// A new username.
    pub username: Option<String>,
    /// A new email, lower-cased.
    pub email: Option<String>,
    /// A new department.
    pub department: Option<String>,
}

/// One thing an administrator changes about a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserChange {
    /// Its role.
    Role(Role),
    /// Whether it is verified.
    Verified(bool),
    /// Whether it is active; deactivating revokes every token.
    Active(bool),
}

/// What [`AccountStore::record_login`] stores.
#[derive(Clone, Debug)]
pub struct LoginRecord<'a> {
    /// The user whose password was verified.
    pub user_id: UserId,
    /// The stored hash it was verified against.
    pub verified_hash: &'a str,
    /// When the login happens.
    pub now: DateTime<Utc>,
    /// The first refresh token of the login's new family.
    pub refresh: &'a NewRefresh,
    /// The lifetimes of the tokens, for the new token's expiry and the purge.
    pub lifetimes: TokenLifetimes,
    /// The presented device token the caller honours, to renew.
    pub honoured_device: Option<Device>,
    /// The device token to store when the honoured one is not renewed.
    pub new_device: Device,
    /// Device tokens last used at or before this time have expired.
    pub devices_valid_after: DateTime<Utc>,
}

/// What [`AccountStore::record_login`] did.
#[derive(Clone, Debug)]
pub struct RecordedLogin {
    /// The user as it is now (its last login is the login's time).
    pub user: User,
    /// The `iat` of the new tokens, in whole seconds since the epoch.
    pub issued_at: i64,
    /// True when the honoured device token was renewed; false when the new one was stored.
    pub device_renewed: bool,
}

/// A refresh token to store: its `jti` and its login family (32 hex digits each). Its
/// issue time is decided in the transaction that stores it.
#[derive(Clone, Debug)]
pub struct NewRefresh {
    /// The token's id.
    pub jti: String,
    /// Its login family.
    pub family: String,
}

/// How long tokens live, in seconds: a refresh token's row expires with the refresh
/// lifetime, and is purged only once an access token issued with it has expired too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLifetimes {
    /// An access token's lifetime.
    pub access_seconds: i64,
    /// A refresh token's lifetime.
    pub refresh_seconds: i64,
}

/// Chat sessions and their messages (the rules in [`crate::chat`]).
///
/// A method that takes an `owner` treats another user's session exactly like a missing
/// one: [`Error::NotFound`]. Every message gets the next sequence number of its session
/// when it is stored, taken from the session's own row in the inserting transaction (its
/// last sequence number and message count move with every insert), and a session's
/// `updated_at` only moves forward ([`crate::chat::next_updated_at`]). A write takes
/// `asked_at`, when its caller asked for storage: its bound, [`WRITE_DEADLINE`], runs
/// from then (a server that queues the writes of a session in an order of its own counts
/// that wait too).
pub trait ChatStore: Send + Sync {
    /// Stores a new session of `owner`, with no message; [`Error::NotFound`] when the
    /// owner does not exist (any more).
    fn create_session(
        &self,
        owner: UserId,
        session: &NewSession,
        asked_at: Instant,
    ) -> Result<ChatSession, Error>;

    /// The session with every message, in storage order, in one snapshot.
    fn session_detail(&self, owner: UserId, id: SessionId) -> Result<SessionDetail, Error>;

    /// For each `(owner, session)`, the session's last sequence number when it exists and
    /// is that owner's (`None` otherwise), in one snapshot.
    fn last_seqs(&self, sessions: &[(UserId, SessionId)]) -> Result<Vec<Option<i64>>, Error>;

    /// One page of the owner's sessions that match `filter`, most recently updated first
    /// (ties: newest creation first), each with its last message: the count and the page
    /// in one snapshot, the page picked by [`PageRequest::resolve`].
    fn session_page(
        &self,
        owner: UserId,
        filter: SessionFilter,
        page: PageRequest,
    ) -> Result<Page<SessionSummary>, Error>;

    /// Changes the fields of `change` that are given, and moves `updated_at` forward to
    /// `now` even when none is; answers the session with every message.
    fn update_session(
        &self,
        owner: UserId,
        id: SessionId,
        change: &SessionChange,
        now: DateTime<Utc>,
        asked_at: Instant,
    ) -> Result<SessionDetail, Error>;

    /// Deletes the session with its messages, idempotency keys and pending turns; recorded
    /// in the outbox.
    fn delete_session(
        &self,
        owner: UserId,
        id: SessionId,
        audit: &Audit,
        asked_at: Instant,
    ) -> Result<(), Error>;

    /// One page of the session's messages in storage order, only those stored after
    /// `after` when it is given: the count and the page in one snapshot, the page picked
    /// by [`PageRequest::resolve`]. `None` when `after` is not a message of this session.
    fn message_page(
        &self,
        owner: UserId,
        id: SessionId,
        after: Option<MessageId>,
        page: PageRequest,
    ) -> Result<Option<Page<Message>>, Error>;

    /// Where a replay of the session can start, in one snapshot: the session's last
    /// sequence number, and the sequence number of `after` when it is given and is one of
    /// the session's messages.
    fn replay_bounds(
        &self,
        owner: UserId,
        id: SessionId,
        after: Option<MessageId>,
    ) -> Result<ReplayBounds, Error>;

    /// Up to `limit` messages of the session whose sequence number is above `after_seq`,
    /// in storage order.
    fn messages_after_seq(
        &self,
        owner: UserId,
        id: SessionId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Message>, Error>;

    /// Stores a user message, in one transaction: the owner's session (or
    /// [`Error::NotFound`]); with an idempotency key that this owner used on this session
    /// since the key's `since`, nothing is stored and the message stored the first time
    /// comes back with its reply, if any ([`Posted::Replayed`]); otherwise the message is
    /// inserted with the session's next sequence number, the session's count, last
    /// sequence number and `updated_at` move, the key (if any) is remembered for the
    /// message, a few keys older than `since` being forgotten, its pending turn is stored
    /// (claimed with the post's lease when it is the session's oldest pending turn) and the
    /// message is recorded in the outbox.
    fn post_message(&self, post: &UserPost<'_>, asked_at: Instant) -> Result<Posted, Error>;

    /// The reply stored for a user message (the first, by sequence number), if any.
    fn reply_for(&self, message: MessageId) -> Result<Option<Message>, Error>;

    /// What a responder needs to answer the message `before_seq` of a session, in one
    /// snapshot: the session's category, and its last `history` messages stored before it
    /// that are not system messages, oldest first. [`Error::NotFound`] when the session is
    /// gone.
    fn reply_context(
        &self,
        session: SessionId,
        before_seq: i64,
        history: u32,
    ) -> Result<ReplyContext, Error>;

    /// Stores a reply (its `reply_to` is the user message it answers, whose sequence number
    /// is `answers_seq`) as the session's next message, marks the pending turn it answers
    /// answered and records the reply in the outbox, in one transaction; when that turn is
    /// answered already (by another process), the reply stored then is answered and
    /// nothing is stored. With `next`, the session's next pending turn is claimed in the
    /// same transaction ([`ChatStore::claim_turn`]'s rule). [`Error::NotFound`] when the
    /// session is gone.
    fn store_reply(
        &self,
        session: SessionId,
        answers_seq: i64,
        reply: &NewMessage,
        audit: &Audit,
        next: Option<&Lease>,
        asked_at: Instant,
    ) -> Result<StoredReply, Error>;

    /// Claims the session's oldest pending turn (by sequence number) when its lease is
    /// free, expired or already `lease`'s holder's, writing `lease` to it; `None` when the
    /// session has no pending turn or its oldest is another holder's.
    fn claim_turn(&self, session: SessionId, lease: &Lease) -> Result<Option<ClaimedTurn>, Error>;

    /// Frees every lease on a pending turn (a process that owns the database alone, at
    /// its start: the leases are its dead predecessor's). Answers how many it freed.
    fn void_leases(&self) -> Result<usize, Error>;

    /// The sessions with pending turns that a claim at `now` may take (no lease, or an
    /// expired one: a turn another live process is answering is not listed), the one
    /// whose oldest pending turn is oldest first.
    fn pending_sessions(&self, now: DateTime<Utc>) -> Result<Vec<SessionId>, Error>;
}

/// A session to store.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// Its new id.
    pub id: SessionId,
    /// Its checked title.
    pub title: String,
    /// Its category.
    pub category: Category,
    /// When it is made (also its `updated_at`).
    pub created_at: DateTime<Utc>,
}

/// The fields of a session to change; `None` keeps the stored value.
#[derive(Clone, Debug, Default)]
pub struct SessionChange {
    /// A new checked title.
    pub title: Option<String>,
    /// A new category.
    pub category: Option<Category>,
    /// Whether it is active.
    pub is_active: Option<bool>,
}

/// A user message to store ([`ChatStore::post_message`]).
#[derive(Clone, Debug)]
pub struct UserPost<'a> {
    /// The session's owner, who sends it.
    pub owner: UserId,
    /// The session.
    pub session: SessionId,
    /// The message (its id new, its sender the user).
    pub message: &'a NewMessage,
    /// The `Idempotency-Key` it was posted with, if any.
    pub idempotency_key: Option<IdempotencyKey<'a>>,
    /// When it is stored.
    pub now: DateTime<Utc>,
    /// The outbox's record of it.
    pub audit: &'a Audit,
    /// Claims the message's pending turn with this lease when no earlier turn of the
    /// session is pending.
    pub lease: Option<&'a Lease>,
}

/// An `Idempotency-Key` and the time before which a use of it is forgotten.
#[derive(Clone, Copy, Debug)]
pub struct IdempotencyKey<'a> {
    /// The checked key.
    pub key: &'a str,
    /// A use of the key before this time no longer counts (and may be deleted).
    pub since: DateTime<Utc>,
}

/// What [`ChatStore::post_message`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Posted {
    /// The message was stored.
    Stored {
        /// The message.
        message: Message,
        /// Its pending turn was claimed with the post's lease.
        claimed: bool,
    },
    /// The key was used already: nothing was stored.
    Replayed {
        /// The message stored the first time.
        message: Message,
        /// Its reply, if one is stored yet.
        reply: Option<Message>,
    },
}

/// What [`ChatStore::reply_context`] reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyContext {
    /// The session's category.
    pub category: Category,
    /// The messages before the one answered, oldest first, without system messages.
    pub history: Vec<HistoryTurn>,
}

/// Administration across users (the rules in [`crate::admin`]): every owner's sessions,
/// export, import, statistics and Narutalk's own check of the stored counters.
pub trait AdminStore: Send + Sync {
    /// The sessions matching `query`, whoever owns them, with their owners, most recently
    /// updated first (ties: newest creation first), in one snapshot.
    fn owned_sessions(&self, query: &SessionQuery) -> Result<Vec<OwnedSession>, Error>;

    /// One session, whoever owns it, in its export form (its owner's email, every
    /// message).
    fn exported_session(&self, id: SessionId) -> Result<ExportedSession, Error>;

    /// Hands every session matching `query` to `each`, oldest first (by creation), in its
    /// export form, with how many there are, all from one snapshot; stops when `each`
    /// breaks.
    fn export_sessions(
        &self,
        query: &SessionQuery,
        each: &mut dyn FnMut(u64, ExportedSession) -> ControlFlow<()>,
    ) -> Result<(), Error>;

    /// Deletes a session, whoever owns it, with its messages, idempotency keys and pending
    /// turns, recorded in the outbox; answers its owner.
    fn delete_any_session(&self, id: SessionId, audit: &Audit) -> Result<UserId, Error>;

    /// How many sessions a user has, and the messages in them.
    fn user_activity(&self, id: UserId) -> Result<UserActivity, Error>;

    /// The owner of each session of an import file (`None` for an email that is no
    /// user's), unless a session conflicts with what is stored ([`ImportProblem`]): the
    /// first conflict, in the file's order. One snapshot.
    fn import_owners(
        &self,
        sessions: &[&ExportedSession],
    ) -> Result<Result<Vec<Option<UserId>>, ImportConflict>, Error>;

    /// Creates the owners an import lacks, in one transaction, each with `password_hash`,
    /// role `user`, not verified, active, department empty, joined at `joined`; the
    /// username is the first of the owner's base, base + `2`, base + `3`, ... that no user
    /// has. An email that became a user's meanwhile is that user's, created by nobody.
    /// Answers every owner, in order.
    fn create_import_owners(
        &self,
        owners: &[ImportOwner],
        password_hash: &str,
        joined: DateTime<Utc>,
    ) -> Result<Vec<ImportedOwner>, Error>;

    /// Writes one batch of an import in one transaction, after checking every slice
    /// against what is stored in that transaction ([`AdminStore::import_owners`]'s
    /// checks, the owners known): the first conflict writes nothing. A slice's session is
    /// created (with its exported fields) when it does not exist; its messages that are
    /// not stored already (by id) are appended in order, keeping their ids, timestamps and
    /// reply links, as the session's next messages; the session's `updated_at` becomes the
    /// later of its own and the record's.
    fn import_batch(
        &self,
        slices: &[ImportSlice<'_>],
    ) -> Result<Result<Vec<SliceOutcome>, ImportConflict>, Error>;

    /// Users by role (every role, in the API's order), sessions and messages by category
    /// (every category), and messages stored on each UTC day from `first` to `last` (both
    /// included, zeros included), in one snapshot.
    fn stats(&self, first: NaiveDate, last: NaiveDate) -> Result<StatsCounts, Error>;

    /// The sessions whose message count or last sequence number disagrees with their
    /// messages, by id.
    fn counter_problems(&self) -> Result<Vec<CounterProblem>, Error>;
}

/// A session of an import file that conflicts with what is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportConflict {
    /// Which session (the index in what was asked about).
    pub index: usize,
    /// What conflicts.
    pub problem: ImportProblem,
}

/// Why a session cannot be imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportProblem {
    /// Its owner, found before, is no user any more.
    OwnerGone,
    /// The session exists and belongs to another user.
    SessionOfAnotherUser {
        /// The user it belongs to.
        owner: UserId,
    },
    /// A message id of the session is a message of another session.
    MessageInAnotherSession {
        /// The message.
        message: MessageId,
        /// The other session's id, as stored.
        session: String,
    },
    /// Messages would be added to the session while posted messages of it still wait
    /// for their replies.
    TurnsPending {
        /// How many wait.
        count: u64,
    },
}

/// An owner an import creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportOwner {
    /// The email, lower-cased.
    pub email: String,
    /// The username it gets, or with the first free numeric suffix from 2.
    pub username_base: String,
}

/// An owner of an import, after [`AdminStore::create_import_owners`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedOwner {
    /// The email.
    pub email: String,
    /// The user's id.
    pub id: UserId,
    /// The user when this call created it.
    pub created: Option<User>,
}

/// Part of one session's messages, imported by [`AdminStore::import_batch`].
#[derive(Clone, Copy, Debug)]
pub struct ImportSlice<'a> {
    /// The owner the session is imported for.
    pub owner: UserId,
    /// The session.
    pub record: &'a ExportedSession,
    /// The slice of its messages.
    pub messages: &'a [ExportedMessage],
}

/// What importing one slice of a session's messages did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SliceOutcome {
    /// The session was created by this slice.
    pub created: bool,
    /// Messages inserted.
    pub added: u64,
    /// Messages skipped because a message with their id is in the session already.
    pub present: u64,
}

/// The counts of [`AdminStore::stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsCounts {
    /// One row per role, in the API's order, zeros included.
    pub by_role: Vec<RoleCount>,
    /// One row per category, in the API's order, zeros included.
    pub by_category: Vec<CategoryCount>,
    /// One row per day, oldest first, zeros included.
    pub per_day: Vec<DayCount>,
}

/// A session whose counters disagree with its messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterProblem {
    /// The session's id, as stored.
    pub session: String,
    /// Its stored message count.
    pub message_count: i64,
    /// Its stored last sequence number.
    pub last_seq: i64,
    /// Its messages, counted.
    pub counted: i64,
    /// The highest sequence number among them (0 for none).
    pub max_seq: i64,
}

/// Everything the rules ask of storage: one backend implements every area, which makes it
/// a store. The [`crate::Narutalk`] handle owns one as an `Arc<dyn Store>`.
pub trait Store:
    AccountStore
    + TokenStore
    + ChatStore
    + AdminStore
    + Maintenance
    + Feed
    + Throttle
    + Any
    + fmt::Debug
{
}

impl<T> Store for T where
    T: AccountStore
        + TokenStore
        + ChatStore
        + AdminStore
        + Maintenance
        + Feed
        + Throttle
        + Any
        + fmt::Debug
{
}

/// A token bucket's rule: it holds `capacity` tokens and gets one back every `refill`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketRule {
    capacity: u32,
    refill: Duration,
}

impl BucketRule {
    /// A bucket of `capacity` tokens, one back every `refill`; `None` when either is zero
    /// (a bucket that never refuses is no bucket).
    pub fn new(capacity: u32, refill: Duration) -> Option<BucketRule> {
        (capacity > 0 && !refill.is_zero()).then_some(BucketRule { capacity, refill })
    }

    /// At most `n` a minute: a bucket of `n` that gets one token back every `60 / n`
    /// seconds (governor's `Quota::per_minute`); `None` for 0.
    pub fn per_minute(n: u32) -> Option<BucketRule> {
        BucketRule::new(n, Duration::from_secs(60).checked_div(n)?)
    }

    /// How many tokens the bucket holds.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// How often one token comes back.
    pub fn refill(&self) -> Duration {
        self.refill
    }

    /// The time a whole empty bucket takes to be full again.
    pub fn whole(&self) -> Duration {
        self.refill.saturating_mul(self.capacity)
    }
}

/// Token buckets that every process of a shared storage counts together (contract
/// section 10: a client spreading requests over several servers gets the limits of one).
/// A bucket is named by its throttle (`bucket`: `login_ip`, `messages`, ...) and by whom
/// it counts (`key`: an IP, a user id, a digest; never an email in clear), and takes its
/// [`BucketRule`] from the caller. A bucket nobody touched is full.
///
/// Storage that one process owns answers [`Error::Internal`] (that process counts in its
/// own memory, faster): a caller asks only when [`Feed::shared`].
pub trait Throttle: Send + Sync {
    /// Takes one token of `key`'s bucket at `now`: `None` when taken, or the time until
    /// one is back when none is left (nothing is taken then).
    fn take_token(
        &self,
        bucket: &str,
        key: &str,
        rule: BucketRule,
        now: DateTime<Utc>,
    ) -> Result<Option<Duration>, Error>;

    /// Gives back one token taken from `key`'s bucket (an attempt that is not to count);
    /// a bucket never holds more than its capacity.
    fn give_token_back(&self, bucket: &str, key: &str, rule: BucketRule) -> Result<(), Error>;
}

/// The changes other processes make to a storage several processes share (PostgreSQL
/// behind several servers): what this process must hear of that its own bus never
/// publishes.
pub trait Feed: Send + Sync {
    /// Whether other processes may write to this storage at the same time: then the leases
    /// a start finds may be alive, and turns left by a process that died are taken over
    /// once their leases expire, rather than at the next start. False for SQLite, whose
    /// file one server owns.
    fn shared(&self) -> bool;

    /// Starts following the changes other processes record (this handle's own are
    /// published by the rules): `sink` hears each, on a thread of the backend's, and must
    /// only hand it on. Following stops when the answered guard is dropped. `None` when
    /// the storage is not shared.
    fn follow(&self, sink: Box<dyn Fn(Notice) + Send + Sync>) -> Option<FeedGuard>;
}

/// A change another process recorded, as [`Feed::follow`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// A message was stored in a session.
    MessageStored {
        /// The session.
        session: SessionId,
        /// Its sequence number.
        seq: i64,
        /// Its id.
        id: MessageId,
        /// Whether a user wrote it (otherwise it is a reply: the AI's or a system
        /// message).
        from_user: bool,
    },
    /// A session was deleted.
    SessionDeleted {
        /// The session.
        session: SessionId,
        /// Its owner.
        owner: UserId,
    },
    /// Every token of a user was revoked.
    UserRevoked {
        /// The user.
        user: UserId,
        /// Why.
        cause: crate::events::Revocation,
    },
    /// A login family ended.
    LoginEnded {
        /// The family's user.
        user: UserId,
        /// The family.
        family: Family,
    },
    /// Changes may have been missed (the feed's connection was lost and is back, or the
    /// periodic look that catches a feed that died silently): a follower re-reads what it
    /// keeps track of.
    MayHaveMissed,
}

/// Keeps a [`Feed::follow`] going; dropping it stops the following (and waits for its
/// thread).
pub struct FeedGuard {
    stop: Box<dyn FnOnce() + Send>,
}

impl FeedGuard {
    /// A guard that runs `stop` when dropped.
    pub fn new(stop: impl FnOnce() + Send + 'static) -> FeedGuard {
        FeedGuard {
            stop: Box::new(stop),
        }
    }
}

impl Drop for FeedGuard {
    fn drop(&mut self) {
        let stop = std::mem::replace(&mut self.stop, Box::new(|| {}));
        stop();
    }
}

impl fmt::Debug for FeedGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FeedGuard")
    }
}

impl dyn Store {
    /// The SQLite store, when this store is one: its hooks for tests and tools
    /// ([`SqliteStore::limit_writer_pages`], its file).
    pub fn sqlite(&self) -> Option<&SqliteStore> {
        let any: &dyn Any = self;
        any.downcast_ref()
    }
}

/// What the server's health and the administrators' tool ask about the storage itself,
/// rather than about its rows.
pub trait Maintenance: Send + Sync {
    /// A trivial read: `Ok` when the storage answers.
    fn ping(&self) -> Result<(), Error>;

    /// Whether writes are failing for a storage cause: true from a write that failed
    /// because the storage was locked or busy past [`WRITE_DEADLINE`], full, failing with
    /// an I/O error or read-only, until a later write that changed something commits. A
    /// write that only waited too long behind this handle's other writes does not count.
    /// Another handle (the CLI in another process) keeps its own.
    fn writes_failing(&self) -> bool;

    /// The small write that checks whether writes work again (the server's health runs it
    /// while [`Maintenance::writes_failing`]): it takes the write lock and needs room for
    /// new pages as a stored message does, is committed and synced like any write, and
    /// leaves nothing behind that anyone reads. Its success ends
    /// [`Maintenance::writes_failing`]; its failure is the same [`Error::Unavailable`] as
    /// any write's.
    fn probe_writes(&self) -> Result<(), Error>;

    /// How many migrations opening this handle applied: 0 when the schema was already
    /// current.
    fn migrated_at_open(&self) -> usize;

    /// The migrations recorded as applied, oldest first.
    fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, Error>;

    /// Where the database is, its size, its applied migrations and the rows of every
    /// table, read in one snapshot.
    fn status(&self) -> Result<Status, Error>;

    /// The database engine's own checks of its files and of the references between rows,
    /// in one snapshot. Reads everything, so it takes time on a large database; writers
    /// are never blocked.
    fn integrity_problems(&self) -> Result<IntegrityProblems, Error>;

    /// Writes a consistent copy of the database to `target` while others keep writing,
    /// checked before it is moved into place, so that a failed or killed backup never
    /// leaves a half file there. Without `overwrite` an existing target is refused; the
    /// database itself never is a valid target ([`Maintenance::is_own_file`]). Missing
    /// folders on the way to `target` are created readable by their owner only.
    fn backup_to(&self, target: &Path, overwrite: bool) -> Result<Backup, BackupError>;

    /// True when `path` names one of the database's own files, also through another
    /// spelling of the same path: a file no tool may write over.
    fn is_own_file(&self, path: &Path) -> bool;

    /// Every row of every Narutalk table and the id counters, read in one snapshot, for
    /// [`copy::copy`] (`narutalk db copy`). Leases of pending turns are left out.
    fn export_all(&self) -> Result<Dump, Error>;

    /// Writes `dump` into this database in one transaction, keeping every id, and moves
    /// the id counters at least to the dump's, so that no id is given out again. Refuses,
    /// before writing anything, a database where a Narutalk table holds a row
    /// ([`CopyError::TargetNotEmpty`]) and a row this backend cannot store
    /// ([`CopyError::Unstorable`]); checks every table's count before committing
    /// ([`CopyError::CountsDiffer`]). Answers the rows written, per table. Not bounded by
    /// [`WRITE_DEADLINE`]: a copy is as long as the database.
    fn import_all(&self, dump: &Dump) -> Result<Vec<TableRows>, CopyError>;
}

/// What `narutalk db status` shows: the database, its size, its migrations and its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The database file, or the PostgreSQL URL without its password.
    pub path: PathBuf,
    /// Size of the main file (of the PostgreSQL database) in bytes.
    pub size_bytes: u64,
    /// Size of SQLite's write-ahead log in bytes; 0 when there is none (and on
    /// PostgreSQL, whose log belongs to the whole server).
    pub wal_bytes: u64,
    /// The database engine: `sqlite` or `postgresql`.
    pub engine: &'static str,
    /// The version of the SQLite library in use, or of the PostgreSQL server.
    pub engine_version: String,
    /// The migrations recorded as applied, oldest first.
    pub migrations: Vec<AppliedMigration>,
    /// Every table with its row count, by name.
    pub tables: Vec<TableRows>,
}

/// One table and how many rows it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRows {
    /// The table's name.
    pub table: String,
    /// Its rows.
    pub rows: u64,
}

/// What the database engine's own checks found wrong; both lists empty for a sound
/// database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntegrityProblems {
    /// The problems the integrity check reports, one a line.
    pub integrity: Vec<String>,
    /// One line per row that refers to a missing row.
    pub foreign_keys: Vec<String>,
}

/// A finished backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    /// Where the copy is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// How long the copy took, the check of the copy included.
    pub elapsed: Duration,
}

/// Why a backup was not made. No variant leaves a file at the target.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The target exists and overwriting was not asked for.
    #[error("{0} already exists (use --force to overwrite it)")]
    TargetExists(PathBuf),
    /// The target is the database itself (or one of its companion files).
    #[error("{0} is the database itself; choose another file")]
    TargetIsDatabase(PathBuf),
    /// The file system refused (the text names the path).
    #[error("{0}")]
    Io(String),
    /// The copy was made but does not pass its check; it was removed.
    #[error("the copy failed its check and was removed: {0}")]
    CopyDamaged(String),
    /// The database failed while copying.
    #[error(transparent)]
    Database(#[from] Error),
    /// This backend's backups are made with the database server's own tools.
    #[error("{0}")]
    NotThisBackend(String),
}
