//! The `outbox` table: the record of every change the outside must hear about, written
//! by the transaction that makes the change (see the port's module doc).
//!
//! The rows and the pruning rule are the port's (`store::outbox`).

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::WriteTx;
use crate::error::{Error, InternalError};
pub(super) use crate::store::outbox::Row;
use crate::store::outbox::{PRUNE_EVERY, PRUNED_AT_ONCE};
use crate::time;

/// Writes `row` and forgets a few rows created before `keep_since`.
pub(super) fn record(
    tx: &WriteTx<'_>,
    row: &Row<'_>,
    keep_since: &DateTime<Utc>,
) -> Result<(), Error> {
    let payload = serde_json::to_string(&row.payload)
        .map_err(|e| Error::Internal(InternalError::from_error(e)))?;
    tx.prepare_cached(
        "INSERT INTO outbox (kind, session_id, seq, user_id, actor, created_at, request_id, payload) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        row.kind.as_str(),
        row.session.map(|id| id.to_string()),
        row.seq,
        row.user.map(|id| id.0),
        row.audit.actor.as_text(),
        time::to_micros(&row.audit.at),
        row.audit.request_id.as_deref(),
        payload,
    ])?;
    if tx.last_insert_rowid() % PRUNE_EVERY == 0 {
        tx.prepare_cached(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM \
             (SELECT id, created_at FROM outbox ORDER BY id LIMIT ?2) WHERE created_at < ?1)",
        )?
        .execute(params![time::to_micros(keep_since), PRUNED_AT_ONCE])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use rusqlite::Connection;

    use crate::Narutalk;
    use crate::accounts::{NewUser, Role};
    use crate::chat::{Category, PostInput};
    use crate::config::Config;
    use crate::events::Actor;
    use crate::store::OpenMode;
    use crate::store::sqlite::SqliteStore;

    /// An outbox row but its payload.
    type Recorded = (
        String,
        Option<String>,
        Option<i64>,
        Option<i64>,
        String,
        Option<String>,
    );

    type OutboxRow = (
        String,
        Option<String>,
        Option<i64>,
        Option<i64>,
        String,
        Option<String>,
        String,
    );

    fn rows(path: &std::path::Path) -> Vec<OutboxRow> {
        let conn = Connection::open(path).unwrap();
        let mut statement = conn
            .prepare("SELECT kind, session_id, seq, user_id, actor, request_id, payload FROM outbox ORDER BY id")
            .unwrap();
        statement
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn each_change_records_its_kind_actor_and_request_id_in_its_transaction() {
        // Arrange
        let dir = tempfile::tempdir().unwrap();
        let config = Config::for_tests(dir.path());
        let narutalk = Narutalk::open(&config, OpenMode::CreateIfMissing).unwrap();
        let kim = narutalk
            .accounts()
            .create(&NewUser {
                email: "kim@example.com".into(),
                username: "kim".into(),
                password: "violet-harbour-42".into(),
                role: Role::Doctor,
                department: String::new(),
                is_verified: true,
            })
            .unwrap();
        let session = narutalk
            .chat()
            .create_session(kim.id, "s", Category::General)
            .unwrap()
            .session
            .id;

        // Act: a post (answered by the engine-less handle), a deletion, a logout
        // everywhere by the CLI.
        narutalk
            .chat()
            .with_request("req-1")
            .post(kim.id, session, PostInput::text("hi", 100))
            .unwrap()
            .reply
            .wait()
            .unwrap();
        narutalk
            .chat()
            .with_request("req-2")
            .delete_session(kim.id, session)
            .unwrap();
        let cli = Narutalk::open_for_administration(&config)
            .unwrap()
            .acting_as(Actor::Cli);
        cli.accounts().logout_all(kim.id).unwrap();

        // Assert
        let user = format!("user:{}", kim.id.0);
        let id = Some(session.to_string());
        let recorded: Vec<Recorded> = rows(&config.database)
            .into_iter()
            .map(|(kind, session, seq, user, actor, request, _)| {
                (kind, session, seq, user, actor, request)
            })
            .collect();
        assert_eq!(
            recorded,
            [
                (
                    "message_stored".into(),
                    id.clone(),
                    Some(1),
                    Some(kim.id.0),
                    user.clone(),
                    Some("req-1".into())
                ),
                (
                    "message_stored".into(),
                    id.clone(),
                    Some(2),
                    Some(kim.id.0),
                    "engine".into(),
                    None
                ),
                (
                    "session_deleted".into(),
                    id,
                    None,
                    Some(kim.id.0),
                    user,
                    Some("req-2".into())
                ),
                (
                    "user_revoked".into(),
                    None,
                    None,
                    Some(kim.id.0),
                    "cli".into(),
                    None
                ),
            ]
        );
        let payloads: Vec<String> = rows(&config.database)
            .into_iter()
            .map(|row| row.6)
            .collect();
        assert_eq!(payloads[3], r#"{"cause":"tokens_revoked"}"#);
        assert!(
            payloads[0].contains(r#""sender":"user""#),
            "{}",
            payloads[0]
        );
    }

    #[test]
    fn rows_older_than_the_retention_are_forgotten_by_later_writes() {
        // Arrange: a store keeping rows 1 day, with rows of 3 days ago.
        let dir = tempfile::tempdir().unwrap();
        let config = Config::for_tests(dir.path());
        let store = SqliteStore::open(
            &config.database,
            config.sqlite_synchronous,
            OpenMode::CreateIfMissing,
        )
        .unwrap()
        .with_outbox_retention(1);
        let old = crate::time::to_micros(&(crate::time::now() - chrono::Duration::days(3)));
        let conn = Connection::open(&config.database).unwrap();
        // The next row is the PRUNE_EVERY-th: it prunes.
        for _ in 1..super::PRUNE_EVERY {
            conn.execute(
                "INSERT INTO outbox (kind, actor, created_at) VALUES ('user_revoked', 'cli', ?1)",
                [old],
            )
            .unwrap();
        }
        let narutalk = Narutalk::new(
            Arc::new(store),
            &crate::config::Secret::new("0123456789abcdef0123456789abcdef0123456789abcdef"),
            &config,
        )
        .unwrap();
        let kim = narutalk
            .accounts()
            .create(&NewUser {
                email: "kim@example.com".into(),
                username: "kim".into(),
                password: "violet-harbour-42".into(),
                role: Role::Doctor,
                department: String::new(),
                is_verified: true,
            })
            .unwrap();

        // Act: one change that records a row.
        narutalk.accounts().logout_all(kim.id).unwrap();

        // Assert: the old rows are gone, the new one kept.
        let kept = rows(&config.database);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].4, "administrator");
    }
}
