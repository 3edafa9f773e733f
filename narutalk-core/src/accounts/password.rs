//! Password hashing: argon2id at OWASP's parameters, stored as PHC strings.

use std::sync::LazyLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::error::Error;

/// OWASP's argon2id minimum: 19 MiB of memory, 2 passes, 1 lane.
pub const MEMORY_KIB: u32 = 19_456;
/// Passes over memory.
pub const ITERATIONS: u32 = 2;
/// Lanes.
pub const PARALLELISM: u32 = 1;

/// A hash of a password nobody knows, so that a login for an unknown email spends the same
/// work as one for a known email (no account enumeration by timing).
static DUMMY_HASH: LazyLock<Option<String>> =
    LazyLock::new(|| hash("narutalk: no account has this password").ok());

fn argon2() -> Result<Argon2<'static>, Error> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .map_err(|e| Error::Internal(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes `password` with a fresh 16-byte random salt into a PHC string.
pub fn hash(password: &str) -> Result<String, Error> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::Internal(format!("random salt: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Internal(format!("salt: {e}")))?;
    let hashed = argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| Error::Internal(format!("argon2: {e}")))?;
    Ok(hashed.to_string())
}

/// True when `password` matches the PHC string `stored` (with the parameters it records).
/// A damaged stored hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Spends one verification's work and answers nothing: used when the email is unknown.
pub fn verify_nothing(password: &str) {
    if let Some(dummy) = DUMMY_HASH.as_deref() {
        let _ = verify(password, dummy);
    }
}

/// Computes the dummy hash now, so the first unknown-email login is not cheaper or dearer
/// than the others.
pub fn warm_up() {
    LazyLock::force(&DUMMY_HASH);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hashes_are_argon2id_phc_strings_at_owasp_parameters() {
        let stored = hash("correct horse").unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(verify("correct horse", &stored));
        assert!(!verify("correct horsE", &stored));
        assert!(
            !verify("correct horse ", &stored),
            "no trimming, no truncation"
        );
    }

    #[test]
    fn the_same_password_gets_a_different_salt_each_time() {
        assert_ne!(hash("same").unwrap(), hash("same").unwrap());
    }

    #[test]
    fn a_damaged_stored_hash_never_matches() {
        assert!(!verify("x", ""));
        assert!(!verify("x", "$argon2id$garbage"));
    }
}
