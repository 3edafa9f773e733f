//! The contract's error answers (section 1) and the one translation of core errors into them.

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
            ApiError::JsonParse(_) | ApiError::NotAnObject(_) | ApiError::Fields(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response: status, the contract's JSON body and any header it requires.
    pub fn into_response(self) -> Response {
        let status = self.status();
        let mut extra: Option<(header::HeaderName, HeaderValue)> = None;
        let body = match self {
            ApiError::NotFound => json!({ "detail": "Not found." }),
            ApiError::InvalidPage => json!({ "detail": "Invalid page." }),
            ApiError::NotAuthenticated => {
                extra = Some(www_authenticate());
                json!({ "detail": "Authentication credentials were not provided." })
            }
            ApiError::InvalidAccessToken => {
                extra = Some(www_authenticate());
                json!({
                    "detail": "Given token not valid for any token type",
                    "code": "token_not_valid",
                })
            }
            // simplejwt's token views name the realm on their 401s too.
            ApiError::InvalidRefreshToken(problem) => {
                extra = Some(www_authenticate());
                json!({ "detail": problem.detail(), "code": "token_not_valid" })
            }
            ApiError::BadCredentials => {
                extra = Some(www_authenticate());
                json!({ "detail": "No active account found with the given credentials" })
            }
            ApiError::PermissionDenied => {
                json!({ "detail": "You do not have permission to perform this action." })
            }
            ApiError::MethodNotAllowed { method, allow } => {
                extra = Some((header::ALLOW, HeaderValue::from_static(allow)));
                json!({ "detail": format!("Method \"{method}\" not allowed.") })
            }
            ApiError::BodyTooLarge => json!({ "detail": "Request body too large." }),
            ApiError::BodyTimeout => {
                extra = Some((header::CONNECTION, HeaderValue::from_static("close")));
                json!({ "detail": "Request body timed out." })
            }
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
            ApiError::Throttled(seconds) => {
                extra = Some((header::RETRY_AFTER, HeaderValue::from(seconds)));
                json!({
                    "detail": format!("Request was throttled. Expected available in {seconds} seconds.")
                })
            }
            ApiError::Unavailable => {
                extra = Some((header::RETRY_AFTER, HeaderValue::from_static("1")));
                json!({ "detail": "Service temporarily unavailable, try again later." })
            }
            ApiError::Internal => json!({ "detail": "A server error occurred." }),
        };
        let mut response = json_response(status, &body);
        if let Some((name, value)) = extra {
            response.headers_mut().insert(name, value);
        }
        response
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
            CoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "storage unavailable");
                ApiError::Unavailable
            }
            CoreError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
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
}
