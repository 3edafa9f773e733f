//! Black-box tests of the `narutalk` binary: each test runs the real binary against a
//! database in a temporary folder and asserts the exact exit code, stdout and stderr.
//! One test binary, a module per command group.
#![allow(clippy::unwrap_used)]

mod copy;
mod db;
mod help;
mod lists;
mod migrate;
mod on_postgres;
#[path = "../../../tests/support/postgres.rs"]
mod postgres;
mod sessions;
mod stats;
mod support;
mod users;
