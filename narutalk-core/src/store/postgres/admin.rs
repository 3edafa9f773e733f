//! `admin` of the PostgreSQL backend: being written.
