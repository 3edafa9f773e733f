//! `chat` of the PostgreSQL backend: being written.
