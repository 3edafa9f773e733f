//! Device tokens (`docs/API.md`, Device tokens; OWASP "device cookies"): the
//! `device_tokens` table.
//!
//! A successful login answers a device token: 32 random bytes as 43 base64url characters,
//! bound to the account. Only its SHA-256 is stored (a 256-bit random token needs no slow
//! hash: nobody can guess one to test against the digest). A later login that presents a
//! valid device token of the account its email names may be counted against that device's
//! own failure budget instead of the account's (the server keeps both budgets, keyed by
//! [`Device`]). A token is valid for [`DEVICE_TOKEN_DAYS`] days from its last use; an
//! account keeps its [`DEVICE_TOKENS_PER_ACCOUNT`] most recently used tokens, older ones
//! are deleted as new ones are issued. Every event that revokes an account's JWTs
//! (password change or reset, deactivation, "log out everywhere") deletes its device
//! tokens too.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::UserId;
use crate::error::Error;
use crate::store::sqlite::WriteTx;

/// How long a device token stays valid after its last use, in days.
pub const DEVICE_TOKEN_DAYS: i64 = 90;

/// How many device tokens one account keeps: the most recently used ones.
pub const DEVICE_TOKENS_PER_ACCOUNT: u32 = 20;

/// The length of a device token: 32 bytes in unpadded base64url.
pub const DEVICE_TOKEN_CHARS: usize = 43;

/// How many expired device tokens one login deletes at most.
const PURGE_PER_LOGIN: u32 = 100;

/// A presented device token, known by its SHA-256: what a server keys the device's
/// failure budget by. It says nothing about validity; [`crate::accounts::Accounts::trusted_device`]
/// answers one only for a valid token of the account named.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Device([u8; 32]);

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the digest: a log line has no use for it.
        f.write_str("Device(..)")
    }
}

impl Device {
    /// The device of a token that has a device token's shape (43 base64url characters);
    /// `None` for anything else, which is never looked up.
    pub fn of(token: &str) -> Option<Device> {
        let well_formed = token.len() == DEVICE_TOKEN_CHARS
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        well_formed.then(|| Device(Sha256::digest(token.as_bytes()).into()))
    }
}

/// A new device token and its device: 32 bytes from the operating system's generator.
pub(crate) fn new_token() -> Result<(String, Device), Error> {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::internal(format!("no randomness for a device token: {e}")))?;
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let device = Device::of(&token)
        .ok_or_else(|| Error::internal("a new device token has the wrong shape"))?;
    Ok((token, device))
}

/// Microseconds in [`DEVICE_TOKEN_DAYS`] days.
const VALIDITY_MICROS: i64 = DEVICE_TOKEN_DAYS * 24 * 3600 * 1_000_000;

/// The latest last use that is too old at `now` (both in microseconds since the epoch,
/// as stored): a token is valid while its last use is after this.
fn valid_since(now: i64) -> i64 {
    now.saturating_sub(VALIDITY_MICROS)
}

/// Whether `device` is a valid (unexpired) device token of the account whose lower-cased
/// email is `email`.
pub(crate) fn belongs_to_email(
    conn: &Connection,
    device: Device,
    email: &str,
    now: i64,
) -> Result<bool, Error> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM device_tokens AS d JOIN users AS u ON u.id = d.user_id \
             WHERE d.token_hash = ?1 AND u.email = ?2 AND d.last_used_at > ?3",
        )?
        .query_row(params![&device.0[..], email, valid_since(now)], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Marks a valid device token of `user_id` used at `now`; false when it is not one
/// (deleted, expired, or another account's) and nothing changed.
pub(crate) fn touch(
    tx: &WriteTx<'_>,
    device: Device,
    user_id: UserId,
    now: i64,
) -> Result<bool, Error> {
    let changed = tx
        .prepare_cached(
            "UPDATE device_tokens SET last_used_at = max(last_used_at, ?1) \
             WHERE token_hash = ?2 AND user_id = ?3 AND last_used_at > ?4",
        )?
        .execute(params![now, &device.0[..], user_id.0, valid_since(now)])?;
    Ok(changed == 1)
}

/// Stores a new device token of `user_id`, then deletes the account's tokens beyond the
/// [`DEVICE_TOKENS_PER_ACCOUNT`] most recently used, and a few expired tokens of anyone.
pub(crate) fn insert(
    tx: &WriteTx<'_>,
    device: Device,
    user_id: UserId,
    now: i64,
) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO device_tokens (token_hash, user_id, created_at, last_used_at) \
         VALUES (?1, ?2, ?3, ?3)",
    )?
    .execute(params![&device.0[..], user_id.0, now])?;
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
    .execute(params![valid_since(now), PURGE_PER_LOGIN])?;
    Ok(())
}

/// Deletes every device token of `user_id`: part of revoking all of an account's tokens.
pub(crate) fn forget_all(tx: &WriteTx<'_>, user_id: UserId) -> Result<(), Error> {
    tx.prepare_cached("DELETE FROM device_tokens WHERE user_id = ?1")?
        .execute([user_id.0])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_is_43_base64url_characters_of_32_random_bytes() {
        let (token, device) = new_token().unwrap();
        assert_eq!(token.len(), DEVICE_TOKEN_CHARS);
        assert_eq!(URL_SAFE_NO_PAD.decode(&token).unwrap().len(), 32);
        assert_eq!(Device::of(&token), Some(device));
        let (other, _) = new_token().unwrap();
        assert_ne!(token, other);
    }

    #[test]
    fn only_a_token_of_the_right_shape_has_a_device() {
        let good = "A".repeat(42) + "_";
        assert!(Device::of(&good).is_some());
        for bad in [
            String::new(),
            "A".repeat(42),
            "A".repeat(44),
            "A".repeat(42) + "=",
            "A".repeat(42) + "+",
            "A".repeat(42) + "\u{0}",
            "가".repeat(14) + "A",
        ] {
            assert_eq!(Device::of(&bad), None, "{bad:?}");
        }
        assert_ne!(Device::of(&good), Device::of(&"B".repeat(43)));
        assert_eq!(format!("{:?}", Device::of(&good).unwrap()), "Device(..)");
    }

    #[test]
    fn a_token_is_valid_for_ninety_days_after_its_last_use() {
        let used = 1_000_000_000_000;
        let ninety_days = 90 * 24 * 3600 * 1_000_000;
        // Valid while `last_used_at > valid_since(now)`: a second before the 90 days are
        // over, not once they are.
        assert!(used > valid_since(used + ninety_days - 1));
        assert!(used <= valid_since(used + ninety_days));
    }
}
