//! The route table: every endpoint of the API as one row of data. `dispatch` reads it for
//! the order of checks, the metrics for their `route` label, `OPTIONS` for the view's name
//! and `Allow`, and the OpenAPI document for its paths: each method names the handler
//! whose `#[utoipa::path]` annotation documents it, so the document and the router cannot
//! list different endpoints.

use std::sync::LazyLock;

use futures_util::future::BoxFuture;
use serde_json::Value;
use utoipa::OpenApi;
use warp::http::{Method, StatusCode};

use super::{Call, auth, chat, gateway};
use crate::docs;
use crate::error::ApiError;
use crate::response::{Response, bytes_response};
use crate::ws;

/// One endpoint: a path template and what it answers.
pub struct Route {
    /// The path, with `{id}` or `{asset}` where a segment is the parameter: the `route`
    /// label of the metrics (never a client's text) and the document's path.
    pub template: &'static str,
    /// The view's name, as DRF's `OPTIONS` answer gives it.
    pub name: &'static str,
    /// Who may call it.
    pub auth: Auth,
    /// The throttle counted before the method is checked, if any.
    pub throttle: Option<Counted>,
    /// The methods it answers, as its `Allow` header lists them (DRF's order). HEAD is
    /// GET's handler, OPTIONS the view's metadata.
    pub allow: &'static str,
    /// A handler for each method other than HEAD and OPTIONS.
    pub actions: &'static [Action],
}

/// Who may call an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Anyone.
    Open,
    /// The holder of an access token, checked before the throttles and the method.
    Token,
    /// The holder of an access token; a GET or HEAD checks it in the same blocking call as
    /// its read (the handler gets [`crate::calls::Caller::Token`]), other methods first.
    TokenReadsDeferred,
    /// The WebSocket: its handler runs the handshake's own order of checks (contract
    /// section 6), whatever the method.
    Handshake,
}

/// A throttle counted before the method is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// Login attempts per client IP.
    LoginPerIp,
    /// Registrations per client IP.
    RegisterPerIp,
    /// Posted messages (POST only) per user.
    PostsPerUser,
}

/// One method of an endpoint.
pub struct Action {
    /// The method.
    pub method: Method,
    /// What answers it.
    pub handler: Handler,
    /// The OpenAPI document of its operation (a one-path document), for the documented
    /// methods.
    pub docs: Option<fn() -> utoipa::openapi::OpenApi>,
}

/// A handler: the request in, its answer out.
pub type Handler = for<'a> fn(Call<'a>) -> BoxFuture<'a, Result<Response, ApiError>>;

/// A row of the table that a path matched, and the path's parameter.
pub struct Found {
    /// The row.
    pub route: &'static Route,
    /// The path segment in the template's `{...}` place, as sent; empty when there is none.
    pub param: String,
}

/// The one-path OpenAPI document of a handler, from its `#[utoipa::path]` annotation.
macro_rules! documented {
    ($($handler:tt)+) => {{
        #[derive(OpenApi)]
        #[openapi(paths($($handler)+))]
        struct Operation;
        <Operation as OpenApi>::openapi
    }};
}

/// Every endpoint of the contract.
pub static ROUTES: &[Route] = &[
    Route {
        template: "/api/auth/register/",
        name: "Register",
        auth: Auth::Open,
        throttle: Some(Counted::RegisterPerIp),
        allow: "POST, OPTIONS",
        actions: &[Action {
            method: Method::POST,
            handler: |call| Box::pin(auth::register(call)),
            docs: Some(documented!(auth::register)),
        }],
    },
    Route {
        template: "/api/auth/login/",
        name: "Login",
        auth: Auth::Open,
        throttle: Some(Counted::LoginPerIp),
        allow: "POST, OPTIONS",
        actions: &[Action {
            method: Method::POST,
            handler: |call| Box::pin(auth::login(call)),
            docs: Some(documented!(auth::login)),
        }],
    },
    Route {
        template: "/api/auth/token/refresh/",
        name: "Token Refresh",
        auth: Auth::Open,
        throttle: None,
        allow: "POST, OPTIONS",
        actions: &[Action {
            method: Method::POST,
            handler: |call| Box::pin(auth::refresh(call)),
            docs: Some(documented!(auth::refresh)),
        }],
    },
    Route {
        template: "/api/auth/logout/",
        name: "Logout",
        auth: Auth::Open,
        throttle: None,
        allow: "POST, OPTIONS",
        actions: &[Action {
            method: Method::POST,
            handler: |call| Box::pin(auth::logout(call)),
            docs: Some(documented!(auth::logout)),
        }],
    },
    Route {
        template: "/api/auth/profile/",
        name: "Profile",
        auth: Auth::Token,
        throttle: None,
        allow: "GET, PUT, PATCH, HEAD, OPTIONS",
        actions: &[
            Action {
                method: Method::GET,
                handler: |call| Box::pin(auth::profile_get(call)),
                docs: Some(documented!(auth::profile_get)),
            },
            Action {
                method: Method::PUT,
                handler: |call| Box::pin(auth::profile_put(call)),
                docs: Some(documented!(auth::profile_put)),
            },
            Action {
                method: Method::PATCH,
                handler: |call| Box::pin(auth::profile_patch(call)),
                docs: Some(documented!(auth::profile_patch)),
            },
        ],
    },
    Route {
        template: "/api/auth/password/",
        name: "Password Change",
        auth: Auth::Token,
        throttle: None,
        allow: "POST, OPTIONS",
        actions: &[Action {
            method: Method::POST,
            handler: |call| Box::pin(auth::password(call)),
            docs: Some(documented!(auth::password)),
        }],
    },
    Route {
        template: "/api/auth/dashboard/",
        name: "Dashboard",
        auth: Auth::TokenReadsDeferred,
        throttle: None,
        allow: "GET, HEAD, OPTIONS",
        actions: &[Action {
            method: Method::GET,
            handler: |call| Box::pin(auth::dashboard(call)),
            docs: Some(documented!(auth::dashboard)),
        }],
    },
    Route {
        template: "/api/chat/sessions/",
        name: "Chat Session List",
        auth: Auth::TokenReadsDeferred,
        throttle: None,
        allow: "GET, POST, HEAD, OPTIONS",
        actions: &[
            Action {
                method: Method::GET,
                handler: |call| Box::pin(chat::list_sessions(call)),
                docs: Some(documented!(chat::list_sessions)),
            },
            Action {
                method: Method::POST,
                handler: |call| Box::pin(chat::create_session(call)),
                docs: Some(documented!(chat::create_session)),
            },
        ],
    },
    Route {
        template: "/api/chat/sessions/{id}/",
        name: "Chat Session Detail",
        auth: Auth::TokenReadsDeferred,
        throttle: None,
        allow: "GET, PATCH, DELETE, HEAD, OPTIONS",
        actions: &[
            Action {
                method: Method::GET,
                handler: |call| Box::pin(chat::get_session(call)),
                docs: Some(documented!(chat::get_session)),
            },
            Action {
                method: Method::PATCH,
                handler: |call| Box::pin(chat::update_session(call)),
                docs: Some(documented!(chat::update_session)),
            },
            Action {
                method: Method::DELETE,
                handler: |call| Box::pin(chat::delete_session(call)),
                docs: Some(documented!(chat::delete_session)),
            },
        ],
    },
    Route {
        template: "/api/chat/sessions/{id}/messages/",
        name: "Chat Message List",
        auth: Auth::TokenReadsDeferred,
        throttle: Some(Counted::PostsPerUser),
        allow: "GET, POST, HEAD, OPTIONS",
        actions: &[
            Action {
                method: Method::GET,
                handler: |call| Box::pin(chat::list_messages(call)),
                docs: Some(documented!(chat::list_messages)),
            },
            Action {
                method: Method::POST,
                handler: |call| Box::pin(chat::post_message(call)),
                docs: Some(documented!(chat::post_message)),
            },
        ],
    },
    Route {
        template: "/api/health/",
        name: "Health",
        auth: Auth::Open,
        throttle: None,
        allow: "GET, HEAD, OPTIONS",
        actions: &[Action {
            method: Method::GET,
            handler: |call| Box::pin(gateway::health(call)),
            docs: Some(documented!(gateway::health)),
        }],
    },
    Route {
        template: "/api/proxy/search/",
        name: "Search Proxy",
        auth: Auth::Token,
        throttle: None,
        allow: "POST, OPTIONS",
        actions: &[Action {
            method: Method::POST,
            handler: |call| Box::pin(gateway::search(call)),
            docs: Some(documented!(gateway::search)),
        }],
    },
    Route {
        template: "/api/schema/",
        name: "Schema",
        auth: Auth::Open,
        throttle: None,
        allow: "GET, HEAD, OPTIONS",
        actions: &[Action {
            method: Method::GET,
            handler: |call| Box::pin(schema(call)),
            docs: None,
        }],
    },
    Route {
        template: "/api/docs/",
        name: "Docs",
        auth: Auth::Open,
        throttle: None,
        allow: "GET, HEAD, OPTIONS",
        actions: &[Action {
            method: Method::GET,
            handler: |call| Box::pin(docs_page(call)),
            docs: None,
        }],
    },
    Route {
        template: "/api/docs/{asset}",
        name: "Docs",
        auth: Auth::Open,
        throttle: None,
        allow: "GET, HEAD, OPTIONS",
        actions: &[Action {
            method: Method::GET,
            handler: |call| Box::pin(docs_page(call)),
            docs: None,
        }],
    },
    Route {
        template: "/ws/chat/{id}/",
        name: "Chat Socket",
        auth: Auth::Handshake,
        throttle: None,
        allow: "GET",
        actions: &[Action {
            method: Method::GET,
            handler: |call| Box::pin(socket(call)),
            docs: None,
        }],
    },
];

impl Route {
    /// Whether the `Allow` list has `method`.
    pub fn allows(&self, method: &Method) -> bool {
        self.allow
            .split(", ")
            .any(|allowed| allowed == method.as_str())
    }

    /// The action of `method`, if the row has one.
    pub fn action(&self, method: &Method) -> Option<&'static Action> {
        self.actions.iter().find(|action| action.method == method)
    }
}

/// The longest template, in segments: a path with more matches no row.
const MOST_SEGMENTS: usize = 8;

/// Each row's template split into its segments, once.
static TEMPLATES: LazyLock<Vec<Vec<&'static str>>> = LazyLock::new(|| {
    ROUTES
        .iter()
        .map(|route| route.template.trim_matches('/').split('/').collect())
        .collect()
});

/// The row `path` matches, with or without its trailing slash; a path with an empty
/// segment matches none. The path is split once, and each row compared segment by
/// segment (every request asks, so no row is split again and nothing is allocated before
/// a row matches).
pub fn find(path: &str) -> Option<Found> {
    let path = path.strip_prefix('/')?;
    let path = path.strip_suffix('/').unwrap_or(path);
    let mut segments = [""; MOST_SEGMENTS];
    let mut count = 0;
    for segment in path.split('/') {
        if segment.is_empty() || count == MOST_SEGMENTS {
            return None;
        }
        segments[count] = segment;
        count += 1;
    }
    let segments = &segments[..count];
    ROUTES
        .iter()
        .zip(TEMPLATES.iter())
        .find_map(|(route, template)| {
            let param = matches(template, segments)?;
            Some(Found {
                route,
                param: param.to_owned(),
            })
        })
}

/// The parameter `segments` hold in `template`'s place for it (empty when it has none),
/// or `None` when they do not match.
fn matches<'a>(template: &[&str], segments: &[&'a str]) -> Option<&'a str> {
    if template.len() != segments.len() {
        return None;
    }
    let mut param = "";
    for (expected, segment) in template.iter().zip(segments) {
        if expected.starts_with('{') {
            param = segment;
        } else if expected != segment {
            return None;
        }
    }
    Some(param)
}

/// The OpenAPI document: the document's own parts (`docs::ApiDoc`) and the operation of
/// every documented method of the table.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut openapi = docs::ApiDoc::openapi();
    for action in ROUTES.iter().flat_map(|route| route.actions) {
        if let Some(operation) = action.docs {
            openapi.merge(operation());
        }
    }
    openapi
}

/// The document as JSON, as it is served.
fn document() -> Value {
    docs::document(openapi())
}

/// The document as pretty JSON (what `narutalk-server --openapi` prints).
pub fn openapi_pretty() -> String {
    serde_json::to_string_pretty(&document()).unwrap_or_default()
}

/// The document as served, built once.
static SCHEMA_JSON: LazyLock<Vec<u8>> = LazyLock::new(|| {
    serde_json::to_vec(&document()).unwrap_or_else(|error| {
        tracing::error!(%error, "the OpenAPI document did not serialize");
        b"{}".to_vec()
    })
});

/// `GET /api/schema/`: the OpenAPI document.
async fn schema(_call: Call<'_>) -> Result<Response, ApiError> {
    Ok(bytes_response(StatusCode::OK, SCHEMA_JSON.clone()))
}

/// `GET /api/docs/` and its assets, and the reference (`GET /api/docs/reference`).
async fn docs_page(call: Call<'_>) -> Result<Response, ApiError> {
    docs::page(call.param)
}

/// `GET /ws/chat/{id}/`: the WebSocket handshake.
async fn socket(call: Call<'_>) -> Result<Response, ApiError> {
    let state = call.state;
    ws::handshake(&state.ws, &state.site, call.request, call.param).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn template_at(path: &str) -> Option<&'static str> {
        find(path).map(|found| found.route.template)
    }

    #[test]
    fn paths_match_with_and_without_the_trailing_slash() {
        assert_eq!(template_at("/api/auth/login/"), Some("/api/auth/login/"));
        assert_eq!(template_at("/api/auth/login"), Some("/api/auth/login/"));
        let found = find("/api/chat/sessions/abc/messages").unwrap();
        assert_eq!(found.route.template, "/api/chat/sessions/{id}/messages/");
        assert_eq!(found.param, "abc");
        let found = find("/api/docs").unwrap();
        assert_eq!(found.route.template, "/api/docs/");
        assert_eq!(found.param, "");
    }

    #[test]
    fn empty_segments_and_unknown_paths_are_not_found() {
        for path in [
            "/api//auth/login/",
            "/api/auth/login//",
            "/api/auth/",
            "/",
            "api/health/",
            "/api/chat/sessions/a/messages/b/c/d/e/f/g",
        ] {
            assert!(find(path).is_none(), "{path}");
        }
    }

    #[test]
    fn every_template_fits_the_matchers_segment_count() {
        for template in TEMPLATES.iter() {
            assert!(template.len() < MOST_SEGMENTS, "{template:?}");
        }
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
            assert_eq!(template_at(&path), Some(template), "{path}");
        }
        assert_eq!(template_at(&format!("/api/{id}/")), None);
    }

    #[test]
    fn allow_lists_are_what_the_methods_check() {
        let route = |path| find(path).unwrap().route;
        assert!(route("/api/chat/sessions/x/").allows(&Method::PATCH));
        assert!(!route("/api/chat/sessions/x/").allows(&Method::PUT));
        assert!(route("/api/auth/profile/").allows(&Method::PUT));
        assert!(!route("/api/auth/login/").allows(&Method::GET));
        assert!(route("/api/auth/login/").allows(&Method::OPTIONS));
    }

    /// Each row's `Allow` is its actions' methods in DRF's order, with HEAD after a GET
    /// and OPTIONS last (the socket aside, which answers GET alone).
    #[test]
    fn every_allow_list_is_the_rows_methods_in_drfs_order() {
        const DRF_ORDER: [Method; 5] = [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ];
        for route in ROUTES {
            let mut methods: Vec<&str> = DRF_ORDER
                .iter()
                .filter(|method| route.action(method).is_some())
                .map(Method::as_str)
                .collect();
            assert_eq!(methods.len(), route.actions.len(), "{}", route.template);
            if route.auth != Auth::Handshake {
                if route.action(&Method::GET).is_some() {
                    methods.push("HEAD");
                }
                methods.push("OPTIONS");
            }
            assert_eq!(route.allow, methods.join(", "), "{}", route.template);
        }
    }

    /// The document lists, under each documented row's template, exactly that row's
    /// documented methods; nothing else.
    #[test]
    fn the_document_has_exactly_the_documented_methods_of_the_table() {
        let document = document();
        let mut documented: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            let methods = item.as_object().unwrap().keys().cloned().collect();
            documented.insert(path.clone(), methods);
        }
        let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for route in ROUTES {
            for action in route.actions.iter().filter(|action| action.docs.is_some()) {
                expected
                    .entry(route.template.to_owned())
                    .or_default()
                    .push(action.method.as_str().to_lowercase());
            }
        }
        for methods in expected.values_mut().chain(documented.values_mut()) {
            methods.sort();
        }
        assert_eq!(documented, expected);
    }

    #[test]
    fn no_pattern_of_the_document_uses_the_white_space_class() {
        assert!(
            patterns(&document())
                .iter()
                .all(|pattern| !pattern.contains(r"\s")),
            "a pattern uses `\\s`, which each regex engine reads differently"
        );
    }

    /// Every `pattern` in the document.
    fn patterns(value: &Value) -> Vec<String> {
        match value {
            Value::Object(object) => object
                .iter()
                .flat_map(|(key, value)| match (key.as_str(), value) {
                    ("pattern", Value::String(pattern)) => vec![pattern.clone()],
                    _ => patterns(value),
                })
                .collect(),
            Value::Array(items) => items.iter().flat_map(patterns).collect(),
            _ => Vec::new(),
        }
    }
}
