//! [`crate::store::TokenStore`] on SQLite: the `refresh_tokens` table and the users'
//! revocation times.

use rusqlite::params;

use super::WriteTx;
use crate::accounts::UserId;
use crate::error::Error;
use crate::store::NewRefresh;

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
/// too: a row is what tells that its family is revoked, so it stays while the access token
/// issued with it may be presented (with the default lifetimes the refresh token always
/// lives longer).
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
