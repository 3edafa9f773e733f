//! The SQL behind [`crate::admin`] on the users table: owners looked up by email for an
//! import (and created when the administrator asks), and the users counted by role,
//! verification and activity for the statistics.

use rusqlite::{Connection, params};

use super::{Role, USERNAME_MAX_CHARS, User, UserId, policy};
use crate::admin::RoleCount;
use crate::error::Error;
use crate::store::sqlite::accounts::{credentials_by_email, exists, user_by_id};
use crate::time;

/// The username an owner created by an import starts from when its email's local part
/// keeps no valid character.
const FALLBACK_USERNAME: &str = "user";

/// The id of the user with this email (already lower-cased, as stored), if any.
pub(crate) fn id_by_email(conn: &Connection, email: &str) -> Result<Option<UserId>, Error> {
    Ok(credentials_by_email(conn, email)?.map(|credentials| credentials.user.id))
}

/// Creates the owner of imported sessions: `email` (already lower-cased, as stored), role
/// `user`, not verified, active, department empty, with `password_hash` (a hash of a
/// password nobody knows, so that no login can match it until an administrator resets
/// it). The username is the email's local part with the characters a username may not
/// hold left out (`user` when none is left), cut to fit, and made unique with the first
/// free numeric suffix from 2 (`kim`, `kim2`, `kim3`, ...).
pub(crate) fn create_import_owner(
    conn: &Connection,
    email: &str,
    password_hash: &str,
) -> Result<User, Error> {
    let local = email.rsplit_once('@').map_or(email, |(local, _)| local);
    let mut base: String = local
        .chars()
        .filter(|c| policy::is_valid_username(c.encode_utf8(&mut [0; 4])))
        .take(USERNAME_MAX_CHARS - 20)
        .collect();
    if base.is_empty() {
        base = FALLBACK_USERNAME.to_owned();
    }
    let taken = |name: &str| {
        exists(
            conn,
            "SELECT 1 FROM users WHERE username = ?1 AND id != ?2",
            name,
            0,
        )
    };
    let mut username = base.clone();
    let mut suffix: u64 = 2;
    while taken(&username)? {
        username = format!("{base}{suffix}");
        suffix += 1;
    }
    conn.prepare_cached(
        "INSERT INTO users (username, email, password_hash, role, department, is_verified, date_joined) \
         VALUES (?1, ?2, ?3, ?4, '', 0, ?5)",
    )?
    .execute(params![
        username,
        email,
        password_hash,
        Role::User.as_str(),
        time::to_micros(&time::now())
    ])?;
    let id = UserId(conn.last_insert_rowid());
    user_by_id(conn, id)?
        .ok_or_else(|| Error::internal(format!("user {id} vanished after its insert")))
}

/// One row per role, in the API's order, zeros included.
pub(crate) fn role_counts(conn: &Connection) -> Result<Vec<RoleCount>, Error> {
    let mut counts: Vec<RoleCount> = Role::ALL
        .into_iter()
        .map(|role| RoleCount {
            role,
            total: 0,
            verified: 0,
            unverified: 0,
            active: 0,
            inactive: 0,
        })
        .collect();
    let mut statement = conn.prepare_cached(
        "SELECT role, count(*), sum(is_verified), sum(is_active) FROM users GROUP BY role",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let role: String = row.get(0)?;
        let Some(count) = counts.iter_mut().find(|c| c.role.as_str() == role) else {
            // The CHECK constraint keeps other roles out; a damaged row is not counted.
            continue;
        };
        let [total, verified, active] = [row.get(1)?, row.get(2)?, row.get(3)?]
            .map(|n: i64| u64::try_from(n).unwrap_or_default());
        *count = RoleCount {
            role: count.role,
            total,
            verified,
            unverified: total - verified.min(total),
            active,
            inactive: total - active.min(total),
        };
    }
    Ok(counts)
}
