//! narutalk-server: the HTTP face of [`narutalk_core`].
//!
//! The crate translates HTTP to core calls and core results to the contract's answers; it
//! holds no business rule. Its parts:
//!
//! - [`listener`]: the accept loop (header time limit, connection cap and per-IP share,
//!   targets in origin form, graceful stop);
//! - `body`: request bodies: minimum pace (408), refused at shutdown (503), drained after
//!   an early answer;
//! - `envelope`: request ids, CORS, the common headers, the access log, panics as 500;
//! - `api`: the route table, the order of checks, and one handler per endpoint;
//! - `state`: what every request shares, assembled from the parts below;
//! - `ws`: the WebSocket chat: handshake, sockets, the revocation watch;
//! - `turns`: posting to the core's turn engine and awaiting the reply, and its drain;
//! - `hub` and `frames`: the rooms of sessions and the frames they carry;
//! - `calls`: core calls on blocking threads; `health`: what health reports;
//! - `limits`: throttles and the login failure budgets;
//! - `http`, `response`, `error`: requests, responses, and the contract's errors;
//! - `wire`: the JSON the server answers, REST and WebSocket, and its OpenAPI schemas;
//! - `docs`: the OpenAPI document's parts and the offline Swagger UI;
//! - `page`: the web chat page at `/` and its assets under `/app/`, embedded in the
//!   binary;
//! - [`metrics`]: the Prometheus metrics and their own listener;
//! - [`logging`]: the process's logger;
//! - [`launch`]: the whole start of a process, as the binary runs it;
//! - [`settings`]: what the server reads, its own settings and the core's, through the
//!   core's layered loader.
//!
//! No two modules import each other, directly or through others
//! (`tests/module_graph.rs` checks it): `state`, which holds the parts, is seen only by
//! the endpoints, the envelope and the server; each part takes only what it needs.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use narutalk_core::{Narutalk, store::OpenMode};
//! use narutalk_server::settings::Settings;
//!
//! let (settings, _file) = Settings::load(&Default::default())?;
//! let core = Narutalk::open(&settings.core, OpenMode::CreateIfMissing)?;
//! let listener = tokio::net::TcpListener::bind(settings.bind).await?;
//! narutalk_server::serve(Arc::new(core), &settings, listener, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await;
//! # Ok(())
//! # }
//! ```

mod api;
mod body;
mod calls;
mod docs;
mod envelope;
mod error;
mod frames;
mod health;
mod http;
mod hub;
pub mod launch;
mod limits;
pub mod listener;
pub mod logging;
mod memory;
pub mod metrics;
mod page;
mod probe;
mod response;
mod server;
pub mod settings;
mod state;
mod turns;
mod wire;
mod ws;

pub use launch::Launch;
pub use listener::ServeOptions;
pub use server::{serve, serve_with};

/// The OpenAPI document of the API as pretty JSON (what `GET /api/schema/` serves).
pub fn openapi_json() -> String {
    api::openapi_pretty()
}
