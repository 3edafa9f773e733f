//! The REST API: the route table and the order of checks of contract section 1.1.
//!
//! [`routes::ROUTES`] has one row per endpoint: its path template, the methods it allows
//! with a handler and the OpenAPI operation of each, who may call it, and what throttle
//! counts it. [`handle`] answers one request from that table alone. [`dispatch`] applies
//! the order of checks, in one place: the route (404), the access token when the row
//! needs one (401), the throttles counted before the method is looked at (429), the
//! method (405 with `Allow`), then the handler, which reads the body (413, 415, 400) and
//! calls the core (whose errors are 404, then 400 for fields, then 400 for cross-field
//! rules).

pub(crate) mod auth;
pub(crate) mod chat;
pub(crate) mod gateway;
mod routes;

use std::sync::Arc;

use narutalk_core::accounts::User;
use warp::http::{HeaderValue, Method, StatusCode, header};

use crate::calls::{Caller, Calls};
use crate::error::ApiError;
use crate::http::{Credentials, Request};
use crate::page;
use crate::response::{Response, json_response};
use crate::state::State;
use crate::wire::ViewMetadata;

pub use routes::{Auth, Counted, Found, Route, openapi_pretty};

/// What a handler is given: the shared state, the request with its body still unread, who
/// is calling (on a row that needs a token), and the path's parameter.
pub struct Call<'a> {
    /// The shared state.
    pub state: &'a Arc<State>,
    /// The request; its body is read by the handler, if at all.
    pub request: &'a mut Request,
    /// The caller, on a row that needs an access token; `None` on an open row.
    pub caller: Option<Caller>,
    /// The path segment in the template's `{id}` or `{asset}` place, as sent (empty when
    /// the template has none).
    pub param: &'a str,
}

impl Call<'_> {
    /// The caller, as the row's authentication left it: a checked user, or a token that
    /// the handler's read checks.
    pub fn caller(&self) -> Result<Caller, ApiError> {
        self.caller
            .clone()
            .ok_or_else(|| ApiError::bug("an open endpoint asked for its caller"))
    }

    /// The authenticated user; only rows that check the token first give one.
    pub fn user(&self) -> Result<User, ApiError> {
        match &self.caller {
            Some(Caller::User(user)) => Ok(user.clone()),
            Some(Caller::Token(_)) | None => Err(ApiError::bug(
                "an endpoint asked for a user its route did not authenticate",
            )),
        }
    }
}

/// The row of the route table that `path` matches (with or without its trailing slash),
/// and the path's parameter; `None` for an unknown path.
pub fn find(path: &str) -> Option<Found> {
    routes::find(path)
}

/// Answers one request that is not a CORS preflight: the web chat page and its assets,
/// or an endpoint of the API; `found` is [`find`] on its path.
pub async fn handle(state: &Arc<State>, found: Option<Found>, mut request: Request) -> Response {
    if page::owns(&request.path) {
        return page::answer(&request);
    }
    let Some(found) = found else {
        return ApiError::NotFound.into_response();
    };
    dispatch(state, &found, &mut request)
        .await
        .unwrap_or_else(ApiError::into_response)
}

/// The order of checks of contract section 1.1, for the row `found`.
async fn dispatch(
    state: &Arc<State>,
    found: &Found,
    request: &mut Request,
) -> Result<Response, ApiError> {
    let route = found.route;
    if route.auth == Auth::Handshake {
        // The socket's handshake has its own order (contract section 6): the token, then
        // the method, the session, the origin; its handler checks them all.
        return call(route, &Method::GET, state, request, None, &found.param).await;
    }
    let caller = match route.auth {
        Auth::Open | Auth::Handshake => None,
        Auth::TokenReadsDeferred if is_read(&request.method) => {
            // Checked in the same blocking call as the read itself: one thread hop, not two.
            Some(Caller::Token(bearer_token(request)?))
        }
        Auth::Token | Auth::TokenReadsDeferred => {
            Some(Caller::User(authenticate(&state.calls, request).await?))
        }
    };
    throttle(
        state,
        route.throttle,
        request,
        caller.as_ref().and_then(Caller::user),
    )
    .await?;
    if !route.allows(&request.method) {
        return Err(ApiError::MethodNotAllowed {
            method: request.method.to_string(),
            allow: route.allow,
        });
    }
    if request.method == Method::OPTIONS {
        return Ok(options(route));
    }
    // HEAD is GET without the body (hyper leaves it out).
    let method = if request.method == Method::HEAD {
        Method::GET
    } else {
        request.method.clone()
    };
    call(route, &method, state, request, caller, &found.param).await
}

/// Calls the handler of `method` on `route`.
async fn call(
    route: &Route,
    method: &Method,
    state: &Arc<State>,
    request: &mut Request,
    caller: Option<Caller>,
    param: &str,
) -> Result<Response, ApiError> {
    let action = route
        .action(method)
        .ok_or_else(|| ApiError::bug("an allowed method has no handler"))?;
    (action.handler)(Call {
        state,
        request,
        caller,
        param,
    })
    .await
}

/// Whether `method` only reads: GET and HEAD, which no throttle counts and which carry no
/// body.
fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The bearer token of the request: 401 without one, or with a malformed header.
fn bearer_token(request: &Request) -> Result<String, ApiError> {
    match request.credentials() {
        Credentials::Missing => Err(ApiError::NotAuthenticated),
        Credentials::Malformed => Err(ApiError::InvalidAccessToken),
        Credentials::Bearer(token) => Ok(token.to_owned()),
    }
}

/// The user of the request's access token: 401 without one, or with one that is bad,
/// expired, revoked, of the wrong type, or of a deactivated or deleted user.
async fn authenticate(calls: &Calls, request: &Request) -> Result<User, ApiError> {
    let token = bearer_token(request)?;
    calls.run_as(Caller::Token(token), |_, user| Ok(user)).await
}

/// Counts the row's throttle, the one counted before the method is looked at (contract
/// section 1.1): login and register per client IP, message posting per user. The
/// per-email throttle of register and the login failure budgets need the body, so their
/// handlers count them.
async fn throttle(
    state: &State,
    counted: Option<Counted>,
    request: &Request,
    user: Option<&User>,
) -> Result<(), ApiError> {
    let throttles = &state.throttles;
    let client_ip = || request.client_ip(&state.site.trusted_proxies);
    match counted {
        None => Ok(()),
        Some(Counted::LoginPerIp) => throttles.login_ip.check(&client_ip()).await,
        Some(Counted::RegisterPerIp) => throttles.register_ip.check(&client_ip()).await,
        Some(Counted::PostsPerUser) => match user {
            Some(user) if request.method == Method::POST => {
                throttles.messages.check(&user.id.0).await
            }
            _ => Ok(()),
        },
    }
}

/// DRF's answer to `OPTIONS`: the view's metadata and the `Allow` header.
fn options(route: &Route) -> Response {
    let mut response = json_response(StatusCode::OK, &ViewMetadata::new(route.name));
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(route.allow));
    response
}
