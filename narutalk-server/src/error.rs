//! The contract's error answers (section 1) and the one translation of core errors into
//! them.
//!
//! An internal error keeps its cause ([`Cause`]) for the log and answers only the
//! contract's 500 body. The cause is logged once, when it is dropped: after its answer was
//! built, or when nobody was left to hear it. Requests run inside a span that carries
//! their id, so the line says which request failed.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use narutalk_core::accounts::password;
use narutalk_core::error::{Error as CoreError, FieldErrors, TokenProblem};
use warp::http::{HeaderValue, StatusCode, header};

use crate::response::{Response, json_response};
use crate::wire;
use crate::wire::errors::{Detail, ErrorBody, TokenError, TokenErrorCode};

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
    /// 500; the cause is logged (once, with the request id) and never shown.
    Internal(#[allow(dead_code, reason = "held only to be logged when dropped")] Cause),
}

/// Why a request failed inside the server: what went wrong and, when there is one, the
/// error beneath it with its own sources. Only the log sees it: it is logged as an error
/// when it is dropped, in the span of the request it belongs to.
pub struct Cause {
    what: &'static str,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl Cause {
    /// The source and every error beneath it, outermost first, joined by `: `; empty
    /// without a source.
    pub fn chain(&self) -> String {
        self.source
            .as_deref()
            .map(|source| chain(source as &dyn StdError))
            .unwrap_or_default()
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cause")
            .field("what", &self.what)
            .field("source", &self.chain())
            .finish()
    }
}

impl Drop for Cause {
    fn drop(&mut self) {
        match &self.source {
            Some(_) => tracing::error!(cause = self.chain(), "internal error: {}", self.what),
            None => tracing::error!("internal error: {}", self.what),
        }
    }
}

/// An error with every error beneath it, outermost first, joined by `: ` (an error's own
/// text often says only what failed; the reason, such as `Connection refused`, is
/// beneath it). A source whose text ends its parent's is not repeated.
pub fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl ApiError {
    /// 500: `what` failed because of `source` (logged, never shown).
    pub fn internal(
        what: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        ApiError::Internal(Cause {
            what,
            source: Some(source.into()),
        })
    }

    /// 500 for a state the server never reaches unless it has a bug: `what` says which.
    pub fn bug(what: &'static str) -> Self {
        ApiError::Internal(Cause { what, source: None })
    }

    /// The answer to an access token the core refused: its storage errors keep their
    /// status, every other refusal is the contract's one 401 for access tokens.
    pub fn access_refused(error: CoreError) -> Self {
        match error {
            CoreError::Unavailable(_) | CoreError::Internal(_) => ApiError::from(error),
            _ => ApiError::InvalidAccessToken,
        }
    }

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
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
    pub fn body(&self) -> ErrorBody<'_> {
        match self {
            ApiError::NotFound => ErrorBody::detail("Not found."),
            ApiError::InvalidPage => ErrorBody::detail("Invalid page."),
            ApiError::NotAuthenticated => ErrorBody::Token(TokenError {
                code: None,
                detail: "Authentication credentials were not provided.",
            }),
            ApiError::InvalidAccessToken => ErrorBody::Token(TokenError {
                code: Some(TokenErrorCode::TokenNotValid),
                detail: "Given token not valid for any token type",
            }),
            ApiError::InvalidRefreshToken(problem) => ErrorBody::Token(TokenError {
                code: Some(TokenErrorCode::TokenNotValid),
                detail: problem.detail(),
            }),
            ApiError::BadCredentials => {
                ErrorBody::detail("No active account found with the given credentials")
            }
            ApiError::PermissionDenied => {
                ErrorBody::detail("You do not have permission to perform this action.")
            }
            ApiError::MethodNotAllowed { method, .. } => {
                ErrorBody::detail(format!("Method \"{method}\" not allowed."))
            }
            ApiError::BodyTooLarge => ErrorBody::detail("Request body too large."),
            ApiError::BodyTimeout => ErrorBody::detail("Request body timed out."),
            ApiError::UnsupportedMediaType(content_type) => ErrorBody::detail(format!(
                "Unsupported media type \"{content_type}\" in request."
            )),
            ApiError::JsonParse(problem) => {
                ErrorBody::detail(format!("JSON parse error - {problem}"))
            }
            ApiError::NotAnObject(type_name) => {
                ErrorBody::Fields(wire::errors::FieldErrors(Cow::Owned(FieldErrors::single(
                    FieldErrors::NON_FIELD,
                    format!("Invalid data. Expected a dictionary, but got {type_name}."),
                ))))
            }
            ApiError::Fields(errors) => {
                ErrorBody::Fields(wire::errors::FieldErrors(Cow::Borrowed(errors)))
            }
            ApiError::BadRequest => ErrorBody::detail("Bad request."),
            ApiError::UpgradeRequired => ErrorBody::detail(
                "This endpoint is a WebSocket: connect with a WebSocket (version 13) upgrade.",
            ),
            ApiError::BadHandshake => {
                ErrorBody::detail("Sec-WebSocket-Key must be 16 bytes in base64.")
            }
            ApiError::Throttled(seconds) => ErrorBody::detail(format!(
                "Request was throttled. Expected available in {seconds} seconds."
            )),
            ApiError::Unavailable => {
                ErrorBody::detail("Service temporarily unavailable, try again later.")
            }
            ApiError::Internal(_) => ErrorBody::detail("A server error occurred."),
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
    pub fn into_text(self, rename: impl Fn(&str) -> &str) -> String {
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
                ErrorBody::Detail(Detail { detail }) => detail.into_owned(),
                ErrorBody::Token(TokenError { detail, .. }) => detail.to_owned(),
                ErrorBody::Fields(errors) => serde_json::to_string(&errors).unwrap_or_default(),
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
            error @ CoreError::Internal(_) => core_internal(error),
        }
    }
}

/// The one place that reads the core's internal error: the logged cause is the core's
/// [`CoreError::detail`] followed by the errors beneath it.
fn core_internal(error: CoreError) -> ApiError {
    ApiError::internal("the core failed", error)
}

#[cfg(test)]
mod tests {
    use narutalk_core::error::InternalError;
    use serde_json::json;

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
        assert_eq!(ApiError::NotFound.into_text(|f| f), "Not found.");
        assert_eq!(
            ApiError::Throttled(3).into_text(|f| f),
            "Request was throttled. Expected available in 3 seconds."
        );
        let mut errors = FieldErrors::new();
        errors.add("content", "This field may not be blank.");
        errors.add(
            "metadata",
            "Expected a dictionary of items but got type \"list\".",
        );
        errors.add(FieldErrors::NON_FIELD, "Something else.");
        let text =
            ApiError::Fields(errors).into_text(|f| if f == "content" { "message" } else { f });
        assert_eq!(
            text,
            "message: This field may not be blank.; metadata: Expected a dictionary of items \
             but got type \"list\".; Something else."
        );
    }

    #[test]
    fn an_internal_error_shows_only_the_contracts_body() {
        let error = ApiError::internal("reading the thing", "disk on fire");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            serde_json::to_value(error.body()).unwrap(),
            json!({ "detail": "A server error occurred." })
        );
        assert_eq!(error.into_text(|f| f), "A server error occurred.");
    }

    #[test]
    fn an_internal_errors_cause_is_logged_once_with_its_sources_in_the_requests_span() {
        // Arrange
        // Act
        let (response, text) = logged_by(|| {
            let _request = tracing::error_span!("request", request_id = "r-1").entered();
            let cause = std::io::Error::other(Outer(std::io::Error::other("disk on fire")));
            ApiError::internal("reading the thing", cause).into_response()
        });

        // Assert
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line = &lines[0];
        assert_eq!(line["level"], "ERROR");
        assert_eq!(line["span"]["request_id"], "r-1");
        assert_eq!(
            line["fields"]["message"],
            "internal error: reading the thing"
        );
        assert_eq!(line["fields"]["cause"], "the outer failure: disk on fire");
    }

    #[test]
    fn a_core_internal_error_logs_the_cores_detail_and_the_errors_beneath_it() {
        // Arrange
        let core_error = || {
            CoreError::Internal(InternalError::from_error(Outer(std::io::Error::other(
                "disk on fire",
            ))))
        };
        let detail = core_error().detail();

        // Act
        let (response, text) = logged_by(|| ApiError::from(core_error()).into_response());

        // Assert
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["fields"]["message"], "internal error: the core failed");
        assert_eq!(detail, "internal error: the outer failure");
        assert_eq!(line["fields"]["cause"], format!("{detail}: disk on fire"));
    }

    /// Runs `act` under a JSON subscriber of its own and answers what it returned and what
    /// was logged. tracing caches whether a log statement is wanted per statement, for the
    /// whole process; a statement reached for the first time on another test's thread at
    /// the moment this subscriber registers can be cached as unwanted (an upstream race that
    /// a server, whose one subscriber is installed before anything logs, never meets). So
    /// when nothing was logged the cache is rebuilt with this subscriber in place and `act`
    /// runs again, at most five times in all.
    fn logged_by(act: impl Fn() -> Response) -> (Response, String) {
        let logged = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(logged.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let mut response = act();
            for _ in 1..5 {
                if !logged.text().is_empty() {
                    break;
                }
                tracing::callsite::rebuild_interest_cache();
                response = act();
            }
            (response, logged.text())
        })
    }

    /// An error with a source.
    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the outer failure")
        }
    }

    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    /// What a subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }
}
