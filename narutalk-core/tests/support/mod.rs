//! Helpers shared by the integration tests: a fresh Narutalk on a file database in a
//! temporary folder, registrations and logins, field-error maps, and reading JWTs by hand.
//!
//! Each test binary uses only some of these, hence `dead_code` is allowed.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Debug;

use narutalk_core::Narutalk;
use narutalk_core::accounts::{Login, User};
use narutalk_core::config::Config;
use narutalk_core::error::Error;
use narutalk_core::fields::JsonObject;
use narutalk_core::store::OpenMode;
use serde_json::Value;

/// A password that breaks no rule for the usernames and emails the tests use.
pub const PASSWORD: &str = "violet-harbour-42";

/// A Narutalk on its own database file. `narutalk` is declared first so that it is
/// dropped (closing the database) before the folder is removed.
pub struct Fixture {
    /// The handle under test.
    pub narutalk: Narutalk,
    /// The settings it was opened with (the signing secret among them).
    pub config: Config,
    /// The temporary folder holding the database.
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// The exact bytes of the signing secret.
    pub fn secret(&self) -> &[u8] {
        self.config.secret_key.as_ref().unwrap().expose().as_bytes()
    }
}

/// A fresh Narutalk with the test settings.
pub fn open() -> Fixture {
    open_with(|_| {})
}

/// A fresh Narutalk with the test settings changed by `edit`.
pub fn open_with(edit: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    edit(&mut config);
    let narutalk = Narutalk::open(&config, OpenMode::CreateIfMissing).unwrap();
    Fixture {
        narutalk,
        config,
        dir,
    }
}

/// The object of a `json!({...})` literal.
pub fn body(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        other => panic!("expected a JSON object, got {other}"),
    }
}

/// Registers `username` / `email` with [`PASSWORD`]; panics on failure.
pub fn register(narutalk: &Narutalk, username: &str, email: &str) -> User {
    let registration = body(serde_json::json!({
        "username": username,
        "email": email,
        "password": PASSWORD,
        "password_confirm": PASSWORD,
    }));
    narutalk.accounts().register_fields(&registration).unwrap()
}

/// Logs in with [`PASSWORD`]; panics on failure.
pub fn login(narutalk: &Narutalk, email: &str) -> Login {
    narutalk.accounts().login(email, PASSWORD).unwrap()
}

/// A field-error map written out: `fields(&[("email", &["Enter a valid email address."])])`.
pub fn fields(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(field, messages)| {
            (
                (*field).to_owned(),
                messages.iter().map(|m| (*m).to_owned()).collect(),
            )
        })
        .collect()
}

/// The field errors of a result that must be [`Error::Invalid`].
pub fn field_errors<T: Debug>(result: Result<T, Error>) -> BTreeMap<String, Vec<String>> {
    match result {
        Err(Error::Invalid(errors)) => errors
            .iter()
            .map(|(field, messages)| (field.to_owned(), messages.to_vec()))
            .collect(),
        other => panic!("expected field errors, got {other:?}"),
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded URL-safe base64 (RFC 4648 section 5), as JWTs use it.
pub fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for sextet in &sextets[..=chunk.len()] {
            out.push(char::from(BASE64URL[*sextet as usize]));
        }
    }
    out
}

/// Decodes unpadded URL-safe base64; panics on a character outside the alphabet.
pub fn base64url_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let value = BASE64URL
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("not base64url: {text:?}"));
        buffer = (buffer << 6) | u32::try_from(value).unwrap();
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).unwrap());
        }
    }
    out
}

/// The three dot-separated parts of a JWT.
pub fn jwt_parts(token: &str) -> [&str; 3] {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {token}");
    [parts[0], parts[1], parts[2]]
}

/// The decoded header of a JWT, as JSON.
pub fn jwt_header(token: &str) -> Value {
    serde_json::from_slice(&base64url_decode(jwt_parts(token)[0])).unwrap()
}

/// The decoded payload (claims) of a JWT, as JSON; the signature is not checked.
pub fn jwt_claims(token: &str) -> Value {
    serde_json::from_slice(&base64url_decode(jwt_parts(token)[1])).unwrap()
}

/// For property tests: `Ok`, or field errors only on `allowed` fields, each with at least
/// one non-empty message; anything else fails the case.
pub fn field_errors_only<T: Debug>(
    result: &Result<T, Error>,
    allowed: &[&str],
) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prop_assert;
    match result {
        Ok(_) => Ok(()),
        Err(Error::Invalid(errors)) => {
            prop_assert!(!errors.is_empty());
            for (field, messages) in errors.iter() {
                prop_assert!(allowed.contains(&field), "unexpected field {}", field);
                prop_assert!(!messages.is_empty() && messages.iter().all(|m| !m.is_empty()));
            }
            Ok(())
        }
        Err(other) => Err(proptest::test_runner::TestCaseError::fail(format!(
            "not a field error: {other:?}"
        ))),
    }
}
