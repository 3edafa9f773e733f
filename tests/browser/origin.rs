//! The page needs nothing but its own server (it works with no internet access) and
//! carries the Content-Security-Policy that keeps it so.

use reqwest::Method;
use serde_json::Value;

use crate::browser::Browser;
use crate::page::{Site, create_session, open, register, send, wait_until_page_shows_stored};

/// The policy the page and its assets carry (contract section 11).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; font-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'; \
base-uri 'none'; form-action 'self'";

/// Through registration, a new session and a message with its reply, every request the
/// browser makes (documents, scripts, styles, fonts, images, API calls, the socket) goes
/// to the page's own origin (or is a `data:` image), and the page and every asset under
/// `/app/` arrive with the policy, exactly.
#[tokio::test]
async fn the_page_loads_nothing_from_another_origin_and_carries_its_csp() {
    let Some(browser) =
        Browser::start("the_page_loads_nothing_from_another_origin_and_carries_its_csp").await
    else {
        return;
    };
    let site = Site::start().await;
    open(&browser, &site).await;
    register(&browser, "haneul", "nurse", "응급실").await;
    let id = create_session(&browser, "야간 근무", None).await;
    send(&browser, "Night shift handover, 인수인계").await;
    let account = site.app.login("haneul@example.com").await;
    wait_until_page_shows_stored(&browser, &site, &account, &id, 2).await;

    let events = browser.network_events().await;
    let mut requested: Vec<String> = Vec::new();
    for event in &events {
        match event["method"].as_str() {
            Some("Network.requestWillBeSent") => {
                requested.push(
                    event["params"]["request"]["url"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            Some("Network.webSocketCreated") => {
                requested.push(event["params"]["url"].as_str().unwrap().to_owned());
            }
            _ => {}
        }
    }
    let own = site.proxy.addr().to_string();
    let foreign: Vec<&String> = requested
        .iter()
        .filter(|url| !url.starts_with("data:") && !same_origin(url, &own))
        .collect();
    assert_eq!(foreign, Vec::<&String>::new(), "requests to another origin");
    // The check saw the page at work: its document, assets, API calls and socket.
    let path_seen = |prefix: &str| {
        requested.iter().any(|url| {
            url.split_once(&own)
                .is_some_and(|(_, path)| path.starts_with(prefix))
        })
    };
    for prefix in [
        "/",
        "/app/",
        "/api/auth/login/",
        "/api/chat/sessions/",
        "/ws/chat/",
    ] {
        assert!(
            path_seen(prefix),
            "no request to {prefix} in {requested:#?}"
        );
    }

    let page_responses: Vec<(&str, Option<&str>)> = events
        .iter()
        .filter(|event| event["method"] == "Network.responseReceived")
        .map(|event| &event["params"]["response"])
        .filter_map(|response| {
            let url = response["url"].as_str()?;
            let path = url.split_once(&own)?.1;
            (path == "/" || path.starts_with("/app/"))
                .then(|| (url, header(response, "content-security-policy")))
        })
        .collect();
    assert!(
        page_responses
            .iter()
            .any(|(url, _)| url.ends_with(&format!("{own}/")))
    );
    assert!(
        page_responses.len() >= 2,
        "the page and its assets: {page_responses:#?}"
    );
    for (url, csp) in &page_responses {
        assert_eq!(*csp, Some(CSP), "{url}");
    }
    let page = site.app.request(Method::GET, "/").send().await.unwrap();
    assert_eq!(page.headers()["content-security-policy"], CSP);
}

/// Whether `url` (http or ws) is on `host_port`.
fn same_origin(url: &str, host_port: &str) -> bool {
    ["http://", "ws://"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix(host_port))
            .is_some_and(|path| path.is_empty() || path.starts_with('/'))
    })
}

/// The value of the response header `name` in a DevTools response (names in any case).
fn header<'a>(response: &'a Value, name: &str) -> Option<&'a str> {
    response["headers"]
        .as_object()?
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))?
        .1
        .as_str()
}
