//! Protects the account rules of contract section 2 and the field messages of section 1.2:
//! registration, login, profiles, password changes, the dashboard and the administrators'
//! operations, through `narutalk_core`'s public API on a real database file; and of
//! section 9: NUL characters refused, the login split in two steps, device tokens.

#![allow(clippy::unwrap_used)]

mod support;

use narutalk_core::accounts::devices::Device;
use narutalk_core::accounts::{LoginInput, NewUser, Role, UserFilter, UserId};
use narutalk_core::chat::Category;
use narutalk_core::error::{Error, TokenProblem};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::json;
use support::{PASSWORD, body, field_errors, field_errors_only, fields, login, open, register};

const REQUIRED: &str = "This field is required.";
const NOT_NULL: &str = "This field may not be null.";
const NOT_A_STRING: &str = "Not a valid string.";
const BLANK: &str = "This field may not be blank.";
const EMAIL_INVALID: &str = "Enter a valid email address.";
const EMAIL_TAKEN: &str = "user with this email already exists.";
const USERNAME_INVALID: &str = "Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters.";
const USERNAME_TAKEN: &str = "A user with that username already exists.";
const TOO_SHORT: &str = "This password is too short. It must contain at least 8 characters.";
const TOO_LONG: &str = "This password is too long. It must contain at most 128 characters.";
const NUMERIC: &str = "This password is entirely numeric.";
const COMMON: &str = "This password is too common.";
const SIMILAR_USERNAME: &str = "The password is too similar to the username.";
const SIMILAR_EMAIL: &str = "The password is too similar to the email address.";
const PASSWORDS_DIFFER: &str = "Passwords do not match.";
const OLD_PASSWORD_WRONG: &str =
    "Your old password was entered incorrectly. Please enter it again.";
const NUL: &str = "Null characters are not allowed.";

/// A second password that breaks no rule, for password changes.
const NEW_PASSWORD: &str = "quiet-meadow-9174";

/// The `password` messages of a registration of `username` / `email` with `password`
/// given twice. Fails before any hashing, so it is cheap.
fn password_messages(username: &str, email: &str, password: &str) -> Vec<String> {
    let narutalk = open();
    let result = narutalk.narutalk.accounts().register_fields(&body(json!({
        "username": username, "email": email,
        "password": password, "password_confirm": password,
    })));
    let mut errors = field_errors(result);
    let messages = errors.remove("password").unwrap_or_default();
    assert!(errors.is_empty(), "only the password is wrong: {errors:?}");
    messages
}

fn new_user(username: &str, email: &str, password: &str, role: Role) -> NewUser {
    NewUser {
        email: email.to_owned(),
        username: username.to_owned(),
        password: password.to_owned(),
        role,
        department: String::new(),
        is_verified: false,
    }
}

// ---------------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------------

/// A registration answers the stored user: email lower-cased, role `user`, unverified,
/// empty department, active, never logged in.
#[test]
fn registration_returns_the_user_with_a_lowercased_email_and_the_defaults() {
    let f = open();
    let user = register(&f.narutalk, "kim", "Kim.Doctor@Example.COM");
    assert!(user.id.0 > 0);
    assert_eq!(user.username, "kim");
    assert_eq!(user.email, "kim.doctor@example.com");
    assert_eq!(user.role, Role::User);
    assert!(!user.is_verified);
    assert_eq!(user.department, "");
    assert!(user.is_active);
    assert_eq!(user.last_login, None);
    assert_eq!(user.tokens_revoked_at, 0);
    assert_eq!(f.narutalk.accounts().get(user.id).unwrap(), user);
    assert_eq!(
        f.narutalk.accounts().list(&UserFilter::default()).unwrap(),
        vec![user]
    );
}

/// `doctor` and `nurse` may be chosen at registration, a department is kept (trimmed, as
/// DRF trims), and a Korean username such as `김철수` is valid.
#[test]
fn registration_accepts_a_korean_username_a_role_and_a_department() {
    let f = open();
    let doctor = f
        .narutalk
        .accounts()
        .register_fields(&body(json!({
            "username": "김철수", "email": "kim@example.com",
            "password": PASSWORD, "password_confirm": PASSWORD,
            "role": "doctor", "department": "  심장내과  ",
        })))
        .unwrap();
    assert_eq!(doctor.username, "김철수");
    assert_eq!(doctor.role, Role::Doctor);
    assert_eq!(doctor.department, "심장내과");
    assert!(!doctor.is_verified);

    let nurse = f
        .narutalk
        .accounts()
        .register_fields(&body(json!({
            "username": "  lee  ", "email": "lee@example.com",
            "password": PASSWORD, "password_confirm": PASSWORD,
            "role": "nurse", "department": "",
        })))
        .unwrap();
    assert_eq!(nurse.username, "lee");
    assert_eq!(nurse.role, Role::Nurse);
    assert_eq!(nurse.department, "");
}

/// An empty body gets `This field is required.` under each of the four required fields
/// and nothing else (`role` and `department` are optional).
#[test]
fn registration_requires_username_email_password_and_password_confirm() {
    let f = open();
    let errors = field_errors(f.narutalk.accounts().register_fields(&body(json!({}))));
    assert_eq!(
        errors,
        fields(&[
            ("email", &[REQUIRED]),
            ("password", &[REQUIRED]),
            ("password_confirm", &[REQUIRED]),
            ("username", &[REQUIRED]),
        ])
    );
}

/// `null` is refused with `This field may not be null.` for every field, optional ones too.
#[test]
fn registration_refuses_null_for_every_field() {
    let f = open();
    let errors = field_errors(f.narutalk.accounts().register_fields(&body(json!({
        "username": null, "email": null, "password": null,
        "password_confirm": null, "role": null, "department": null,
    }))));
    assert_eq!(
        errors,
        fields(&[
            ("department", &[NOT_NULL]),
            ("email", &[NOT_NULL]),
            ("password", &[NOT_NULL]),
            ("password_confirm", &[NOT_NULL]),
            ("role", &[NOT_NULL]),
            ("username", &[NOT_NULL]),
        ])
    );
}

/// No coercion: a number, boolean, list or object where a string is expected is
/// `Not a valid string.`, for the role too.
#[test]
fn registration_refuses_values_that_are_not_strings() {
    let f = open();
    let errors = field_errors(f.narutalk.accounts().register_fields(&body(json!({
        "username": 5, "email": true, "password": ["violet-harbour-42"],
        "password_confirm": {"x": 1}, "role": 1, "department": 3.5,
    }))));
    assert_eq!(
        errors,
        fields(&[
            ("department", &[NOT_A_STRING]),
            ("email", &[NOT_A_STRING]),
            ("password", &[NOT_A_STRING]),
            ("password_confirm", &[NOT_A_STRING]),
            ("role", &[NOT_A_STRING]),
            ("username", &[NOT_A_STRING]),
        ])
    );
}

/// Empty and whitespace-only strings are blank; a blank department is allowed; a blank
/// role is not a choice.
#[test]
fn registration_refuses_blank_fields_but_allows_a_blank_department() {
    let f = open();
    let errors = field_errors(f.narutalk.accounts().register_fields(&body(json!({
        "username": "", "email": "   ", "password": "", "password_confirm": " \t ",
        "role": "", "department": "   ",
    }))));
    assert_eq!(
        errors,
        fields(&[
            ("email", &[BLANK]),
            ("password", &[BLANK]),
            ("password_confirm", &[BLANK]),
            ("role", &["\"\" is not a valid choice."]),
            ("username", &[BLANK]),
        ])
    );
}

/// Over-long fields name their own limit: username 150, email 254, department 100,
/// password 128.
#[test]
fn registration_refuses_too_long_fields_naming_each_limit() {
    let f = open();
    let long_email = format!("{}@example.com", "k".repeat(255 - "@example.com".len()));
    assert_eq!(long_email.chars().count(), 255);
    let long_password = "x7-".repeat(43);
    assert_eq!(long_password.chars().count(), 129);
    let errors = field_errors(f.narutalk.accounts().register_fields(&body(json!({
        "username": "k".repeat(151), "email": long_email,
        "password": long_password, "password_confirm": long_password,
        "department": "d".repeat(101),
    }))));
    assert_eq!(
        errors,
        fields(&[
            (
                "department",
                &["Ensure this field has no more than 100 characters."]
            ),
            (
                "email",
                &["Ensure this field has no more than 254 characters."]
            ),
            ("password", &[TOO_LONG]),
            (
                "username",
                &["Ensure this field has no more than 150 characters."]
            ),
        ])
    );
}

/// Limits count Unicode characters, not bytes: a 150-character Korean username, a
/// 254-character email with a Korean domain, a 100-character Korean department and an
/// 8-character Korean password are accepted; one character more (or less) is not.
#[test]
fn registration_counts_lengths_in_characters_not_bytes() {
    let f = open();
    let domain = format!("{}.com", "가".repeat(63));
    let email_254 = format!("{}@{domain}", "k".repeat(254 - 1 - domain.chars().count()));
    assert_eq!(email_254.chars().count(), 254);
    assert!(email_254.len() > 254);
    let password_8 = "가나다라마바사아";
    assert!(password_8.len() > 8);

    let user = f
        .narutalk
        .accounts()
        .register_fields(&body(json!({
            "username": "김".repeat(150), "email": email_254,
            "password": password_8, "password_confirm": password_8,
            "department": "가".repeat(100),
        })))
        .unwrap();
    assert_eq!(user.username.chars().count(), 150);
    assert_eq!(user.department.chars().count(), 100);
    f.narutalk.accounts().login(&email_254, password_8).unwrap();

    let errors = field_errors(f.narutalk.accounts().register_fields(&body(json!({
        "username": "김".repeat(151), "email": format!("k{email_254}"),
        "password": "가나다라마바사", "password_confirm": "가나다라마바사",
        "department": "가".repeat(101),
    }))));
    assert_eq!(
        errors,
        fields(&[
            (
                "department",
                &["Ensure this field has no more than 100 characters."]
            ),
            (
                "email",
                &["Ensure this field has no more than 254 characters."]
            ),
            ("password", &[TOO_SHORT]),
            (
                "username",
                &["Ensure this field has no more than 150 characters."]
            ),
        ])
    );
}

/// A username holds only letters, digits and `@.+-_`.
#[test]
fn registration_refuses_a_username_with_other_characters() {
    let f = open();
    for username in [
        "kim lee", "kim!", "kim/lee", "kim#1", "kim😀", "kim\nlee", "(kim)",
    ] {
        let errors = field_errors(f.narutalk.accounts().register_fields(&body(json!({
            "username": username, "email": "kim@example.com",
            "password": PASSWORD, "password_confirm": PASSWORD,
        }))));
        assert_eq!(
            errors,
            fields(&[("username", &[USERNAME_INVALID])]),
            "{username:?}"
        );
    }
}

/// Email syntax follows Django's validator.
#[test]
fn registration_refuses_an_email_with_invalid_syntax() {
    let f = open();
    for email in [
        "plainaddress",
        "kim@",
        "@example.com",
        "kim@example",
        "kim lee@example.com",
        "a..b@example.com",
    ] {
        let errors = field_errors(f.narutalk.accounts().register_fields(&body(json!({
            "username": "kim", "email": email,
            "password": PASSWORD, "password_confirm": PASSWORD,
        }))));
        assert_eq!(errors, fields(&[("email", &[EMAIL_INVALID])]), "{email:?}");
    }
}

/// Emails are unique whatever their case: the duplicate is a field error (never a 409).
#[test]
fn registration_refuses_an_email_taken_in_another_case() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let errors = field_errors(f.narutalk.accounts().register_fields(&body(json!({
        "username": "lee", "email": "KIM@Example.com",
        "password": PASSWORD, "password_confirm": PASSWORD,
    }))));
    assert_eq!(errors, fields(&[("email", &[EMAIL_TAKEN])]));
    assert_eq!(
        f.narutalk
            .accounts()
            .list(&UserFilter::default())
            .unwrap()
            .len(),
        1
    );
}

/// Usernames are unique.
#[test]
fn registration_refuses_a_taken_username() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let errors = field_errors(f.narutalk.accounts().register_fields(&body(json!({
        "username": "kim", "email": "other@example.com",
        "password": PASSWORD, "password_confirm": PASSWORD,
    }))));
    assert_eq!(errors, fields(&[("username", &[USERNAME_TAKEN])]));
}

/// A password under 8 characters is too short.
#[test]
fn registration_refuses_a_password_under_eight_characters() {
    assert_eq!(
        password_messages("kim", "kim@example.com", "Xq7#pL2"),
        [TOO_SHORT]
    );
}

/// A password over 128 characters gets only the too-long message.
#[test]
fn registration_refuses_a_password_over_128_characters() {
    assert_eq!(
        password_messages("kim", "kim@example.com", &"4".repeat(129)),
        [TOO_LONG]
    );
}

/// A password of only digits is entirely numeric.
#[test]
fn registration_refuses_an_entirely_numeric_password() {
    assert_eq!(
        password_messages("kim", "kim@example.com", "40981273645"),
        [NUMERIC]
    );
}

/// A password from the common list is too common, whatever its case.
#[test]
fn registration_refuses_a_common_password() {
    assert_eq!(
        password_messages("kim", "kim@example.com", "password"),
        [COMMON]
    );
    assert_eq!(
        password_messages("kim", "kim@example.com", "PassWord1"),
        [COMMON]
    );
}

/// A password too similar to the username is refused.
#[test]
fn registration_refuses_a_password_similar_to_the_username() {
    assert_eq!(
        password_messages("kimdoctor", "park@example.com", "kimdoctor1"),
        [SIMILAR_USERNAME]
    );
}

/// A password too similar to the email (or its local part) is refused.
#[test]
fn registration_refuses_a_password_similar_to_the_email() {
    assert_eq!(
        password_messages("kd", "kim.doctor@example.com", "doctor88"),
        [SIMILAR_EMAIL]
    );
    assert_eq!(
        password_messages("kd", "kimdoctor@example.com", "kimdoctor@example.com"),
        [SIMILAR_EMAIL]
    );
}

/// Each failed password rule is one message, in Django's order.
#[test]
fn registration_reports_every_failed_password_rule() {
    assert_eq!(
        password_messages("kim", "kim@example.com", "1234567"),
        [TOO_SHORT, COMMON, NUMERIC]
    );
}

/// `admin` cannot be chosen at registration (nor any other unknown role).
#[test]
fn registration_refuses_the_admin_role() {
    let f = open();
    for role in ["admin", "Admin", "superuser"] {
        let errors = field_errors(f.narutalk.accounts().register_fields(&body(json!({
            "username": "kim", "email": "kim@example.com",
            "password": PASSWORD, "password_confirm": PASSWORD, "role": role,
        }))));
        assert_eq!(
            errors,
            fields(&[(
                "role",
                &[format!("\"{role}\" is not a valid choice.").as_str()]
            )])
        );
    }
    assert!(
        f.narutalk
            .accounts()
            .list(&UserFilter::default())
            .unwrap()
            .is_empty()
    );
}

/// A role that is not a string is refused without coercion.
#[test]
fn registration_refuses_a_role_that_is_not_a_string() {
    let f = open();
    for role in [
        json!(1),
        json!(true),
        json!(["doctor"]),
        json!({"role": "doctor"}),
    ] {
        let errors = field_errors(f.narutalk.accounts().register_fields(&body(json!({
            "username": "kim", "email": "kim@example.com",
            "password": PASSWORD, "password_confirm": PASSWORD, "role": role,
        }))));
        assert_eq!(errors, fields(&[("role", &[NOT_A_STRING])]));
    }
}

/// Every bad field is reported in one answer.
#[test]
fn registration_reports_several_bad_fields_together() {
    let f = open();
    let errors = field_errors(f.narutalk.accounts().register_fields(&body(json!({
        "username": "kim!", "email": "not-an-email", "password": "Xq7#",
        "role": "admin", "department": "d".repeat(101),
    }))));
    assert_eq!(
        errors,
        fields(&[
            (
                "department",
                &["Ensure this field has no more than 100 characters."]
            ),
            ("email", &[EMAIL_INVALID]),
            ("password", &[TOO_SHORT]),
            ("password_confirm", &[REQUIRED]),
            ("role", &["\"admin\" is not a valid choice."]),
            ("username", &[USERNAME_INVALID]),
        ])
    );
}

/// Different passwords are a cross-field error under `non_field_errors`, and only when
/// every field passed; nothing is stored.
#[test]
fn registration_reports_passwords_that_differ_only_when_every_field_passed() {
    let f = open();
    let accounts = f.narutalk.accounts();
    let errors = field_errors(accounts.register_fields(&body(json!({
        "username": "kim", "email": "kim@example.com",
        "password": PASSWORD, "password_confirm": "violet-harbour-43",
    }))));
    assert_eq!(errors, fields(&[("non_field_errors", &[PASSWORDS_DIFFER])]));

    let errors = field_errors(accounts.register_fields(&body(json!({
        "username": "kim", "email": "kim@",
        "password": PASSWORD, "password_confirm": "violet-harbour-43",
    }))));
    assert_eq!(errors, fields(&[("email", &[EMAIL_INVALID])]));

    let errors = field_errors(accounts.register_fields(&body(json!({
        "username": "kim", "email": "kim@example.com",
        "password": "password", "password_confirm": "violet-harbour-43",
    }))));
    assert_eq!(errors, fields(&[("password", &[COMMON])]));

    assert!(accounts.list(&UserFilter::default()).unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------

/// A login answers a token pair and the user, and records `last_login`.
#[test]
fn login_returns_tokens_and_the_user_and_records_last_login() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let before = chrono::Utc::now();
    let login = login(&f.narutalk, "kim@example.com");
    let after = chrono::Utc::now();

    let last_login = login.user.last_login.unwrap();
    assert!(before <= last_login && last_login <= after, "{last_login}");
    assert_eq!(login.user.id, user.id);
    assert_eq!(login.user.email, "kim@example.com");
    assert_eq!(login.user.username, "kim");
    assert_ne!(login.tokens.access, login.tokens.refresh);
    assert_eq!(f.narutalk.accounts().get(user.id).unwrap(), login.user);
    assert_eq!(
        f.narutalk
            .tokens()
            .authenticate(&login.tokens.access)
            .unwrap(),
        login.user
    );
}

/// The email of a login is compared without regard to case.
#[test]
fn login_ignores_the_case_of_the_email() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let login = f
        .narutalk
        .accounts()
        .login("KIM@Example.Com", PASSWORD)
        .unwrap();
    assert_eq!(login.user.id, user.id);
    let login = f
        .narutalk
        .accounts()
        .login_fields(&body(
            json!({"email": "Kim@EXAMPLE.com", "password": PASSWORD}),
        ))
        .unwrap();
    assert_eq!(login.user.id, user.id);
}

/// A wrong password, an unknown email and an inactive account (with its right password)
/// all answer exactly `BadCredentials`, and none records a login.
#[test]
fn login_answers_bad_credentials_for_a_wrong_password_an_unknown_email_and_an_inactive_account() {
    let f = open();
    let accounts = f.narutalk.accounts();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    assert!(matches!(
        accounts.login("kim@example.com", "violet-harbour-43"),
        Err(Error::BadCredentials)
    ));
    assert!(matches!(
        accounts.login("nobody@example.com", PASSWORD),
        Err(Error::BadCredentials)
    ));
    accounts.set_active(user.id, false).unwrap();
    assert!(matches!(
        accounts.login("kim@example.com", PASSWORD),
        Err(Error::BadCredentials)
    ));
    assert_eq!(accounts.get(user.id).unwrap().last_login, None);
}

/// The login body needs an email and a password, both strings.
#[test]
fn login_fields_require_an_email_and_a_password() {
    let f = open();
    let accounts = f.narutalk.accounts();
    assert_eq!(
        field_errors(accounts.login_fields(&body(json!({})))),
        fields(&[("email", &[REQUIRED]), ("password", &[REQUIRED])])
    );
    assert_eq!(
        field_errors(accounts.login_fields(&body(json!({"email": 1, "password": null})))),
        fields(&[("email", &[NOT_A_STRING]), ("password", &[NOT_NULL])])
    );
    assert_eq!(
        field_errors(accounts.login_fields(&body(json!({"email": " ", "password": ""})))),
        fields(&[("email", &[BLANK]), ("password", &[BLANK])])
    );
}

/// The first step of a login checks the fields only: the email trimmed and lower-cased,
/// the password as sent, and a `device` kept only when it has a device token's shape
/// (anything else is ignored, never an error).
#[test]
fn login_input_checks_the_fields_and_ignores_a_device_that_is_not_a_token() {
    let device = "A".repeat(43);
    let input = LoginInput::from_fields(&body(json!({
        "email": " Kim@Example.COM ", "password": " pass ", "device": device,
    })))
    .unwrap();
    assert_eq!(input.email(), "kim@example.com");
    assert_eq!(input.device(), Device::of(&device));
    assert!(input.device().is_some());
    assert_eq!(
        input.email_key(),
        LoginInput::new("KIM@example.com", "other").email_key(),
        "the budget key is the lower-cased email only"
    );
    assert_ne!(
        input.email_key(),
        LoginInput::new("lee@example.com", " pass ").email_key()
    );
    for ignored in [
        json!(5),
        json!(null),
        json!({"token": device}),
        json!("garbage"),
        json!(""),
        json!(format!("{device}=")),
    ] {
        let input = LoginInput::from_fields(&body(json!({
            "email": "kim@example.com", "password": PASSWORD, "device": ignored,
        })))
        .unwrap();
        assert_eq!(input.device(), None, "{ignored}");
    }
    assert_eq!(
        field_errors(LoginInput::from_fields(&body(json!({"device": device})))),
        fields(&[("email", &[REQUIRED]), ("password", &[REQUIRED])])
    );
    let debug = format!(
        "{:?}",
        LoginInput::new("kim@example.com", "secret-words").with_device(&device)
    );
    assert!(
        !debug.contains("secret-words") && !debug.contains(&device),
        "{debug}"
    );
}

// ---------------------------------------------------------------------------------------
// Device tokens
// ---------------------------------------------------------------------------------------

/// The rows of `device_tokens`, read straight from the file: (hash, user id, last use).
fn device_rows(f: &support::Fixture) -> Vec<(Vec<u8>, i64, i64)> {
    let conn = rusqlite::Connection::open(&f.config.database).unwrap();
    let mut statement = conn
        .prepare("SELECT token_hash, user_id, last_used_at FROM device_tokens ORDER BY rowid")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Moves the last use of every device token of the file `micros` into the past.
fn age_device_tokens(f: &support::Fixture, micros: i64) {
    let conn = rusqlite::Connection::open(&f.config.database).unwrap();
    conn.execute(
        "UPDATE device_tokens SET last_used_at = last_used_at - ?1",
        [micros],
    )
    .unwrap();
}

/// A login with `device` presented, trusted as [`Accounts::trusted_device`] says.
fn login_with_device(
    f: &support::Fixture,
    email: &str,
    device: &str,
) -> narutalk_core::accounts::Login {
    let accounts = f.narutalk.accounts();
    let input = LoginInput::new(email, PASSWORD).with_device(device);
    let trusted = accounts.trusted_device(&input).unwrap();
    accounts.login_with(&input, trusted).unwrap()
}

fn trusted(f: &support::Fixture, email: &str, device: &str) -> Option<Device> {
    f.narutalk
        .accounts()
        .trusted_device(&LoginInput::new(email, PASSWORD).with_device(device))
        .unwrap()
}

/// A successful login answers a device token: 43 base64url characters (32 random bytes),
/// different at every login, stored only as its SHA-256 and bound to the account.
#[test]
fn login_answers_a_new_device_token_stored_only_as_its_sha256() {
    use base64::Engine;
    use sha2::Digest;
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");

    let first = login(&f.narutalk, "kim@example.com");
    let second = login(&f.narutalk, "kim@example.com");

    for device in [&first.device, &second.device] {
        assert_eq!(device.len(), 43);
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(device)
            .unwrap();
        assert_eq!(bytes.len(), 32);
    }
    assert_ne!(first.device, second.device);
    let rows = device_rows(&f);
    assert_eq!(rows.len(), 2);
    for (row, device) in rows.iter().zip([&first.device, &second.device]) {
        assert_eq!(row.0, sha2::Sha256::digest(device.as_bytes()).to_vec());
        assert_eq!(row.1, user.id.0);
    }
    let file = std::fs::read(&f.config.database).unwrap();
    let wal = std::fs::read(f.config.database.with_extension("sqlite3-wal")).unwrap_or_default();
    for device in [&first.device, &second.device] {
        for bytes in [&file, &wal] {
            assert!(
                !bytes.windows(43).any(|window| window == device.as_bytes()),
                "the token itself is on disk"
            );
        }
    }
}

/// A login that presents a valid device token of its account answers the same token and
/// moves its last use to now; the account keeps one row for it.
#[test]
fn a_login_with_its_valid_device_token_answers_it_again_and_moves_its_last_use() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let first = login(&f.narutalk, "kim@example.com");
    age_device_tokens(&f, 30 * 24 * 3600 * 1_000_000);
    let aged = device_rows(&f)[0].2;

    assert_eq!(
        trusted(&f, "KIM@example.com", &first.device),
        Device::of(&first.device)
    );
    let again = login_with_device(&f, "kim@example.com", &first.device);

    assert_eq!(again.device, first.device);
    let rows = device_rows(&f);
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].2 > aged + 29 * 24 * 3600 * 1_000_000,
        "last use moved"
    );
    let by_fields = f
        .narutalk
        .accounts()
        .login_fields(&body(json!({
            "email": "kim@example.com", "password": PASSWORD, "device": first.device,
        })))
        .unwrap();
    assert_eq!(by_fields.device, first.device);
}

/// A device token is ignored, never an error, when it belongs to another account, when
/// the email is unknown, when it expired (90 days without use), or when the caller does not
/// honour it: the login succeeds with a new token.
#[test]
fn a_foreign_expired_or_unhonoured_device_token_is_ignored_and_a_new_one_answered() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    register(&f.narutalk, "lee", "lee@example.com");
    let kims = login(&f.narutalk, "kim@example.com").device;
    let lees = login(&f.narutalk, "lee@example.com").device;

    assert_eq!(trusted(&f, "kim@example.com", &lees), None);
    assert_eq!(trusted(&f, "nobody@example.com", &kims), None);
    assert_eq!(trusted(&f, "kim@example.com", &"A".repeat(43)), None);
    let foreign = login_with_device(&f, "kim@example.com", &lees);
    assert_ne!(foreign.device, lees);
    assert_ne!(foreign.device, kims);
    let unhonoured = f
        .narutalk
        .accounts()
        .login_with(
            &LoginInput::new("kim@example.com", PASSWORD).with_device(&kims),
            None,
        )
        .unwrap();
    assert_ne!(unhonoured.device, kims);
    // Another device's digest is never honoured for this input either.
    let mismatched = f
        .narutalk
        .accounts()
        .login_with(
            &LoginInput::new("kim@example.com", PASSWORD).with_device(&kims),
            Device::of(&lees),
        )
        .unwrap();
    assert_ne!(mismatched.device, kims);
    assert_ne!(mismatched.device, lees);
    assert_eq!(
        trusted(&f, "lee@example.com", &lees),
        Device::of(&lees),
        "still lee's"
    );

    // One second short of 90 days unused, it is still valid; at 90 days it is not.
    let ninety_days = 90 * 24 * 3600 * 1_000_000_i64;
    let fresh = login(&f.narutalk, "kim@example.com").device;
    age_device_tokens(&f, ninety_days - 1_000_000);
    assert_eq!(trusted(&f, "kim@example.com", &fresh), Device::of(&fresh));
    age_device_tokens(&f, 1_000_000);
    assert_eq!(trusted(&f, "kim@example.com", &fresh), None);
    let expired = login_with_device(&f, "kim@example.com", &fresh);
    assert_ne!(expired.device, fresh);
}

/// Password change, password reset, deactivation and "log out everywhere" each revoke
/// every device token of the account, and only of that account.
#[test]
fn device_tokens_are_revoked_with_every_token_of_the_account() {
    let f = open();
    let kim = register(&f.narutalk, "kim", "kim@example.com");
    register(&f.narutalk, "lee", "lee@example.com");
    let accounts = f.narutalk.accounts();
    let lees = login(&f.narutalk, "lee@example.com").device;
    let mut password = PASSWORD;
    for name in [
        "password change",
        "reset",
        "deactivation",
        "log out everywhere",
    ] {
        let device = accounts.login("kim@example.com", password).unwrap().device;
        assert_eq!(trusted(&f, "kim@example.com", &device), Device::of(&device));
        match name {
            "password change" => {
                accounts
                    .change_password_fields(
                        kim.id,
                        &body(json!({"old_password": password, "new_password": NEW_PASSWORD})),
                    )
                    .unwrap();
                password = NEW_PASSWORD;
            }
            "reset" => {
                accounts.reset_password(kim.id, PASSWORD).unwrap();
                password = PASSWORD;
            }
            "deactivation" => {
                accounts.set_active(kim.id, false).unwrap();
                accounts.set_active(kim.id, true).unwrap();
            }
            _ => accounts.logout_all(kim.id).unwrap(),
        }
        let input = LoginInput::new("kim@example.com", password).with_device(&device);
        assert_eq!(accounts.trusted_device(&input).unwrap(), None, "{name}");
        let rows = device_rows(&f);
        assert!(rows.iter().all(|row| row.1 != kim.id.0), "{name}: {rows:?}");
        assert_eq!(
            trusted(&f, "lee@example.com", &lees),
            Device::of(&lees),
            "{name}"
        );
    }
}

/// An account keeps its 20 most recently used device tokens: a new one pushes out the one
/// used longest ago, and using a token keeps it.
#[test]
fn an_account_keeps_its_twenty_most_recently_used_device_tokens() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    register(&f.narutalk, "lee", "lee@example.com");
    let lees = login(&f.narutalk, "lee@example.com").device;
    let devices: Vec<String> = (0..20)
        .map(|_| login(&f.narutalk, "kim@example.com").device)
        .collect();
    assert_eq!(device_rows(&f).len(), 21);

    assert_eq!(
        login_with_device(&f, "kim@example.com", &devices[0]).device,
        devices[0]
    );
    let newest = login(&f.narutalk, "kim@example.com").device;

    assert_eq!(device_rows(&f).len(), 21, "20 for kim, 1 for lee");
    assert_eq!(
        trusted(&f, "kim@example.com", &devices[1]),
        None,
        "used longest ago"
    );
    for device in devices.iter().skip(2).chain([&devices[0], &newest]) {
        assert_eq!(trusted(&f, "kim@example.com", device), Device::of(device));
    }
    assert_eq!(trusted(&f, "lee@example.com", &lees), Device::of(&lees));
}

/// Deleting the account deletes its device tokens with it.
#[test]
fn deleting_an_account_deletes_its_device_tokens() {
    let f = open();
    let kim = register(&f.narutalk, "kim", "kim@example.com");
    login(&f.narutalk, "kim@example.com");
    f.narutalk.accounts().delete(kim.id).unwrap();
    assert!(device_rows(&f).is_empty());
}

// ---------------------------------------------------------------------------------------
// NUL characters
// ---------------------------------------------------------------------------------------

/// NUL is refused in every string of an account (contract section 9), under the field,
/// after the length check: registration, profile updates, the administrators' create, and
/// the login's fields.
#[test]
fn nul_characters_are_refused_in_every_account_field() {
    let f = open();
    let kim = register(&f.narutalk, "kim", "kim@example.com");
    let accounts = f.narutalk.accounts();

    assert_eq!(
        field_errors(accounts.register_fields(&body(json!({
            "username": "lee\u{0}", "email": "lee\u{0}@example.com",
            "password": "violet\u{0}harbour", "password_confirm": "violet\u{0}harbour",
            "department": "a\u{0}b",
        })))),
        fields(&[
            ("department", &[NUL]),
            ("email", &[NUL]),
            ("password", &[NUL]),
            ("password_confirm", &[NUL]),
            ("username", &[NUL]),
        ])
    );
    assert_eq!(
        field_errors(accounts.update_profile_fields(
            kim.id,
            &body(json!({"username": "\u{0}", "department": "\u{0}".repeat(101)})),
            true,
        )),
        fields(&[
            (
                "department",
                &["Ensure this field has no more than 100 characters."]
            ),
            ("username", &[NUL]),
        ])
    );
    assert_eq!(
        field_errors(accounts.update_profile_fields(
            kim.id,
            &body(json!({"email": "kim@example.com\u{0}", "department": "\u{0}"})),
            true,
        )),
        fields(&[("department", &[NUL]), ("email", &[NUL])])
    );
    let mut new = new_user("lee", "lee@example.com", PASSWORD, Role::Nurse);
    new.department = "ward\u{0}".into();
    assert_eq!(
        field_errors(accounts.create(&new)),
        fields(&[("department", &[NUL])])
    );
    assert_eq!(
        field_errors(accounts.login_fields(&body(json!({
            "email": "kim@example.com\u{0}", "password": "\u{0}",
        })))),
        fields(&[("email", &[NUL]), ("password", &[NUL])])
    );
    assert_eq!(accounts.get(kim.id).unwrap().department, "");
    assert_eq!(accounts.list(&UserFilter::default()).unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------
// Profile
// ---------------------------------------------------------------------------------------

/// The profile is the stored user; an unknown id is `NotFound`.
#[test]
fn profile_read_returns_the_stored_user() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    assert_eq!(f.narutalk.accounts().get(user.id).unwrap(), user);
    assert!(matches!(
        f.narutalk.accounts().get(UserId(user.id.0 + 1)),
        Err(Error::NotFound)
    ));
}

/// PUT needs username and email; department may be left out.
#[test]
fn profile_put_requires_username_and_email() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let accounts = f.narutalk.accounts();
    assert_eq!(
        field_errors(accounts.update_profile_fields(
            user.id,
            &body(json!({"department": "ER"})),
            false
        )),
        fields(&[("email", &[REQUIRED]), ("username", &[REQUIRED])])
    );
    assert_eq!(accounts.get(user.id).unwrap(), user);
    let updated = accounts
        .update_profile_fields(
            user.id,
            &body(json!({"username": "kim2", "email": "Kim2@Example.com"})),
            false,
        )
        .unwrap();
    assert_eq!(updated.username, "kim2");
    assert_eq!(updated.email, "kim2@example.com");
    assert_eq!(updated.department, "");
}

/// PATCH changes only the fields it sends, and a changed email (lower-cased) is the one
/// that logs in.
#[test]
fn profile_patch_changes_only_the_fields_given() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let accounts = f.narutalk.accounts();
    let updated = accounts
        .update_profile_fields(user.id, &body(json!({"department": "Cardiology"})), true)
        .unwrap();
    assert_eq!(updated.department, "Cardiology");
    assert_eq!(updated.username, "kim");
    assert_eq!(updated.email, "kim@example.com");

    let updated = accounts
        .update_profile_fields(user.id, &body(json!({"email": "New@Example.com"})), true)
        .unwrap();
    assert_eq!(updated.email, "new@example.com");
    assert_eq!(updated.department, "Cardiology");
    assert_eq!(accounts.get(user.id).unwrap(), updated);
    assert!(matches!(
        accounts.login("kim@example.com", PASSWORD),
        Err(Error::BadCredentials)
    ));
    assert_eq!(
        accounts.login("new@example.com", PASSWORD).unwrap().user.id,
        user.id
    );

    let unchanged = accounts
        .update_profile_fields(user.id, &body(json!({})), true)
        .unwrap();
    assert_eq!(unchanged.username, "kim");
    assert_eq!(unchanged.email, "new@example.com");
}

/// `role`, `is_verified` and `id` are read-only: a profile update that sends them ignores
/// them, for PUT and PATCH alike.
#[test]
fn profile_update_ignores_role_is_verified_and_id() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let accounts = f.narutalk.accounts();
    let updated = accounts
        .update_profile_fields(
            user.id,
            &body(json!({"role": "admin", "is_verified": true, "id": 999, "department": "ER"})),
            true,
        )
        .unwrap();
    assert_eq!(updated.id, user.id);
    assert_eq!(updated.role, Role::User);
    assert!(!updated.is_verified);
    assert_eq!(updated.department, "ER");

    let updated = accounts
        .update_profile_fields(
            user.id,
            &body(json!({
                "username": "kim", "email": "kim@example.com",
                "role": "doctor", "is_verified": "yes", "id": "x",
            })),
            false,
        )
        .unwrap();
    assert_eq!(updated.id, user.id);
    assert_eq!(updated.role, Role::User);
    assert!(!updated.is_verified);
    assert!(matches!(accounts.get(UserId(999)), Err(Error::NotFound)));
}

/// A username or email held by another user is refused (the email in any case).
#[test]
fn profile_update_refuses_the_username_or_email_of_another_user() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let lee = register(&f.narutalk, "lee", "lee@example.com");
    let errors = field_errors(f.narutalk.accounts().update_profile_fields(
        lee.id,
        &body(json!({"username": "kim", "email": "KIM@example.com"})),
        true,
    ));
    assert_eq!(
        errors,
        fields(&[("email", &[EMAIL_TAKEN]), ("username", &[USERNAME_TAKEN])])
    );
    assert_eq!(f.narutalk.accounts().get(lee.id).unwrap(), lee);
}

/// The user's own username and email (in any case) keep working in an update.
#[test]
fn profile_update_accepts_the_users_own_username_and_email() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let updated = f
        .narutalk
        .accounts()
        .update_profile_fields(
            user.id,
            &body(json!({"username": "kim", "email": "KIM@Example.com", "department": "ER"})),
            false,
        )
        .unwrap();
    assert_eq!(updated.username, "kim");
    assert_eq!(updated.email, "kim@example.com");
    assert_eq!(updated.department, "ER");
}

/// Profile fields are checked with the registration rules and messages.
#[test]
fn profile_update_checks_each_field_with_the_registration_rules() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let accounts = f.narutalk.accounts();
    assert_eq!(
        field_errors(accounts.update_profile_fields(
            user.id,
            &body(json!({"username": "kim lee", "email": "kim@", "department": 5})),
            true,
        )),
        fields(&[
            ("department", &[NOT_A_STRING]),
            ("email", &[EMAIL_INVALID]),
            ("username", &[USERNAME_INVALID])
        ])
    );
    assert_eq!(
        field_errors(accounts.update_profile_fields(
            user.id,
            &body(json!({"username": null, "email": " ", "department": "가".repeat(101)})),
            true,
        )),
        fields(&[
            (
                "department",
                &["Ensure this field has no more than 100 characters."]
            ),
            ("email", &[BLANK]),
            ("username", &[NOT_NULL]),
        ])
    );
    assert_eq!(accounts.get(user.id).unwrap(), user);
}

/// Updating the profile of a user that does not exist is `NotFound`.
#[test]
fn profile_update_of_an_unknown_user_is_not_found() {
    let f = open();
    assert!(matches!(
        f.narutalk.accounts().update_profile_fields(
            UserId(7),
            &body(json!({"department": "x"})),
            true
        ),
        Err(Error::NotFound)
    ));
}

// ---------------------------------------------------------------------------------------
// Password change
// ---------------------------------------------------------------------------------------

/// A wrong old password is reported under `old_password`, and nothing changes.
#[test]
fn password_change_refuses_a_wrong_old_password() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let errors = field_errors(f.narutalk.accounts().change_password_fields(
        user.id,
        &body(json!({"old_password": "violet-harbour-43", "new_password": NEW_PASSWORD})),
    ));
    assert_eq!(errors, fields(&[("old_password", &[OLD_PASSWORD_WRONG])]));
    assert_eq!(
        f.narutalk
            .accounts()
            .get(user.id)
            .unwrap()
            .tokens_revoked_at,
        0
    );
}

/// Both fields are required, and the new password is checked with every password rule,
/// its messages under `new_password` (together with a wrong old password).
#[test]
fn password_change_applies_the_password_rules_under_new_password() {
    let f = open();
    let user = register(&f.narutalk, "kimdoctor", "kim.doctor@example.com");
    let accounts = f.narutalk.accounts();
    assert_eq!(
        field_errors(accounts.change_password_fields(user.id, &body(json!({})))),
        fields(&[("new_password", &[REQUIRED]), ("old_password", &[REQUIRED])])
    );
    assert_eq!(
        field_errors(accounts.change_password_fields(
            user.id,
            &body(json!({"old_password": PASSWORD, "new_password": "1234567"}))
        )),
        fields(&[("new_password", &[TOO_SHORT, COMMON, NUMERIC])])
    );
    assert_eq!(
        field_errors(accounts.change_password_fields(
            user.id,
            &body(json!({"old_password": PASSWORD, "new_password": "kimdoctor1"}))
        )),
        fields(&[("new_password", &[SIMILAR_USERNAME])])
    );
    assert_eq!(
        field_errors(accounts.change_password_fields(
            user.id,
            &body(json!({"old_password": "wrong-password-1", "new_password": "x".repeat(129)}))
        )),
        fields(&[
            ("new_password", &[TOO_LONG]),
            ("old_password", &[OLD_PASSWORD_WRONG])
        ])
    );
    assert_eq!(accounts.get(user.id).unwrap().tokens_revoked_at, 0);
}

/// A successful change revokes every token issued before it, and only the new password
/// logs in.
#[test]
fn password_change_revokes_existing_tokens_and_the_new_password_logs_in() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let accounts = f.narutalk.accounts();
    let tokens = f.narutalk.tokens();
    let before = login(&f.narutalk, "kim@example.com");
    accounts
        .change_password_fields(
            user.id,
            &body(json!({"old_password": PASSWORD, "new_password": NEW_PASSWORD})),
        )
        .unwrap();

    assert!(accounts.get(user.id).unwrap().tokens_revoked_at > 0);
    assert!(matches!(
        tokens.authenticate(&before.tokens.access),
        Err(Error::InvalidToken(_))
    ));
    assert!(matches!(
        tokens.refresh(&before.tokens.refresh),
        Err(Error::InvalidToken(TokenProblem::Blacklisted))
    ));
    assert!(matches!(
        accounts.login("kim@example.com", PASSWORD),
        Err(Error::BadCredentials)
    ));
    let after = accounts.login("kim@example.com", NEW_PASSWORD).unwrap();
    assert_eq!(
        tokens.authenticate(&after.tokens.access).unwrap().id,
        user.id
    );
}

// ---------------------------------------------------------------------------------------
// Dashboard
// ---------------------------------------------------------------------------------------

/// The dashboard counts the user's own sessions updated in the last 7 days and every
/// message in them, AI replies included; other users' data does not count.
#[test]
fn dashboard_counts_the_users_recent_sessions_and_all_their_messages() {
    let f = open();
    let kim = register(&f.narutalk, "kim", "kim@example.com");
    let lee = register(&f.narutalk, "lee", "lee@example.com");
    let chat = f.narutalk.chat();

    let empty = f.narutalk.accounts().dashboard(kim.id).unwrap();
    assert_eq!((empty.recent_chats, empty.total_messages), (0, 0));
    assert_eq!(empty.user, kim);

    let first = chat
        .create_session(kim.id, "Headache", Category::Medical)
        .unwrap()
        .session
        .id;
    let second = chat
        .create_session(kim.id, "Diet", Category::General)
        .unwrap()
        .session
        .id;
    chat.create_session(kim.id, "Empty", Category::General)
        .unwrap();
    f.narutalk.send_message(kim.id, first, "두통").unwrap();
    f.narutalk.send_message(kim.id, first, "열").unwrap();
    f.narutalk.send_message(kim.id, second, "식단").unwrap();
    let other = chat
        .create_session(lee.id, "Cough", Category::Medical)
        .unwrap()
        .session
        .id;
    f.narutalk.send_message(lee.id, other, "기침").unwrap();

    let dashboard = f.narutalk.accounts().dashboard(kim.id).unwrap();
    assert_eq!(dashboard.user, kim);
    assert_eq!(dashboard.recent_chats, 3);
    assert_eq!(
        dashboard.total_messages, 6,
        "three questions and three AI replies"
    );

    let dashboard = f.narutalk.accounts().dashboard(lee.id).unwrap();
    assert_eq!((dashboard.recent_chats, dashboard.total_messages), (1, 2));

    chat.delete_session(kim.id, first).unwrap();
    let dashboard = f.narutalk.accounts().dashboard(kim.id).unwrap();
    assert_eq!((dashboard.recent_chats, dashboard.total_messages), (2, 2));
}

// ---------------------------------------------------------------------------------------
// Administration
// ---------------------------------------------------------------------------------------

/// An administrator can create an admin (verified or not) who can log in; the password,
/// username and email rules still apply, as field errors.
#[test]
fn admin_create_makes_an_admin_and_applies_the_field_rules() {
    let f = open();
    let accounts = f.narutalk.accounts();
    let mut root = new_user("root", "Root@Example.com", PASSWORD, Role::Admin);
    root.is_verified = true;
    root.department = "IT".into();
    let admin = accounts.create(&root).unwrap();
    assert_eq!(admin.role, Role::Admin);
    assert!(admin.is_verified);
    assert_eq!(admin.email, "root@example.com");
    assert_eq!(admin.department, "IT");
    assert_eq!(
        accounts
            .login("root@example.com", PASSWORD)
            .unwrap()
            .user
            .role,
        Role::Admin
    );

    assert_eq!(
        field_errors(accounts.create(&new_user(
            "boss",
            "boss@example.com",
            "password",
            Role::Admin
        ))),
        fields(&[("password", &[COMMON])])
    );
    assert_eq!(
        field_errors(accounts.create(&new_user(
            "radiology",
            "rad@example.com",
            "radiology9",
            Role::Admin
        ))),
        fields(&[("password", &[SIMILAR_USERNAME])])
    );
    assert_eq!(
        field_errors(accounts.create(&new_user(
            "root",
            "ROOT@example.com",
            PASSWORD,
            Role::Doctor
        ))),
        fields(&[("email", &[EMAIL_TAKEN]), ("username", &[USERNAME_TAKEN])])
    );
    assert_eq!(
        field_errors(accounts.create(&new_user("", "bad", "", Role::Nurse))),
        fields(&[
            ("email", &[EMAIL_INVALID]),
            ("password", &[BLANK]),
            ("username", &[BLANK])
        ])
    );
    let ids: Vec<UserId> = accounts
        .list(&UserFilter::default())
        .unwrap()
        .iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(ids, [admin.id]);
}

/// `set_role` and `set_verified` change and store those fields only.
#[test]
fn admin_set_role_and_set_verified_are_stored() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let accounts = f.narutalk.accounts();
    let nurse = accounts.set_role(user.id, Role::Nurse).unwrap();
    assert_eq!(nurse.role, Role::Nurse);
    assert_eq!(accounts.get(user.id).unwrap().role, Role::Nurse);
    let admin = accounts.set_role(user.id, Role::Admin).unwrap();
    assert_eq!(admin.role, Role::Admin);

    let verified = accounts.set_verified(user.id, true).unwrap();
    assert!(verified.is_verified);
    assert_eq!(verified, accounts.get(user.id).unwrap());
    assert_eq!(verified.username, user.username);
    assert_eq!(verified.email, user.email);
    assert!(!accounts.set_verified(user.id, false).unwrap().is_verified);
}

/// Deactivation makes login answer `BadCredentials` and revokes every token at once;
/// reactivation lets the password log in again but the old tokens stay refused.
#[test]
fn admin_set_active_false_refuses_login_and_revokes_tokens() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let accounts = f.narutalk.accounts();
    let tokens = f.narutalk.tokens();
    let session = login(&f.narutalk, "kim@example.com");

    let inactive = accounts.set_active(user.id, false).unwrap();
    assert!(!inactive.is_active);
    assert!(inactive.tokens_revoked_at > 0);
    assert!(matches!(
        tokens.authenticate(&session.tokens.access),
        Err(Error::InvalidToken(_))
    ));
    assert!(matches!(
        tokens.refresh(&session.tokens.refresh),
        Err(Error::InvalidToken(TokenProblem::Blacklisted))
    ));
    assert!(matches!(
        accounts.login("kim@example.com", PASSWORD),
        Err(Error::BadCredentials)
    ));
    assert_eq!(
        accounts
            .list(&UserFilter {
                is_active: Some(false),
                ..UserFilter::default()
            })
            .unwrap(),
        vec![inactive]
    );

    assert!(accounts.set_active(user.id, true).unwrap().is_active);
    assert!(matches!(
        tokens.authenticate(&session.tokens.access),
        Err(Error::InvalidToken(_))
    ));
    let again = login(&f.narutalk, "kim@example.com");
    assert_eq!(
        tokens.authenticate(&again.tokens.access).unwrap().id,
        user.id
    );
}

/// An administrator's password reset applies the password rules (under `password`),
/// revokes every token, and only the new password logs in.
#[test]
fn admin_reset_password_applies_the_rules_and_revokes_tokens() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let accounts = f.narutalk.accounts();
    let tokens = f.narutalk.tokens();
    let session = login(&f.narutalk, "kim@example.com");

    assert_eq!(
        field_errors(accounts.reset_password(user.id, "password")),
        fields(&[("password", &[COMMON])])
    );
    assert_eq!(
        field_errors(accounts.reset_password(user.id, "kim")),
        fields(&[("password", &[SIMILAR_USERNAME, TOO_SHORT, COMMON])])
    );
    assert_eq!(accounts.get(user.id).unwrap().tokens_revoked_at, 0);
    assert_eq!(
        tokens.authenticate(&session.tokens.access).unwrap().id,
        user.id
    );

    accounts.reset_password(user.id, NEW_PASSWORD).unwrap();
    assert!(matches!(
        tokens.authenticate(&session.tokens.access),
        Err(Error::InvalidToken(_))
    ));
    assert!(matches!(
        tokens.refresh(&session.tokens.refresh),
        Err(Error::InvalidToken(TokenProblem::Blacklisted))
    ));
    assert!(matches!(
        accounts.login("kim@example.com", PASSWORD),
        Err(Error::BadCredentials)
    ));
    accounts.login("kim@example.com", NEW_PASSWORD).unwrap();
}

/// "Log out everywhere" revokes every access and refresh token the user holds, and no
/// other user's.
#[test]
fn admin_logout_all_revokes_every_token_of_the_user_only() {
    let f = open();
    let kim = register(&f.narutalk, "kim", "kim@example.com");
    register(&f.narutalk, "lee", "lee@example.com");
    let tokens = f.narutalk.tokens();
    let kims = login(&f.narutalk, "kim@example.com");
    let lees = login(&f.narutalk, "lee@example.com");

    f.narutalk.accounts().logout_all(kim.id).unwrap();
    assert!(f.narutalk.accounts().get(kim.id).unwrap().tokens_revoked_at > 0);
    assert!(matches!(
        tokens.authenticate(&kims.tokens.access),
        Err(Error::InvalidToken(_))
    ));
    assert!(matches!(
        tokens.refresh(&kims.tokens.refresh),
        Err(Error::InvalidToken(TokenProblem::Blacklisted))
    ));
    assert_eq!(
        tokens.authenticate(&lees.tokens.access).unwrap().username,
        "lee"
    );
    tokens.refresh(&lees.tokens.refresh).unwrap();
}

/// Deleting a user removes them, their sessions and messages, and their tokens; the id is
/// never given to the next account.
#[test]
fn admin_delete_removes_the_user_with_their_sessions_and_tokens() {
    let f = open();
    let kim = register(&f.narutalk, "kim", "kim@example.com");
    let lee = register(&f.narutalk, "lee", "lee@example.com");
    let accounts = f.narutalk.accounts();
    let tokens = f.narutalk.tokens();
    let chat = f.narutalk.chat();
    let session = chat
        .create_session(kim.id, "Headache", Category::Medical)
        .unwrap()
        .session
        .id;
    f.narutalk.send_message(kim.id, session, "두통").unwrap();
    let lees_session = chat
        .create_session(lee.id, "Cough", Category::Medical)
        .unwrap()
        .session
        .id;
    let kims = login(&f.narutalk, "kim@example.com");

    accounts.delete(kim.id).unwrap();
    assert!(matches!(accounts.get(kim.id), Err(Error::NotFound)));
    assert!(matches!(
        chat.session(kim.id, session),
        Err(Error::NotFound)
    ));
    assert!(matches!(accounts.dashboard(kim.id), Err(Error::NotFound)));
    assert!(matches!(
        tokens.authenticate(&kims.tokens.access),
        Err(Error::InvalidToken(_))
    ));
    assert!(matches!(
        tokens.refresh(&kims.tokens.refresh),
        Err(Error::InvalidToken(TokenProblem::Invalid))
    ));
    assert!(matches!(accounts.delete(kim.id), Err(Error::NotFound)));
    assert_eq!(
        chat.session(lee.id, lees_session).unwrap().session.id,
        lees_session
    );
    assert_eq!(
        accounts.list(&UserFilter::default()).unwrap(),
        vec![lee.clone()]
    );

    let again = register(&f.narutalk, "kim", "kim@example.com");
    assert!(again.id > lee.id, "ids are never reused");
    assert!(matches!(
        tokens.authenticate(&kims.tokens.access),
        Err(Error::InvalidToken(_))
    ));
}

/// `list` filters by role, verification, activity and a search text (username or email,
/// ASCII case-insensitive), in id order; `%` and `_` in the search match themselves.
#[test]
fn admin_list_filters_by_each_field_and_searches_literally() {
    let f = open();
    let accounts = f.narutalk.accounts();
    let kim = register(&f.narutalk, "kim_lee", "kim.lee@example.com");
    let mut doctor = new_user("kimxlee", "100%sure@example.com", PASSWORD, Role::Doctor);
    doctor.is_verified = true;
    let doctor = accounts.create(&doctor).unwrap();
    let park = accounts
        .create(&new_user(
            "park",
            "park@hospital.org",
            PASSWORD,
            Role::Nurse,
        ))
        .unwrap();
    let park = accounts.set_active(park.id, false).unwrap();

    let list = |filter: UserFilter| -> Vec<UserId> {
        accounts
            .list(&filter)
            .unwrap()
            .iter()
            .map(|u| u.id)
            .collect()
    };
    let search = |text: &str| {
        list(UserFilter {
            search: Some(text.into()),
            ..UserFilter::default()
        })
    };

    assert_eq!(list(UserFilter::default()), [kim.id, doctor.id, park.id]);
    assert_eq!(
        list(UserFilter {
            role: Some(Role::Doctor),
            ..UserFilter::default()
        }),
        [doctor.id]
    );
    assert_eq!(
        list(UserFilter {
            role: Some(Role::Nurse),
            ..UserFilter::default()
        }),
        [park.id]
    );
    assert_eq!(
        list(UserFilter {
            role: Some(Role::User),
            ..UserFilter::default()
        }),
        [kim.id]
    );
    assert_eq!(
        list(UserFilter {
            role: Some(Role::Admin),
            ..UserFilter::default()
        }),
        []
    );
    assert_eq!(
        list(UserFilter {
            is_verified: Some(true),
            ..UserFilter::default()
        }),
        [doctor.id]
    );
    assert_eq!(
        list(UserFilter {
            is_verified: Some(false),
            ..UserFilter::default()
        }),
        [kim.id, park.id]
    );
    assert_eq!(
        list(UserFilter {
            is_active: Some(true),
            ..UserFilter::default()
        }),
        [kim.id, doctor.id]
    );
    assert_eq!(
        list(UserFilter {
            is_active: Some(false),
            ..UserFilter::default()
        }),
        [park.id]
    );
    assert_eq!(
        list(UserFilter {
            role: Some(Role::Doctor),
            is_active: Some(false),
            ..UserFilter::default()
        }),
        []
    );
    assert_eq!(
        list(UserFilter {
            is_verified: Some(false),
            search: Some("KIM".into()),
            ..UserFilter::default()
        }),
        [kim.id]
    );

    assert_eq!(search("KIM"), [kim.id, doctor.id]);
    assert_eq!(search("hospital.ORG"), [park.id]);
    assert_eq!(search("100%s"), [doctor.id]);
    assert_eq!(search("%"), [doctor.id], "% matches only itself");
    assert_eq!(search("_"), [kim.id], "_ matches only itself");
    assert_eq!(search("k_m"), [], "_ is not a wildcard");
    assert_eq!(search("k%e"), [], "% is not a wildcard");
    assert_eq!(search("\\"), []);
    assert_eq!(search("nobody"), []);
}

/// `resolve` finds a user by id (digits) or by email (any case); unknown ones are
/// `NotFound`.
#[test]
fn admin_resolve_finds_a_user_by_id_or_email() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let accounts = f.narutalk.accounts();
    assert_eq!(accounts.resolve(&user.id.to_string()).unwrap(), user);
    assert_eq!(accounts.resolve("KIM@example.com").unwrap(), user);
    assert_eq!(accounts.find_by_email("Kim@Example.com").unwrap(), user);
    assert!(matches!(
        accounts.resolve(&(user.id.0 + 1).to_string()),
        Err(Error::NotFound)
    ));
    assert!(matches!(
        accounts.resolve("99999999999999999999999"),
        Err(Error::NotFound)
    ));
    assert!(matches!(
        accounts.resolve("nobody@example.com"),
        Err(Error::NotFound)
    ));
    assert!(matches!(accounts.resolve("kim"), Err(Error::NotFound)));
    assert!(matches!(accounts.resolve(""), Err(Error::NotFound)));
}

/// Every operation on a user id that does not exist answers `NotFound`.
#[test]
fn admin_operations_on_an_unknown_id_answer_not_found() {
    let f = open();
    let accounts = f.narutalk.accounts();
    let ghost = UserId(42);
    assert!(matches!(accounts.get(ghost), Err(Error::NotFound)));
    assert!(matches!(
        accounts.set_role(ghost, Role::Doctor),
        Err(Error::NotFound)
    ));
    assert!(matches!(
        accounts.set_verified(ghost, true),
        Err(Error::NotFound)
    ));
    assert!(matches!(
        accounts.set_active(ghost, false),
        Err(Error::NotFound)
    ));
    assert!(matches!(
        accounts.reset_password(ghost, NEW_PASSWORD),
        Err(Error::NotFound)
    ));
    assert!(matches!(accounts.logout_all(ghost), Err(Error::NotFound)));
    assert!(matches!(accounts.delete(ghost), Err(Error::NotFound)));
    assert!(matches!(accounts.dashboard(ghost), Err(Error::NotFound)));
    assert!(matches!(
        accounts.change_password_fields(
            ghost,
            &body(json!({"old_password": PASSWORD, "new_password": NEW_PASSWORD}))
        ),
        Err(Error::NotFound)
    ));
    assert!(accounts.list(&UserFilter::default()).unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// The user object's wire shape, and races with administrators
// ---------------------------------------------------------------------------------------

/// A login that checked the old password while an administrator reset it must not end
/// with usable tokens: whichever finishes first, no token from the old password works
/// afterwards, and the new password logs in.
#[test]
fn a_login_racing_a_password_reset_never_leaves_a_usable_token() {
    for delay_ms in [0, 5, 10, 15, 20] {
        let fixture = open();
        let narutalk = &fixture.narutalk;
        let user = register(narutalk, "kim", "kim@example.com");
        let raced = std::thread::scope(|scope| {
            let reset = scope.spawn(|| {
                narutalk
                    .accounts()
                    .reset_password(user.id, "brand-new-lighthouse-7")
            });
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            let login = narutalk.accounts().login("kim@example.com", PASSWORD);
            reset.join().unwrap().unwrap();
            login
        });
        if let Ok(old) = raced {
            assert!(
                narutalk.tokens().authenticate(&old.tokens.access).is_err(),
                "delay {delay_ms} ms: an access token from the old password still works"
            );
            assert!(
                narutalk.tokens().refresh(&old.tokens.refresh).is_err(),
                "delay {delay_ms} ms: a refresh token from the old password still works"
            );
        }
        narutalk
            .accounts()
            .login("kim@example.com", "brand-new-lighthouse-7")
            .unwrap();
    }
}

/// A password change that checked the old password before an administrator's reset
/// landed must not undo the reset: afterwards the reset password always works.
#[test]
fn a_password_change_racing_a_reset_never_undoes_the_reset() {
    for delay_ms in [0, 10, 20] {
        let fixture = open();
        let narutalk = &fixture.narutalk;
        let user = register(narutalk, "kim", "kim@example.com");
        let change =
            body(json!({"old_password": PASSWORD, "new_password": "user-picked-meadow-3"}));
        let changed = std::thread::scope(|scope| {
            let reset = scope.spawn(|| {
                narutalk
                    .accounts()
                    .reset_password(user.id, "admin-picked-harbour-9")
            });
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            let changed = narutalk.accounts().change_password_fields(user.id, &change);
            reset.join().unwrap().unwrap();
            changed
        });
        let reset_works = narutalk
            .accounts()
            .login("kim@example.com", "admin-picked-harbour-9")
            .is_ok();
        let change_works = narutalk
            .accounts()
            .login("kim@example.com", "user-picked-meadow-3")
            .is_ok();
        // Either the change came first and the reset replaced it, or the change was
        // refused because the password it checked was no longer the stored one.
        assert!(reset_works, "delay {delay_ms} ms: the reset was undone");
        assert!(!change_works, "delay {delay_ms} ms");
        if let Err(error) = changed {
            assert_eq!(
                field_errors(Err::<(), _>(error)),
                fields(&[("old_password", &[OLD_PASSWORD_WRONG])])
            );
        }
    }
}

/// Two partial profile updates of different fields at once both take effect.
#[test]
fn concurrent_partial_profile_updates_of_different_fields_both_take_effect() {
    let fixture = open();
    let narutalk = &fixture.narutalk;
    let user = register(narutalk, "kim", "kim@example.com");
    for round in 0..10 {
        let department = body(json!({"department": format!("Ward {round}")}));
        let email = body(json!({"email": format!("kim{round}@example.com")}));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                narutalk
                    .accounts()
                    .update_profile_fields(user.id, &department, true)
                    .unwrap()
            });
            scope.spawn(|| {
                narutalk
                    .accounts()
                    .update_profile_fields(user.id, &email, true)
                    .unwrap()
            });
        });
        let stored = narutalk.accounts().get(user.id).unwrap();
        assert_eq!(stored.department, format!("Ward {round}"));
        assert_eq!(stored.email, format!("kim{round}@example.com"));
    }
}

// ---------------------------------------------------------------------------------------
// Property tests: no body panics, every refusal is a field error or the login refusal
// ---------------------------------------------------------------------------------------

fn account_body() -> impl Strategy<Value = narutalk_core::fields::JsonObject> {
    let text = prop_oneof![
        any::<String>(),
        Just(String::new()),
        Just(" ".to_owned()),
        Just("admin".to_owned()),
        Just("doctor".to_owned()),
        Just("kim@example.com".to_owned()),
        Just(PASSWORD.to_owned()),
        "[a-z]{1,12}@[a-z]{1,8}\\.[a-z]{2,4}",
        (150usize..260).prop_map(|n| "가".repeat(n)),
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        text.prop_map(serde_json::Value::String),
    ];
    let value = leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3)
                .prop_map(|pairs| serde_json::Value::Object(pairs.into_iter().collect())),
        ]
    });
    let key = prop_oneof![
        4 => prop::sample::select(vec![
            "username", "email", "password", "password_confirm", "role", "department",
            "old_password", "new_password", "id", "is_verified",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    prop::collection::vec((key, value), 0..7).prop_map(|pairs| pairs.into_iter().collect())
}

/// Arbitrary JSON bodies never panic the account operations: each succeeds, or answers
/// field errors on the operation's own fields (login: also the one login refusal).
#[test]
fn arbitrary_account_bodies_either_succeed_or_answer_field_errors() {
    let fixture = open();
    let narutalk = &fixture.narutalk;
    let user = register(narutalk, "kim", "kim@example.com");
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&account_body(), |body| {
            let registered = narutalk.accounts().register_fields(&body);
            field_errors_only(
                &registered,
                &[
                    "username",
                    "email",
                    "password",
                    "password_confirm",
                    "role",
                    "department",
                    "non_field_errors",
                ],
            )?;
            if let Ok(created) = &registered {
                prop_assert!(created.role != Role::Admin);
                prop_assert_eq!(&created.email, &created.email.to_lowercase());
            }
            let login = narutalk.accounts().login_fields(&body);
            if !matches!(login, Err(Error::BadCredentials)) {
                field_errors_only(&login, &["email", "password"])?;
            }
            let updated = narutalk
                .accounts()
                .update_profile_fields(user.id, &body, true);
            field_errors_only(&updated, &["username", "email", "department"])?;
            if let Ok(updated) = &updated {
                prop_assert_eq!(updated.role, Role::User);
                prop_assert!(!updated.is_verified);
            }
            let changed = narutalk.accounts().change_password_fields(user.id, &body);
            field_errors_only(&changed, &["old_password", "new_password"])?;
            prop_assert!(
                changed.is_err(),
                "no generated body knows the stored password"
            );
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Typed inputs: each check gives the value its rule takes
// ---------------------------------------------------------------------------------------

/// A registration checked once is created as checked; the check alone writes nothing,
/// and its debug form never shows the password.
#[test]
fn a_checked_registration_is_created_as_checked_and_never_shows_its_password() {
    let fixture = open();
    let accounts = fixture.narutalk.accounts();
    let registration = accounts
        .check_registration(&body(json!({
            "username": " kim ",
            "email": "Kim@Example.com",
            "password": PASSWORD,
            "password_confirm": PASSWORD,
            "role": "nurse",
        })))
        .unwrap();
    assert_eq!(
        (
            registration.username(),
            registration.email(),
            registration.role()
        ),
        ("kim", "kim@example.com", Role::Nurse)
    );
    assert!(!format!("{registration:?}").contains(PASSWORD));
    assert!(matches!(
        accounts.find_by_email("kim@example.com"),
        Err(Error::NotFound)
    ));

    let user = accounts.register(registration).unwrap();

    assert_eq!((user.username.as_str(), user.role), ("kim", Role::Nurse));
    assert!(!user.is_verified);
}

/// Every field's problems come back together from the check, and `Passwords do not
/// match.` only once every field passed.
#[test]
fn a_registration_check_reports_every_field_and_the_mismatch_last() {
    let fixture = open();
    register(&fixture.narutalk, "kim", "kim@example.com");
    let accounts = fixture.narutalk.accounts();
    assert_eq!(
        field_errors(accounts.check_registration(&body(json!({
            "username": "kim",
            "email": "not an email",
            "password": "12345678",
            "role": "admin",
        })))),
        fields(&[
            ("username", &["A user with that username already exists."]),
            ("email", &["Enter a valid email address."]),
            (
                "password",
                &[
                    "This password is too common.",
                    "This password is entirely numeric."
                ]
            ),
            ("password_confirm", &["This field is required."]),
            ("role", &["\"admin\" is not a valid choice."]),
        ])
    );
    assert_eq!(
        field_errors(accounts.check_registration(&body(json!({
            "username": "lee",
            "email": "lee@example.com",
            "password": PASSWORD,
            "password_confirm": "another-password-9",
        })))),
        fields(&[("non_field_errors", &["Passwords do not match."])])
    );
}

/// A profile change is checked for one user and applied to that user.
#[test]
fn a_checked_profile_change_applies_to_the_user_it_was_checked_for() {
    let fixture = open();
    let kim = register(&fixture.narutalk, "kim", "kim@example.com");
    register(&fixture.narutalk, "lee", "lee@example.com");
    let accounts = fixture.narutalk.accounts();
    assert_eq!(
        field_errors(accounts.check_profile(kim.id, &body(json!({"username": "lee"})), true)),
        fields(&[("username", &["A user with that username already exists."])])
    );
    assert!(matches!(
        accounts.check_profile(UserId(999), &body(json!({"email": 5})), true),
        Err(Error::NotFound)
    ));

    let update = accounts
        .check_profile(kim.id, &body(json!({"department": " ER "})), true)
        .unwrap();
    assert_eq!(update.user(), kim.id);
    let updated = accounts.update_profile(update).unwrap();

    assert_eq!(
        (updated.username.as_str(), updated.department.as_str()),
        ("kim", "ER")
    );
}

/// A password change checked against the old password is not applied once a reset has
/// replaced that password: the old password is then reported wrong.
#[test]
fn a_checked_password_change_loses_to_a_reset_that_landed_after_the_check() {
    let fixture = open();
    let kim = register(&fixture.narutalk, "kim", "kim@example.com");
    let accounts = fixture.narutalk.accounts();
    let change = accounts
        .check_password_change(
            kim.id,
            &body(json!({"old_password": PASSWORD, "new_password": "new-violet-harbour-7"})),
        )
        .unwrap();
    assert_eq!(change.user(), kim.id);
    assert!(!format!("{change:?}").contains("new-violet-harbour-7"));

    accounts
        .reset_password(kim.id, "reset-amber-lake-3")
        .unwrap();

    assert_eq!(
        field_errors(accounts.change_password(change)),
        fields(&[(
            "old_password",
            &["Your old password was entered incorrectly. Please enter it again."]
        )])
    );
    assert!(
        accounts
            .login("kim@example.com", "reset-amber-lake-3")
            .is_ok()
    );
}
