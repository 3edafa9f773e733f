//! The `outbox` table on PostgreSQL: the rows and the pruning rule are the port's
//! (`store::outbox`).

use crate::error::{Error, InternalError};
use crate::store::outbox::{PRUNE_EVERY, PRUNED_AT_ONCE, Row};
use crate::time;

use super::{PostgresStore, Tx};

impl PostgresStore {
    /// Writes an outbox row in the write transaction `tx`, forgetting a few rows past the
    /// retention.
    pub(super) fn record(&self, tx: &mut Tx<'_>, row: &Row<'_>) -> Result<(), Error> {
        let payload = serde_json::to_string(&row.payload)
            .map_err(|e| Error::Internal(InternalError::from_error(e)))?;
        // The notification goes with the row, in its transaction: delivered once it commits.
        let notification = super::listener::payload(&self.origin, row);
        let id: i64 = tx
            .query_one(
                "WITH row AS (INSERT INTO outbox (kind, session_id, seq, user_id, actor, created_at, request_id, payload) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id) \
                 SELECT id, pg_notify('narutalk_events', $9)::TEXT FROM row",
                &[
                    &row.kind.as_str(),
                    &row.session.map(|id| id.to_string()),
                    &row.seq,
                    &row.user.map(|id| id.0),
                    &row.audit.actor.as_text(),
                    &time::to_micros(&row.audit.at),
                    &row.audit.request_id.as_deref(),
                    &payload,
                    &notification,
                ],
            )?
            .get(0);
        if id % PRUNE_EVERY == 0 {
            let keep_since = time::to_micros(&self.outbox_keep_since(&row.audit.at));
            tx.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM \
                 (SELECT id, created_at FROM outbox ORDER BY id LIMIT $2) AS oldest \
                 WHERE created_at < $1)",
                &[&keep_since, &PRUNED_AT_ONCE],
            )?;
        }
        Ok(())
    }
}
