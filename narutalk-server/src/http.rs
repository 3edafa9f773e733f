//! One HTTP request as the handlers see it, and what the server knows about how it is
//! reached (its [`Site`]).
//!
//! [`Request`] carries what warp extracted (method, path, query, headers, peer address)
//! and the body unread ([`RequestBody`]): the body is read only when the order of checks
//! (contract section 1.1) reaches it, and it is counted while it is read, so a chunked
//! body over the limit is refused like one with a large `Content-Length`. A body that
//! arrives too slowly is refused with 408, and one still arriving when the server stops
//! with 503.

use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use narutalk_core::fields::{JsonObject, python_type_name};
use serde_json::Value;
use warp::http::{HeaderMap, Method, header};

use crate::body::{BodyError, RequestBody};
use crate::error::ApiError;
use crate::listener::Takeover;

/// How much of a request body is read. (How patiently is the accept loop's business:
/// [`crate::listener::ServeOptions::body_grace`].)
#[derive(Clone, Copy, Debug)]
pub struct BodyRules {
    /// Bodies above this many bytes are refused (413).
    pub limit: u64,
}

/// How the server is reached: its address, and who may say otherwise (trusted proxies)
/// or call it from a page elsewhere (CORS origins).
#[derive(Clone, Debug)]
pub struct Site {
    /// Proxies whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Origins that get CORS headers, besides the server's own.
    pub cors_origins: Vec<String>,
    /// The address the server listens on.
    pub local_addr: SocketAddr,
}

impl Site {
    /// The request's `Origin` when it gets CORS headers: one of the configured origins, or
    /// the server's own. Any other origin is served as if it had sent none.
    pub fn allowed_origin(&self, request: &Request) -> Option<String> {
        let origin = request.header(header::ORIGIN)?;
        let own = format!(
            "{}://{}",
            request.scheme(&self.trusted_proxies),
            request.host(self.local_addr)
        );
        (origin == own || self.cors_origins.iter().any(|allowed| allowed == origin))
            .then(|| origin.to_owned())
    }
}

/// The longest `Authorization` header read; no honest token comes close.
const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;

/// A request on its way through the router.
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, percent-encoded as sent.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// The headers.
    pub headers: HeaderMap,
    /// The address of the TCP peer.
    pub peer: Option<SocketAddr>,
    /// This request's id (also sent back as `X-Request-Id`).
    pub request_id: String,
    /// The hold on the connection, when the request asks for an upgrade.
    pub takeover: Option<Takeover>,
    /// The target as sent, when it had no path (`GET host:443`): answered 400.
    pub target_without_path: Option<String>,
    /// The body, until a handler reads it.
    body: Option<RequestBody>,
}

/// What the `Authorization` header holds (the token borrowed from the header, or owned).
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials<T = &'static str> {
    /// No header, or a scheme other than `Bearer`.
    Missing,
    /// `Bearer <token>`.
    Bearer(T),
    /// A `Bearer` header that is not exactly two whitespace-separated values.
    Malformed,
}

impl Request {
    /// Builds a request from warp's parts.
    pub fn new(
        method: Method,
        path: String,
        query: Option<String>,
        headers: HeaderMap,
        peer: Option<SocketAddr>,
        request_id: String,
        body: Option<RequestBody>,
    ) -> Request {
        Request {
            method,
            path,
            query,
            headers,
            peer,
            request_id,
            takeover: None,
            target_without_path: None,
            body,
        }
    }

    /// A header's value as text, when it is valid visible ASCII.
    pub fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The credentials of the `Authorization` header, read the way simplejwt reads them.
    pub fn credentials(&self) -> Credentials<&str> {
        let Some(value) = self.headers.get(header::AUTHORIZATION) else {
            return Credentials::Missing;
        };
        if value.len() > MAX_AUTHORIZATION_BYTES {
            return Credentials::Malformed;
        }
        let Ok(value) = value.to_str() else {
            return Credentials::Malformed;
        };
        // simplejwt splits on runs of whitespace, as RFC 6750's `"Bearer" 1*SP b64token` allows.
        let mut parts = value.split_ascii_whitespace();
        if parts.next() != Some("Bearer") {
            return Credentials::Missing;
        }
        match (parts.next(), parts.next()) {
            (Some(token), None) if !token.is_empty() => Credentials::Bearer(token),
            _ => Credentials::Malformed,
        }
    }

    /// The value of query parameter `name` (the last one when repeated, as Django's
    /// `QueryDict.get` answers), percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_pairs(self.query.as_deref().unwrap_or(""))
            .filter(|(key, _)| key == name)
            .last()
            .map(|(_, value)| value)
    }

    /// The client's IP: the peer's, or the first address of `X-Forwarded-For` when the
    /// peer is one of `trusted_proxies`.
    pub fn client_ip(&self, trusted_proxies: &[IpAddr]) -> IpAddr {
        let peer = self
            .peer
            .map_or(IpAddr::from([127, 0, 0, 1]), |peer| peer.ip());
        if !trusted_proxies.contains(&peer) {
            return peer;
        }
        self.header("x-forwarded-for")
            .and_then(|forwarded| forwarded.split(',').next())
            .and_then(|first| first.trim().parse().ok())
            .unwrap_or(peer)
    }

    /// `https` when a trusted proxy says so in `X-Forwarded-Proto`, otherwise `http`.
    pub fn scheme(&self, trusted_proxies: &[IpAddr]) -> &'static str {
        let from_proxy = self
            .peer
            .is_some_and(|peer| trusted_proxies.contains(&peer.ip()));
        let https = self
            .header("x-forwarded-proto")
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
        if from_proxy && https { "https" } else { "http" }
    }

    /// The `Host` the client addressed, or the listening address when it sent none (or
    /// one with characters no host name has).
    pub fn host(&self, local_addr: SocketAddr) -> String {
        self.header(header::HOST)
            .filter(|host| {
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
            })
            .map_or_else(|| local_addr.to_string(), str::to_owned)
    }

    /// Reads the body as the JSON object of a form: at most `limit` bytes (413), with a
    /// JSON content type (415), valid JSON (400 `detail`) and an object (400
    /// `non_field_errors`). An empty body is `{}`.
    pub async fn json_object(&mut self, rules: BodyRules) -> Result<JsonObject, ApiError> {
        match self.json_value(rules).await? {
            Value::Object(object) => Ok(object),
            other => Err(ApiError::NotAnObject(python_type_name(&other))),
        }
    }

    /// Reads the body as any JSON value, with the checks of [`Request::json_object`] up to
    /// the syntax. An empty body is `{}`.
    pub async fn json_value(&mut self, rules: BodyRules) -> Result<Value, ApiError> {
        let bytes = self.body_bytes(rules).await?;
        if bytes.is_empty() {
            return Ok(Value::Object(JsonObject::new()));
        }
        let content_type = self.header(header::CONTENT_TYPE).unwrap_or("");
        if !is_json_content_type(content_type) {
            let shown = self
                .headers
                .get(header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            return Err(ApiError::UnsupportedMediaType(shown));
        }
        serde_json::from_slice(&bytes).map_err(|error| ApiError::JsonParse(error.to_string()))
    }

    /// The whole body, refused with 413 when it is over the limit, by `Content-Length` or
    /// by counting, with 408 when it falls behind the minimum pace, and with 503 when the
    /// server stops while it is still arriving.
    pub async fn body_bytes(&mut self, rules: BodyRules) -> Result<Bytes, ApiError> {
        let BodyRules { limit } = rules;
        let declared = self
            .header(header::CONTENT_LENGTH)
            .and_then(|length| length.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit) {
            return Err(ApiError::BodyTooLarge);
        }
        let Some(body) = self.body.take() else {
            return Ok(Bytes::new());
        };
        let mut collected = BytesMut::new();
        while let Some(chunk) = body.next_chunk().await {
            let chunk = chunk.map_err(|error| match error {
                BodyError::TooSlow => ApiError::BodyTimeout,
                BodyError::Stopping => ApiError::Unavailable,
                BodyError::Failed(error) => ApiError::JsonParse(error.to_string()),
            })?;
            if (collected.len() + chunk.len()) as u64 > limit {
                return Err(ApiError::BodyTooLarge);
            }
            collected.extend_from_slice(&chunk);
        }
        Ok(collected.freeze())
    }
}

/// True for `application/json`, with any parameters, in any letter case.
fn is_json_content_type(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// The `key=value` pairs of a query string, percent-decoded (`+` is a space).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
}

/// Percent-decodes a query component; invalid escapes stay as they are, and bytes that
/// are not UTF-8 become U+FFFD.
pub fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query component the way Python's `urlencode` does (space as `+`).
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_reads_escapes_and_plus() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%ED%95%9C"), "한");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn percent_encoding_matches_urlencode() {
        assert_eq!(percent_encode("a b&c=d"), "a+b%26c%3Dd");
        assert_eq!(percent_encode("한"), "%ED%95%9C");
    }

    #[test]
    fn json_content_types_are_recognised_with_parameters() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/jsonx"));
        assert!(!is_json_content_type(""));
    }
}
