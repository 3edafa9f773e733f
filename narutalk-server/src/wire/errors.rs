//! The bodies of the contract's error answers (section 1), and of the search proxy's own
//! failures. Keys are in name order, as the server has always written these bodies.
//!
//! Patterns name whitespace explicitly where the server trims or refuses blank strings
//! (`docs::WHITE_SPACE`): a regex's own `\s` means something else in each engine.

use std::borrow::Cow;
use std::collections::BTreeMap;

use narutalk_core::error as core;
use serde::{Serialize, Serializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{PartialSchema, ToSchema};

/// `{"detail": "..."}`: the body of most errors.
#[derive(Debug, Serialize, ToSchema)]
pub struct Detail<'a> {
    /// What went wrong.
    #[schema(value_type = String, example = "Not found.")]
    pub detail: Cow<'a, str>,
}

/// A refused token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenError<'a> {
    /// Present when a token was sent and refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub code: Option<TokenErrorCode>,
    /// `Given token not valid for any token type` (access), `Token is invalid`, `Token is
    /// expired` or `Token is blacklisted` (refresh), or `Authentication credentials were
    /// not provided.` (no token; then without `code`).
    pub detail: &'a str,
}

/// The one code of a refused token.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenErrorCode {
    /// The token is bad, expired, revoked or of the wrong type.
    TokenNotValid,
}

/// Field name to messages; rules across fields under `non_field_errors`.
#[derive(Debug)]
pub struct FieldErrors<'a>(pub Cow<'a, core::FieldErrors>);

/// The schema of an object from strings to lists of strings, with this type's
/// description and an example.
impl PartialSchema for FieldErrors<'_> {
    fn schema() -> RefOr<Schema> {
        let mut schema = <BTreeMap<String, Vec<String>> as PartialSchema>::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.description = Some(
                "Field name to messages; rules across fields under `non_field_errors`.".into(),
            );
            object.example = Some(serde_json::json!({"email": ["Enter a valid email address."]}));
        }
        schema
    }
}

impl ToSchema for FieldErrors<'_> {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("FieldErrors")
    }
}

impl Serialize for FieldErrors<'_> {
    /// An object from field name to its messages, in field-name order.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter())
    }
}

/// A 400 for a request body: field errors (a body that is not a JSON object is one too,
/// under `non_field_errors`), or `{"detail": "JSON parse error - ..."}` for malformed JSON,
/// or `{"detail": "Bad request."}` for a request that cannot be read at all.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(
    dead_code,
    reason = "a union of the bodies above, named by the document only"
)]
pub enum BadRequest<'a> {
    /// Field name to messages.
    Fields(FieldErrors<'a>),
    /// Malformed JSON, or an unreadable request.
    Detail(Detail<'a>),
}

/// Any error body the server answers: a detail, a refused token, or field errors.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ErrorBody<'a> {
    /// `{"detail": "..."}`.
    Detail(Detail<'a>),
    /// `{"detail": "...", "code": "token_not_valid"}`.
    Token(TokenError<'a>),
    /// Field name to messages.
    Fields(FieldErrors<'a>),
}

impl<'a> ErrorBody<'a> {
    /// `{"detail": detail}`.
    pub fn detail(detail: impl Into<Cow<'a, str>>) -> Self {
        ErrorBody::Detail(Detail {
            detail: detail.into(),
        })
    }
}

/// A search-proxy failure.
#[derive(Serialize, ToSchema)]
pub struct ProxyError<'a> {
    /// What failed (`search service is not configured`, `search service timed out`, ...).
    pub error: &'a str,
}

/// A 503 of the search proxy: the search service failed (`error`), or the database
/// could not check the access token (`detail`, with `Retry-After`).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(
    dead_code,
    reason = "a union of the bodies above, named by the document only"
)]
pub enum SearchUnavailable<'a> {
    /// The search service is not configured, cannot be reached or timed out.
    Proxy(ProxyError<'a>),
    /// The database is unavailable.
    Detail(Detail<'a>),
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_body_has_the_contracts_shape() {
        let mut errors = core::FieldErrors::new();
        errors.add("title", "This field is required.");
        errors.add("category", "\"x\" is not a valid choice.");
        let bodies = [
            (
                ErrorBody::detail("Not found."),
                json!({"detail": "Not found."}),
            ),
            (
                ErrorBody::Token(TokenError {
                    code: Some(TokenErrorCode::TokenNotValid),
                    detail: "Token is invalid",
                }),
                json!({"detail": "Token is invalid", "code": "token_not_valid"}),
            ),
            (
                ErrorBody::Token(TokenError {
                    detail: "Authentication credentials were not provided.",
                    code: None,
                }),
                json!({"detail": "Authentication credentials were not provided."}),
            ),
            (
                ErrorBody::Fields(FieldErrors(Cow::Owned(errors))),
                json!({
                    "category": ["\"x\" is not a valid choice."],
                    "title": ["This field is required."],
                }),
            ),
        ];
        for (body, expected) in bodies {
            assert_eq!(serde_json::to_value(&body).unwrap(), expected);
            // serde_json's own maps are in name order: so must the text be.
            assert_eq!(serde_json::to_string(&body).unwrap(), expected.to_string());
        }
    }
}
