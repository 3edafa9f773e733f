//! [`AccountStore`] on SQLite: the `users` and `device_tokens` tables, and the revocation
//! of a user's tokens.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::outbox;
use super::{SqliteStore, WriteTx, tokens};
use crate::accounts::devices::{DEVICE_TOKENS_PER_ACCOUNT, Device};
use crate::accounts::{Dashboard, Role, User, UserFilter, UserId};
use crate::error::Error;
use crate::events::Revocation;
use crate::store::outbox::Kind;
use crate::store::{
    AccountStore, Audit, Credentials, LoginRecord, NamesTaken, NewAccount, ProfileChange,
    RecordedLogin, Taken, UserChange,
};
use crate::time;

/// How many expired device tokens one login deletes at most.
const DEVICE_PURGE_PER_LOGIN: u32 = 100;

/// How many expired refresh tokens one login deletes at most.
const REFRESH_PURGE_PER_LOGIN: u32 = 100;

impl AccountStore for SqliteStore {
    fn user(&self, id: UserId) -> Result<Option<User>, Error> {
        self.read(|conn| user_by_id(conn, id))
    }

    fn credentials_by_email(&self, email: &str) -> Result<Option<Credentials>, Error> {
        self.read(|conn| credentials_by_email(conn, email))
    }

    fn credentials_by_id(&self, id: UserId) -> Result<Option<Credentials>, Error> {
        self.read(|conn| credentials_by_id(conn, id))
    }

    fn names_taken(
        &self,
        username: Option<&str>,
        email: Option<&str>,
        except: Option<UserId>,
    ) -> Result<NamesTaken, Error> {
        let except = except.map_or(0, |id| id.0);
        self.read(|conn| {
            let username = match username {
                Some(username) => exists(
                    conn,
                    "SELECT 1 FROM users WHERE username = ?1 AND id != ?2",
                    username,
                    except,
                )?,
                None => false,
            };
            let email = match email {
                Some(email) => exists(
                    conn,
                    "SELECT 1 FROM users WHERE email = ?1 AND id != ?2",
                    email,
                    except,
                )?,
                None => false,
            };
            Ok(NamesTaken { username, email })
        })
    }

    fn insert_user(&self, account: &NewAccount) -> Result<Result<User, Taken>, Error> {
        self.write(|tx| {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO users (username, email, password_hash, role, department, is_verified, date_joined) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    account.username,
                    account.email,
                    account.password_hash,
                    account.role.as_str(),
                    account.department,
                    account.is_verified,
                    time::to_micros(&account.date_joined)
                ]);
            if let Err(error) = inserted {
                return Ok(Err(taken(error)?));
            }
            let id = UserId(tx.last_insert_rowid());
            Ok(Ok(user_by_id(tx, id)?.ok_or(Error::NotFound)?))
        })
    }

    fn device_of_email(
        &self,
        device: Device,
        email: &str,
        valid_after: DateTime<Utc>,
    ) -> Result<bool, Error> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT 1 FROM device_tokens AS d JOIN users AS u ON u.id = d.user_id \
                     WHERE d.token_hash = ?1 AND u.email = ?2 AND d.last_used_at > ?3",
                )?
                .query_row(
                    params![&device.digest()[..], email, time::to_micros(&valid_after)],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
        })
    }

    fn record_login(&self, login: &LoginRecord<'_>) -> Result<Option<RecordedLogin>, Error> {
        let now_micros = time::to_micros(&login.now);
        let now_seconds = time::unix_seconds(&login.now);
        let valid_after = time::to_micros(&login.devices_valid_after);
        self.write(|tx| {
            let Some(Credentials {
                user,
                password_hash,
            }) = credentials_by_id(tx, login.user_id)?
            else {
                return Ok(None);
            };
            if !user.is_active || password_hash != login.verified_hash {
                return Ok(None);
            }
            tx.prepare_cached("UPDATE users SET last_login = ?1 WHERE id = ?2")?
                .execute(params![now_micros, user.id.0])?;
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
        self.write(|tx| {
            // Only the fields sent are written, so two concurrent partial updates of
            // different fields both take effect.
            let changed = tx
                .prepare_cached(
                    "UPDATE users SET username = coalesce(?1, username), email = coalesce(?2, email), \
                     department = coalesce(?3, department) WHERE id = ?4",
                )?
                .execute(params![change.username, change.email, change.department, id.0]);
            match changed {
                Ok(0) => Err(Error::NotFound),
                Ok(_) => Ok(Ok(user_by_id(tx, id)?.ok_or(Error::NotFound)?)),
                Err(error) => Ok(Err(taken(error)?)),
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
        self.write(|tx| {
            if tx.execute(
                "UPDATE users SET password_hash = ?1 WHERE id = ?2 AND (?3 IS NULL OR password_hash = ?3)",
                params![password_hash, id.0, replacing],
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
        self.read(|conn| {
            let user = user_by_id(conn, id)?.ok_or(Error::NotFound)?;
            let (recent_chats, total_messages): (i64, i64) = conn
                .prepare_cached(
                    "SELECT count(*) FILTER (WHERE updated_at >= ?2), coalesce(sum(message_count), 0) \
                     FROM chat_sessions WHERE user_id = ?1",
                )?
                .query_row(params![id.0, since], |row| Ok((row.get(0)?, row.get(1)?)))?;
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
        self.read(|conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users \
                 WHERE (?1 IS NULL OR role = ?1) AND (?2 IS NULL OR is_verified = ?2) \
                 AND (?3 IS NULL OR is_active = ?3) \
                 AND (?4 IS NULL OR username LIKE ?4 ESCAPE '\\' OR email LIKE ?4 ESCAPE '\\') \
                 ORDER BY id"
            ))?;
            let rows = statement.query_map(
                params![
                    filter.role.map(Role::as_str),
                    filter.is_verified,
                    filter.is_active,
                    search
                ],
                user_from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn change_user(&self, id: UserId, change: UserChange, audit: &Audit) -> Result<User, Error> {
        self.write(|tx| {
            let changed = match change {
                UserChange::Role(role) => tx.execute(
                    "UPDATE users SET role = ?1 WHERE id = ?2",
                    params![role.as_str(), id.0],
                )?,
                UserChange::Verified(verified) => tx.execute(
                    "UPDATE users SET is_verified = ?1 WHERE id = ?2",
                    params![verified, id.0],
                )?,
                UserChange::Active(active) => tx.execute(
                    "UPDATE users SET is_active = ?1 WHERE id = ?2",
                    params![active, id.0],
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
        self.write(|tx| {
            if user_by_id(tx, id)?.is_none() {
                return Err(Error::NotFound);
            }
            revoke_all(tx, id, &audit.at)?;
            self.record_revocation(tx, id, Revocation::TokensRevoked, audit)
        })
    }

    fn delete_user(&self, id: UserId, audit: &Audit) -> Result<(), Error> {
        self.write(
            |tx| match tx.execute("DELETE FROM users WHERE id = ?1", [id.0])? {
                0 => Err(Error::NotFound),
                _ => self.record_revocation(tx, id, Revocation::Deleted, audit),
            },
        )
    }
}

impl SqliteStore {
    /// The outbox row of a user whose every token was revoked, and why.
    fn record_revocation(
        &self,
        tx: &WriteTx<'_>,
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

/// Refuses every token of `user_id` issued until now: sets the revocation time to now, or
/// one second past the previous one when that is not before now, marks the user's live
/// refresh rows revoked, and deletes the user's device tokens.
fn revoke_all(tx: &WriteTx<'_>, user_id: UserId, now: &DateTime<Utc>) -> Result<(), Error> {
    let now_seconds = time::unix_seconds(now);
    tx.execute(
        "UPDATE users SET tokens_revoked_at = max(tokens_revoked_at + 1, ?1) WHERE id = ?2",
        params![now_seconds, user_id.0],
    )?;
    tx.execute(
        "UPDATE refresh_tokens SET revoked_at = ?1 WHERE user_id = ?2 AND revoked_at IS NULL",
        params![now_seconds, user_id.0],
    )?;
    tx.prepare_cached("DELETE FROM device_tokens WHERE user_id = ?1")?
        .execute([user_id.0])?;
    Ok(())
}

/// Marks a valid device token of `user_id` used at `now`; false when it is not one
/// (deleted, expired, or another account's) and nothing changed.
fn touch_device(
    tx: &WriteTx<'_>,
    device: Device,
    user_id: UserId,
    now: i64,
    valid_after: i64,
) -> Result<bool, Error> {
    let changed = tx
        .prepare_cached(
            "UPDATE device_tokens SET last_used_at = max(last_used_at, ?1) \
             WHERE token_hash = ?2 AND user_id = ?3 AND last_used_at > ?4",
        )?
        .execute(params![now, &device.digest()[..], user_id.0, valid_after])?;
    Ok(changed == 1)
}

/// Stores a new device token of `user_id`, then deletes the account's tokens beyond the
/// [`DEVICE_TOKENS_PER_ACCOUNT`] most recently used, and a few expired tokens of anyone.
fn insert_device(
    tx: &WriteTx<'_>,
    device: Device,
    user_id: UserId,
    now: i64,
    valid_after: i64,
) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO device_tokens (token_hash, user_id, created_at, last_used_at) \
         VALUES (?1, ?2, ?3, ?3)",
    )?
    .execute(params![&device.digest()[..], user_id.0, now])?;
    tx.prepare_cached(
        "DELETE FROM device_tokens WHERE user_id = ?1 AND token_hash NOT IN \
         (SELECT token_hash FROM device_tokens WHERE user_id = ?1 \
          ORDER BY last_used_at DESC, rowid DESC LIMIT ?2)",
    )?
    .execute(params![user_id.0, DEVICE_TOKENS_PER_ACCOUNT])?;
    tx.prepare_cached(
        "DELETE FROM device_tokens WHERE token_hash IN \
         (SELECT token_hash FROM device_tokens WHERE last_used_at <= ?1 LIMIT ?2)",
    )?
    .execute(params![valid_after, DEVICE_PURGE_PER_LOGIN])?;
    Ok(())
}

/// Which unique name a failed write of the users table found taken; any other failure is
/// the write's error.
fn taken(error: rusqlite::Error) -> Result<Taken, Error> {
    if let rusqlite::Error::SqliteFailure(failure, Some(message)) = &error
        && failure.code == rusqlite::ErrorCode::ConstraintViolation
    {
        if message.contains("users.email") {
            return Ok(Taken::Email);
        }
        if message.contains("users.username") {
            return Ok(Taken::Username);
        }
    }
    Err(error.into())
}

pub(super) fn exists(
    conn: &Connection,
    sql: &str,
    value: &str,
    except: i64,
) -> Result<bool, Error> {
    Ok(conn
        .prepare_cached(sql)?
        .query_row(params![value, except], |_| Ok(()))
        .optional()?
        .is_some())
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

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    let role: String = row.get(3)?;
    Ok(User {
        id: UserId(row.get(0)?),
        username: row.get(1)?,
        email: row.get(2)?,
        // The CHECK constraint keeps other values out; fall back rather than panic.
        role: role.parse().unwrap_or(Role::User),
        department: row.get(4)?,
        is_verified: row.get(5)?,
        is_active: row.get(6)?,
        date_joined: time::from_micros(row.get(7)?),
        last_login: row.get::<_, Option<i64>>(8)?.map(time::from_micros),
        tokens_revoked_at: row.get(9)?,
    })
}

/// The user with this id, if any.
pub(super) fn user_by_id(conn: &Connection, id: UserId) -> Result<Option<User>, Error> {
    Ok(conn
        .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))?
        .query_row([id.0], user_from_row)
        .optional()?)
}

/// The user with this email (lower-cased, as stored) and their password hash, if any.
pub(super) fn credentials_by_email(
    conn: &Connection,
    email: &str,
) -> Result<Option<Credentials>, Error> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = ?1"
        ))?
        .query_row([email], credentials_from_row)
        .optional()?)
}

fn credentials_by_id(conn: &Connection, id: UserId) -> Result<Option<Credentials>, Error> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {USER_COLUMNS}, password_hash FROM users WHERE id = ?1"
        ))?
        .query_row([id.0], credentials_from_row)
        .optional()?)
}

fn credentials_from_row(row: &Row<'_>) -> rusqlite::Result<Credentials> {
    Ok(Credentials {
        user: user_from_row(row)?,
        password_hash: row.get(10)?,
    })
}
