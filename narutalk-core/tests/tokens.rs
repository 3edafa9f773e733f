//! Protects the token rules of contract section 2: simplejwt-compatible HS256 claims and
//! lifetimes, the refusal of every forged, tampered, expired or mistyped token, refresh
//! rotation with reuse detection, logout, and per-user revocation; and of section 9: reuse
//! and logout end the access tokens of the login's family too.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Barrier;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use narutalk_core::accounts::UserId;
use narutalk_core::config::Secret;
use narutalk_core::error::{Error, TokenProblem};
use narutalk_core::tokens::{TokenKeys, TokenKind};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Value, json};
use support::{
    Fixture, base64url_decode, base64url_encode, body, field_errors, fields, jwt_claims,
    jwt_header, jwt_parts, login, open, open_with, register, unix_now,
};

/// A fresh 32-hex-digit token id.
fn jti() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The five simplejwt claims.
fn claims(kind: &str, user_id: UserId, iat: i64, exp: i64) -> Value {
    json!({
        "token_type": kind,
        "user_id": user_id.0.to_string(),
        "jti": jti(),
        "iat": iat,
        "exp": exp,
    })
}

/// `claims` signed by jsonwebtoken with `algorithm` and `secret`.
fn sign(claims: &Value, algorithm: Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A token with `alg: none` and an empty signature.
fn unsigned(claims: &Value) -> String {
    let header = base64url_encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64url_encode(claims.to_string().as_bytes());
    format!("{header}.{payload}.")
}

/// Asserts that `token` is refused everywhere: as an access token (any problem), and as a
/// refresh token by `refresh`, `logout` and `TokenKeys::decode` with exactly `problem`.
fn assert_refused_everywhere(f: &Fixture, token: &str, problem: TokenProblem) {
    let tokens = f.narutalk.tokens();
    assert!(
        matches!(tokens.authenticate(token), Err(Error::InvalidToken(_))),
        "authenticate {token:.60}"
    );
    match tokens.refresh(token) {
        Err(Error::InvalidToken(p)) => assert_eq!(p, problem, "refresh {token:.60}"),
        other => panic!("refresh {token:.60}: {other:?}"),
    }
    match tokens.logout(token) {
        Err(Error::InvalidToken(p)) => assert_eq!(p, problem, "logout {token:.60}"),
        other => panic!("logout {token:.60}: {other:?}"),
    }
    assert_eq!(
        keys(f).decode(token).map(|_| ()),
        Err(problem),
        "decode {token:.60}"
    );
}

/// The `family` column of every refresh row of the file, in insertion order.
fn stored_families(f: &Fixture) -> Vec<String> {
    let conn = rusqlite::Connection::open(&f.config.database).unwrap();
    let mut statement = conn
        .prepare("SELECT family FROM refresh_tokens ORDER BY rowid")
        .unwrap();
    statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Token keys with the fixture's secret and default lifetimes.
fn keys(f: &Fixture) -> TokenKeys {
    TokenKeys::new(f.config.secret_key.as_ref().unwrap(), 60, 7).unwrap()
}

fn refresh_problem<T: std::fmt::Debug>(result: Result<T, Error>) -> TokenProblem {
    match result {
        Err(Error::InvalidToken(problem)) => problem,
        other => panic!("expected a refused token, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Claims and lifetimes
// ---------------------------------------------------------------------------------------

/// An access token is HS256 with exactly `token_type`, `user_id` (a string), `jti` (32 hex
/// digits), `iat` (now) and `exp` one hour later.
#[test]
fn access_token_claims_are_the_simplejwt_five_and_the_family_with_a_one_hour_lifetime() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let before = unix_now();
    let login = login(&f.narutalk, "kim@example.com");
    let after = unix_now();

    assert_eq!(
        jwt_header(&login.tokens.access),
        json!({"alg": "HS256", "typ": "JWT"})
    );
    let claims = jwt_claims(&login.tokens.access);
    let names: BTreeSet<&str> = claims
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["exp", "fam", "iat", "jti", "token_type", "user_id"])
    );
    assert_eq!(claims["fam"], stored_families(&f)[0]);
    assert_eq!(claims["token_type"], "access");
    assert_eq!(claims["user_id"], Value::String(user.id.0.to_string()));
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(jti.len(), 32);
    assert!(
        jti.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{jti}"
    );
    let iat = claims["iat"].as_i64().unwrap();
    let exp = claims["exp"].as_i64().unwrap();
    assert!(
        before <= iat && iat <= after,
        "iat {iat} not in [{before}, {after}]"
    );
    assert_eq!(exp - iat, 3600);

    let decoded = keys(&f).decode(&login.tokens.access).unwrap();
    assert_eq!(decoded.token_type, TokenKind::Access);
    assert_eq!(decoded.user_id, user.id);
    assert_eq!((decoded.iat, decoded.exp), (iat, exp));
    assert_eq!(decoded.fam.as_deref(), claims["fam"].as_str());
}

/// Every access token of a login family names it in `fam` (32 lower-case hex digits, the
/// stored family), rotation keeps it, another login has its own; refresh tokens carry the
/// five claims only.
#[test]
fn access_tokens_name_their_login_family_and_rotation_keeps_it() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let first = login(&f.narutalk, "kim@example.com");
    let rotated = f.narutalk.tokens().refresh(&first.tokens.refresh).unwrap();
    let second = login_again(&f);

    let families = stored_families(&f);
    assert_eq!(families.len(), 3);
    assert_eq!(families[0], families[1], "a rotation stays in its family");
    assert_ne!(families[0], families[2]);
    let family = families[0].as_str();
    assert_eq!(family.len(), 32);
    assert!(
        family
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(jwt_claims(&first.tokens.access)["fam"], family);
    assert_eq!(jwt_claims(&rotated.access)["fam"], family);
    assert_eq!(jwt_claims(&second.tokens.access)["fam"], families[2]);
    for refresh in [&first.tokens.refresh, &rotated.refresh] {
        assert_eq!(jwt_claims(refresh).get("fam"), None);
    }
}

/// A refresh token carries the same five claims, `token_type` `refresh`, a jti of its own,
/// and lives 7 days; a rotated pair has the same lifetimes.
#[test]
fn refresh_token_lives_seven_days_and_rotation_keeps_both_lifetimes() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    let claims = jwt_claims(&login.tokens.refresh);
    let names: BTreeSet<&str> = claims
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["exp", "iat", "jti", "token_type", "user_id"])
    );
    assert_eq!(claims["token_type"], "refresh");
    assert_eq!(claims["user_id"], Value::String(user.id.0.to_string()));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        7 * 24 * 3600
    );
    assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
    assert_ne!(claims["jti"], jwt_claims(&login.tokens.access)["jti"]);

    let rotated = f.narutalk.tokens().refresh(&login.tokens.refresh).unwrap();
    let access = jwt_claims(&rotated.access);
    let refresh = jwt_claims(&rotated.refresh);
    assert_eq!(access["token_type"], "access");
    assert_eq!(refresh["token_type"], "refresh");
    assert_eq!(
        access["exp"].as_i64().unwrap() - access["iat"].as_i64().unwrap(),
        3600
    );
    assert_eq!(
        refresh["exp"].as_i64().unwrap() - refresh["iat"].as_i64().unwrap(),
        7 * 24 * 3600
    );
    assert_ne!(refresh["jti"], claims["jti"]);
    assert_ne!(rotated.refresh, login.tokens.refresh);
    assert_eq!(
        f.narutalk
            .tokens()
            .authenticate(&rotated.access)
            .unwrap()
            .id,
        user.id
    );
}

/// The lifetimes follow `access_token_minutes` and `refresh_token_days`.
#[test]
fn token_lifetimes_follow_the_configuration() {
    let f = open_with(|config| {
        config.access_token_minutes = 15;
        config.refresh_token_days = 30;
    });
    register(&f.narutalk, "kim", "kim@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    let access = jwt_claims(&login.tokens.access);
    let refresh = jwt_claims(&login.tokens.refresh);
    assert_eq!(
        access["exp"].as_i64().unwrap() - access["iat"].as_i64().unwrap(),
        15 * 60
    );
    assert_eq!(
        refresh["exp"].as_i64().unwrap() - refresh["iat"].as_i64().unwrap(),
        30 * 24 * 3600
    );
}

/// A token made by another JWT library with only the five claims and the same secret is
/// accepted, as a simplejwt token would be: an access token for `authenticate`, and a
/// re-signed copy of a real refresh token for `refresh`.
#[test]
fn a_token_signed_by_jsonwebtoken_with_the_five_claims_and_the_secret_is_accepted() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let now = unix_now();
    let access = sign(
        &claims("access", user.id, now, now + 3600),
        Algorithm::HS256,
        f.secret(),
    );
    assert_eq!(f.narutalk.tokens().authenticate(&access).unwrap(), user);

    let login = login(&f.narutalk, "kim@example.com");
    let resigned = sign(
        &jwt_claims(&login.tokens.refresh),
        Algorithm::HS256,
        f.secret(),
    );
    let pair = f.narutalk.tokens().refresh(&resigned).unwrap();
    assert_eq!(
        f.narutalk.tokens().authenticate(&pair.access).unwrap().id,
        user.id
    );
}

// ---------------------------------------------------------------------------------------
// Refused tokens
// ---------------------------------------------------------------------------------------

/// `alg: none` is refused, even with valid claims.
#[test]
fn a_token_with_alg_none_is_refused() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let now = unix_now();
    assert_refused_everywhere(
        &f,
        &unsigned(&claims("access", user.id, now, now + 3600)),
        TokenProblem::Invalid,
    );
    assert_refused_everywhere(
        &f,
        &unsigned(&claims("refresh", user.id, now, now + 3600)),
        TokenProblem::Invalid,
    );
}

/// The algorithm is pinned to HS256: HS512 (or HS384) with the right secret is refused.
#[test]
fn a_token_signed_with_hs512_is_refused() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let now = unix_now();
    for algorithm in [Algorithm::HS512, Algorithm::HS384] {
        let token = sign(
            &claims("access", user.id, now, now + 3600),
            algorithm,
            f.secret(),
        );
        assert_refused_everywhere(&f, &token, TokenProblem::Invalid);
        let token = sign(
            &claims("refresh", user.id, now, now + 3600),
            algorithm,
            f.secret(),
        );
        assert_refused_everywhere(&f, &token, TokenProblem::Invalid);
    }
}

/// A token signed with another secret is refused.
#[test]
fn a_token_signed_with_a_wrong_secret_is_refused() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    let wrong = b"another secret of at least thirty-two bytes!";
    let access = sign(&jwt_claims(&login.tokens.access), Algorithm::HS256, wrong);
    let refresh = sign(&jwt_claims(&login.tokens.refresh), Algorithm::HS256, wrong);
    assert_refused_everywhere(&f, &access, TokenProblem::Invalid);
    assert_refused_everywhere(&f, &refresh, TokenProblem::Invalid);
    // The genuine ones still work.
    assert_eq!(
        f.narutalk
            .tokens()
            .authenticate(&login.tokens.access)
            .unwrap()
            .id,
        user.id
    );
}

/// Changing the payload of a signed token (another user id, a later expiry) breaks it.
#[test]
fn a_token_with_a_tampered_payload_is_refused() {
    let f = open();
    let kim = register(&f.narutalk, "kim", "kim@example.com");
    let lee = register(&f.narutalk, "lee", "lee@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    for token in [&login.tokens.access, &login.tokens.refresh] {
        let [header, payload, signature] = jwt_parts(token);
        let mut claims: Value = serde_json::from_slice(&base64url_decode(payload)).unwrap();
        claims["user_id"] = json!(lee.id.0.to_string());
        let other_user = format!(
            "{header}.{}.{signature}",
            base64url_encode(claims.to_string().as_bytes())
        );
        assert_refused_everywhere(&f, &other_user, TokenProblem::Invalid);

        let mut claims: Value = serde_json::from_slice(&base64url_decode(payload)).unwrap();
        claims["exp"] = json!(claims["exp"].as_i64().unwrap() + 3600);
        let longer = format!(
            "{header}.{}.{signature}",
            base64url_encode(claims.to_string().as_bytes())
        );
        assert_refused_everywhere(&f, &longer, TokenProblem::Invalid);
    }
    assert_eq!(
        f.narutalk
            .tokens()
            .authenticate(&login.tokens.access)
            .unwrap()
            .id,
        kim.id
    );
}

/// A token whose `exp` has passed by one second is expired: no leeway.
#[test]
fn a_token_one_second_past_its_exp_is_expired() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let now = unix_now();
    let access = sign(
        &claims("access", user.id, now - 3601, now - 1),
        Algorithm::HS256,
        f.secret(),
    );
    let refresh = sign(
        &claims("refresh", user.id, now - 3601, now - 1),
        Algorithm::HS256,
        f.secret(),
    );
    assert_refused_everywhere(&f, &access, TokenProblem::Expired);
    assert_refused_everywhere(&f, &refresh, TokenProblem::Expired);
}

/// RFC 7519 (and PyJWT, under simplejwt) refuse a token from the second its `exp` names:
/// the current time must be before `exp`.
#[test]
fn a_token_is_expired_from_the_second_its_exp_names() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let now = unix_now();
    let access = sign(
        &claims("access", user.id, now - 3600, now),
        Algorithm::HS256,
        f.secret(),
    );
    let refresh = sign(
        &claims("refresh", user.id, now - 3600, now),
        Algorithm::HS256,
        f.secret(),
    );
    assert_refused_everywhere(&f, &access, TokenProblem::Expired);
    assert_refused_everywhere(&f, &refresh, TokenProblem::Expired);
}

/// A refresh token is never an access token, nor the reverse.
#[test]
fn a_refresh_token_is_not_an_access_token_nor_the_reverse() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    let tokens = f.narutalk.tokens();
    assert!(matches!(
        tokens.authenticate(&login.tokens.refresh),
        Err(Error::InvalidToken(_))
    ));
    assert_eq!(
        refresh_problem(tokens.refresh(&login.tokens.access)),
        TokenProblem::Invalid
    );
    assert_eq!(
        refresh_problem(tokens.logout(&login.tokens.access)),
        TokenProblem::Invalid
    );
    // Neither misuse spent the refresh token.
    tokens.refresh(&login.tokens.refresh).unwrap();
}

/// A token with an unknown `token_type`, a missing claim, or a non-numeric `user_id` is
/// refused.
#[test]
fn a_token_with_a_wrong_or_missing_claim_is_refused() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let now = unix_now();
    let good = claims("access", user.id, now, now + 3600);
    let mut variants = Vec::new();
    for claim in ["token_type", "user_id", "jti", "iat", "exp"] {
        let mut without = good.clone();
        without.as_object_mut().unwrap().remove(claim);
        variants.push(without);
    }
    for (claim, value) in [
        ("token_type", json!("id")),
        ("token_type", json!("Access")),
        ("user_id", json!("kim")),
        ("user_id", json!("")),
        ("user_id", json!(null)),
        ("exp", json!("soon")),
        ("iat", json!("now")),
    ] {
        let mut changed = good.clone();
        changed[claim] = value;
        variants.push(changed);
    }
    for variant in variants {
        let token = sign(&variant, Algorithm::HS256, f.secret());
        assert_refused_everywhere(&f, &token, TokenProblem::Invalid);
    }
    let token = sign(&good, Algorithm::HS256, f.secret());
    assert_eq!(
        f.narutalk.tokens().authenticate(&token).unwrap().id,
        user.id
    );
    // A `fam` this server would never write.
    for fam in [json!("xyz"), json!(""), json!(5), json!("G".repeat(32))] {
        let mut changed = good.clone();
        changed["fam"] = fam.clone();
        let token = sign(&changed, Algorithm::HS256, f.secret());
        assert!(
            matches!(
                f.narutalk.tokens().authenticate(&token),
                Err(Error::InvalidToken(TokenProblem::Invalid))
            ),
            "{fam}"
        );
    }
}

/// Garbage, an empty string, a lone dot pattern and a 1 MiB string are refused as invalid.
#[test]
fn garbage_empty_and_huge_tokens_are_refused() {
    let f = open();
    let huge = "a".repeat(1 << 20);
    let huge_jwt_shaped = format!("eyJhbGciOiJIUzI1NiJ9.{}.sig", "A".repeat(1 << 20));
    for token in [
        "",
        "garbage",
        "a.b.c",
        "..",
        "Bearer x",
        "\0",
        huge.as_str(),
        huge_jwt_shaped.as_str(),
    ] {
        assert_refused_everywhere(&f, token, TokenProblem::Invalid);
    }
}

// ---------------------------------------------------------------------------------------
// Rotation, reuse and logout
// ---------------------------------------------------------------------------------------

/// A refresh token works once; presenting it again is blacklisted and revokes the whole
/// family, so the child obtained from the first rotation is refused too.
#[test]
fn a_refresh_token_works_once_and_its_reuse_revokes_the_family() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    let tokens = f.narutalk.tokens();

    let child = tokens.refresh(&login.tokens.refresh).unwrap();
    assert_eq!(
        refresh_problem(tokens.refresh(&login.tokens.refresh)),
        TokenProblem::Blacklisted
    );
    assert_eq!(
        refresh_problem(tokens.refresh(&child.refresh)),
        TokenProblem::Blacklisted
    );
    assert_eq!(
        refresh_problem(tokens.logout(&child.refresh)),
        TokenProblem::Blacklisted
    );
}

/// A chain of rotations works, each token once, and reuse of any ancestor revokes the
/// newest descendant.
#[test]
fn reuse_of_an_older_ancestor_revokes_the_newest_descendant() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    let tokens = f.narutalk.tokens();
    let first = tokens.refresh(&login.tokens.refresh).unwrap();
    let second = tokens.refresh(&first.refresh).unwrap();
    let third = tokens.refresh(&second.refresh).unwrap();
    assert_eq!(
        refresh_problem(tokens.refresh(&first.refresh)),
        TokenProblem::Blacklisted
    );
    assert_eq!(
        refresh_problem(tokens.refresh(&third.refresh)),
        TokenProblem::Blacklisted
    );
}

/// Reuse revokes only its own login's family: another login of the same user keeps working.
#[test]
fn reuse_does_not_revoke_another_logins_family() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let phone = login(&f.narutalk, "kim@example.com");
    let laptop = login(&f.narutalk, "kim@example.com");
    let tokens = f.narutalk.tokens();

    tokens.refresh(&phone.tokens.refresh).unwrap();
    assert_eq!(
        refresh_problem(tokens.refresh(&phone.tokens.refresh)),
        TokenProblem::Blacklisted
    );
    let renewed = tokens.refresh(&laptop.tokens.refresh).unwrap();
    tokens.refresh(&renewed.refresh).unwrap();
}

/// Of two concurrent refreshes with one token, exactly one succeeds; the other is
/// blacklisted.
#[test]
fn of_two_concurrent_refreshes_with_one_token_exactly_one_succeeds() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    for _ in 0..5 {
        let login = login(&f.narutalk, "kim@example.com");
        let narutalk = &f.narutalk;
        let refresh = login.tokens.refresh.as_str();
        let barrier = Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        narutalk.tokens().refresh(refresh)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "{results:?}");
        let loser = results.into_iter().find(Result::is_err).unwrap();
        assert_eq!(refresh_problem(loser), TokenProblem::Blacklisted);
    }
}

/// Logout revokes the refresh token: refreshing with it, or logging out again, is
/// blacklisted. Other logins are untouched.
#[test]
fn logout_revokes_the_refresh_token() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    let other = login_again(&f);
    let tokens = f.narutalk.tokens();

    tokens.logout(&login.tokens.refresh).unwrap();
    assert_eq!(
        refresh_problem(tokens.refresh(&login.tokens.refresh)),
        TokenProblem::Blacklisted
    );
    assert_eq!(
        refresh_problem(tokens.logout(&login.tokens.refresh)),
        TokenProblem::Blacklisted
    );
    tokens.refresh(&other.tokens.refresh).unwrap();
}

fn login_again(f: &Fixture) -> narutalk_core::accounts::Login {
    login(&f.narutalk, "kim@example.com")
}

/// Logging out with a token that was already rotated is blacklisted, and counts as reuse:
/// its family's newer token is revoked.
#[test]
fn logout_with_a_rotated_token_is_blacklisted_and_revokes_the_family() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    let tokens = f.narutalk.tokens();
    let child = tokens.refresh(&login.tokens.refresh).unwrap();
    assert_eq!(
        refresh_problem(tokens.logout(&login.tokens.refresh)),
        TokenProblem::Blacklisted
    );
    assert_eq!(
        refresh_problem(tokens.refresh(&child.refresh)),
        TokenProblem::Blacklisted
    );
}

/// The refresh and logout bodies need `refresh`, a non-blank string; a valid body works.
#[test]
fn refresh_and_logout_bodies_require_a_refresh_string() {
    let f = open();
    let tokens = f.narutalk.tokens();
    let cases = [
        (json!({}), "This field is required."),
        (json!({"access": "x"}), "This field is required."),
        (json!({"refresh": null}), "This field may not be null."),
        (json!({"refresh": 5}), "Not a valid string."),
        (json!({"refresh": ["a.b.c"]}), "Not a valid string."),
        (json!({"refresh": ""}), "This field may not be blank."),
        (json!({"refresh": "   "}), "This field may not be blank."),
    ];
    for (request, message) in cases {
        let request = body(request);
        assert_eq!(
            field_errors(tokens.refresh_fields(&request)),
            fields(&[("refresh", &[message])])
        );
        assert_eq!(
            field_errors(tokens.logout_fields(&request)),
            fields(&[("refresh", &[message])])
        );
    }
    assert_eq!(
        refresh_problem(tokens.refresh_fields(&body(json!({"refresh": "garbage"})))),
        TokenProblem::Invalid
    );

    register(&f.narutalk, "kim", "kim@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    let pair = tokens
        .refresh_fields(&body(json!({"refresh": login.tokens.refresh})))
        .unwrap();
    tokens
        .logout_fields(&body(json!({"refresh": pair.refresh})))
        .unwrap();
    assert_eq!(
        refresh_problem(tokens.refresh_fields(&body(json!({"refresh": pair.refresh})))),
        TokenProblem::Blacklisted
    );
}

/// Presenting a rotated refresh token again ends the whole family's access tokens, the
/// one issued with the reused token and the newest alike; another login keeps working.
#[test]
fn reuse_refuses_every_access_token_of_the_family() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let phone = login(&f.narutalk, "kim@example.com");
    let laptop = login_again(&f);
    let tokens = f.narutalk.tokens();
    let rotated = tokens.refresh(&phone.tokens.refresh).unwrap();
    tokens.authenticate(&rotated.access).unwrap();

    assert_eq!(
        refresh_problem(tokens.refresh(&phone.tokens.refresh)),
        TokenProblem::Blacklisted
    );

    for access in [&phone.tokens.access, &rotated.access] {
        assert_eq!(
            refresh_problem(tokens.authenticate(access)),
            TokenProblem::Blacklisted
        );
    }
    tokens.authenticate(&laptop.tokens.access).unwrap();
    tokens.refresh(&laptop.tokens.refresh).unwrap();
}

/// Logging a refresh token out ends its family: the family's access tokens and every
/// refresh token of it are refused; another login keeps working.
#[test]
fn logout_refuses_every_access_token_of_the_family() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let phone = login(&f.narutalk, "kim@example.com");
    let laptop = login_again(&f);
    let tokens = f.narutalk.tokens();
    let rotated = tokens.refresh(&phone.tokens.refresh).unwrap();

    tokens.logout(&rotated.refresh).unwrap();

    for access in [&phone.tokens.access, &rotated.access] {
        assert_eq!(
            refresh_problem(tokens.authenticate(access)),
            TokenProblem::Blacklisted
        );
    }
    assert_eq!(
        refresh_problem(tokens.refresh(&rotated.refresh)),
        TokenProblem::Blacklisted
    );
    tokens.authenticate(&laptop.tokens.access).unwrap();
    tokens.refresh(&laptop.tokens.refresh).unwrap();
}

/// An access token with the five claims only (no `fam`, as another simplejwt-compatible
/// issuer would sign it) is judged by the older rules alone: a family's logout or reuse
/// does not touch it, the user's revocation does.
#[test]
fn an_access_token_without_a_family_is_judged_by_the_older_rules_alone() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let now = unix_now();
    let five = sign(
        &claims("access", user.id, now, now + 3600),
        Algorithm::HS256,
        f.secret(),
    );
    let tokens = f.narutalk.tokens();
    let (_, grant) = tokens.authenticate_grant(&five).unwrap();
    assert_eq!(grant.family, None);
    let login = login(&f.narutalk, "kim@example.com");
    let rotated = tokens.refresh(&login.tokens.refresh).unwrap();
    tokens.refresh(&login.tokens.refresh).unwrap_err();
    let again = login_again(&f);
    tokens.logout(&again.tokens.refresh).unwrap();

    assert_eq!(tokens.authenticate(&five).unwrap().id, user.id);
    assert_eq!(tokens.revoked(&[grant]).unwrap(), [false]);
    assert!(tokens.authenticate(&rotated.access).is_err());

    f.narutalk.accounts().logout_all(user.id).unwrap();
    assert_eq!(
        refresh_problem(tokens.authenticate(&five)),
        TokenProblem::Blacklisted
    );
    assert_eq!(tokens.revoked(&[grant]).unwrap(), [true]);
}

/// A grant names its token's family, and reads as revoked once the family is (logout or
/// reuse), also to another handle on the same file (another process); grants of other
/// families stay live.
#[test]
fn grants_read_as_revoked_once_their_family_is() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let tokens = f.narutalk.tokens();
    let grant = |access: &str| tokens.authenticate_grant(access).unwrap().1;
    let phone = login(&f.narutalk, "kim@example.com");
    let laptop = login_again(&f);
    let tablet = login_again(&f);
    let grants = [
        grant(&phone.tokens.access),
        grant(&laptop.tokens.access),
        grant(&tablet.tokens.access),
    ];
    assert!(grants.iter().all(|g| g.family.is_some()));
    assert_eq!(
        grants[0].family.unwrap().to_string(),
        jwt_claims(&phone.tokens.access)["fam"].as_str().unwrap()
    );
    assert_eq!(tokens.revoked(&grants).unwrap(), [false; 3]);

    tokens.logout(&phone.tokens.refresh).unwrap();
    assert_eq!(tokens.revoked(&grants).unwrap(), [true, false, false]);
    tokens.refresh(&laptop.tokens.refresh).unwrap();
    tokens.refresh(&laptop.tokens.refresh).unwrap_err();
    assert_eq!(tokens.revoked(&grants).unwrap(), [true, true, false]);
    let elsewhere = narutalk_core::Narutalk::open_for_administration(&f.config).unwrap();
    assert_eq!(
        elsewhere.tokens().revoked(&grants).unwrap(),
        [true, true, false]
    );
}

// ---------------------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------------------

/// After "log out everywhere", every token issued before is refused, and a new login's
/// tokens work and carry an `iat` after the revocation time.
#[test]
fn after_logout_all_old_tokens_are_refused_and_new_ones_carry_a_later_iat() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let tokens = f.narutalk.tokens();
    let old = login(&f.narutalk, "kim@example.com");
    let rotated = tokens.refresh(&old.tokens.refresh).unwrap();

    f.narutalk.accounts().logout_all(user.id).unwrap();
    let revoked_at = f
        .narutalk
        .accounts()
        .get(user.id)
        .unwrap()
        .tokens_revoked_at;
    assert!(revoked_at >= jwt_claims(&old.tokens.access)["iat"].as_i64().unwrap());
    assert!(revoked_at <= unix_now());

    assert!(matches!(
        tokens.authenticate(&old.tokens.access),
        Err(Error::InvalidToken(_))
    ));
    assert!(matches!(
        tokens.authenticate(&rotated.access),
        Err(Error::InvalidToken(_))
    ));
    assert_eq!(
        refresh_problem(tokens.refresh(&rotated.refresh)),
        TokenProblem::Blacklisted
    );
    assert_eq!(
        refresh_problem(tokens.logout(&rotated.refresh)),
        TokenProblem::Blacklisted
    );

    let new = login(&f.narutalk, "kim@example.com");
    for token in [&new.tokens.access, &new.tokens.refresh] {
        assert!(jwt_claims(token)["iat"].as_i64().unwrap() > revoked_at);
    }
    assert_eq!(tokens.authenticate(&new.tokens.access).unwrap().id, user.id);
    let renewed = tokens.refresh(&new.tokens.refresh).unwrap();
    assert!(jwt_claims(&renewed.access)["iat"].as_i64().unwrap() > revoked_at);
    assert_eq!(tokens.authenticate(&renewed.access).unwrap().id, user.id);
}

/// A grant taken when a token was validated reads as revoked once its user logs out
/// everywhere, is deactivated or is deleted; a grant of another user stays live, and a
/// token issued after the revocation carries a live grant.
#[test]
fn grants_read_as_revoked_after_logout_all_deactivation_and_deletion() {
    let f = open();
    let kim = register(&f.narutalk, "kim", "kim@example.com");
    let lee = register(&f.narutalk, "lee", "lee@example.com");
    let han = register(&f.narutalk, "han", "han@example.com");
    let tokens = f.narutalk.tokens();
    let grant = |email: &str| {
        let access = login(&f.narutalk, email).tokens.access;
        let (user, grant) = tokens.authenticate_grant(&access).unwrap();
        assert_eq!(grant.user_id, user.id);
        assert_eq!(
            grant.issued_at,
            jwt_claims(&access)["iat"].as_i64().unwrap()
        );
        grant
    };
    let (kim_grant, lee_grant, han_grant) = (
        grant("kim@example.com"),
        grant("lee@example.com"),
        grant("han@example.com"),
    );
    let all = [kim_grant, lee_grant, han_grant, kim_grant];
    assert_eq!(tokens.revoked(&all).unwrap(), [false; 4]);
    assert_eq!(tokens.revoked(&[]).unwrap(), Vec::<bool>::new());

    f.narutalk.accounts().logout_all(kim.id).unwrap();
    assert_eq!(tokens.revoked(&all).unwrap(), [true, false, false, true]);
    let fresh = grant("kim@example.com");
    assert_eq!(tokens.revoked(&[fresh]).unwrap(), [false]);

    f.narutalk.accounts().set_active(lee.id, false).unwrap();
    f.narutalk.accounts().delete(han.id).unwrap();
    assert_eq!(tokens.revoked(&all).unwrap(), [true; 4]);
    assert_eq!(tokens.revoked(&[fresh]).unwrap(), [false]);
}

/// Each "log out everywhere" refuses every token issued before it, including one issued
/// in the same second as an earlier revocation (whose `iat` is that revocation + 1).
#[test]
fn a_second_logout_all_revokes_tokens_issued_since_the_first() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let accounts = f.narutalk.accounts();
    let tokens = f.narutalk.tokens();
    for _ in 0..3 {
        accounts.logout_all(user.id).unwrap();
        let between = login(&f.narutalk, "kim@example.com");
        let rotated = tokens.refresh(&between.tokens.refresh).unwrap();
        assert_eq!(
            tokens.authenticate(&between.tokens.access).unwrap().id,
            user.id
        );
        accounts.logout_all(user.id).unwrap();
        let revoked_at = accounts.get(user.id).unwrap().tokens_revoked_at;
        for token in [&between.tokens.access, &rotated.access, &rotated.refresh] {
            assert!(jwt_claims(token)["iat"].as_i64().unwrap() <= revoked_at);
        }
        assert!(matches!(
            tokens.authenticate(&between.tokens.access),
            Err(Error::InvalidToken(_))
        ));
        assert!(matches!(
            tokens.authenticate(&rotated.access),
            Err(Error::InvalidToken(_))
        ));
        assert_eq!(
            refresh_problem(tokens.refresh(&rotated.refresh)),
            TokenProblem::Blacklisted
        );
    }
}

/// The revocation check is "`iat` not after the revocation time": a token issued in the
/// revocation second is refused, one issued the second after is accepted.
#[test]
fn a_token_issued_in_the_revocation_second_is_refused_and_one_after_is_accepted() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    f.narutalk.accounts().logout_all(user.id).unwrap();
    let revoked_at = f
        .narutalk
        .accounts()
        .get(user.id)
        .unwrap()
        .tokens_revoked_at;
    let at = sign(
        &claims("access", user.id, revoked_at, revoked_at + 3600),
        Algorithm::HS256,
        f.secret(),
    );
    let before = sign(
        &claims("access", user.id, revoked_at - 10, revoked_at + 3600),
        Algorithm::HS256,
        f.secret(),
    );
    let after = sign(
        &claims("access", user.id, revoked_at + 1, revoked_at + 3600),
        Algorithm::HS256,
        f.secret(),
    );
    assert!(matches!(
        f.narutalk.tokens().authenticate(&at),
        Err(Error::InvalidToken(_))
    ));
    assert!(matches!(
        f.narutalk.tokens().authenticate(&before),
        Err(Error::InvalidToken(_))
    ));
    assert_eq!(
        f.narutalk.tokens().authenticate(&after).unwrap().id,
        user.id
    );
}

/// A deactivated user's tokens are refused, even ones made later with the secret.
#[test]
fn a_token_of_a_deactivated_user_is_refused() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    f.narutalk.accounts().set_active(user.id, false).unwrap();
    let now = unix_now();
    let fresh = sign(
        &claims("access", user.id, now + 5, now + 3600),
        Algorithm::HS256,
        f.secret(),
    );
    assert!(matches!(
        f.narutalk.tokens().authenticate(&login.tokens.access),
        Err(Error::InvalidToken(_))
    ));
    assert!(matches!(
        f.narutalk.tokens().authenticate(&fresh),
        Err(Error::InvalidToken(_))
    ));
    assert_eq!(
        refresh_problem(f.narutalk.tokens().refresh(&login.tokens.refresh)),
        TokenProblem::Blacklisted
    );
}

/// A deleted user's tokens are refused, and so is a well-signed token naming an id that
/// never existed.
#[test]
fn a_token_of_a_deleted_or_unknown_user_is_refused() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    f.narutalk.accounts().delete(user.id).unwrap();
    let tokens = f.narutalk.tokens();
    assert!(matches!(
        tokens.authenticate(&login.tokens.access),
        Err(Error::InvalidToken(_))
    ));
    assert_eq!(
        refresh_problem(tokens.refresh(&login.tokens.refresh)),
        TokenProblem::Invalid
    );
    assert_eq!(
        refresh_problem(tokens.logout(&login.tokens.refresh)),
        TokenProblem::Invalid
    );
    let now = unix_now();
    let ghost = sign(
        &claims("access", UserId(4242), now, now + 3600),
        Algorithm::HS256,
        f.secret(),
    );
    assert!(matches!(
        tokens.authenticate(&ghost),
        Err(Error::InvalidToken(_))
    ));
}

/// A well-signed refresh token that the server never issued (no stored row) is refused
/// as invalid.
#[test]
fn a_refresh_token_that_was_never_issued_is_refused() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let now = unix_now();
    let forged = sign(
        &claims("refresh", user.id, now, now + 3600),
        Algorithm::HS256,
        f.secret(),
    );
    assert_eq!(
        refresh_problem(f.narutalk.tokens().refresh(&forged)),
        TokenProblem::Invalid
    );
    assert_eq!(
        refresh_problem(f.narutalk.tokens().logout(&forged)),
        TokenProblem::Invalid
    );

    // A real token's id presented with another user's id is refused too.
    let lee = register(&f.narutalk, "lee", "lee@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    let mut stolen = jwt_claims(&login.tokens.refresh);
    stolen["user_id"] = json!(lee.id.0.to_string());
    let stolen = sign(&stolen, Algorithm::HS256, f.secret());
    assert_eq!(
        refresh_problem(f.narutalk.tokens().refresh(&stolen)),
        TokenProblem::Invalid
    );
    f.narutalk.tokens().refresh(&login.tokens.refresh).unwrap();
}

/// Purging deletes only expired refresh rows. Rows cannot be made to expire through the
/// public API (lifetimes are at least a day and the clock is not injectable), so this
/// checks that fresh rows are kept: purge answers 0 and the tokens keep working.
#[test]
fn purge_expired_keeps_fresh_refresh_tokens() {
    let f = open();
    register(&f.narutalk, "kim", "kim@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    let tokens = f.narutalk.tokens();
    let used = tokens.refresh(&login.tokens.refresh).unwrap();
    assert_eq!(tokens.purge_expired(1000).unwrap(), 0);
    assert_eq!(tokens.purge_expired(0).unwrap(), 0);
    // The used row is still there: its reuse is still detected.
    assert_eq!(
        refresh_problem(tokens.refresh(&login.tokens.refresh)),
        TokenProblem::Blacklisted
    );
    assert_eq!(
        refresh_problem(tokens.refresh(&used.refresh)),
        TokenProblem::Blacklisted
    );
    let again = login_again(&f);
    tokens.refresh(&again.tokens.refresh).unwrap();
}

/// An expired refresh row is kept while an access token issued with it may still be
/// presented (an access lifetime longer than the refresh lifetime), so that a revoked
/// family stays revoked; once that access token has expired too, the row goes.
#[test]
fn purge_keeps_an_expired_row_while_its_family_access_token_lives() {
    let f = open_with(|config| {
        config.access_token_minutes = 3 * 24 * 60;
        config.refresh_token_days = 1;
    });
    register(&f.narutalk, "kim", "kim@example.com");
    let login = login(&f.narutalk, "kim@example.com");
    let tokens = f.narutalk.tokens();
    tokens.logout(&login.tokens.refresh).unwrap();
    let conn = rusqlite::Connection::open(&f.config.database).unwrap();
    let day = 24 * 3600;
    conn.execute(
        "UPDATE refresh_tokens SET issued_at = issued_at - ?1, expires_at = expires_at - ?1",
        [2 * day],
    )
    .unwrap();

    assert_eq!(tokens.purge_expired(1000).unwrap(), 0);
    assert_eq!(
        refresh_problem(tokens.authenticate(&login.tokens.access)),
        TokenProblem::Blacklisted
    );

    conn.execute(
        "UPDATE refresh_tokens SET issued_at = issued_at - ?1, expires_at = expires_at - ?1",
        [2 * day],
    )
    .unwrap();
    assert_eq!(tokens.purge_expired(1000).unwrap(), 1);
    assert!(stored_families(&f).is_empty());
}

/// Token keys refuse a secret shorter than 32 bytes and accept one of exactly 32.
#[test]
fn token_keys_need_a_secret_of_at_least_32_bytes() {
    assert!(TokenKeys::new(&Secret::new("x".repeat(31)), 60, 7).is_err());
    assert!(TokenKeys::new(&Secret::new("x".repeat(32)), 60, 7).is_ok());
}

// ---------------------------------------------------------------------------------------
// Any input
// ---------------------------------------------------------------------------------------

/// No string, however odd, makes `authenticate`, `refresh`, `logout` or `decode` panic or
/// succeed.
#[test]
fn arbitrary_strings_are_always_refused_without_panicking() {
    let f = open();
    let user = register(&f.narutalk, "kim", "kim@example.com");
    let keys = keys(&f);
    let header = base64url_encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let strategy = prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,43}",
        "[A-Za-z0-9_=+/.-]{0,200}".prop_map(move |tail| format!("{header}.{tail}")),
    ];
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    });
    runner
        .run(&strategy, |token| {
            let tokens = f.narutalk.tokens();
            prop_assert!(matches!(
                tokens.authenticate(&token),
                Err(Error::InvalidToken(_))
            ));
            prop_assert!(matches!(
                tokens.refresh(&token),
                Err(Error::InvalidToken(_))
            ));
            prop_assert!(matches!(tokens.logout(&token), Err(Error::InvalidToken(_))));
            prop_assert!(keys.decode(&token).is_err());
            Ok(())
        })
        .unwrap();
    assert_eq!(
        f.narutalk
            .accounts()
            .get(user.id)
            .unwrap()
            .tokens_revoked_at,
        0
    );
}
