//! `accounts` of the PostgreSQL backend: being written.
