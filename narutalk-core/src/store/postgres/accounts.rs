//! [`AccountStore`] on PostgreSQL: the `users` and `device_tokens` tables, and the
//! revocation of a user's tokens.
//!
//! Where SQLite's single writer made a read-then-write decision atomic, a write here locks
//! the user's row at its start ([`lock_user`]: `FOR NO KEY UPDATE`, which orders these
//! writers among themselves and against any update or deletion of the row, yet lets other
//! transactions insert rows that reference the user). A login's checks of the stored hash,
//! the active flag and the device-token bound, and a revocation, each see the row as no
//! other of them can change it until they commit. A write whose first statement updates
//! or deletes the row (with its check in the `WHERE`) takes the same lock by doing so.

use std::time::Instant;

use chrono::{DateTime, Utc};
use postgres::Row;
use postgres::error::SqlState;

use super::{PostgresStore, Tx, tokens};
use crate::accounts::devices::{DEVICE_TOKENS_PER_ACCOUNT, Device};
use crate::accounts::{Dashboard, Role, User, UserFilter, UserId};
use crate::error::Error;
use crate::events::Revocation;
use crate::store::outbox;
use crate::store::outbox::Kind;
use crate::store::{
    AccountStore, Audit, Credentials, LoginRecord, NamesTaken, NewAccount, ProfileChange,
    RecordedLogin, Taken, UserChange,
};
use crate::time;

/// How many expired device tokens one login deletes at most.
const DEVICE_PURGE_PER_LOGIN: i64 = 100;

/// How many expired refresh tokens one login deletes at most.
const REFRESH_PURGE_PER_LOGIN: u32 = 100;

impl AccountStore for PostgresStore {
    fn user(&self, id: UserId) -> Result<Option<User>, Error> {
        self.read(|tx| user_by_id(tx, id))
    }

    fn credentials_by_email(&self, email: &str) -> Result<Option<Credentials>, Error> {
        self.read(|tx| {
            let row = tx.query_opt(
                &format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1"),
                &[&email],
            )?;
            Ok(row.as_ref().map(credentials_from_row))
        })
    }

    fn credentials_by_id(&self, id: UserId) -> Result<Option<Credentials>, Error> {
        self.read(|tx| credentials_by_id(tx, id, false))
    }

    fn names_taken(
        &self,
        username: Option<&str>,
        email: Option<&str>,
        except: Option<UserId>,
    ) -> Result<NamesTaken, Error> {
        let except = except.map_or(0, |id| id.0);
        self.read(|tx| {
            let username = match username {
                Some(username) => exists(tx, USERNAME_OF_ANOTHER, username, except)?,
                None => false,
            };
            let email = match email {
                Some(email) => exists(tx, EMAIL_OF_ANOTHER, email, except)?,
                None => false,
            };
            Ok(NamesTaken { username, email })
        })
    }

    fn insert_user(&self, account: &NewAccount) -> Result<Result<User, Taken>, Error> {
        let date_joined = time::to_micros(&account.date_joined);
        self.write(Instant::now(), |tx| {
            // A registration of the same name that has not committed yet makes this insert
            // wait for it: the insert fails only once the other row can be seen, by the
            // look-up of which name is taken.
            let inserted = unique_or_taken(tx, |tx| {
                tx.execute_raw(
                    "INSERT INTO users (username, email, password_hash, role, department, is_verified, date_joined) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &account.username,
                        &account.email,
                        &account.password_hash,
                        &account.role.as_str(),
                        &account.department,
                        &account.is_verified,
                        &date_joined,
                    ],
                )
            })?;
            if let Err(constraint) = inserted {
                return Ok(Err(taken(
                    tx,
                    Some(&account.username),
                    Some(&account.email),
                    0,
                    constraint.as_deref(),
                )?));
            }
            let row = tx.query_one(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1"),
                &[&account.username],
            )?;
            Ok(Ok(user_from_row(&row)))
        })
    }

    fn device_of_email(
        &self,
        device: Device,
        email: &str,
        valid_after: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let digest = device.digest();
        let hash: &[u8] = &digest;
        let valid_after = time::to_micros(&valid_after);
        self.read(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT 1 FROM device_tokens AS d JOIN users AS u ON u.id = d.user_id \
                     WHERE d.token_hash = $1 AND u.email = $2 AND d.last_used_at > $3",
                    &[&hash, &email, &valid_after],
                )?
                .is_some())
        })
    }

    fn record_login(&self, login: &LoginRecord<'_>) -> Result<Option<RecordedLogin>, Error> {
        let now_micros = time::to_micros(&login.now);
        let now_seconds = time::unix_seconds(&login.now);
        let valid_after = time::to_micros(&login.devices_valid_after);
        self.write(Instant::now(), |tx| {
            // Locked first: the hash and the active flag checked here stay so until this
            // commits, and two logins of one user keep its device tokens within the bound.
            let Some(Credentials {
                user,
                password_hash,
            }) = credentials_by_id(tx, login.user_id, true)?
            else {
                return Ok(None);
            };
            if !user.is_active || password_hash != login.verified_hash {
                return Ok(None);
            }
            tx.execute(
                "UPDATE users SET last_login = $1 WHERE id = $2",
                &[&now_micros, &user.id.0],
            )?;
            let issued_at = crate::tokens::issued_at(now_seconds, user.tokens_revoked_at);
            tokens::insert_refresh_row(
                tx,
                login.refresh,
                user.id,
                issued_at,
                issued_at.saturating_add(login.lifetimes.refresh_seconds),
            )?;
            tokens::purge_expired(
                tx,
                now_seconds,
                login.lifetimes.access_seconds,
                REFRESH_PURGE_PER_LOGIN,
            )?;
            let device_renewed = match login.honoured_device {
                Some(device) => touch_device(tx, device, user.id, now_micros, valid_after)?,
                None => false,
            };
            if !device_renewed {
                insert_device(tx, login.new_device, user.id, now_micros, valid_after)?;
            }
            Ok(Some(RecordedLogin {
                user: User {
                    last_login: Some(login.now),
                    ..user
                },
                issued_at,
                device_renewed,
            }))
        })
    }

    fn update_profile(
        &self,
        id: UserId,
        change: &ProfileChange,
    ) -> Result<Result<User, Taken>, Error> {
        self.write(Instant::now(), |tx| {
            // Only the fields sent are written, so two concurrent partial updates of
            // different fields both take effect (the second re-reads the row it waited for).
            let changed = unique_or_taken(tx, |tx| {
                tx.execute_raw(
                    "UPDATE users SET username = coalesce($1, username), email = coalesce($2, email), \
                     department = coalesce($3, department) WHERE id = $4",
                    &[&change.username, &change.email, &change.department, &id.0],
                )
            })?;
            match changed {
                Ok(0) => Err(Error::NotFound),
                Ok(_) => Ok(Ok(user_by_id(tx, id)?.ok_or(Error::NotFound)?)),
                Err(constraint) => Ok(Err(taken(
                    tx,
                    change.username.as_deref(),
                    change.email.as_deref(),
                    id.0,
                    constraint.as_deref(),
                )?)),
            }
        })
    }

    fn replace_password(
        &self,
        id: UserId,
        password_hash: &str,
        replacing: Option<&str>,
        audit: &Audit,
    ) -> Result<(), Error> {
        self.write(Instant::now(), |tx| {
            // The update locks the row and checks the hash it finds once it holds the lock.
            if tx.execute(
                "UPDATE users SET password_hash = $1 WHERE id = $2 \
                 AND ($3::TEXT IS NULL OR password_hash = $3)",
                &[&password_hash, &id.0, &replacing],
            )? == 0
            {
                return Err(Error::NotFound);
            }
            revoke_all(tx, id, &audit.at)?;
            self.record_revocation(tx, id, Revocation::TokensRevoked, audit)
        })
    }

    fn dashboard(&self, id: UserId, recent_since: DateTime<Utc>) -> Result<Dashboard, Error> {
        let since = time::to_micros(&recent_since);
        self.read(|tx| {
            let user = user_by_id(tx, id)?.ok_or(Error::NotFound)?;
            let row = tx.query_one(
                "SELECT count(*) FILTER (WHERE updated_at >= $2), \
                 coalesce(sum(message_count), 0)::BIGINT \
                 FROM chat_sessions WHERE user_id = $1",
                &[&id.0, &since],
            )?;
            let (recent_chats, total_messages): (i64, i64) = (row.get(0), row.get(1));
            Ok(Dashboard {
                user,
                recent_chats: u64::try_from(recent_chats).unwrap_or_default(),
                total_messages: u64::try_from(total_messages).unwrap_or_default(),
            })
        })
    }

    fn users(&self, filter: &UserFilter) -> Result<Vec<User>, Error> {
        let search = filter
            .search
            .as_deref()
            .map(|s| format!("%{}%", escape_like(s)));
        let role = filter.role.map(Role::as_str);
        self.read(|tx| {
            // SQLite's LIKE folds the case of ASCII letters only; so does ILIKE under the
            // "C" collation.
            let rows = tx.query(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users \
                     WHERE ($1::TEXT IS NULL OR role = $1) \
                     AND ($2::BOOLEAN IS NULL OR is_verified = $2) \
                     AND ($3::BOOLEAN IS NULL OR is_active = $3) \
                     AND ($4::TEXT IS NULL OR username COLLATE \"C\" ILIKE $4 ESCAPE '\\' \
                          OR email COLLATE \"C\" ILIKE $4 ESCAPE '\\') \
                     ORDER BY id"
                ),
                &[&role, &filter.is_verified, &filter.is_active, &search],
            )?;
            Ok(rows.iter().map(user_from_row).collect())
        })
    }

    fn change_user(&self, id: UserId, change: UserChange, audit: &Audit) -> Result<User, Error> {
        self.write(Instant::now(), |tx| {
            // The update locks the row before a deactivation revokes the user's tokens.
            let changed = match change {
                UserChange::Role(role) => tx.execute(
                    "UPDATE users SET role = $1 WHERE id = $2",
                    &[&role.as_str(), &id.0],
                )?,
                UserChange::Verified(verified) => tx.execute(
                    "UPDATE users SET is_verified = $1 WHERE id = $2",
                    &[&verified, &id.0],
                )?,
                UserChange::Active(active) => tx.execute(
                    "UPDATE users SET is_active = $1 WHERE id = $2",
                    &[&active, &id.0],
                )?,
            };
            if changed == 0 {
                return Err(Error::NotFound);
            }
            if change == UserChange::Active(false) {
                revoke_all(tx, id, &audit.at)?;
                self.record_revocation(tx, id, Revocation::Deactivated, audit)?;
            }
            user_by_id(tx, id)?.ok_or(Error::NotFound)
        })
    }

    fn revoke_all(&self, id: UserId, audit: &Audit) -> Result<(), Error> {
        self.write(Instant::now(), |tx| {
            if !lock_user(tx, id)? {
                return Err(Error::NotFound);
            }
            revoke_all(tx, id, &audit.at)?;
            self.record_revocation(tx, id, Revocation::TokensRevoked, audit)
        })
    }

    fn delete_user(&self, id: UserId, audit: &Audit) -> Result<(), Error> {
        self.write(Instant::now(), |tx| {
            match tx.execute("DELETE FROM users WHERE id = $1", &[&id.0])? {
                0 => Err(Error::NotFound),
                _ => self.record_revocation(tx, id, Revocation::Deleted, audit),
            }
        })
    }
}

impl PostgresStore {
    /// The outbox row of a user whose every token was revoked, and why.
    fn record_revocation(
        &self,
        tx: &mut Tx<'_>,
        user: UserId,
        cause: Revocation,
        audit: &Audit,
    ) -> Result<(), Error> {
        let cause = match cause {
            Revocation::Deactivated => "deactivated",
            Revocation::Deleted => "deleted",
            _ => "tokens_revoked",
        };
        self.record(
            tx,
            &outbox::Row {
                kind: Kind::UserRevoked,
                session: None,
                seq: None,
                user: Some(user),
                payload: serde_json::json!({ "cause": cause }),
                audit,
            },
        )
    }
}

/// Locks the row of `user_id` until the transaction ends (the lock every read-then-write
/// of a user's tokens and credentials takes first); false when there is no such user.
pub(super) fn lock_user(tx: &mut Tx<'_>, user_id: UserId) -> Result<bool, Error> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE",
            &[&user_id.0],
        )?
        .is_some())
}

/// Refuses every token of `user_id` issued until now: sets the revocation time to now, or
/// one second past the previous one when that is not before now, marks the user's live
/// refresh rows revoked, and deletes the user's device tokens.
fn revoke_all(tx: &mut Tx<'_>, user_id: UserId, now: &DateTime<Utc>) -> Result<(), Error> {
    let now_seconds = time::unix_seconds(now);
    tx.execute(
        "UPDATE users SET tokens_revoked_at = GREATEST(tokens_revoked_at + 1, $1) WHERE id = $2",
        &[&now_seconds, &user_id.0],
    )?;
    tx.execute(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        &[&now_seconds, &user_id.0],
    )?;
    tx.execute(
        "DELETE FROM device_tokens WHERE user_id = $1",
        &[&user_id.0],
    )?;
    Ok(())
}

/// Marks a valid device token of `user_id` used at `now`; false when it is not one
/// (deleted, expired, or another account's) and nothing changed.
fn touch_device(
    tx: &mut Tx<'_>,
    device: Device,
    user_id: UserId,
    now: i64,
    valid_after: i64,
) -> Result<bool, Error> {
    let digest = device.digest();
    let hash: &[u8] = &digest;
    let changed = tx.execute(
        "UPDATE device_tokens SET last_used_at = GREATEST(last_used_at, $1) \
         WHERE token_hash = $2 AND user_id = $3 AND last_used_at > $4",
        &[&now, &hash, &user_id.0, &valid_after],
    )?;
    Ok(changed == 1)
}

/// Stores a new device token of `user_id`, then deletes the account's tokens beyond the
/// [`DEVICE_TOKENS_PER_ACCOUNT`] most recently used (the caller holds the user's lock, so
/// no other login of the account adds one meanwhile), and a few expired tokens of anyone
/// (skipping rows another transaction holds: at most that many, as SQLite's).
fn insert_device(
    tx: &mut Tx<'_>,
    device: Device,
    user_id: UserId,
    now: i64,
    valid_after: i64,
) -> Result<(), Error> {
    let digest = device.digest();
    let hash: &[u8] = &digest;
    tx.execute(
        "INSERT INTO device_tokens (token_hash, user_id, created_at, last_used_at) \
         VALUES ($1, $2, $3, $3)",
        &[&hash, &user_id.0, &now],
    )?;
    tx.execute(
        "DELETE FROM device_tokens WHERE user_id = $1 AND token_hash NOT IN \
         (SELECT token_hash FROM device_tokens WHERE user_id = $1 \
          ORDER BY last_used_at DESC, insert_order DESC LIMIT $2)",
        &[&user_id.0, &i64::from(DEVICE_TOKENS_PER_ACCOUNT)],
    )?;
    tx.execute(
        "DELETE FROM device_tokens WHERE token_hash IN \
         (SELECT token_hash FROM device_tokens WHERE last_used_at <= $1 LIMIT $2 \
          FOR UPDATE SKIP LOCKED)",
        &[&valid_after, &DEVICE_PURGE_PER_LOGIN],
    )?;
    Ok(())
}

/// Runs `write` (one statement of the users table) in a savepoint: `Ok(Err(constraint))`
/// when it broke a unique constraint (named, when PostgreSQL names it), the transaction
/// still usable; any other failure is the write's error.
fn unique_or_taken(
    tx: &mut Tx<'_>,
    mut write: impl FnMut(&mut Tx<'_>) -> Result<Result<u64, postgres::Error>, Error>,
) -> Result<Result<u64, Option<String>>, Error> {
    let mut violated = None;
    let written = tx.savepoint(|tx| match write(tx)? {
        Ok(changed) => Ok(changed),
        Err(error) => {
            if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                violated = Some(
                    error
                        .as_db_error()
                        .and_then(|db| db.constraint())
                        .map(str::to_owned),
                );
            }
            Err(error.into())
        }
    });
    match (written, violated) {
        (Ok(changed), _) => Ok(Ok(changed)),
        (Err(_), Some(constraint)) => Ok(Err(constraint)),
        (Err(error), None) => Err(error),
    }
}

/// Which unique name a write of the users table found taken, as SQLite answers it: the
/// email when both are another user's (SQLite checks the email's index first), looked up
/// after the failure (the other row is committed by then); the constraint PostgreSQL
/// named when neither is found (the other user was deleted since).
fn taken(
    tx: &mut Tx<'_>,
    username: Option<&str>,
    email: Option<&str>,
    except: i64,
    constraint: Option<&str>,
) -> Result<Taken, Error> {
    if let Some(email) = email
        && exists(tx, EMAIL_OF_ANOTHER, email, except)?
    {
        return Ok(Taken::Email);
    }
    if let Some(username) = username
        && exists(tx, USERNAME_OF_ANOTHER, username, except)?
    {
        return Ok(Taken::Username);
    }
    match constraint {
        Some("users_email_key") => Ok(Taken::Email),
        Some("users_username_key") => Ok(Taken::Username),
        other => Err(Error::internal(format!(
            "a write of the users table broke the unique constraint {other:?}"
        ))),
    }
}

const USERNAME_OF_ANOTHER: &str = "SELECT 1 FROM users WHERE username = $1 AND id != $2";

const EMAIL_OF_ANOTHER: &str = "SELECT 1 FROM users WHERE email = $1 AND id != $2";

/// Whether `sql` (with `value` and `except` as `$1` and `$2`) answers a row.
fn exists(tx: &mut Tx<'_>, sql: &str, value: &str, except: i64) -> Result<bool, Error> {
    Ok(tx.query_opt(sql, &[&value, &except])?.is_some())
}

/// Escapes `%`, `_` and `\` so a search text matches itself literally.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

const USER_COLUMNS: &str = "id, username, email, role, department, is_verified, is_active, date_joined, last_login, tokens_revoked_at";

fn user_from_row(row: &Row) -> User {
    let role: String = row.get(3);
    User {
        id: UserId(row.get(0)),
        username: row.get(1),
        email: row.get(2),
        // The CHECK constraint keeps other values out; fall back rather than panic.
        role: role.parse().unwrap_or(Role::User),
        department: row.get(4),
        is_verified: row.get(5),
        is_active: row.get(6),
        date_joined: time::from_micros(row.get(7)),
        last_login: row.get::<_, Option<i64>>(8).map(time::from_micros),
        tokens_revoked_at: row.get(9),
    }
}

/// The user with this id, if any.
pub(super) fn user_by_id(tx: &mut Tx<'_>, id: UserId) -> Result<Option<User>, Error> {
    Ok(tx
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
            &[&id.0],
        )?
        .as_ref()
        .map(user_from_row))
}

/// The user with this id and their password hash, if any; with `lock`, the row is locked
/// as by [`lock_user`].
fn credentials_by_id(
    tx: &mut Tx<'_>,
    id: UserId,
    lock: bool,
) -> Result<Option<Credentials>, Error> {
    let lock = if lock { " FOR NO KEY UPDATE" } else { "" };
    let sql = format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE id = $1{lock}");
    Ok(tx
        .query_opt(&sql, &[&id.0])?
        .as_ref()
        .map(credentials_from_row))
}

fn credentials_from_row(row: &Row) -> Credentials {
    Credentials {
        user: user_from_row(row),
        password_hash: row.get(10),
    }
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::{Path, PathBuf};
    use std::sync::Barrier;

    use chrono::{DateTime, Duration, Utc};

    use super::super::{PostgresStore, testing};
    use crate::accounts::devices::Device;
    use crate::accounts::{Role, UserFilter, UserId};
    use crate::config::Synchronous;
    use crate::events::Actor;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{
        AccountStore, Audit, LoginRecord, NewAccount, NewRefresh, OpenMode, ProfileChange, Taken,
        TokenLifetimes, TokenStore, UserChange,
    };
    use crate::time;

    /// A SQLite store and a PostgreSQL store, both empty, to run one scenario on.
    pub(in crate::store::postgres) struct Twins {
        pub sqlite: SqliteStore,
        pub path: PathBuf,
        pub pg: PostgresStore,
        _dir: tempfile::TempDir,
    }

    pub(in crate::store::postgres) fn twins(test: &str) -> Option<Twins> {
        let (pg, _) = testing::store(test)?;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let sqlite =
            SqliteStore::open(&path, Synchronous::Full, OpenMode::CreateIfMissing).unwrap();
        Some(Twins {
            sqlite,
            path,
            pg,
            _dir: dir,
        })
    }

    /// An outbox row: kind, session, seq, user, actor, request id, payload.
    pub(in crate::store::postgres) type OutboxRow = (
        String,
        Option<String>,
        Option<i64>,
        Option<i64>,
        String,
        Option<String>,
        String,
    );

    const OUTBOX: &str =
        "SELECT kind, session_id, seq, user_id, actor, request_id, payload FROM outbox ORDER BY id";

    pub(in crate::store::postgres) fn sqlite_outbox(path: &Path) -> Vec<OutboxRow> {
        let conn = rusqlite::Connection::open(path).unwrap();
        let mut statement = conn.prepare(OUTBOX).unwrap();
        statement
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    pub(in crate::store::postgres) fn pg_outbox(store: &PostgresStore) -> Vec<OutboxRow> {
        store
            .read(|tx| {
                Ok(tx
                    .query(OUTBOX, &[])?
                    .iter()
                    .map(|row| {
                        (
                            row.get(0),
                            row.get(1),
                            row.get(2),
                            row.get(3),
                            row.get(4),
                            row.get(5),
                            row.get(6),
                        )
                    })
                    .collect())
            })
            .unwrap()
    }

    /// A refresh-token row.
    pub(in crate::store::postgres) type RefreshRow =
        (String, i64, String, i64, i64, Option<i64>, Option<i64>);

    const REFRESH_ROWS: &str = "SELECT jti, user_id, family, issued_at, expires_at, used_at, revoked_at \
                                FROM refresh_tokens ORDER BY jti";

    /// A device-token row.
    type DeviceRow = (Vec<u8>, i64, i64, i64);

    const DEVICE_ROWS: &str = "SELECT token_hash, user_id, created_at, last_used_at \
                               FROM device_tokens ORDER BY token_hash";

    /// The token tables of the SQLite twin.
    pub(in crate::store::postgres) fn sqlite_tokens(
        path: &Path,
    ) -> (Vec<RefreshRow>, Vec<DeviceRow>) {
        let conn = rusqlite::Connection::open(path).unwrap();
        let refresh = conn
            .prepare(REFRESH_ROWS)
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let devices = conn
            .prepare(DEVICE_ROWS)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (refresh, devices)
    }

    /// The token tables of the PostgreSQL twin.
    pub(in crate::store::postgres) fn pg_tokens(
        store: &PostgresStore,
    ) -> (Vec<RefreshRow>, Vec<DeviceRow>) {
        store
            .read(|tx| {
                let refresh = tx
                    .query(REFRESH_ROWS, &[])?
                    .iter()
                    .map(|r| {
                        (
                            r.get(0),
                            r.get(1),
                            r.get(2),
                            r.get(3),
                            r.get(4),
                            r.get(5),
                            r.get(6),
                        )
                    })
                    .collect();
                let devices = tx
                    .query(DEVICE_ROWS, &[])?
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                    .collect();
                Ok((refresh, devices))
            })
            .unwrap()
    }

    /// A fixed instant, `seconds` past a round start.
    pub(in crate::store::postgres) fn at(seconds: i64) -> DateTime<Utc> {
        time::from_micros(1_700_000_000_000_000 + seconds * 1_000_000)
    }

    pub(in crate::store::postgres) fn account(name: &str, role: Role) -> NewAccount {
        NewAccount {
            username: name.to_owned(),
            email: format!("{name}@example.com"),
            password_hash: format!("hash-of-{name}"),
            role,
            department: String::new(),
            is_verified: false,
            date_joined: at(0),
        }
    }

    /// The device of token number `n`.
    pub(in crate::store::postgres) fn device(n: usize) -> Device {
        Device::of(&format!("{n:0>43}")).unwrap()
    }

    pub(in crate::store::postgres) const LIFETIMES: TokenLifetimes = TokenLifetimes {
        access_seconds: 300,
        refresh_seconds: 86_400,
    };

    pub(in crate::store::postgres) fn audit(actor: Actor, seconds: i64) -> Audit {
        Audit {
            actor,
            at: at(seconds),
            request_id: Some(format!("req-{seconds}").into()),
        }
    }

    /// A login of `user` at `seconds` with the verified hash `hash`, storing the refresh
    /// token `jti` and, unless `honoured` is renewed, the device `new_device`.
    pub(in crate::store::postgres) fn login<S: AccountStore>(
        store: &S,
        user: UserId,
        hash: &str,
        seconds: i64,
        jti: &str,
        honoured: Option<Device>,
        new_device: Device,
    ) -> String {
        let refresh = NewRefresh {
            jti: jti.to_owned(),
            family: format!("family-of-{jti}"),
        };
        let recorded = store.record_login(&LoginRecord {
            user_id: user,
            verified_hash: hash,
            now: at(seconds),
            refresh: &refresh,
            lifetimes: LIFETIMES,
            honoured_device: honoured,
            new_device,
            devices_valid_after: at(seconds) - Duration::days(30),
        });
        format!("{recorded:?}")
    }

    /// Every account method, with the answers in order.
    /// `add_sessions` adds chat sessions for the dashboard once the users exist.
    fn account_scenario<S: AccountStore + TokenStore>(
        store: &S,
        add_sessions: impl FnOnce(),
    ) -> Vec<String> {
        let mut answers = Vec::new();
        let mut say = |answer: String| answers.push(answer);
        let kim = store
            .insert_user(&NewAccount {
                is_verified: true,
                department: "Cardiology".into(),
                ..account("kim", Role::Doctor)
            })
            .unwrap()
            .unwrap();
        say(format!("{kim:?}"));
        let lee = store
            .insert_user(&account("lee", Role::Nurse))
            .unwrap()
            .unwrap();
        let ann = store
            .insert_user(&account("ann_50%", Role::User))
            .unwrap()
            .unwrap();
        let emile = store.insert_user(&account("Émile", Role::User)).unwrap();
        say(format!("{lee:?} {ann:?} {emile:?}"));
        add_sessions();
        // Taken names (last: a refused insert burns an identity value in PostgreSQL).
        for (username, email) in [
            ("kim", "other@example.com"),
            ("other", "lee@example.com"),
            ("kim", "lee@example.com"),
            ("kim", "kim@example.com"),
        ] {
            say(format!(
                "{:?}",
                store.insert_user(&NewAccount {
                    email: email.into(),
                    ..account(username, Role::User)
                })
            ));
        }
        for (username, email, except) in [
            (Some("kim"), Some("lee@example.com"), None),
            (Some("kim"), Some("kim@example.com"), Some(kim.id)),
            (None, Some("nobody@example.com"), None),
            (Some("lee"), None, Some(kim.id)),
        ] {
            say(format!(
                "{:?}",
                store.names_taken(username, email, except).unwrap()
            ));
        }
        say(format!(
            "{:?} {:?} {:?} {:?}",
            store.user(kim.id),
            store.user(UserId(999)),
            store.credentials_by_email("lee@example.com"),
            store.credentials_by_id(ann.id),
        ));
        // Logins: a new device, its renewal, a stale hash, the device-token bound.
        say(login(
            store,
            kim.id,
            "hash-of-kim",
            10,
            "j1",
            None,
            device(1),
        ));
        say(login(
            store,
            kim.id,
            "hash-of-kim",
            20,
            "j2",
            Some(device(1)),
            device(2),
        ));
        say(login(store, kim.id, "stale", 30, "j3", None, device(3)));
        say(login(store, UserId(999), "x", 30, "j3", None, device(3)));
        say(login(
            store,
            kim.id,
            "hash-of-kim",
            40,
            "j4",
            Some(device(77)),
            device(4),
        ));
        for n in 5..30 {
            let seconds = 100 + i64::try_from(n).unwrap();
            say(login(
                store,
                kim.id,
                "hash-of-kim",
                seconds,
                &format!("k{n}"),
                None,
                device(n),
            ));
        }
        for (device, email, after) in [
            (device(29), "kim@example.com", 0),
            (device(29), "lee@example.com", 0),
            (device(1), "kim@example.com", 0),
            (device(29), "kim@example.com", 129),
        ] {
            say(format!(
                "{:?}",
                store.device_of_email(device, email, at(after))
            ));
        }
        // Lee logs in much later: kim's devices expired (a few purged) and so did the
        // refresh tokens.
        say(login(
            store,
            lee.id,
            "hash-of-lee",
            40 * 86_400,
            "l1",
            None,
            device(100),
        ));
        // Profiles.
        let changes = [
            (kim.id, Some("kimberly"), None, Some("Oncology")),
            (kim.id, Some("lee"), None, None),
            (kim.id, None, Some("lee@example.com"), None),
            (kim.id, Some("lee"), Some("lee@example.com"), None),
            (kim.id, Some("ann_50%"), Some("kim@example.com"), None),
            (UserId(999), Some("zed"), None, None),
        ];
        for (id, username, email, department) in changes {
            say(format!(
                "{:?}",
                store.update_profile(
                    id,
                    &ProfileChange {
                        username: username.map(str::to_owned),
                        email: email.map(str::to_owned),
                        department: department.map(str::to_owned),
                    }
                )
            ));
        }
        // Passwords.
        let by_kim = audit(Actor::User(kim.id), 200);
        say(format!(
            "{:?} {:?} {:?} {:?}",
            store.replace_password(kim.id, "new", Some("wrong"), &by_kim),
            store.replace_password(kim.id, "new", Some("hash-of-kim"), &by_kim),
            store.replace_password(kim.id, "newer", None, &audit(Actor::Cli, 200)),
            store.replace_password(UserId(999), "x", None, &by_kim),
        ));
        say(format!("{:?}", store.user(kim.id)));
        // Filters.
        let filters = [
            UserFilter::default(),
            UserFilter {
                role: Some(Role::Nurse),
                ..UserFilter::default()
            },
            UserFilter {
                is_verified: Some(true),
                ..UserFilter::default()
            },
            UserFilter {
                is_active: Some(true),
                search: Some("KIM".into()),
                ..UserFilter::default()
            },
            UserFilter {
                search: Some("50%".into()),
                ..UserFilter::default()
            },
            UserFilter {
                search: Some("n_5".into()),
                ..UserFilter::default()
            },
            UserFilter {
                search: Some("%".into()),
                ..UserFilter::default()
            },
            // Only ASCII letters match in either case, as SQLite's LIKE.
            UserFilter {
                search: Some("éMILE".into()),
                ..UserFilter::default()
            },
            UserFilter {
                search: Some("MILE".into()),
                ..UserFilter::default()
            },
        ];
        for filter in &filters {
            say(format!("{:?}", store.users(filter)));
        }
        // Administrators.
        let admin = audit(Actor::Administrator, 300);
        say(format!(
            "{:?} {:?} {:?} {:?} {:?}",
            store.change_user(lee.id, UserChange::Role(Role::Admin), &admin),
            store.change_user(lee.id, UserChange::Verified(true), &admin),
            store.change_user(lee.id, UserChange::Active(false), &admin),
            store.change_user(lee.id, UserChange::Active(true), &admin),
            store.change_user(UserId(999), UserChange::Verified(true), &admin),
        ));
        say(login(
            store,
            lee.id,
            "hash-of-lee",
            40 * 86_400 + 5,
            "l2",
            None,
            device(101),
        ));
        // Twice in one second: the second revocation time is one past the first.
        say(format!(
            "{:?} {:?} {:?} {:?}",
            store.revoke_all(ann.id, &admin),
            store.revoke_all(ann.id, &admin),
            store.revoke_all(UserId(999), &admin),
            store.user(ann.id),
        ));
        say(format!(
            "{:?} {:?} {:?}",
            store.dashboard(kim.id, at(50)),
            store.dashboard(lee.id, at(50)),
            store.dashboard(UserId(999), at(50)),
        ));
        say(format!(
            "{:?} {:?} {:?} {:?}",
            store.delete_user(ann.id, &admin),
            store.delete_user(ann.id, &admin),
            store.user(ann.id),
            store.users(&UserFilter::default()),
        ));
        answers
    }

    #[test]
    fn every_account_method_answers_and_writes_as_on_sqlite() {
        let Some(twins) = twins("pg_accounts_scenario") else {
            return;
        };
        // Two sessions of kim for the dashboard: one recent, one older.
        let sessions = [("s1", 1_i64, at(10), 3_i64), ("s2", 1, at(100), 4)];
        let sqlite_answers = account_scenario(&twins.sqlite, || {
            let conn = rusqlite::Connection::open(&twins.path).unwrap();
            for (id, user, updated, count) in sessions {
                let updated = time::to_micros(&updated);
                conn.execute(
                    "INSERT INTO chat_sessions (id, user_id, title, created_at, updated_at, message_count) \
                     VALUES (?1, ?2, 't', 0, ?3, ?4)",
                    rusqlite::params![id, user, updated, count],
                )
                .unwrap();
            }
        });
        let pg_answers = account_scenario(&twins.pg, || {
            for (id, user, updated, count) in sessions {
                let updated = time::to_micros(&updated);
                twins
                    .pg
                    .write(std::time::Instant::now(), |tx| {
                        tx.execute(
                            "INSERT INTO chat_sessions (id, user_id, title, created_at, updated_at, message_count) \
                             VALUES ($1, $2, 't', 0, $3, $4)",
                            &[&id, &user, &updated, &count],
                        )
                    })
                    .unwrap();
            }
        });
        for (n, (sqlite, pg)) in sqlite_answers.iter().zip(&pg_answers).enumerate() {
            assert_eq!(sqlite, pg, "answer {n}");
        }
        assert_eq!(sqlite_answers.len(), pg_answers.len());
        // Spot checks of the reference's answers.
        let answers = &pg_answers;
        assert_eq!(
            answers[2],
            format!("{:?}", Ok::<_, ()>(Err::<(), _>(Taken::Username)))
        );
        assert_eq!(
            answers[3],
            format!("{:?}", Ok::<_, ()>(Err::<(), _>(Taken::Email)))
        );
        assert_eq!(sqlite_tokens(&twins.path), pg_tokens(&twins.pg));
        let devices_of_kim = pg_tokens(&twins.pg)
            .1
            .iter()
            .filter(|row| row.1 == 1)
            .count();
        assert_eq!(devices_of_kim, 0, "revoked with the password");
        let outbox = pg_outbox(&twins.pg);
        assert_eq!(sqlite_outbox(&twins.path), outbox);
        assert_eq!(outbox.len(), 6, "{outbox:?}");
    }

    #[test]
    fn of_registrations_or_renames_to_one_name_at_once_one_wins_and_the_others_are_told_it_is_taken()
     {
        let Some((store, _)) = testing::store("pg_register_race") else {
            return;
        };
        const N: usize = 8;
        for (same_email, expected) in [(false, Taken::Username), (true, Taken::Email)] {
            let name = if same_email { "twin" } else { "solo" };
            let barrier = Barrier::new(N);
            let answers: Vec<_> = std::thread::scope(|scope| {
                let threads: Vec<_> = (0..N)
                    .map(|n| {
                        let (store, barrier) = (&store, &barrier);
                        scope.spawn(move || {
                            let email = if same_email {
                                format!("{name}@example.com")
                            } else {
                                format!("{name}{n}@example.com")
                            };
                            barrier.wait();
                            store.insert_user(&NewAccount {
                                email,
                                ..account(name, Role::User)
                            })
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let won = answers.iter().filter(|a| matches!(a, Ok(Ok(_)))).count();
            let taken = answers
                .iter()
                .filter(|a| matches!(a, Ok(Err(t)) if *t == expected))
                .count();
            assert_eq!((won, taken), (1, N - 1), "{answers:?}");
        }
        // Renames of several users to one name at once: the same.
        let users: Vec<UserId> = (0..N)
            .map(|n| {
                let name = format!("user{n}");
                store
                    .insert_user(&account(&name, Role::User))
                    .unwrap()
                    .unwrap()
                    .id
            })
            .collect();
        let barrier = Barrier::new(N);
        let answers: Vec<_> = std::thread::scope(|scope| {
            let threads: Vec<_> = users
                .iter()
                .map(|&id| {
                    let (store, barrier) = (&store, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        store.update_profile(
                            id,
                            &ProfileChange {
                                username: Some("renamed".into()),
                                ..ProfileChange::default()
                            },
                        )
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let won = answers.iter().filter(|a| matches!(a, Ok(Ok(_)))).count();
        let taken = answers
            .iter()
            .filter(|a| matches!(a, Ok(Err(Taken::Username))))
            .count();
        assert_eq!((won, taken), (1, N - 1), "{answers:?}");
    }

    /// Waits until `n` other transactions of this database wait for a lock.
    pub(in crate::store::postgres) fn until_waiting(store: &PostgresStore, n: i64) {
        loop {
            let waiting: i64 = store
                .read(|tx| {
                    Ok(tx
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity \
                             WHERE datname = current_database() AND wait_event_type = 'Lock'",
                            &[],
                        )?
                        .get(0))
                })
                .unwrap();
            if waiting >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_login_waits_for_a_password_change_under_way_and_is_refused_after_it() {
        let Some((store, _)) = testing::store("pg_login_vs_password") else {
            return;
        };
        let kim = store
            .insert_user(&account("kim", Role::User))
            .unwrap()
            .unwrap();
        // A password change holds kim's row (uncommitted) while the login, which verified
        // the old hash, is recorded: it must see the new hash, not record the login.
        let (changed, go) = (Barrier::new(2), Barrier::new(2));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                store
                    .write(std::time::Instant::now(), |tx| {
                        tx.execute(
                            "UPDATE users SET password_hash = 'new' WHERE id = $1",
                            &[&kim.id.0],
                        )?;
                        changed.wait();
                        go.wait();
                        Ok(())
                    })
                    .unwrap();
            });
            changed.wait();
            let login =
                scope.spawn(|| login(&store, kim.id, "hash-of-kim", 10, "j1", None, device(1)));
            until_waiting(&store, 1);
            go.wait();
            assert_eq!(login.join().unwrap(), "Ok(None)");
        });
        assert_eq!(pg_tokens(&store), (Vec::new(), Vec::new()));
    }

    /// (The login's update of `last_login` would order these logins even without the lock
    /// taken first; this guards the bound against a reordering of the statements.)
    #[test]
    fn logins_of_one_account_at_once_keep_its_device_tokens_within_the_bound() {
        let Some((store, _)) = testing::store("pg_device_bound_race") else {
            return;
        };
        let kim = store
            .insert_user(&account("kim", Role::User))
            .unwrap()
            .unwrap();
        let bound = usize::try_from(super::DEVICE_TOKENS_PER_ACCOUNT).unwrap();
        // One short of the bound, then eight logins with new devices at once.
        for n in 0..bound - 1 {
            let seconds = i64::try_from(n).unwrap();
            login(
                &store,
                kim.id,
                "hash-of-kim",
                seconds,
                &format!("a{n}"),
                None,
                device(n),
            );
        }
        const N: usize = 8;
        let barrier = Barrier::new(N);
        std::thread::scope(|scope| {
            for n in 0..N {
                let (store, barrier) = (&store, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    let answer = login(
                        store,
                        kim.id,
                        "hash-of-kim",
                        1000,
                        &format!("b{n}"),
                        None,
                        device(1000 + n),
                    );
                    assert!(answer.starts_with("Ok(Some("), "{answer}");
                });
            }
        });
        let (refresh, devices) = pg_tokens(&store);
        assert_eq!(refresh.len(), bound - 1 + N);
        assert_eq!(devices.len(), bound, "the bound holds");
        // The newest logins' devices are the ones kept.
        let newest = devices
            .iter()
            .filter(|row| row.3 == time::to_micros(&at(1000)));
        assert_eq!(newest.count(), N);
    }
}
