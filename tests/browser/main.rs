//! Browser tests of the web chat page (`GET /`): a real headless Chromium, driven through
//! chromedriver (WebDriver, plus the DevTools protocol where WebDriver has no word, such
//! as an IME composition), uses the page against the real server, started in-process on
//! a free loopback port as in `tests/api/`.
//!
//! The browser reaches the server through a TCP proxy of the test ([`proxy::Proxy`]), so
//! that a test can drop the browser's connections and restore them; the page's origin is
//! the proxy's address. Tests find their way by the page's DOM hooks (`#chat-view`,
//! `li.message[data-message-id]`, ...), never by visible labels.
//!
//! Chromium (`chromium`), chromedriver (`chromium-driver`) and the fonts the screenshot
//! needs (`fonts-noto-cjk`) are installed by `.ci/install-deps`; without the programs each
//! test skips with one line, or fails under `NARUTALK_REQUIRE_ALL=1` (`system::require`).
//! One chromedriver serves the tests that run at once; each test has its own browser,
//! with a profile in a temporary folder.
#![allow(clippy::unwrap_used)]

mod browser;
// The fake OpenAI-compatible model is the core's own test fake, shared rather than copied.
#[path = "../../narutalk-core/src/ai/fake_service.rs"]
mod fake_ai;
// The throwaway PostgreSQL cluster of the helpers' PostgreSQL run.
#[path = "../support/postgres.rs"]
mod cluster;
// Starting the real server, accounts, sessions and REST calls: the API tests' helpers.
#[path = "../api/helpers.rs"]
mod helpers;
mod page;
mod proxy;
#[path = "../api/system.rs"]
mod system;

mod account;
mod chat;
mod elsewhere;
mod ime;
mod origin;
mod reconnect;
mod screenshot;
mod sessions;
mod streaming;
mod tabs;
mod throttle;
