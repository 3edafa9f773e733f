//! The open sockets of this process: what the revocation watch re-checks, and what a
//! shutdown closes.
//!
//! A socket's token was valid at the handshake; afterwards the watch asks the core every
//! [`crate::listener::ServeOptions::revocation_check`] (and at once after a password change, a
//! logout or a refused refresh through this server) whether each open socket's token has
//! been revoked (its user's tokens, or its login family after a logout or a refresh-token
//! reuse) or its session deleted, by anyone, also by the command-line tool in another
//! process, and closes those sockets with 1008.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use narutalk_core::accounts::UserId;
use narutalk_core::chat::SessionId;
use narutalk_core::tokens::Grant;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::hub::{CloseCode, Closer};
use crate::ws::Shared;

/// The registry of open sockets and the shutdown signals they obey.
#[derive(Default)]
pub struct Sockets {
    next: AtomicU64,
    live: Arc<Live>,
    stopping: CancellationToken,
    closing: CancellationToken,
    check_now: Notify,
}

/// The open sockets, and a signal for when the last one goes.
#[derive(Default)]
struct Live {
    by_id: Mutex<HashMap<u64, Watched>>,
    emptied: Notify,
}

#[derive(Clone)]
struct Watched {
    grant: Grant,
    session: SessionId,
    closer: Arc<Closer>,
}

/// An open socket's entry; dropping it takes the socket off the registry.
pub struct Registration {
    live: Arc<Live>,
    id: u64,
    closer: Arc<Closer>,
}

impl Registration {
    /// What ends this socket from outside.
    pub fn closer(&self) -> &Arc<Closer> {
        &self.closer
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.live.lock();
        live.remove(&self.id);
        if live.is_empty() {
            self.live.emptied.notify_waiters();
        }
    }
}

impl Live {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Watched>> {
        self.by_id
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Sockets {
    /// Registers a socket opened with `grant` on `session`.
    pub fn register(&self, grant: Grant, session: SessionId) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let closer = Arc::new(Closer::default());
        self.live.lock().insert(
            id,
            Watched {
                grant,
                session,
                closer: closer.clone(),
            },
        );
        Registration {
            live: self.live.clone(),
            id,
            closer,
        }
    }

    /// Sockets open right now.
    pub fn open(&self) -> usize {
        self.live.lock().len()
    }

    /// Waits until no socket is open, at most `limit`; true if none is.
    pub async fn all_closed(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let emptied = self.live.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.open() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                return self.open() == 0;
            }
        }
    }

    /// Asks the revocation watch to check now rather than at its next tick.
    pub fn check_soon(&self) {
        self.check_now.notify_one();
    }

    /// The first step of a shutdown: sockets stop taking new messages (they answer them
    /// with an `error` frame) but still deliver what is published.
    pub fn stop_taking_messages(&self) {
        self.stopping.cancel();
    }

    /// Whether [`Sockets::stop_taking_messages`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// The last step of a shutdown: every socket sends what is queued for it, then
    /// closes with 1001.
    pub fn close_all(&self) {
        self.closing.cancel();
    }

    /// Completes when [`Sockets::close_all`] is called.
    pub async fn closing(&self) {
        self.closing.cancelled().await;
    }

    /// Closes every socket still open at once with 1001, even one stuck writing to a peer
    /// that does not read: the end of a shutdown's grace period.
    pub fn close_now(&self) {
        for watched in self.live.lock().values() {
            watched
                .closer
                .close(CloseCode::GoingAway, "server shutting down");
        }
    }

    fn snapshot(&self) -> Vec<Watched> {
        self.live.lock().values().cloned().collect()
    }
}

/// Re-checks the open sockets every `every`, or sooner when asked, until the task is
/// aborted.
pub async fn watch_revocations(shared: Arc<Shared>, every: Duration) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shared.sockets.check_now.notified() => {}
        }
        let watched = shared.sockets.snapshot();
        if watched.is_empty() {
            continue;
        }
        let grants: Vec<Grant> = watched.iter().map(|w| w.grant).collect();
        let sessions: Vec<(UserId, SessionId)> = watched
            .iter()
            .map(|w| (w.grant.user_id, w.session))
            .collect();
        let checked = shared
            .calls
            .run(move |core| {
                Ok((
                    core.tokens().revoked(&grants)?,
                    core.chat().sessions_exist(&sessions)?,
                ))
            })
            .await;
        let Ok((revoked, exist)) = checked else {
            // The database is unavailable: try again at the next tick, closing nothing.
            continue;
        };
        for ((watched, revoked), exists) in watched.iter().zip(revoked).zip(exist) {
            if revoked {
                watched
                    .closer
                    .close(CloseCode::PolicyViolation, "tokens revoked");
            } else if !exists {
                watched
                    .closer
                    .close(CloseCode::PolicyViolation, "session deleted");
            }
        }
    }
}
