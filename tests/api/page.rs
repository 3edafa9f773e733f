//! Contract section 11: the web chat page at `/` and its assets under `/app/`, as the
//! server serves them: the exact `Content-Security-Policy` on the page and its assets and
//! nowhere else, hashed asset names cached for a year, the page revalidated, `HEAD`,
//! `304`, and no inline script, inline style or other host anywhere in them. (What the
//! page does in a browser is the browser tests' business.)

use std::collections::BTreeSet;

use reqwest::{Method, Response, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, assert_answer, spawn_app};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; font-src 'self'; connect-src 'self' ws: wss:; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const LONG_CACHE: &str = "public, max-age=31536000, immutable";

/// The only `http://` text an asset may hold: the SVG namespace, a name that is never
/// fetched.
const SVG_NAMESPACE: &str = "http://www.w3.org/2000/svg";

async fn page_text(app: &TestApp) -> String {
    app.get("/").await.text().await.unwrap()
}

/// The `/app/...` URLs in `src="..."` and `href="..."` attributes of the page.
fn page_references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attribute) {
            let url = html[at + attribute.len()..]
                .split('"')
                .next()
                .unwrap_or_default();
            if url.starts_with("/app/") {
                found.push(url.to_owned());
            }
        }
    }
    found
}

/// The `./name` modules a script imports (`from "./x.js"`), as `/app/` paths.
fn module_imports(script: &str) -> Vec<String> {
    script
        .match_indices("from \"./")
        .map(|(at, text)| {
            let name = script[at + text.len()..]
                .split('"')
                .next()
                .unwrap_or_default();
            format!("/app/{name}")
        })
        .collect()
}

/// Every asset reachable from the page: its links, and the modules they import.
async fn every_asset(app: &TestApp) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = page_references(&page_text(app).await);
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        if path.ends_with(".js") {
            todo.extend(module_imports(&app.get(&path).await.text().await.unwrap()));
        }
    }
    seen
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap())
}

#[tokio::test]
async fn the_page_is_html_with_the_exact_csp_and_is_revalidated() {
    let app = spawn_app().await;

    let response = app.get("/").await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(header(&response, "content-security-policy"), Some(CSP));
    assert_eq!(header(&response, "cache-control"), Some("no-cache"));
    assert_eq!(header(&response, "x-content-type-options"), Some("nosniff"));
    assert!(header(&response, "etag").is_some_and(|etag| etag.starts_with('"')));
    let html = response.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"), "{html:.40}");
}

/// Every file the page leads to is served under a content-hashed name with the CSP, the
/// year-long immutable cache, nosniff and the content type of its kind.
#[tokio::test]
async fn every_asset_the_page_names_is_served_hashed_with_the_csp_and_a_long_cache() {
    let app = spawn_app().await;

    let assets = every_asset(&app).await;

    let kinds: BTreeSet<&str> = assets
        .iter()
        .filter_map(|path| path.rsplit('.').next())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["css", "js", "svg"]), "{assets:?}");
    assert!(
        assets.len() >= 5,
        "the modules the page imports are found too: {assets:?}"
    );
    for path in &assets {
        let name = path.strip_prefix("/app/").unwrap();
        let parts: Vec<&str> = name.split('.').collect();
        assert_eq!(parts.len(), 3, "{name} is stem.hash.extension");
        assert!(
            parts[1].len() == 16 && parts[1].bytes().all(|b| b.is_ascii_hexdigit()),
            "{name} carries a hash"
        );
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let content_type = match parts[2] {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("an asset of an unexpected kind: {other}"),
        };
        assert_eq!(
            header(&response, "content-type"),
            Some(content_type),
            "{path}"
        );
        assert_eq!(
            header(&response, "content-security-policy"),
            Some(CSP),
            "{path}"
        );
        assert_eq!(
            header(&response, "cache-control"),
            Some(LONG_CACHE),
            "{path}"
        );
        assert_eq!(header(&response, "x-content-type-options"), Some("nosniff"));
        assert!(!response.bytes().await.unwrap().is_empty(), "{path}");
    }
}

#[tokio::test]
async fn the_api_and_swagger_ui_do_not_carry_the_csp() {
    let app = spawn_app().await;

    for path in [
        "/api/health/",
        "/api/schema/",
        "/api/docs/",
        "/api/docs/swagger-ui.css",
        "/api/auth/profile/",
        "/api/nothing/",
    ] {
        let response = app.get(path).await;
        assert_eq!(
            header(&response, "content-security-policy"),
            None,
            "{path} answered {}",
            response.status()
        );
    }
}

/// Paths outside `/api/`, `/ws/` and `/app/` answer 404 as before, and so does an
/// unknown asset, an asset's name without its hash, and `/app/` itself.
#[tokio::test]
async fn unknown_paths_and_assets_still_answer_404_json() {
    let app = spawn_app().await;
    let hashed = every_asset(&app)
        .await
        .into_iter()
        .find(|path| path.ends_with(".js"))
        .unwrap();
    let wrong_hash = format!("{}0.js", hashed.strip_suffix(".js").unwrap());

    for path in [
        "/index.html",
        "/favicon.ico",
        "/app",
        "/app/",
        "/app/app.js",
        "/app/index.html",
        wrong_hash.as_str(),
        &format!("{hashed}/"),
        "/static/app.js",
    ] {
        let response = app.get(path).await;
        assert_eq!(header(&response, "content-security-policy"), None, "{path}");
        assert_eq!(
            header(&response, "content-type"),
            Some("application/json; charset=utf-8"),
            "{path}"
        );
        assert_answer(
            response,
            StatusCode::NOT_FOUND,
            json!({"detail": "Not found."}),
        )
        .await;
    }
}

#[tokio::test]
async fn head_answers_as_get_does_without_a_body() {
    let app = spawn_app().await;
    let asset = every_asset(&app).await.into_iter().next().unwrap();

    for path in ["/", asset.as_str()] {
        let get = app.get(path).await;
        let head = app.request(Method::HEAD, path).send().await.unwrap();

        assert_eq!(head.status(), StatusCode::OK, "{path}");
        for name in [
            "content-type",
            "content-security-policy",
            "cache-control",
            "etag",
        ] {
            assert_eq!(header(&head, name), header(&get, name), "{path} {name}");
        }
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
    }
}

/// A copy the browser already has is confirmed with 304 and no body; another tag gets
/// the file again.
#[tokio::test]
async fn a_current_copy_is_answered_304() {
    let app = spawn_app().await;
    let asset = every_asset(&app).await.into_iter().next().unwrap();

    for path in ["/", asset.as_str()] {
        let etag = header(&app.get(path).await, "etag").unwrap().to_owned();

        let current = app
            .request(Method::GET, path)
            .header("if-none-match", format!("\"other\", W/{etag}"))
            .send()
            .await
            .unwrap();
        let stale = app
            .request(Method::GET, path)
            .header("if-none-match", "\"other\"")
            .send()
            .await
            .unwrap();

        assert_eq!(current.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(header(&current, "etag"), Some(etag.as_str()));
        assert_eq!(header(&current, "content-security-policy"), Some(CSP));
        assert!(current.bytes().await.unwrap().is_empty());
        assert_eq!(stale.status(), StatusCode::OK, "{path}");
        assert!(!stale.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn other_methods_are_refused_with_405() {
    let app = spawn_app().await;
    let asset = every_asset(&app).await.into_iter().next().unwrap();

    for path in ["/", asset.as_str()] {
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let response = app.request(method.clone(), path).send().await.unwrap();
            assert_eq!(
                header(&response, "allow"),
                Some("GET, HEAD"),
                "{method} {path}"
            );
            assert_answer(
                response,
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"detail": format!("Method \"{method}\" not allowed.")}),
            )
            .await;
        }
    }
}

/// The CSP forbids inline script and style; the page must not need them.
#[tokio::test]
async fn the_page_holds_no_inline_script_no_inline_style_and_no_handler_attribute() {
    let app = spawn_app().await;
    let html = page_text(&app).await;
    let lower = html.to_ascii_lowercase();

    let scripts: Vec<&str> = lower.split("<script").skip(1).collect();
    assert_eq!(scripts.len(), 1, "one module script");
    for script in scripts {
        let (tag, rest) = script.split_once('>').unwrap();
        assert!(
            tag.contains(" src=\"/app/"),
            "<script{tag}> is not loaded from /app/"
        );
        assert!(tag.contains("type=\"module\""), "<script{tag}> is a module");
        assert!(rest.starts_with("</script>"), "<script{tag}> has a body");
    }
    assert!(!lower.contains("<style"), "a <style> element");
    assert!(!lower.contains(" style="), "a style attribute");
    assert!(!lower.contains("javascript:"), "a javascript: URL");
    for (at, _) in lower.match_indices(" on") {
        let name: String = lower[at + 1..]
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .collect();
        let after = &lower[at + 1 + name.len()..];
        assert!(
            !(name.len() > 2 && after.starts_with('=')),
            "an inline handler attribute: {name}"
        );
    }
}

/// Nothing is loaded from, or sent to, another host.
#[tokio::test]
async fn no_asset_names_another_host() {
    let app = spawn_app().await;
    let mut files = vec![("/".to_owned(), page_text(&app).await)];
    for path in every_asset(&app).await {
        let text = app.get(&path).await.text().await.unwrap();
        files.push((path, text));
    }

    for (path, text) in files {
        let without_namespace = text.replace(SVG_NAMESPACE, "");
        for scheme in ["http://", "https://", "//cdn", "@import"] {
            assert!(!without_namespace.contains(scheme), "{path} holds {scheme}");
        }
    }
}

/// The hooks the browser tests drive the page by are in the page.
#[tokio::test]
async fn the_page_carries_the_hooks_of_its_dom_contract() {
    let app = spawn_app().await;
    let html = page_text(&app).await;

    for id in [
        "auth-view",
        "chat-view",
        "login-form",
        "register-form",
        "show-register",
        "show-login",
        "current-user",
        "logout",
        "connection-state",
        "session-list",
        "filter-category",
        "filter-archived",
        "new-session",
        "new-session-form",
        "rename-session",
        "rename-form",
        "archive-session",
        "delete-session",
        "confirm-dialog",
        "confirm-yes",
        "confirm-no",
        "messages",
        "load-older",
        "composer",
        "composer-input",
        "send",
        "notice",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "#{id} is missing");
    }
    assert!(html.contains(r#"<ul id="messages" class="messages" role="log" aria-live="polite""#));
    assert!(html.contains(r#"<div id="notice" role="alert" data-kind="""#));
    for field in [
        "username",
        "email",
        "password",
        "password_confirm",
        "role",
        "department",
    ] {
        assert!(
            html.contains(&format!("data-error-for=\"{field}\"")),
            "{field}"
        );
    }
}
