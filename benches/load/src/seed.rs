//! The server's settings for the run, and the data seeded through the core before the
//! server starts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Context;
use narutalk_core::Narutalk;
use narutalk_core::accounts::{NewUser, Role};
use narutalk_core::chat::Category;
use narutalk_core::config::{self, AiBackend, Config};
use narutalk_core::store::OpenMode;
use narutalk_server::settings::{Overrides, Settings};

use crate::cluster::{Cluster, Durability};

/// The password of every seeded account (it passes every password rule).
pub const PASSWORD: &str = "violet-harbour-42";

/// Sessions of the `sessions-list` user: more than two pages of 20.
pub const LIST_SESSIONS: usize = 50;
/// Exchanges (a user message and its AI reply) in each of those sessions.
const LIST_EXCHANGES: usize = 2;
/// Sessions read by `session-detail`.
pub const DETAIL_SESSIONS: usize = 10;
/// Exchanges in each of those (20 messages).
const DETAIL_EXCHANGES: usize = 10;

/// The AI a server under load answers with.
#[derive(Clone, Debug)]
pub enum Ai {
    /// The embedded `template` responder (every scenario but `slow-ai`).
    Template,
    /// The `http` backend against the service at this URL (`slow-ai`'s slow model), at
    /// the default `ai_concurrency` and `ai_timeout_seconds`.
    Http(String),
}

/// The run's PostgreSQL cluster, when the run is on PostgreSQL (`--postgres`).
static POSTGRES: OnceLock<Cluster> = OnceLock::new();

/// Puts the run on PostgreSQL: starts its throwaway cluster (durable, as SQLite's
/// `synchronous=FULL` is); every settings file written from now on names a new database
/// of it.
pub fn use_postgres() -> anyhow::Result<()> {
    let cluster = Cluster::start("narutalk-load --postgres", Durability::Durable)
        .context("--postgres needs PostgreSQL (Debian package `postgresql`)")?;
    let _ = POSTGRES.set(cluster);
    Ok(())
}

/// The settings of the server under load, written to a TOML file in `dir` that both the
/// harness (to seed) and the server process read with `Settings::load_from`, so that both
/// use the same database and signing secret. `NARUTALK_*` variables of the environment
/// are not read: a run measures these settings only.
pub fn write_settings(dir: &Path, ai: &Ai, metrics: bool) -> anyhow::Result<PathBuf> {
    // `Config::for_tests` makes a random 32-byte signing secret for this run.
    let secret = Config::for_tests(dir)
        .secret_key
        .context("a random signing secret")?;
    let database = match POSTGRES.get() {
        // A fresh database of the run's cluster for each set of settings.
        Some(cluster) => cluster.create_database(),
        None => dir
            .join("db.sqlite3")
            .to_str()
            .context("the temporary folder's path is not UTF-8")?
            .to_owned(),
    };
    // A JSON string is a valid TOML basic string (same escapes).
    let mut settings = format!(
        "# Settings of the Narutalk load harness (see benches/README.md).\n\
         database = {database}\n\
         sqlite_synchronous = \"full\"\n\
         secret_key = {secret}\n\
         # Throttles off: the harness measures the server, not the limiters.\n\
         auth_throttle_per_minute = 0\n\
         message_throttle_per_minute = 0\n\
         # Every connection of the harness comes from 127.0.0.1 (10,000 idle sockets).\n\
         max_connections_per_ip = 0\n\
         # No search service, so no background probe.\n\
         search_url = \"\"\n\
         # Heartbeats that never fire during a run (idle sockets do not answer pings).\n\
         ws_ping_seconds = 3600\n\
         ws_idle_seconds = 7200\n\
         # Warnings only: the access log line of every request would be measured too.\n\
         log = \"warn\"\n",
        database = serde_json::to_string(&database)?,
        secret = serde_json::to_string(secret.expose())?,
    );
    match ai {
        Ai::Template => settings.push_str("ai_backend = \"template\"\n"),
        Ai::Http(url) => settings.push_str(&format!(
            "# The slow model of slow-ai, at the default concurrency and timeout.\nai_backend = \"http\"\nai_url = {}\n",
            serde_json::to_string(url)?
        )),
    }
    if metrics {
        settings.push_str("# Prometheus metrics recorded and served (--metrics).\nmetrics_bind = \"127.0.0.1:0\"\n");
    }
    let path = dir.join("narutalk.toml");
    std::fs::write(&path, settings).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The settings of `file` (and `bind` when given), with no environment variable.
pub fn load_settings(file: &Path, bind: Option<&str>) -> anyhow::Result<Settings> {
    let overrides = Overrides {
        bind: bind.map(str::to_owned),
        core: config::Overrides {
            database: None,
            config: Some(file.to_owned()),
        },
    };
    Ok(Settings::load_from(Vec::new(), &overrides)?)
}

/// How much to seed.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Sessions for `post-message` and `mixed`: one per load connection, since the
    /// messages of one session are answered one at a time.
    pub writer_sessions: usize,
    /// Sessions for `ws-fanout` and `ws-idle`.
    pub fanout_sessions: usize,
}

/// A logged-in account.
#[derive(Clone, Debug)]
pub struct Account {
    /// Its email.
    pub email: String,
    /// A fresh access token (valid for 60 minutes).
    pub access: String,
}

/// What the scenarios use: accounts with their tokens and sessions.
#[derive(Clone, Debug)]
pub struct Fixture {
    /// The `sessions-list` user: [`LIST_SESSIONS`] sessions of 4 messages.
    pub reader: Account,
    /// The `session-detail` user.
    pub detail: Account,
    /// Its [`DETAIL_SESSIONS`] sessions of 20 messages.
    pub detail_sessions: Vec<String>,
    /// The `post-message` and `ws-roundtrip` user.
    pub writer: Account,
    /// One session per load connection.
    pub writer_sessions: Vec<String>,
    /// The session of `ws-roundtrip`.
    pub roundtrip_session: String,
    /// The owner of the `ws-fanout` and `ws-idle` sessions.
    pub fanout: Account,
    /// Its sessions.
    pub fanout_sessions: Vec<String>,
    /// The account `login` logs in to.
    pub login: Account,
    /// What seeding made, for the header.
    pub summary: String,
}

/// Creates the accounts and sessions through the core on the database of `config`. The
/// accounts are created on threads of their own: each registration and login runs
/// argon2 (about 15 ms each).
pub fn seed(config: &Config, sizes: Sizes) -> anyhow::Result<Fixture> {
    let started = Instant::now();
    let core = Narutalk::open(config, OpenMode::CreateIfMissing).context("opening the core")?;
    let core = &core;
    let plans = [
        ("reader", LIST_SESSIONS, LIST_EXCHANGES),
        ("detail", DETAIL_SESSIONS, DETAIL_EXCHANGES),
        ("writer", sizes.writer_sessions + 1, 0),
        ("fanout", sizes.fanout_sessions, 0),
        ("login", 0, 0),
    ];
    let seeded: Vec<anyhow::Result<(Account, Vec<String>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = plans
            .iter()
            .map(|&(name, sessions, exchanges)| {
                scope.spawn(move || seed_account(core, name, sessions, exchanges))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a seeding thread panicked")))
            })
            .collect()
    });
    let mut seeded = seeded.into_iter();
    let mut next = || {
        seeded
            .next()
            .context("a seeded account is missing")
            .and_then(|result| result)
    };
    let (reader, _) = next()?;
    let (detail, detail_sessions) = next()?;
    let (writer, mut writer_sessions) = next()?;
    let (fanout, fanout_sessions) = next()?;
    let (login, _) = next()?;
    let roundtrip_session = writer_sessions.pop().context("the round-trip session")?;
    let sessions =
        LIST_SESSIONS + DETAIL_SESSIONS + writer_sessions.len() + 1 + fanout_sessions.len();
    let messages = 2 * (LIST_SESSIONS * LIST_EXCHANGES + DETAIL_SESSIONS * DETAIL_EXCHANGES);
    let summary = format!(
        "{} accounts, {sessions} sessions, {messages} messages in {:.1} s",
        plans.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(Fixture {
        reader,
        detail,
        detail_sessions,
        writer,
        writer_sessions,
        roundtrip_session,
        fanout,
        fanout_sessions,
        login,
        summary,
    })
}

/// What `slow-ai` uses: the `sessions-list` user and a user with one session per turn.
#[derive(Clone, Debug)]
pub struct SlowAiFixture {
    /// The `sessions-list` user: [`LIST_SESSIONS`] sessions of 4 messages.
    pub reader: Account,
    /// The user whose turns are slow.
    pub writer: Account,
    /// One session per turn in flight.
    pub writer_sessions: Vec<String>,
}

/// Seeds `slow-ai`'s own database (that of `config`): the `sessions-list` user as
/// [`seed`] makes it, and a user with `turn_sessions` empty sessions. The exchanges are
/// seeded with the template AI, whatever `config` names: the slow model would take 2 s
/// each.
pub fn seed_slow_ai(config: &Config, turn_sessions: usize) -> anyhow::Result<SlowAiFixture> {
    let config = Config {
        ai_backend: AiBackend::Template,
        ..config.clone()
    };
    let core = Narutalk::open(&config, OpenMode::CreateIfMissing).context("opening the core")?;
    let (reader, _) = seed_account(&core, "reader", LIST_SESSIONS, LIST_EXCHANGES)?;
    let (writer, writer_sessions) = seed_account(&core, "slow", turn_sessions, 0)?;
    Ok(SlowAiFixture {
        reader,
        writer,
        writer_sessions,
    })
}

/// Registers `name@load.example`, logs in, and creates `sessions` sessions of
/// `exchanges` exchanges each.
fn seed_account(
    core: &Narutalk,
    name: &str,
    sessions: usize,
    exchanges: usize,
) -> anyhow::Result<(Account, Vec<String>)> {
    let email = format!("{name}@load.example");
    let user = core
        .accounts()
        .create(&NewUser {
            email: email.clone(),
            username: format!("load-{name}"),
            password: PASSWORD.to_owned(),
            role: Role::User,
            department: String::new(),
            is_verified: true,
        })
        .with_context(|| format!("registering {email}"))?;
    let login = core
        .accounts()
        .login(&email, PASSWORD)
        .with_context(|| format!("logging in {email}"))?;
    let mut ids = Vec::with_capacity(sessions);
    for index in 0..sessions {
        let session = core
            .chat()
            .create_session(
                user.id,
                &format!("{name} session {index}"),
                Category::Medical,
            )
            .with_context(|| format!("creating a session for {email}"))?;
        let id = session.session.id;
        for turn in 0..exchanges {
            core.send_message(user.id, id, &format!("question {turn} of session {index}"))
                .with_context(|| format!("seeding a message for {email}"))?;
        }
        ids.push(id.to_string());
    }
    Ok((
        Account {
            email,
            access: login.tokens.access,
        },
        ids,
    ))
}
