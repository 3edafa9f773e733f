//! Black-box tests of the real server: each test starts it on a free loopback port with a
//! fresh database and speaks HTTP to it.
#![allow(clippy::unwrap_used)]

mod ai;
mod ai_pool;
mod auth;
mod chat;
// The throwaway PostgreSQL cluster of the PostgreSQL run (`NARUTALK_TEST_BACKEND`).
#[path = "../support/postgres.rs"]
mod cluster;
mod cors;
mod docs;
mod errors;
// The fake AI service is the core's own test fake, shared rather than copied.
#[path = "../../narutalk-core/src/ai/fake_service.rs"]
mod fake_ai;
mod gateway;
mod health;
mod helpers;
mod hostile;
mod nginx;
mod page;
mod server_process;
mod several;
mod several_processes;
mod system;
mod throttle;
mod transport;
mod unavailable;
mod ws;
mod ws_limits;
