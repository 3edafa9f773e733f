//! Calls into the core from async code. The core is synchronous (SQLite, argon2), so each
//! call runs on tokio's blocking threads, never on the async workers, and inside the span
//! of the request that made it, so that whatever it logs carries the request's id.
//! Password hashing is bounded by the core itself: a full queue is the core's
//! `Error::Unavailable`, answered 503.
//!
//! A thread hop is the price of each call, so the authenticated reads (the session list,
//! a session, its messages, the dashboard) take the caller as a [`Caller::Token`]:
//! [`Calls::run_as`] checks the token and runs the read in one blocking call, the token
//! first, so the order of checks is unchanged and such a read costs one hop, not two.

use std::sync::Arc;

use narutalk_core::Narutalk;
use narutalk_core::accounts::User;
use narutalk_core::error::Error as CoreError;

use crate::error::ApiError;

/// The core handle, called on blocking threads.
pub struct Calls {
    core: Arc<Narutalk>,
}

/// Who is asking, on an endpoint that needs an access token.
#[derive(Clone, Debug)]
pub enum Caller {
    /// The token's user, already authenticated.
    User(User),
    /// A token not checked yet: [`Calls::run_as`] checks it in the same blocking call as
    /// the work, before the work. The read-only endpoints take this path.
    Token(String),
}

impl Caller {
    /// The authenticated user, if the token was checked already.
    pub fn user(&self) -> Option<&User> {
        match self {
            Caller::User(user) => Some(user),
            Caller::Token(_) => None,
        }
    }
}

impl Calls {
    /// Calls on `core`.
    pub fn new(core: Arc<Narutalk>) -> Calls {
        Calls { core }
    }

    /// The core handle, for what needs no blocking thread.
    pub fn core(&self) -> &Arc<Narutalk> {
        &self.core
    }

    /// The longest message content the core accepts, for checking a post's input.
    pub fn content_max_chars(&self) -> usize {
        self.core.chat().content_max_chars()
    }

    /// Runs blocking core work on tokio's blocking threads, in the current span. A panic
    /// in it answers 500, never a dropped connection.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Narutalk) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let core = self.core.clone();
        let span = tracing::Span::current();
        match tokio::task::spawn_blocking(move || span.in_scope(|| work(&core))).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(error) => Err(ApiError::internal("a blocking task failed", error)),
        }
    }

    /// [`Calls::run`] for work on behalf of `caller`: when the caller is an unchecked
    /// token, the same blocking call authenticates it first (a refused token answers 401
    /// and the work does not run).
    pub async fn run_as<T: Send + 'static>(
        &self,
        caller: Caller,
        work: impl FnOnce(&Narutalk, User) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let outcome = self
            .run(move |core| {
                let user = match caller {
                    Caller::User(user) => user,
                    Caller::Token(token) => match core.tokens().authenticate(&token) {
                        Ok(user) => user,
                        Err(refused) => return Ok(Err(refused)),
                    },
                };
                work(core, user).map(Ok)
            })
            .await?;
        outcome.map_err(ApiError::access_refused)
    }
}
