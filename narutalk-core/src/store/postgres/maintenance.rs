//! `maintenance` of the PostgreSQL backend: being written.
