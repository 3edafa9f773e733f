//! Black-box tests of the real server: each test starts it on a free loopback port with a
//! fresh database and speaks HTTP to it.
#![allow(clippy::unwrap_used)]

mod auth;
mod chat;
mod cors;
mod docs;
mod errors;
mod gateway;
mod health;
mod helpers;
mod hostile;
mod throttle;
mod ws;
mod ws_limits;
