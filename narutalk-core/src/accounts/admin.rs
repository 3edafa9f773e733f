//! The SQL behind [`crate::admin`] on the users table: owners looked up by email for an
//! import, and the users counted by role, verification and activity for the statistics.

use rusqlite::Connection;

use super::{Role, UserId, user_with_hash_by_email};
use crate::admin::RoleCount;
use crate::error::Error;

/// The id of the user with this email (already lower-cased, as stored), if any.
pub(crate) fn id_by_email(conn: &Connection, email: &str) -> Result<Option<UserId>, Error> {
    Ok(user_with_hash_by_email(conn, email)?.map(|(user, _)| user.id))
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
