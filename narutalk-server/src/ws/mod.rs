//! Real-time chat over WebSocket: `GET /ws/chat/{session_id}/` (contract section 6).
//!
//! - [`handshake`] checks the request before the upgrade, in this order: the token
//!   (`Authorization: Bearer` or `?token=`; 401), the method (405), the session (404),
//!   the `Origin` (403), `after` (400), then that it is a WebSocket upgrade at all (426,
//!   or 400 for a bad key), and answers `101 Switching Protocols`.
//! - [`socket`] runs one open socket: the replay of `after`, then the live frames of the
//!   session's room, the client's frames, pings, limits and the close.
//! - [`sockets`] keeps the open sockets for the revocation watch and for shutdown.
//!
//! The rooms the sockets join are the hub's (`crate::hub`: it delivers in sequence
//! order, reading from the core what its events missed), the frames they send are
//! `crate::frames`'s, and a message a socket receives is posted to the core's turn engine
//! (`crate::turns`).
//!
//! The upgrade is done from hyper's upgrade future (taken from the request by the accept
//! loop, with the connection's place under the connection cap) rather than by warp's
//! `ws()` filter: warp answers an oversized frame with a TCP reset instead of close code
//! 1009, and gives no say over the read buffer, which sets the memory of an idle socket.

mod socket;
pub mod sockets;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use narutalk_core::Narutalk;
use narutalk_core::accounts::UserId;
use narutalk_core::chat::SessionId;
use narutalk_core::error::Error as CoreError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use warp::http::{HeaderValue, Method, StatusCode, header};

use crate::calls::Calls;
use crate::error::ApiError;
use crate::http::{Credentials, Request, Site};
use crate::hub::{Hub, Joining};
use crate::limits::Throttles;
use crate::response::{Response, empty_response};
use crate::ws::sockets::Sockets;

/// What every socket of the process shares.
pub struct Shared {
    /// The core.
    pub calls: Arc<Calls>,
    /// The rooms sockets join.
    pub hub: Arc<dyn Hub>,
    /// The open sockets, for the revocation watch and shutdown.
    pub sockets: Sockets,
    /// How sockets behave.
    pub rules: SocketRules,
    /// The message throttle a socket's messages count against, as REST posts do.
    pub throttles: Arc<Throttles>,
    /// Work done (a socket's end counts); the memory trim waits for it to stop growing.
    pub activity: Arc<AtomicU64>,
}

/// The WebSocket settings (contract section 6).
#[derive(Clone, Copy, Debug)]
pub struct SocketRules {
    /// How often the server pings.
    pub ping: Duration,
    /// A peer silent this long is dropped.
    pub idle: Duration,
}

/// Answers the handshake of a socket on session `id` (as it appears in the path); `site`
/// says which `Origin` is allowed.
pub async fn handshake(
    shared: &Arc<Shared>,
    site: &Site,
    request: &mut Request,
    id: &str,
) -> Result<Response, ApiError> {
    let token = match socket_credentials(request) {
        Credentials::Missing => return Err(ApiError::NotAuthenticated),
        Credentials::Malformed => return Err(ApiError::InvalidAccessToken),
        Credentials::Bearer(token) => token,
    };
    let (user, grant) = shared
        .calls
        .run(move |core| Ok(core.tokens().authenticate_grant(&token)))
        .await?
        .map_err(ApiError::access_refused)?;
    if request.method != Method::GET {
        return Err(ApiError::MethodNotAllowed {
            method: request.method.to_string(),
            allow: "GET",
        });
    }
    let session = SessionId::from_str(id)?;
    let after = request.query_param("after");
    let owner = user.id;
    let start = shared
        .calls
        .run(move |core| Ok(opening(core, owner, session, after.as_deref())))
        .await?;
    // The core checks the session before `after`: a session of someone else is 404
    // whatever the origin; the origin is checked before `after`.
    let (start, seen) = match start {
        Err(CoreError::NotFound) => return Err(ApiError::NotFound),
        _ if request.header(header::ORIGIN).is_some() && site.allowed_origin(request).is_none() => {
            return Err(ApiError::PermissionDenied);
        }
        other => other?,
    };
    let key = upgrade_key(request)?;
    let upgrade = request
        .takeover
        .as_ref()
        .and_then(|takeover| takeover.take())
        .ok_or(ApiError::UpgradeRequired)?;
    // Registered and in the room before the `101` goes out: a message stored after `seen`
    // reaches the socket (its replay then skips what the room already brought).
    let registration = shared.sockets.register(grant, session);
    let joining = Joining { owner, seen };
    let subscription = shared
        .hub
        .subscribe(session, joining, registration.closer().clone());
    // Without `after`, the socket gets what is stored after its handshake's read; a room
    // that had already delivered some of that before the socket joined leaves it to the
    // socket's own replay.
    let replay_from = match request.query_param("after") {
        Some(_) => Some(start),
        None => (subscription.joined_at() > seen).then_some(seen),
    };
    // Not in the handshake's span: the socket makes one for each piece of work it does,
    // and names the handshake's request id in its own lines.
    tokio::spawn(socket::run(
        shared.clone(),
        upgrade,
        socket::Opened {
            user: user.id,
            session,
            seen,
            replay_from,
            request_id: request.request_id.clone(),
            registration,
            subscription,
        },
    ));
    let mut response = empty_response(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok(response)
}

/// The handshake's read of the session: where the replay of `after` starts, and the
/// session's last sequence number now (where the socket's live messages start).
fn opening(
    core: &Narutalk,
    owner: UserId,
    session: SessionId,
    after: Option<&str>,
) -> Result<(i64, i64), CoreError> {
    let start = core.chat().socket_start(owner, session, after)?;
    Ok((start.replay_from, start.last_seq))
}

/// The socket's token: the `Authorization` header when there is one, otherwise the
/// `token` query parameter (browsers cannot set headers on a WebSocket).
fn socket_credentials(request: &Request) -> Credentials<String> {
    match request.credentials() {
        Credentials::Missing => match request.query_param("token") {
            Some(token) if !token.is_empty() => Credentials::Bearer(token),
            _ => Credentials::Missing,
        },
        Credentials::Malformed => Credentials::Malformed,
        Credentials::Bearer(token) => Credentials::Bearer(token.to_owned()),
    }
}

/// The `Sec-WebSocket-Key` of a well-formed WebSocket upgrade request (RFC 6455 section
/// 4.2.1): 426 for a request that is not an upgrade to WebSocket version 13, 400 for a
/// key that is not 16 bytes in base64.
fn upgrade_key(request: &Request) -> Result<String, ApiError> {
    let has_token = |name: header::HeaderName, token: &str| {
        request.headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has_token(header::UPGRADE, "websocket")
        || !has_token(header::CONNECTION, "upgrade")
        || request.header(header::SEC_WEBSOCKET_VERSION) != Some("13")
    {
        return Err(ApiError::UpgradeRequired);
    }
    let key = request
        .header(header::SEC_WEBSOCKET_KEY)
        .map(str::trim)
        .unwrap_or_default();
    if !is_websocket_key(key) {
        return Err(ApiError::BadHandshake);
    }
    Ok(key.to_owned())
}

/// 24 base64 characters ending in `==`: the encoding of 16 bytes.
fn is_websocket_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_keys_are_sixteen_bytes_of_base64() {
        assert!(is_websocket_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_websocket_key("dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!is_websocket_key("dGhlIHNhbXBsZSBub25jZQ=a"));
        assert!(!is_websocket_key("dGhlIHNhbXBsZSBub25j*Q=="));
        assert!(!is_websocket_key(""));
    }

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
