//! Device tokens (`docs/API.md`, Device tokens; OWASP "device cookies"): what one is and
//! how long it is valid; the store keeps them ([`crate::store::AccountStore`]).
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
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// How long a device token stays valid after its last use, in days.
pub const DEVICE_TOKEN_DAYS: i64 = 90;

/// How many device tokens one account keeps: the most recently used ones.
pub const DEVICE_TOKENS_PER_ACCOUNT: u32 = 20;

/// The length of a device token: 32 bytes in unpadded base64url.
pub const DEVICE_TOKEN_CHARS: usize = 43;

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

    /// The SHA-256 of the token: the only form a store keeps.
    pub fn digest(&self) -> [u8; 32] {
        self.0
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

/// The latest last use that is too old at `now`: a device token is valid while its last
/// use is after this.
pub fn valid_after(now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::days(DEVICE_TOKEN_DAYS)
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
        let used = crate::time::from_micros(1_000_000_000_000);
        let ninety_days = chrono::Duration::days(90);
        let micro = chrono::Duration::microseconds(1);
        // Valid while `last_used_at > valid_after(now)`: a microsecond before the 90 days
        // are over, not once they are.
        assert!(used > valid_after(used + ninety_days - micro));
        assert!(used <= valid_after(used + ninety_days));
    }
}
