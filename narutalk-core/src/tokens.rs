//! JWT access and refresh tokens: issuing, validating, rotating with reuse detection,
//! logging out, and per-user revocation (`docs/API.md`, Authentication).
//!
//! Tokens are HS256 JWTs, the algorithm pinned and no clock leeway, signed with the exact
//! UTF-8 bytes of the configured secret. Claims are simplejwt 5.5's: `token_type`,
//! `user_id` (a string), `jti`, `iat`, `exp`; access tokens issued here carry a sixth,
//! `fam`, the id of their login's family. Every refresh token is also a row in
//! `refresh_tokens`, so that it works once (rotation), a replayed one revokes its whole
//! login's family, and logout revokes the family of the token logged out. A family is
//! revoked once any of its rows is; an access token whose family is revoked is refused
//! (`docs/API.md`, Authentication), and one without `fam` is judged by the other rules
//! alone. Each user has a revocation time in whole seconds: any token whose `iat` is not
//! after it is refused. Both are read from the database on every validation, so that a
//! change made by another process counts at once.

use std::collections::HashSet;

use chrono::Duration;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::accounts::{User, UserId};
use crate::config::Secret;
use crate::error::{Error, TokenProblem};
use crate::events::{Actor, Event, EventBus, Origin};
use crate::fields::{FieldReader, JsonObject, Text};
use crate::store::{
    Audit, NewRefresh, PresentedRefresh, RefreshUse, TokenHolder, TokenLifetimes, TokenStore,
};
use crate::time;

/// The shortest signing secret accepted, in bytes (RFC 7518 section 3.2: a key at least as
/// long as the HS256 output).
pub const MIN_SECRET_BYTES: usize = 32;

/// Tokens longer than this are refused before any parsing: no honest token comes close.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// An access token and the refresh token that renews it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPair {
    /// Sent as `Authorization: Bearer <access>`.
    pub access: String,
    /// Exchanged once for a new pair.
    pub refresh: String,
}

/// Which of the two kinds a token is (`token_type` claim).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Authenticates requests.
    Access,
    /// Renews the pair.
    Refresh,
}

/// The claims of a token, as simplejwt 5.5 writes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// `"access"` or `"refresh"`.
    pub token_type: TokenKind,
    /// The user's id as a string; an integer is accepted when validating.
    #[serde(with = "user_id_claim")]
    pub user_id: UserId,
    /// A unique id: 32 lower-case hex digits.
    pub jti: String,
    /// Issued at, in whole seconds since the epoch.
    pub iat: i64,
    /// Expires at, in whole seconds since the epoch.
    pub exp: i64,
    /// The login family (32 lower-case hex digits) of an access token issued by this
    /// version; absent from refresh tokens and from access tokens that carry only the five
    /// claims of simplejwt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fam: Option<String>,
}

/// The id of a login's family: every refresh token descended from one login, and the
/// access tokens issued with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Family(uuid::Uuid);

impl Family {
    /// A new family's id.
    fn new() -> Family {
        Family(uuid::Uuid::new_v4())
    }

    /// The family a `fam` claim or a stored `family` names: 32 hex digits.
    pub(crate) fn parse(text: &str) -> Option<Family> {
        (text.len() == 32)
            .then(|| uuid::Uuid::try_parse(text).ok())
            .flatten()
            .map(Family)
    }
}

impl std::fmt::Display for Family {
    /// 32 lower-case hex digits, as stored and as the `fam` claim.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.simple().fmt(f)
    }
}

/// What a validated access token granted: whose it is, when it was issued and in which
/// login family. Kept by holders of long-lived connections to ask [`Tokens::revoked`]
/// later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    /// The token's user.
    pub user_id: UserId,
    /// Its `iat`, in whole seconds since the epoch.
    pub issued_at: i64,
    /// Its login family (`fam`); `None` for a token with the five claims only.
    pub family: Option<Family>,
}

/// Signs and checks tokens with one secret and the configured lifetimes.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_lifetime: Duration,
    refresh_lifetime: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("access_lifetime", &self.access_lifetime)
            .field("refresh_lifetime", &self.refresh_lifetime)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Keys from the exact UTF-8 bytes of `secret`, which must be at least
    /// [`MIN_SECRET_BYTES`] long; lifetimes in minutes and days.
    pub fn new(secret: &Secret, access_minutes: u32, refresh_days: u32) -> Result<Self, Error> {
        let bytes = secret.expose().as_bytes();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(Error::internal(format!(
                "the signing secret must be at least {MIN_SECRET_BYTES} bytes"
            )));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            access_lifetime: Duration::minutes(i64::from(access_minutes)),
            refresh_lifetime: Duration::days(i64::from(refresh_days)),
        })
    }

    /// Checks signature, algorithm, expiry and shape, and returns the claims. Says nothing
    /// about revocation or the user, which need the database.
    pub fn decode(&self, token: &str) -> Result<Claims, TokenProblem> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(TokenProblem::Invalid);
        }
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            // jsonwebtoken refuses only `exp < now` in whole seconds, which honours a token
            // for up to a second past its `exp`; RFC 7519 (and PyJWT under simplejwt) need
            // now to be before `exp`, so the second `exp` names is already expired.
            Ok(data) if data.claims.exp <= time::unix_seconds(&time::now()) => {
                Err(TokenProblem::Expired)
            }
            Ok(data) => Ok(data.claims),
            Err(error) if matches!(error.kind(), ErrorKind::ExpiredSignature) => {
                Err(TokenProblem::Expired)
            }
            Err(_) => Err(TokenProblem::Invalid),
        }
    }

    /// The lifetimes of the two kinds of token, in seconds.
    pub fn lifetimes(&self) -> TokenLifetimes {
        TokenLifetimes {
            access_seconds: self.access_lifetime.num_seconds(),
            refresh_seconds: self.refresh_lifetime.num_seconds(),
        }
    }

    /// The first refresh token of a new login family, to store, and the family.
    pub(crate) fn new_refresh(&self) -> (NewRefresh, Family) {
        let family = Family::new();
        let refresh = NewRefresh {
            jti: new_jti(),
            family: family.to_string(),
        };
        (refresh, family)
    }

    /// The token pair of a login whose refresh token `refresh` (of `family`) was stored,
    /// issued at `issued_at`.
    pub(crate) fn login_pair(
        &self,
        user_id: UserId,
        refresh: &NewRefresh,
        family: Family,
        issued_at: i64,
    ) -> Result<TokenPair, Error> {
        Ok(TokenPair {
            access: self.sign_access(user_id, family, issued_at)?,
            refresh: self.sign(TokenKind::Refresh, user_id, &refresh.jti, issued_at)?,
        })
    }

    /// Signs a token of `kind` for `user_id`, issued at `issued_at`, with the five claims
    /// of simplejwt (no family).
    pub fn sign(
        &self,
        kind: TokenKind,
        user_id: UserId,
        jti: &str,
        issued_at: i64,
    ) -> Result<String, Error> {
        self.sign_claims(kind, user_id, jti, issued_at, None)
    }

    /// The access token of a login family: the five claims and `fam`.
    fn sign_access(
        &self,
        user_id: UserId,
        family: Family,
        issued_at: i64,
    ) -> Result<String, Error> {
        self.sign_claims(
            TokenKind::Access,
            user_id,
            &new_jti(),
            issued_at,
            Some(family),
        )
    }

    fn sign_claims(
        &self,
        kind: TokenKind,
        user_id: UserId,
        jti: &str,
        issued_at: i64,
        family: Option<Family>,
    ) -> Result<String, Error> {
        let lifetime = match kind {
            TokenKind::Access => self.access_lifetime,
            TokenKind::Refresh => self.refresh_lifetime,
        };
        let claims = Claims {
            token_type: kind,
            user_id,
            jti: jti.to_owned(),
            iat: issued_at,
            exp: issued_at.saturating_add(lifetime.num_seconds()),
            fam: family.map(|family| family.to_string()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::internal(format!("signing a token: {e}")))
    }
}

/// Token operations on a store (returned by [`crate::Narutalk::tokens`]).
pub struct Tokens<'a> {
    pub(crate) store: &'a dyn TokenStore,
    pub(crate) keys: &'a TokenKeys,
    pub(crate) events: &'a EventBus,
    pub(crate) origin: Origin,
}

impl Tokens<'_> {
    /// Records `request_id` with the changes these calls make (the outbox's request id).
    pub fn with_request(mut self, request_id: &str) -> Self {
        self.origin.request_id = Some(request_id.into());
        self
    }

    /// Publishes that `family` (as stored) of `user` ended, after the commit that ended it.
    fn ended(&self, user: UserId, family: Option<&str>) {
        if let Some(family) = family.and_then(Family::parse) {
            self.events.publish(&Event::LoginEnded { user, family });
        }
    }

    /// Validates an access token completely: signature, expiry, type, the user's
    /// revocation time, that the user still exists and is active, and that the token's
    /// login family (when it names one) is not revoked. Returns the user.
    pub fn authenticate(&self, access: &str) -> Result<User, Error> {
        self.authenticate_grant(access).map(|(user, _)| user)
    }

    /// [`Tokens::authenticate`], also returning the token's [`Grant`], so that a holder of
    /// a long-lived connection can ask later, with [`Tokens::revoked`], whether the token
    /// has been revoked since.
    pub fn authenticate_grant(&self, access: &str) -> Result<(User, Grant), Error> {
        let claims = self.keys.decode(access).map_err(Error::InvalidToken)?;
        if claims.token_type != TokenKind::Access {
            return Err(Error::InvalidToken(TokenProblem::Invalid));
        }
        let family = match claims.fam.as_deref() {
            None => None,
            Some(fam) => {
                Some(Family::parse(fam).ok_or(Error::InvalidToken(TokenProblem::Invalid))?)
            }
        };
        let TokenHolder {
            user,
            family_revoked,
        } = self
            .store
            .token_holder(claims.user_id, family)?
            .ok_or(Error::InvalidToken(TokenProblem::Invalid))?;
        if !user.is_active {
            return Err(Error::InvalidToken(TokenProblem::Invalid));
        }
        if claims.iat <= user.tokens_revoked_at || family_revoked {
            return Err(Error::InvalidToken(TokenProblem::Blacklisted));
        }
        let grant = Grant {
            user_id: user.id,
            issued_at: claims.iat,
            family,
        };
        Ok((user, grant))
    }

    /// For each grant, whether its token has been revoked since it was validated: its user
    /// was deleted or deactivated, every token of the user was revoked (password change,
    /// log-out-everywhere, an administrator), or its login family was (a refresh token of
    /// the family reused or logged out), also by another process. One read transaction,
    /// one indexed lookup per distinct user and per distinct family. Expiry is not looked
    /// at.
    pub fn revoked(&self, grants: &[Grant]) -> Result<Vec<bool>, Error> {
        let users: HashSet<UserId> = grants.iter().map(|grant| grant.user_id).collect();
        let families: HashSet<Family> = grants.iter().filter_map(|grant| grant.family).collect();
        let users: Vec<UserId> = users.into_iter().collect();
        let families: Vec<Family> = families.into_iter().collect();
        let facts = self.store.revocation_facts(&users, &families)?;
        Ok(grants
            .iter()
            .map(|grant| {
                let by_user = match facts.users.get(&grant.user_id).copied().flatten() {
                    Some(stamp) => !stamp.is_active || grant.issued_at <= stamp.tokens_revoked_at,
                    None => true,
                };
                let by_family = grant
                    .family
                    .is_some_and(|family| facts.revoked_families.contains(&family));
                by_user || by_family
            })
            .collect())
    }

    /// `POST /api/auth/token/refresh/`: reads `{"refresh"}` and rotates it.
    pub fn refresh_fields(&self, body: &JsonObject) -> Result<TokenPair, Error> {
        let refresh = read_refresh_field(body)?;
        self.refresh(&refresh)
    }

    /// Exchanges a refresh token for a new pair. The token works once: presenting it again
    /// revokes every token of its login's family. Of two concurrent calls with one token,
    /// exactly one succeeds (the check and the rotation are one write transaction).
    pub fn refresh(&self, refresh: &str) -> Result<TokenPair, Error> {
        let claims = self.decode_refresh(refresh)?;
        let now = time::unix_seconds(&time::now());
        let jti = new_jti();
        let presented = PresentedRefresh {
            jti: &claims.jti,
            user_id: claims.user_id,
            issued_at: claims.iat,
        };
        let (issued_at, family) = match self.store.rotate_refresh(
            &presented,
            &jti,
            self.keys.lifetimes(),
            now,
            &Audit::now(&self.origin, Actor::User(claims.user_id)),
        )? {
            RefreshUse::Rotated { issued_at, family } => (issued_at, family),
            RefreshUse::Refused { problem, ended } => {
                self.ended(claims.user_id, ended.as_deref());
                return Err(Error::InvalidToken(problem));
            }
        };
        let user_id = claims.user_id;
        // Rows written before families were parsed hold the same 32 hex digits; one that
        // does not parse gets an access token without `fam`, judged by the older rules.
        let access = match Family::parse(&family) {
            Some(family) => self.keys.sign_access(user_id, family, issued_at)?,
            None => self
                .keys
                .sign(TokenKind::Access, user_id, &new_jti(), issued_at)?,
        };
        Ok(TokenPair {
            access,
            refresh: self
                .keys
                .sign(TokenKind::Refresh, user_id, &jti, issued_at)?,
        })
    }

    /// `POST /api/auth/logout/`: reads `{"refresh"}` and revokes it.
    pub fn logout_fields(&self, body: &JsonObject) -> Result<(), Error> {
        let refresh = read_refresh_field(body)?;
        self.logout(&refresh)
    }

    /// Revokes a refresh token and its whole login family: every refresh token of the
    /// family and the access tokens issued with them are refused from now on. A token
    /// already rotated counts as reuse (its family is revoked, and the answer is a
    /// refusal); one already revoked is refused as blacklisted.
    pub fn logout(&self, refresh: &str) -> Result<(), Error> {
        let claims = self.decode_refresh(refresh)?;
        let now = time::unix_seconds(&time::now());
        let presented = PresentedRefresh {
            jti: &claims.jti,
            user_id: claims.user_id,
            issued_at: claims.iat,
        };
        let end = self.store.end_family(
            &presented,
            now,
            &Audit::now(&self.origin, Actor::User(claims.user_id)),
        )?;
        self.ended(claims.user_id, end.ended.as_deref());
        match end.refused {
            Some(problem) => Err(Error::InvalidToken(problem)),
            None => Ok(()),
        }
    }

    /// Deletes refresh-token rows that expired, at most `limit` of them; returns how many.
    /// An expired token is refused by its `exp` anyway, so its row is no longer needed,
    /// unless an access token issued with it is still valid: the row is what tells that
    /// its family was ended, so it stays until that access token has expired too.
    pub fn purge_expired(&self, limit: u32) -> Result<usize, Error> {
        let now = time::unix_seconds(&time::now());
        self.store.purge_expired(now, self.keys.lifetimes(), limit)
    }

    fn decode_refresh(&self, refresh: &str) -> Result<Claims, Error> {
        let claims = self.keys.decode(refresh).map_err(Error::InvalidToken)?;
        if claims.token_type != TokenKind::Refresh {
            return Err(Error::InvalidToken(TokenProblem::Invalid));
        }
        Ok(claims)
    }
}

/// The `iat` of tokens issued at `now_seconds` to a user whose revocation time is
/// `tokens_revoked_at` (both whole seconds since the epoch): now, or one second after the
/// revocation time when that is not before now, so that a token issued right after a
/// revocation is not refused by it. Stores decide it in the transaction that issues.
pub fn issued_at(now_seconds: i64, tokens_revoked_at: i64) -> i64 {
    now_seconds.max(tokens_revoked_at.saturating_add(1))
}

fn read_refresh_field(body: &JsonObject) -> Result<String, Error> {
    let mut reader = FieldReader::new(body);
    let refresh = reader.text("refresh", Text::REQUIRED_VERBATIM);
    reader.finish()?;
    refresh.ok_or_else(|| Error::internal("refresh passed its checks but has no value"))
}

/// A fresh token id: a random UUID v4 as 32 lower-case hex digits, as simplejwt writes it.
fn new_jti() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `user_id` is written as a string (simplejwt 5.5) and read from a string or an integer.
mod user_id_claim {
    use serde::{Deserialize, Deserializer, Serializer, de};

    use crate::accounts::UserId;

    pub fn serialize<S: Serializer>(id: &UserId, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&id.0.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<UserId, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(i64),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(id) => Ok(UserId(id)),
            Raw::Text(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => text
                .parse()
                .map(UserId)
                .map_err(|_| de::Error::custom("user_id out of range")),
            Raw::Text(_) => Err(de::Error::custom("user_id is not a number")),
        }
    }
}
