//! The contract's error answers (section 1) and the one translation of core errors into them.

use narutalk_core::accounts::password;
use narutalk_core::error::{Error as CoreError, FieldErrors, TokenProblem};
use serde_json::json;
use warp::http::{HeaderValue, StatusCode, header};

use crate::http::{Response, json_response};

/// The `WWW-Authenticate` header of every 401, as DRF and simplejwt send it.
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"api\"";

/// Every answer other than success, each with the contract's status, body and headers.
#[derive(Debug)]
pub enum ApiError {
    /// 404 `Not found.`: unknown path, unknown id, malformed UUID, someone else's session.
    NotFound,
    /// 404 `Invalid page.`
    InvalidPage,
    /// 401: no `Authorization: Bearer` header.
    NotAuthenticated,
    /// 401: an access token that is bad, expired, revoked, or not an access token.
    InvalidAccessToken,
    /// 401: a refresh token refused by the refresh or logout endpoint, in simplejwt's words.
    InvalidRefreshToken(TokenProblem),
    /// 401: wrong email or password, or an inactive account (one answer for every cause).
    BadCredentials,
    /// 403.
    PermissionDenied,
    /// 405 with the `Allow` header.
    MethodNotAllowed {
        /// The method that was sent.
        method: String,
        /// The methods the path allows, comma-separated.
        allow: &'static str,
    },
    /// 413.
    BodyTooLarge,
    /// 408: the body stopped arriving; the connection is closed after the answer.
    BodyTimeout,
    /// 415 naming the content type that was sent (empty when none was).
    UnsupportedMediaType(String),
    /// 400 `JSON parse error - ...`.
    JsonParse(String),
    /// 400: a JSON body that is not an object, by the Python name of its type.
    NotAnObject(&'static str),
    /// 400 with field errors.
    Fields(FieldErrors),
    /// 400 `Bad request.`: a request the server cannot read as one of its own, such as a
    /// target without a path (`GET host:443`, `CONNECT host:443`).
    BadRequest,
    /// 426: a request to the WebSocket endpoint that is not a WebSocket (version 13)
    /// upgrade.
    UpgradeRequired,
    /// 400: a WebSocket upgrade whose `Sec-WebSocket-Key` is not 16 bytes of base64.
    BadHandshake,
    /// 429, retry after this many whole seconds.
    Throttled(u64),
    /// 503: the password-hashing queue is full or the database is unavailable.
    Unavailable,
    /// 500; the cause has been logged and is never shown.
    Internal,
}

impl ApiError {
    /// The HTTP status of this answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound | ApiError::InvalidPage => StatusCode::NOT_FOUND,
            ApiError::NotAuthenticated
            | ApiError::InvalidAccessToken
            | ApiError::InvalidRefreshToken(_)
            | ApiError::BadCredentials => StatusCode::UNAUTHORIZED,
            ApiError::PermissionDenied => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::JsonParse(_)
            | ApiError::NotAnObject(_)
            | ApiError::Fields(_)
            | ApiError::BadRequest => StatusCode::BAD_REQUEST,
            ApiError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ApiError::BadHandshake => StatusCode::BAD_REQUEST,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response: status, the contract's JSON body and any header it requires.
    pub fn into_response(self) -> Response {
        let mut response = json_response(self.status(), &self.body());
        for (name, value) in self.headers() {
            response.headers_mut().insert(name, value);
        }
        response
    }

    /// The contract's JSON body of this answer.
    pub fn body(&self) -> serde_json::Value {
        match self {
            ApiError::NotFound => json!({ "detail": "Not found." }),
            ApiError::InvalidPage => json!({ "detail": "Invalid page." }),
            ApiError::NotAuthenticated => {
                json!({ "detail": "Authentication credentials were not provided." })
            }
            ApiError::InvalidAccessToken => json!({
                "detail": "Given token not valid for any token type",
                "code": "token_not_valid",
            }),
            ApiError::InvalidRefreshToken(problem) => {
                json!({ "detail": problem.detail(), "code": "token_not_valid" })
            }
            ApiError::BadCredentials => {
                json!({ "detail": "No active account found with the given credentials" })
            }
            ApiError::PermissionDenied => {
                json!({ "detail": "You do not have permission to perform this action." })
            }
            ApiError::MethodNotAllowed { method, .. } => {
                json!({ "detail": format!("Method \"{method}\" not allowed.") })
            }
            ApiError::BodyTooLarge => json!({ "detail": "Request body too large." }),
            ApiError::BodyTimeout => json!({ "detail": "Request body timed out." }),
            ApiError::UnsupportedMediaType(content_type) => {
                json!({ "detail": format!("Unsupported media type \"{content_type}\" in request.") })
            }
            ApiError::JsonParse(problem) => {
                json!({ "detail": format!("JSON parse error - {problem}") })
            }
            ApiError::NotAnObject(type_name) => json!({
                FieldErrors::NON_FIELD: [format!("Invalid data. Expected a dictionary, but got {type_name}.")]
            }),
            ApiError::Fields(errors) => json!(errors),
            ApiError::BadRequest => json!({ "detail": "Bad request." }),
            ApiError::UpgradeRequired => json!({
                "detail": "This endpoint is a WebSocket: connect with a WebSocket (version 13) upgrade."
            }),
            ApiError::BadHandshake => {
                json!({ "detail": "Sec-WebSocket-Key must be 16 bytes in base64." })
            }
            ApiError::Throttled(seconds) => json!({
                "detail": format!("Request was throttled. Expected available in {seconds} seconds.")
            }),
            ApiError::Unavailable => {
                json!({ "detail": "Service temporarily unavailable, try again later." })
            }
            ApiError::Internal => json!({ "detail": "A server error occurred." }),
        }
    }

    /// The headers the contract (or RFC 6455, for 426) requires with this answer.
    fn headers(&self) -> Vec<(header::HeaderName, HeaderValue)> {
        let one = match self {
            // simplejwt's token views name the realm on their 401s too.
            ApiError::NotAuthenticated
            | ApiError::InvalidAccessToken
            | ApiError::InvalidRefreshToken(_)
            | ApiError::BadCredentials => Some(www_authenticate()),
            ApiError::MethodNotAllowed { allow, .. } => {
                Some((header::ALLOW, HeaderValue::from_static(allow)))
            }
            ApiError::BodyTimeout => Some((header::CONNECTION, HeaderValue::from_static("close"))),
            ApiError::Throttled(seconds) => {
                Some((header::RETRY_AFTER, HeaderValue::from(*seconds)))
            }
            ApiError::Unavailable => Some((header::RETRY_AFTER, HeaderValue::from_static("1"))),
            ApiError::UpgradeRequired => {
                return vec![
                    (header::UPGRADE, HeaderValue::from_static("websocket")),
                    (
                        header::SEC_WEBSOCKET_VERSION,
                        HeaderValue::from_static("13"),
                    ),
                ];
            }
            _ => None,
        };
        one.into_iter().collect()
    }

    /// The same answer as one line of text, for the `error` frame of a WebSocket: the
    /// `detail`, or each field's messages after its name. `rename` gives the name a
    /// field has on the socket (the REST `content` is the frame's `message`).
    pub fn text(&self, rename: impl Fn(&str) -> &str) -> String {
        match self {
            ApiError::Fields(errors) => errors
                .iter()
                .map(|(field, messages)| {
                    let messages = messages.join(" ");
                    if field == FieldErrors::NON_FIELD {
                        messages
                    } else {
                        format!("{}: {messages}", rename(field))
                    }
                })
                .collect::<Vec<_>>()
                .join("; "),
            other => match other.body() {
                serde_json::Value::Object(body) => match body.get("detail") {
                    Some(serde_json::Value::String(detail)) => detail.clone(),
                    _ => serde_json::Value::Object(body).to_string(),
                },
                body => body.to_string(),
            },
        }
    }
}

fn www_authenticate() -> (header::HeaderName, HeaderValue) {
    (
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(WWW_AUTHENTICATE),
    )
}

impl From<CoreError> for ApiError {
    /// A token problem here is a refresh token's (refresh, logout); the access-token check
    /// maps its own errors to [`ApiError::InvalidAccessToken`].
    fn from(error: CoreError) -> Self {
        match error {
            CoreError::Invalid(errors) => ApiError::Fields(errors),
            CoreError::NotFound => ApiError::NotFound,
            CoreError::InvalidPage => ApiError::InvalidPage,
            CoreError::BadCredentials => ApiError::BadCredentials,
            CoreError::InvalidToken(problem) => ApiError::InvalidRefreshToken(problem),
            CoreError::PermissionDenied => ApiError::PermissionDenied,
            // A full hashing queue is a flood of logins, not a fault: the core counts it
            // (`narutalk_argon2_refused_total`), and a warning per refusal would flood the
            // log too.
            CoreError::Unavailable(cause) if cause == password::HASHING_BUSY => {
                tracing::debug!(%cause, "password hashing busy");
                ApiError::Unavailable
            }
            CoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "storage unavailable");
                ApiError::Unavailable
            }
            CoreError::Internal(cause) => {
                tracing::error!(cause = %format_args!("{cause:#}"), "internal error");
                ApiError::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_answers_retry_after_in_whole_seconds() {
        let response = ApiError::Throttled(7).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let response = ApiError::MethodNotAllowed {
            method: "PATCH".into(),
            allow: "POST, OPTIONS",
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "POST, OPTIONS");
    }

    #[test]
    fn socket_text_is_the_detail_or_each_field_after_its_name() {
        assert_eq!(ApiError::NotFound.text(|f| f), "Not found.");
        assert_eq!(
            ApiError::Throttled(3).text(|f| f),
            "Request was throttled. Expected available in 3 seconds."
        );
        let mut errors = FieldErrors::new();
        errors.add("content", "This field may not be blank.");
        errors.add(
            "metadata",
            "Expected a dictionary of items but got type \"list\".",
        );
        errors.add(FieldErrors::NON_FIELD, "Something else.");
        let text = ApiError::Fields(errors).text(|f| if f == "content" { "message" } else { f });
        assert_eq!(
            text,
            "message: This field may not be blank.; metadata: Expected a dictionary of items \
             but got type \"list\".; Something else."
        );
    }
}
