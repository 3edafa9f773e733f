//! `tokens` of the PostgreSQL backend: being written.
