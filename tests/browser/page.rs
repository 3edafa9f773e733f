//! The server behind the test's proxy, and what a person does on the chat page, in terms
//! of the page's DOM hooks.

use narutalk_core::config::AiBackend;
use narutalk_server::ServeOptions;
use narutalk_server::settings::Settings;
use serde_json::{Value, json};

use crate::browser::{Browser, ENTER};
use crate::fake_ai::FakeService;
use crate::helpers::{Account, PASSWORD, TestApp, start, stored};
use crate::proxy::Proxy;

/// The real server (in-process, fresh database) and the proxy the browser reaches it
/// through.
pub struct Site {
    pub app: TestApp,
    pub proxy: Proxy,
}

impl Site {
    /// A server with the tests' configuration (throttles off, template AI).
    pub async fn start() -> Site {
        Site::start_with(|_| {}).await
    }

    /// A server whose configuration `configure` changes.
    pub async fn start_with(configure: impl FnOnce(&mut Settings)) -> Site {
        let app = start(configure, ServeOptions::default(), None).await;
        let proxy = Proxy::start(app.addr).await;
        Site { app, proxy }
    }

    /// A server whose AI is the `openai` backend answered by the fake `model`.
    pub async fn with_model(model: &FakeService) -> Site {
        let url = model.url("/v1");
        Site::start_with(move |config| {
            config.core.ai_backend = AiBackend::Openai;
            config.core.ai_url = url;
            config.core.ai_model = "test-model".to_owned();
        })
        .await
    }

    /// The page's origin: the proxy's.
    pub fn origin(&self) -> String {
        format!("http://{}", self.proxy.addr())
    }

    /// The absolute URL of `path` as the browser sees it.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }
}

/// One message as the page shows it in `#messages`.
#[derive(Clone, Debug, PartialEq)]
pub struct Shown {
    pub id: String,
    pub sender: String,
    pub message_type: String,
    pub streaming: bool,
    pub text: String,
}

/// Opens the chat page and waits until it shows one of its two views.
pub async fn open(browser: &Browser, site: &Site) {
    browser.goto(&site.url("/")).await;
    browser
        .wait_for(
            "the page to show #auth-view or #chat-view",
            "const auth = document.querySelector('#auth-view'); \
             const chat = document.querySelector('#chat-view'); \
             return !!auth && !!chat && (auth.hidden !== chat.hidden);",
            vec![],
        )
        .await;
}

/// Whether the element `css` matches is shown (exists and has no `hidden` attribute).
pub async fn shown(browser: &Browser, css: &str) -> bool {
    browser
        .js(
            "const e = document.querySelector(arguments[0]); return !!e && !e.hidden;",
            vec![json!(css)],
        )
        .await
        == json!(true)
}

/// Waits until `#chat-view` is shown and `#auth-view` hidden.
pub async fn wait_for_chat_view(browser: &Browser) {
    wait_for_view(browser, "#chat-view", "#auth-view").await;
}

/// Waits until `#auth-view` is shown and `#chat-view` hidden.
pub async fn wait_for_auth_view(browser: &Browser) {
    wait_for_view(browser, "#auth-view", "#chat-view").await;
}

async fn wait_for_view(browser: &Browser, view: &str, other: &str) {
    browser
        .wait_for(
            &format!("{view} to be shown and {other} hidden"),
            "return !document.querySelector(arguments[0]).hidden \
                && document.querySelector(arguments[1]).hidden;",
            vec![json!(view), json!(other)],
        )
        .await;
}

/// Fills the login form with `email` and `password` and submits it (no wait).
pub async fn submit_login(browser: &Browser, email: &str, password: &str) {
    if !shown(browser, "form#login-form").await {
        browser.click("#show-login").await;
    }
    clear(browser, "form#login-form input[name=email]").await;
    browser
        .type_into("form#login-form input[name=email]", email)
        .await;
    clear(browser, "form#login-form input[name=password]").await;
    browser
        .type_into("form#login-form input[name=password]", password)
        .await;
    submit(browser, "form#login-form").await;
}

/// Logs in through the page's form with `email` and the tests' password, and waits for
/// the chat view.
pub async fn log_in(browser: &Browser, email: &str) {
    submit_login(browser, email, PASSWORD).await;
    wait_for_chat_view(browser).await;
}

/// Registers `username` (email `username@example.com`, as the helpers make them) with
/// `role` and `department` through the page's form and the tests' password, and waits for the chat view (registering logs in).
pub async fn register(browser: &Browser, username: &str, role: &str, department: &str) {
    if !shown(browser, "form#register-form").await {
        browser.click("#show-register").await;
    }
    let form = "form#register-form";
    let email = format!("{username}@example.com");
    for (field, value) in [
        ("username", username),
        ("email", email.as_str()),
        ("password", PASSWORD),
        ("password_confirm", PASSWORD),
        ("department", department),
    ] {
        browser
            .type_into(&format!("{form} input[name={field}]"), value)
            .await;
    }
    browser
        .choose(&format!("{form} select[name=role]"), role)
        .await;
    browser
        .click(&format!("{form} [type=submit], {form} button:not([type])"))
        .await;
    wait_for_chat_view(browser).await;
}

/// Clicks the submit button of the form `form` matches.
async fn submit(browser: &Browser, form: &str) {
    browser
        .click(&format!("{form} [type=submit], {form} button:not([type])"))
        .await;
}

/// Empties the input `css` matches.
async fn clear(browser: &Browser, css: &str) {
    browser.element(css).await.clear().await.unwrap();
}

/// Opens the page and logs `account` in through the form.
pub async fn open_logged_in(browser: &Browser, site: &Site, account: &Account) {
    open(browser, site).await;
    log_in(browser, &account.email).await;
}

/// Clicks the session `id` in `#session-list` and waits until it is the open one and its
/// socket is connected.
pub async fn open_session(browser: &Browser, id: &str) {
    browser
        .click(&format!("#session-list li[data-session-id=\"{id}\"]"))
        .await;
    browser
        .wait_for(
            "the session to be the open one",
            "const li = document.querySelector(`#session-list li[data-session-id=\"${arguments[0]}\"]`); \
             return !!li && li.getAttribute('aria-current') === 'true';",
            vec![json!(id)],
        )
        .await;
    wait_for_connection(browser, "connected").await;
}

/// Creates a session through `#new-session` and its form (`category` chosen when given),
/// waits until it is listed as the open one and connected, and answers its id.
pub async fn create_session(browser: &Browser, title: &str, category: Option<&str>) -> String {
    let form = "form#new-session-form";
    browser.click("#new-session").await;
    browser
        .type_into(&format!("{form} input[name=title]"), title)
        .await;
    if let Some(category) = category {
        browser
            .choose(&format!("{form} select[name=category]"), category)
            .await;
    }
    submit(browser, form).await;
    let id = browser
        .wait_for(
            "the new session to be listed as the open one",
            "const li = document.querySelector('#session-list li[aria-current=true]'); \
             return li && li.textContent.includes(arguments[0]) && li.dataset.sessionId;",
            vec![json!(title)],
        )
        .await;
    wait_for_connection(browser, "connected").await;
    id.as_str().unwrap().to_owned()
}

/// Waits until `#connection-state` no longer says `connected`, and answers what it says.
pub async fn wait_until_disconnected(browser: &Browser) -> String {
    let state = browser
        .wait_for(
            "#connection-state to leave connected",
            "const state = document.querySelector('#connection-state').dataset.state; \
             return state !== 'connected' && state;",
            vec![],
        )
        .await;
    state.as_str().unwrap().to_owned()
}

/// Waits until `#connection-state` says `state`.
pub async fn wait_for_connection(browser: &Browser, state: &str) {
    browser
        .wait_for(
            &format!("#connection-state to be {state}"),
            "return document.querySelector('#connection-state').dataset.state === arguments[0];",
            vec![json!(state)],
        )
        .await;
}

/// Types `text` into the composer and presses Enter.
pub async fn send(browser: &Browser, text: &str) {
    browser
        .type_into("#composer-input", &format!("{text}{ENTER}"))
        .await;
}

/// Waits until `#notice` is shown with `data-kind` = `kind` and some text.
pub async fn wait_for_notice(browser: &Browser, kind: &str) {
    browser
        .wait_for(
            &format!("#notice to say {kind}"),
            "const n = document.querySelector('#notice'); \
             return !n.hidden && n.dataset.kind === arguments[0] && n.textContent.trim() !== '';",
            vec![json!(kind)],
        )
        .await;
}

/// What the composer (`#composer-input`) holds.
pub async fn composer(browser: &Browser) -> String {
    let value = browser
        .js(
            "return document.querySelector('#composer-input').value;",
            vec![],
        )
        .await;
    value.as_str().unwrap_or_default().to_owned()
}

/// The messages `#messages` shows, top to bottom.
pub async fn messages(browser: &Browser) -> Vec<Shown> {
    let shown = browser
        .js(
            "return Array.from(document.querySelectorAll('#messages li.message')).map(li => ({ \
                id: li.dataset.messageId || '', \
                sender: li.dataset.sender || '', \
                type: li.dataset.messageType || '', \
                streaming: li.dataset.streaming === 'true', \
                text: (li.querySelector('.message-text') || {}).textContent || '', \
             }));",
            vec![],
        )
        .await;
    shown
        .as_array()
        .unwrap()
        .iter()
        .map(|li| Shown {
            id: li["id"].as_str().unwrap().to_owned(),
            sender: li["sender"].as_str().unwrap().to_owned(),
            message_type: li["type"].as_str().unwrap().to_owned(),
            streaming: li["streaming"].as_bool().unwrap(),
            text: li["text"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// Polls [`messages`] until `done` holds for them and answers them; fails after the
/// browser's patience saying `what` was awaited.
pub async fn wait_for_messages(
    browser: &Browser,
    what: &str,
    done: impl Fn(&[Shown]) -> bool,
) -> Vec<Shown> {
    let deadline = tokio::time::Instant::now() + crate::browser::PATIENCE;
    loop {
        let shown = messages(browser).await;
        if done(&shown) {
            return shown;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited for {what}; the page shows {shown:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The session's stored messages (REST) as the page must show them: id, sender, type
/// and content, not streaming.
pub fn as_shown(stored: &[Value]) -> Vec<Shown> {
    stored
        .iter()
        .map(|message| Shown {
            id: message["id"].as_str().unwrap().to_owned(),
            sender: message["sender"].as_str().unwrap().to_owned(),
            message_type: message["message_type"].as_str().unwrap().to_owned(),
            streaming: false,
            text: message["content"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// Waits until the session holds `count` messages and the page shows exactly those, in
/// their order, each once, none streaming, and answers them.
pub async fn wait_until_page_shows_stored(
    browser: &Browser,
    site: &Site,
    account: &Account,
    session: &str,
    count: usize,
) -> Vec<Shown> {
    let deadline = tokio::time::Instant::now() + crate::browser::PATIENCE;
    loop {
        let expected = as_shown(&stored(&site.app, account, session).await);
        let shown = messages(browser).await;
        if expected.len() == count && shown == expected {
            return shown;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited for the page to show the session's {count} messages; it shows \
             {shown:#?}\nand the session holds {expected:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `localStorage[key]` of the current window's page.
pub async fn local_storage(browser: &Browser, key: &str) -> Value {
    browser
        .js(
            "return localStorage.getItem(arguments[0]);",
            vec![json!(key)],
        )
        .await
}
