//! Rows for checks that run from outside against a server with a logged-in user (such as
//! schemathesis): the suite starts the server (throttles off), registers and logs in a
//! user, and hands the check the base URL and the access token.

use crate::Context;
use crate::api::Account;
use crate::report::Row;
use crate::server::{ServerProcess, Settings, start_with_user};

/// A running server with a logged-in user, for a check from outside.
pub struct LoggedIn {
    /// The server; stop it with [`ServerProcess::stop`].
    pub server: ServerProcess,
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base_url: String,
    /// The user, with its access token (valid for 60 minutes) and one chat session.
    pub account: Account,
}

/// Starts a server in the part's folder with the suite's settings (throttles off, template
/// AI, a fresh database) and a registered, logged-in user `checker` with one session.
pub async fn logged_in(ctx: &Context) -> anyhow::Result<LoggedIn> {
    let settings = Settings::new(ctx)?;
    let (server, account) = start_with_user(&settings, "checker", 1).await?;
    Ok(LoggedIn {
        base_url: server.base_url(),
        server,
        account,
    })
}

/// The row of `check(base_url, access_token)` (`Ok`: a one-line summary; `Err`: the
/// findings), run on a blocking thread against [`logged_in`]'s server, which must still
/// be running (and stop cleanly) afterwards.
pub async fn run(
    ctx: &Context,
    name: &str,
    check: fn(&str, &str) -> Result<String, String>,
) -> anyhow::Result<Row> {
    let LoggedIn {
        mut server,
        base_url,
        account,
    } = logged_in(ctx).await?;
    let url = base_url.clone();
    let outcome = tokio::task::spawn_blocking(move || check(&url, &account.access))
        .await
        .map_err(|error| anyhow::anyhow!("{name} panicked: {error}"))?;
    server.check_running()?;
    server.stop().await?;
    let ran = format!("{name} against {base_url} as a logged-in user");
    Ok(match outcome {
        Ok(summary) => Row::new(ran, summary, String::new(), Vec::new()),
        Err(findings) => {
            let mut lines: Vec<String> = findings.lines().map(str::to_owned).collect();
            if lines.is_empty() {
                lines.push(format!("{name} failed without saying why"));
            }
            Row::new(ran, String::new(), String::new(), lines)
        }
    })
}
