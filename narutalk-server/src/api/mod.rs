//! The REST API: the route table and the order of checks of contract section 1.1.
//!
//! [`handle`] answers one request. It finds the endpoint (404), authenticates when the
//! endpoint needs it (401), counts the throttles that apply before the method is looked
//! at (429), checks the method (405 with `Allow`), and hands the request to the
//! endpoint's handler, which reads the body (413, 415, 400) and calls the core (whose
//! errors are 404, then 400 for fields, then 400 for cross-field rules).

pub(crate) mod auth;
pub(crate) mod chat;
pub(crate) mod gateway;

use std::sync::Arc;

use narutalk_core::accounts::User;
use narutalk_core::error::Error as CoreError;
use serde_json::json;
use warp::http::{HeaderValue, Method, StatusCode, header};

use crate::docs;
use crate::error::ApiError;
use crate::http::{Credentials, Request, Response, json_response};
use crate::page;
use crate::state::State;
use crate::ws;

/// Every endpoint of the contract, by path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/api/auth/register/`
    Register,
    /// `/api/auth/login/`
    Login,
    /// `/api/auth/token/refresh/`
    Refresh,
    /// `/api/auth/logout/`
    Logout,
    /// `/api/auth/profile/`
    Profile,
    /// `/api/auth/password/`
    Password,
    /// `/api/auth/dashboard/`
    Dashboard,
    /// `/api/chat/sessions/`
    Sessions,
    /// `/api/chat/sessions/{id}/` (the id as sent, checked later)
    Session(String),
    /// `/api/chat/sessions/{id}/messages/`
    Messages(String),
    /// `/api/health/`
    Health,
    /// `/api/proxy/search/`
    Search,
    /// `/api/schema/`
    Schema,
    /// `/api/docs/` and its assets (the asset's name, empty for the page)
    Docs(String),
    /// `/ws/chat/{id}/`: the WebSocket of a session (its handshake has its own checks)
    ChatSocket(String),
}

impl Endpoint {
    /// The endpoint at `path`, which may or may not end with a slash; `None` for an
    /// unknown path.
    pub fn at(path: &str) -> Option<Endpoint> {
        let path = path.strip_prefix('/')?;
        let path = path.strip_suffix('/').unwrap_or(path);
        let segments: Vec<&str> = path.split('/').collect();
        if segments.iter().any(|segment| segment.is_empty()) {
            return None;
        }
        Some(match segments.as_slice() {
            ["api", "auth", "register"] => Endpoint::Register,
            ["api", "auth", "login"] => Endpoint::Login,
            ["api", "auth", "token", "refresh"] => Endpoint::Refresh,
            ["api", "auth", "logout"] => Endpoint::Logout,
            ["api", "auth", "profile"] => Endpoint::Profile,
            ["api", "auth", "password"] => Endpoint::Password,
            ["api", "auth", "dashboard"] => Endpoint::Dashboard,
            ["api", "chat", "sessions"] => Endpoint::Sessions,
            ["api", "chat", "sessions", id] => Endpoint::Session((*id).to_owned()),
            ["api", "chat", "sessions", id, "messages"] => Endpoint::Messages((*id).to_owned()),
            ["api", "health"] => Endpoint::Health,
            ["api", "proxy", "search"] => Endpoint::Search,
            ["api", "schema"] => Endpoint::Schema,
            ["api", "docs"] => Endpoint::Docs(String::new()),
            ["api", "docs", asset] => Endpoint::Docs((*asset).to_owned()),
            ["ws", "chat", id] => Endpoint::ChatSocket((*id).to_owned()),
            _ => return None,
        })
    }

    /// The route template of the endpoint, the `route` label of its metrics: ids and
    /// asset names are placeholders, so a label never holds a client's text.
    pub fn template(&self) -> &'static str {
        match self {
            Endpoint::Register => "/api/auth/register/",
            Endpoint::Login => "/api/auth/login/",
            Endpoint::Refresh => "/api/auth/token/refresh/",
            Endpoint::Logout => "/api/auth/logout/",
            Endpoint::Profile => "/api/auth/profile/",
            Endpoint::Password => "/api/auth/password/",
            Endpoint::Dashboard => "/api/auth/dashboard/",
            Endpoint::Sessions => "/api/chat/sessions/",
            Endpoint::Session(_) => "/api/chat/sessions/{id}/",
            Endpoint::Messages(_) => "/api/chat/sessions/{id}/messages/",
            Endpoint::Health => "/api/health/",
            Endpoint::Search => "/api/proxy/search/",
            Endpoint::Schema => "/api/schema/",
            Endpoint::Docs(asset) if asset.is_empty() => "/api/docs/",
            Endpoint::Docs(_) => "/api/docs/{asset}",
            Endpoint::ChatSocket(_) => "/ws/chat/{id}/",
        }
    }

    /// The methods the endpoint answers, as its `Allow` header lists them.
    pub fn allow(&self) -> &'static str {
        match self {
            Endpoint::Register
            | Endpoint::Login
            | Endpoint::Refresh
            | Endpoint::Logout
            | Endpoint::Password
            | Endpoint::Search => "POST, OPTIONS",
            Endpoint::Profile => "GET, PUT, PATCH, HEAD, OPTIONS",
            Endpoint::Sessions | Endpoint::Messages(_) => "GET, POST, HEAD, OPTIONS",
            Endpoint::Session(_) => "GET, PATCH, DELETE, HEAD, OPTIONS",
            Endpoint::Dashboard | Endpoint::Health | Endpoint::Schema | Endpoint::Docs(_) => {
                "GET, HEAD, OPTIONS"
            }
            Endpoint::ChatSocket(_) => "GET",
        }
    }

    fn allows(&self, method: &Method) -> bool {
        self.allow()
            .split(", ")
            .any(|allowed| allowed == method.as_str())
    }

    /// True for the endpoints that need an access token.
    pub fn needs_auth(&self) -> bool {
        matches!(
            self,
            Endpoint::Profile
                | Endpoint::Password
                | Endpoint::Dashboard
                | Endpoint::Sessions
                | Endpoint::Session(_)
                | Endpoint::Messages(_)
                | Endpoint::Search
                | Endpoint::ChatSocket(_)
        )
    }

    /// Whether `method` on this endpoint only reads: an authenticated GET or HEAD that no
    /// throttle counts and that has no body. Its token is checked together with the read.
    fn is_read(&self, method: &Method) -> bool {
        matches!(
            self,
            Endpoint::Dashboard | Endpoint::Sessions | Endpoint::Session(_) | Endpoint::Messages(_)
        ) && (method == Method::GET || method == Method::HEAD)
    }

    /// The view's name, as DRF's `OPTIONS` answer gives it.
    fn name(&self) -> &'static str {
        match self {
            Endpoint::Register => "Register",
            Endpoint::Login => "Login",
            Endpoint::Refresh => "Token Refresh",
            Endpoint::Logout => "Logout",
            Endpoint::Profile => "Profile",
            Endpoint::Password => "Password Change",
            Endpoint::Dashboard => "Dashboard",
            Endpoint::Sessions => "Chat Session List",
            Endpoint::Session(_) => "Chat Session Detail",
            Endpoint::Messages(_) => "Chat Message List",
            Endpoint::Health => "Health",
            Endpoint::Search => "Search Proxy",
            Endpoint::Schema => "Schema",
            Endpoint::Docs(_) => "Docs",
            Endpoint::ChatSocket(_) => "Chat Socket",
        }
    }
}

/// Answers one request that is not a CORS preflight: the web chat page and its assets,
/// or an endpoint of the API; `endpoint` is [`Endpoint::at`] its path.
pub async fn handle(
    state: &Arc<State>,
    endpoint: Option<Endpoint>,
    mut request: Request,
) -> Response {
    if page::owns(&request.path) {
        return page::answer(&request);
    }
    let Some(endpoint) = endpoint else {
        return ApiError::NotFound.into_response();
    };
    dispatch(state, endpoint, &mut request)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn dispatch(
    state: &Arc<State>,
    endpoint: Endpoint,
    request: &mut Request,
) -> Result<Response, ApiError> {
    if let Endpoint::ChatSocket(id) = &endpoint {
        return ws::handshake(state, request, id).await;
    }
    let caller = if !endpoint.needs_auth() {
        None
    } else if endpoint.is_read(&request.method) {
        // Checked in the same blocking call as the read itself: one thread hop, not two.
        Some(Caller::Token(bearer_token(request)?))
    } else {
        Some(Caller::User(authenticate(state, request).await?))
    };
    throttle(
        state,
        &endpoint,
        request,
        caller.as_ref().and_then(Caller::user),
    )?;
    if !endpoint.allows(&request.method) {
        return Err(ApiError::MethodNotAllowed {
            method: request.method.to_string(),
            allow: endpoint.allow(),
        });
    }
    if request.method == Method::OPTIONS {
        return Ok(options(&endpoint));
    }
    let method = if request.method == Method::HEAD {
        Method::GET
    } else {
        request.method.clone()
    };
    let caller = || caller.clone().ok_or(ApiError::Internal);
    let user = || caller()?.into_user();
    match (endpoint, method) {
        (Endpoint::Register, _) => auth::register(state, request).await,
        (Endpoint::Login, _) => auth::login(state, request).await,
        (Endpoint::Refresh, _) => auth::refresh(state, request).await,
        (Endpoint::Logout, _) => auth::logout(state, request).await,
        (Endpoint::Profile, Method::GET) => auth::profile_get(user()?),
        (Endpoint::Profile, Method::PUT) => auth::profile_put(state, request, user()?).await,
        (Endpoint::Profile, _) => auth::profile_patch(state, request, user()?).await,
        (Endpoint::Password, _) => auth::password(state, request, user()?).await,
        (Endpoint::Dashboard, _) => auth::dashboard(state, caller()?).await,
        (Endpoint::Sessions, Method::GET) => chat::list_sessions(state, request, caller()?).await,
        (Endpoint::Sessions, _) => chat::create_session(state, request, user()?).await,
        (Endpoint::Session(id), Method::GET) => chat::get_session(state, caller()?, &id).await,
        (Endpoint::Session(id), Method::DELETE) => chat::delete_session(state, user()?, &id).await,
        (Endpoint::Session(id), _) => chat::update_session(state, request, user()?, &id).await,
        (Endpoint::Messages(id), Method::GET) => {
            chat::list_messages(state, request, caller()?, &id).await
        }
        (Endpoint::Messages(id), _) => chat::post_message(state, request, user()?, &id).await,
        (Endpoint::Health, _) => Ok(gateway::health(state).await),
        (Endpoint::Search, _) => gateway::search(state, request).await,
        (Endpoint::Schema, _) => Ok(docs::schema()),
        (Endpoint::Docs(asset), _) => Ok(docs::page(&asset)),
        (Endpoint::ChatSocket(_), _) => Err(ApiError::Internal),
    }
}

/// Who is asking, on an endpoint that needs an access token.
#[derive(Clone, Debug)]
pub enum Caller {
    /// The token's user, already authenticated.
    User(User),
    /// A token not checked yet: [`State::run_as`] checks it in the same blocking call as
    /// the work, before the work. The read-only endpoints take this path.
    Token(String),
}

impl Caller {
    /// The authenticated user, if the token was checked already.
    fn user(&self) -> Option<&User> {
        match self {
            Caller::User(user) => Some(user),
            Caller::Token(_) => None,
        }
    }

    /// The authenticated user; only endpoints that are not reads ask for it, and they were
    /// given one.
    fn into_user(self) -> Result<User, ApiError> {
        match self {
            Caller::User(user) => Ok(user),
            Caller::Token(_) => Err(ApiError::Internal),
        }
    }
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
pub async fn authenticate(state: &State, request: &Request) -> Result<User, ApiError> {
    let token = bearer_token(request)?;
    state.run_as(Caller::Token(token), |_, user| Ok(user)).await
}

/// The answer to a token the core refused: its storage errors keep their status, every
/// other refusal is the contract's one 401 for access tokens.
pub fn token_refused(error: CoreError) -> ApiError {
    match error {
        CoreError::Unavailable(_) | CoreError::Internal(_) => ApiError::from(error),
        _ => ApiError::InvalidAccessToken,
    }
}

/// The throttles counted before the method is looked at (contract section 1.1): login
/// and register per client IP, message posting per user. The per-email throttle of
/// register and the login failure budgets need the body, so their handlers count them.
fn throttle(
    state: &State,
    endpoint: &Endpoint,
    request: &Request,
    user: Option<&User>,
) -> Result<(), ApiError> {
    let throttles = &state.throttles;
    match endpoint {
        Endpoint::Login => throttles
            .login_ip
            .check(&request.client_ip(&state.trusted_proxies)),
        Endpoint::Register => throttles
            .register_ip
            .check(&request.client_ip(&state.trusted_proxies)),
        Endpoint::Messages(_) if request.method == Method::POST => match user {
            Some(user) => throttles.messages.check(&user.id.0),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// DRF's answer to `OPTIONS`: the view's metadata and the `Allow` header.
fn options(endpoint: &Endpoint) -> Response {
    let mut response = json_response(
        StatusCode::OK,
        &json!({
            "name": endpoint.name(),
            "description": "",
            "renders": ["application/json"],
            "parses": ["application/json"],
        }),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(endpoint.allow()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_with_and_without_the_trailing_slash() {
        assert_eq!(Endpoint::at("/api/auth/login/"), Some(Endpoint::Login));
        assert_eq!(Endpoint::at("/api/auth/login"), Some(Endpoint::Login));
        assert_eq!(
            Endpoint::at("/api/chat/sessions/abc/messages"),
            Some(Endpoint::Messages("abc".into()))
        );
        assert_eq!(
            Endpoint::at("/api/docs"),
            Some(Endpoint::Docs(String::new()))
        );
    }

    #[test]
    fn empty_segments_and_unknown_paths_are_not_found() {
        assert_eq!(Endpoint::at("/api//auth/login/"), None);
        assert_eq!(Endpoint::at("/api/auth/login//"), None);
        assert_eq!(Endpoint::at("/api/auth/"), None);
        assert_eq!(Endpoint::at("/"), None);
        assert_eq!(Endpoint::at("api/health/"), None);
    }

    #[test]
    fn route_templates_hold_no_id_and_unknown_paths_have_none() {
        let id = "46921a8a-9411-4ecb-a058-63c9daa20976";
        let cases = [
            (
                format!("/api/chat/sessions/{id}/"),
                "/api/chat/sessions/{id}/",
            ),
            (
                format!("/api/chat/sessions/{id}/messages"),
                "/api/chat/sessions/{id}/messages/",
            ),
            (format!("/ws/chat/{id}/"), "/ws/chat/{id}/"),
            ("/api/docs/swagger-ui.css".to_owned(), "/api/docs/{asset}"),
            ("/api/docs".to_owned(), "/api/docs/"),
            ("/api/health/".to_owned(), "/api/health/"),
        ];
        for (path, template) in cases {
            assert_eq!(
                Endpoint::at(&path).map(|endpoint| endpoint.template()),
                Some(template),
                "{path}"
            );
        }
        assert_eq!(Endpoint::at(&format!("/api/{id}/")), None);
    }

    #[test]
    fn allow_lists_are_what_the_methods_check() {
        assert!(Endpoint::Session("x".into()).allows(&Method::PATCH));
        assert!(!Endpoint::Session("x".into()).allows(&Method::PUT));
        assert!(Endpoint::Profile.allows(&Method::PUT));
        assert!(!Endpoint::Login.allows(&Method::GET));
        assert!(Endpoint::Login.allows(&Method::OPTIONS));
    }
}
