//! [`TokenStore`] on SQLite: the `refresh_tokens` table and the users' revocation times.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::outbox;
use super::{SqliteStore, WriteTx, accounts};
use crate::accounts::UserId;
use crate::error::{Error, TokenProblem};
use crate::store::outbox::Kind;
use crate::store::{
    Audit, FamilyEnd, NewRefresh, PresentedRefresh, RefreshUse, RevocationFacts, TokenHolder,
    TokenLifetimes, TokenStore, UserStamp,
};
use crate::tokens::Family;

impl TokenStore for SqliteStore {
    fn token_holder(
        &self,
        user_id: UserId,
        family: Option<Family>,
    ) -> Result<Option<TokenHolder>, Error> {
        self.read(|conn| {
            let Some(user) = accounts::user_by_id(conn, user_id)? else {
                return Ok(None);
            };
            let family_revoked = match family {
                Some(family) => family_is_revoked(conn, &family.to_string())?,
                None => false,
            };
            Ok(Some(TokenHolder {
                user,
                family_revoked,
            }))
        })
    }

    fn revocation_facts(
        &self,
        users: &[UserId],
        families: &[Family],
    ) -> Result<RevocationFacts, Error> {
        self.read(|conn| {
            let mut statement = conn
                .prepare_cached("SELECT is_active, tokens_revoked_at FROM users WHERE id = ?1")?;
            let mut stamps = HashMap::with_capacity(users.len());
            for &user_id in users {
                let stamp = statement
                    .query_row([user_id.0], |row| {
                        Ok(UserStamp {
                            is_active: row.get(0)?,
                            tokens_revoked_at: row.get(1)?,
                        })
                    })
                    .optional()?;
                stamps.insert(user_id, stamp);
            }
            let mut revoked_families = HashSet::new();
            for &family in families {
                if family_is_revoked(conn, &family.to_string())? {
                    revoked_families.insert(family);
                }
            }
            Ok(RevocationFacts {
                users: stamps,
                revoked_families,
            })
        })
    }

    fn rotate_refresh(
        &self,
        presented: &PresentedRefresh<'_>,
        next_jti: &str,
        lifetimes: TokenLifetimes,
        now_seconds: i64,
        audit: &Audit,
    ) -> Result<RefreshUse, Error> {
        // A refusal commits too: reuse has revoked the family.
        self.write(|tx| {
            let (row, stamp) = match self.live_refresh_row(tx, presented, now_seconds, audit)? {
                Ok(live) => live,
                Err((problem, ended)) => return Ok(RefreshUse::Refused { problem, ended }),
            };
            tx.execute(
                "UPDATE refresh_tokens SET used_at = ?1 WHERE jti = ?2",
                params![now_seconds, presented.jti],
            )?;
            let issued_at = crate::tokens::issued_at(now_seconds, stamp.tokens_revoked_at);
            let next = NewRefresh {
                jti: next_jti.to_owned(),
                family: row.family,
            };
            insert_refresh_row(
                tx,
                &next,
                presented.user_id,
                issued_at,
                issued_at.saturating_add(lifetimes.refresh_seconds),
            )?;
            Ok(RefreshUse::Rotated {
                issued_at,
                family: next.family,
            })
        })
    }

    fn end_family(
        &self,
        presented: &PresentedRefresh<'_>,
        now_seconds: i64,
        audit: &Audit,
    ) -> Result<FamilyEnd, Error> {
        // A refusal commits too: reuse has revoked the family.
        self.write(|tx| {
            let (row, _) = match self.live_refresh_row(tx, presented, now_seconds, audit)? {
                Ok(live) => live,
                Err((problem, ended)) => {
                    return Ok(FamilyEnd {
                        refused: Some(problem),
                        ended,
                    });
                }
            };
            self.end_family_row(tx, presented.user_id, &row.family, now_seconds, audit)?;
            Ok(FamilyEnd {
                refused: None,
                ended: Some(row.family),
            })
        })
    }

    fn purge_expired(
        &self,
        now_seconds: i64,
        lifetimes: TokenLifetimes,
        limit: u32,
    ) -> Result<usize, Error> {
        self.write(|tx| purge_expired(tx, now_seconds, lifetimes.access_seconds, limit))
    }
}

/// Why a presented refresh token is refused, and the family the refusal ended (reuse).
type Refusal = (TokenProblem, Option<String>);

impl SqliteStore {
    /// The stored row of a presented refresh token and its user's stamp, when the token may
    /// still be used; otherwise why it is refused, after recording what the refusal
    /// records: a token presented again after rotation is reuse, and revokes every token of
    /// its login's family (recorded in the outbox with `audit`).
    fn live_refresh_row(
        &self,
        tx: &WriteTx<'_>,
        presented: &PresentedRefresh<'_>,
        now_seconds: i64,
        audit: &Audit,
    ) -> Result<Result<(RefreshRow, UserStamp), Refusal>, Error> {
        let row = match refresh_row(tx, presented.jti)? {
            Some(row) if row.user_id == presented.user_id => row,
            _ => return Ok(Err((TokenProblem::Invalid, None))),
        };
        if row.used_at.is_some() {
            self.end_family_row(tx, row.user_id, &row.family, now_seconds, audit)?;
            return Ok(Err((TokenProblem::Blacklisted, Some(row.family))));
        }
        if row.revoked_at.is_some() {
            return Ok(Err((TokenProblem::Blacklisted, None)));
        }
        let Some(stamp) = user_stamp(tx, presented.user_id)? else {
            return Ok(Err((TokenProblem::Invalid, None)));
        };
        if !stamp.is_active || presented.issued_at <= stamp.tokens_revoked_at {
            return Ok(Err((TokenProblem::Blacklisted, None)));
        }
        Ok(Ok((row, stamp)))
    }

    /// Revokes a login family ([`revoke_family`]) and records it in the outbox.
    fn end_family_row(
        &self,
        tx: &WriteTx<'_>,
        user: UserId,
        family: &str,
        now_seconds: i64,
        audit: &Audit,
    ) -> Result<(), Error> {
        revoke_family(tx, family, now_seconds)?;
        self.record(
            tx,
            &outbox::Row {
                kind: Kind::LoginEnded,
                session: None,
                seq: None,
                user: Some(user),
                payload: serde_json::json!({ "family": family }),
                audit,
            },
        )
    }
}

/// Revokes every refresh token of a login family, and with them the family's access tokens
/// (see [`family_is_revoked`]).
fn revoke_family(tx: &WriteTx<'_>, family: &str, now_seconds: i64) -> Result<(), Error> {
    tx.prepare_cached(
        "UPDATE refresh_tokens SET revoked_at = ?1 WHERE family = ?2 AND revoked_at IS NULL",
    )?
    .execute(params![now_seconds, family])?;
    Ok(())
}

/// Whether a login family is revoked: a refresh token of it was reused or logged out (or
/// every token of its user was revoked). A family whose rows were all purged (expired)
/// counts as not revoked: its access tokens have expired too (see [`purge_expired`]).
fn family_is_revoked(conn: &Connection, family: &str) -> Result<bool, Error> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM refresh_tokens WHERE family = ?1 AND revoked_at IS NOT NULL LIMIT 1",
        )?
        .query_row([family], |_| Ok(()))
        .optional()?
        .is_some())
}

struct RefreshRow {
    user_id: UserId,
    family: String,
    used_at: Option<i64>,
    revoked_at: Option<i64>,
}

fn refresh_row(tx: &WriteTx<'_>, jti: &str) -> Result<Option<RefreshRow>, Error> {
    Ok(tx
        .prepare_cached(
            "SELECT user_id, family, used_at, revoked_at FROM refresh_tokens WHERE jti = ?1",
        )?
        .query_row([jti], |row| {
            Ok(RefreshRow {
                user_id: UserId(row.get(0)?),
                family: row.get(1)?,
                used_at: row.get(2)?,
                revoked_at: row.get(3)?,
            })
        })
        .optional()?)
}

fn user_stamp(tx: &WriteTx<'_>, user_id: UserId) -> Result<Option<UserStamp>, Error> {
    Ok(tx
        .prepare_cached("SELECT is_active, tokens_revoked_at FROM users WHERE id = ?1")?
        .query_row([user_id.0], |row| {
            Ok(UserStamp {
                is_active: row.get(0)?,
                tokens_revoked_at: row.get(1)?,
            })
        })
        .optional()?)
}

/// Stores a refresh token of `user_id`, issued at `issued_at` and expiring at
/// `expires_at` (whole seconds since the epoch).
pub(super) fn insert_refresh_row(
    tx: &WriteTx<'_>,
    refresh: &NewRefresh,
    user_id: UserId,
    issued_at: i64,
    expires_at: i64,
) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO refresh_tokens (jti, user_id, family, issued_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![refresh.jti, user_id.0, refresh.family, issued_at, expires_at])?;
    Ok(())
}

/// Deletes up to `limit` refresh-token rows that expired, and whose access token expired
/// too: a row is what tells that its family is revoked ([`family_is_revoked`]), so it
/// stays while the access token issued with it may be presented (with the default
/// lifetimes the refresh token always lives longer).
pub(super) fn purge_expired(
    tx: &WriteTx<'_>,
    now_seconds: i64,
    access_seconds: i64,
    limit: u32,
) -> Result<usize, Error> {
    Ok(tx
        .prepare_cached(
            "DELETE FROM refresh_tokens WHERE jti IN \
             (SELECT jti FROM refresh_tokens WHERE expires_at < ?1 AND issued_at + ?2 < ?1 LIMIT ?3)",
        )?
        .execute(params![now_seconds, access_seconds, limit])?)
}
