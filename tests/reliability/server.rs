//! The server under test as a child process of the suite (a `kill -9` needs one): both
//! ends of that arrangement.
//!
//! The suite re-executes its own binary with [`SERVE_FLAG`]. That child starts Narutalk
//! through `narutalk-server`'s own start (`narutalk_server::Launch`): settings from the
//! `NARUTALK_*` variables (which the suite sets, after removing any it inherited), the
//! core opened on a blocking thread, then the server, and main's line `Narutalk is
//! listening on http://ADDR/ ...` on standard output. It stops gracefully when its standard input
//! closes (so it never outlives the suite) or on SIGINT/SIGTERM. Its log goes to a file
//! in the part's folder.
//!
//! Until it closes, the child's standard input is also a control channel, for what a
//! test needs done inside the running server and the HTTP API does not offer. One command
//! exists: the line `limit-writer-pages N` makes the child call
//! `SqliteStore::limit_writer_pages(N)` on the core it serves (through
//! `Narutalk::sqlite`, on a blocking thread), which caps the server's writer connection
//! at `N` pages with SQLite's `PRAGMA max_page_count` (`4294967295` lifts the cap), and
//! print `limit-writer-pages = CAP` (the cap in effect) or `limit-writer-pages failed:
//! WHY` on standard output; [`ServerProcess::limit_writer_pages`] is the suite's side.
//! Commands are handled one at a time, in order, each answered before the next is read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use narutalk_core::Narutalk;
use narutalk_server::{Launch, ServeOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::Context;
use crate::api::{Account, Api};
use crate::backend::Database;

/// The hidden first argument that makes the suite's binary the server.
pub const SERVE_FLAG: &str = "--serve-child";

/// How long a server gets to print its address (migrations and a WAL recovery included).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a server gets to stop after its standard input closes, before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a control command may take to be answered (a generous upper bound: it waits
/// for the writer connection, at most the core's write deadline).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// The control command (and the first word of its answer) that caps the writer
/// connection's pages.
const LIMIT_WRITER_PAGES: &str = "limit-writer-pages";

/// The settings of a part's server: `NARUTALK_*` variables, and the connection cap.
#[derive(Clone, Debug)]
pub struct Settings {
    dir: PathBuf,
    database: Database,
    vars: Vec<(String, String)>,
    max_connections: Option<usize>,
}

impl Settings {
    /// A part's defaults: a fresh database of the run's backend (`db.sqlite3` in the
    /// part's folder, or a new database of the PostgreSQL cluster), a random signing
    /// secret (shared by every restart), throttles off, the template AI, no search
    /// service, log level `warn`, a free port on 127.0.0.1, `synchronous=FULL`.
    pub fn new(ctx: &Context) -> anyhow::Result<Settings> {
        let dir = &ctx.dir;
        // On PostgreSQL a `CREATE DATABASE` through `psql`: a moment's blocking.
        let database = tokio::task::block_in_place(|| ctx.backend.database(dir))?;
        let settings = Settings {
            dir: dir.to_path_buf(),
            database: database.clone(),
            vars: Vec::new(),
            max_connections: None,
        };
        Ok(settings
            .set("NARUTALK_DATABASE", database.setting())
            .set("NARUTALK_BIND", "127.0.0.1:0")
            .set("NARUTALK_SECRET_KEY", random_hex(32)?)
            .set("NARUTALK_AUTH_THROTTLE_PER_MINUTE", 0)
            .set("NARUTALK_MESSAGE_THROTTLE_PER_MINUTE", 0)
            .set("NARUTALK_AI_BACKEND", "template")
            .set("NARUTALK_SEARCH_URL", "")
            .set("NARUTALK_SQLITE_SYNCHRONOUS", "full")
            .set("NARUTALK_LOG", "warn"))
    }

    /// The same with `name` set to `value` (a later value replaces an earlier one).
    pub fn set(mut self, name: &str, value: impl std::fmt::Display) -> Settings {
        self.vars.retain(|(existing, _)| existing != name);
        self.vars.push((name.to_owned(), value.to_string()));
        self
    }

    /// The same with a connection cap other than the server's default (10,000).
    pub fn max_connections(mut self, cap: usize) -> Settings {
        self.max_connections = Some(cap);
        self
    }

    /// The part's database.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The same on the SQLite file `path` (a part of SQLite's own faults).
    pub fn sqlite_file(self, path: &Path) -> Settings {
        Settings {
            database: Database::Sqlite(path.to_path_buf()),
            ..self
        }
        .set("NARUTALK_DATABASE", path.display())
    }

    /// The SQLite file of the part's database; an error on PostgreSQL.
    pub fn database_file(&self) -> anyhow::Result<PathBuf> {
        match &self.database {
            Database::Sqlite(path) => Ok(path.clone()),
            Database::Postgres { .. } => bail!("this part runs on SQLite only"),
        }
    }

    /// The value of `name` in these settings, if set.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(existing, _)| existing == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A running server process.
pub struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The answers to control commands, as printed after the command's name.
    answers: mpsc::UnboundedReceiver<String>,
    pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts a server with `settings` and waits until it listens.
    pub async fn start(settings: &Settings) -> anyhow::Result<ServerProcess> {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let number = STARTS.fetch_add(1, Ordering::Relaxed) + 1;
        let log = settings.dir.join(format!("server-{number}.log"));
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("creating the server's log {}", log.display()))?;
        let exe = std::env::current_exe().context("finding the suite's own executable")?;
        let mut command = Command::new(exe);
        command.arg(SERVE_FLAG);
        if let Some(cap) = settings.max_connections {
            command.arg("--max-connections").arg(cap.to_string());
        }
        // Only the part's settings: none of the developer's own NARUTALK_* variables.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("NARUTALK_") {
                command.env_remove(name);
            }
        }
        command
            .envs(settings.vars.iter().map(|(name, value)| (name, value)))
            .current_dir(&settings.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let mut child = command.spawn().context("starting the server process")?;
        let pid = child.id().context("the server process has no id")?;
        let stdout = child
            .stdout
            .take()
            .context("the server's standard output")?;
        let stdin = child.stdin.take();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = tokio::time::timeout(START_TIMEOUT, reader.read_line(&mut line))
            .await
            .context("the server did not listen within 60 s")?
            .context("reading the server's first line")?;
        if read == 0 {
            let status = child.wait().await.context("waiting for the server")?;
            bail!(
                "the server exited before listening ({status}); its log: {}",
                tail(&log)
            );
        }
        let addr = parse_listening(&line)?;
        // The rest of what it prints is read to the end, so that the child never blocks
        // on a full pipe: answers to control commands are passed on, the rest ("Narutalk
        // stopped.") dropped.
        let (answer_sender, answers) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                if let Some(answer) = text
                    .trim_end()
                    .strip_prefix(LIMIT_WRITER_PAGES)
                    .and_then(|rest| rest.strip_prefix(' '))
                {
                    let _ = answer_sender.send(answer.to_owned());
                }
            }
        });
        Ok(ServerProcess {
            child,
            stdin,
            answers,
            pid,
            addr,
            log,
        })
    }

    /// `http://ADDR`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of this server from 127.0.0.1.
    pub fn api(&self) -> anyhow::Result<Api> {
        Api::new(self.addr, None)
    }

    /// Its resident memory now (`VmRSS`), in KiB; `None` once it has exited.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// An error when it has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait().context("checking the server")? {
            None => Ok(()),
            Some(status) => bail!(
                "the server exited on its own ({status}); its log: {}",
                tail(&self.log)
            ),
        }
    }

    /// Caps the server's writer connection at `pages` pages of the database file
    /// (`SqliteStore::limit_writer_pages` in the child, through its control channel: see the
    /// module's doc), so that writes needing more room fail as on a full disk; `u32::MAX`
    /// lifts the cap. SQLite never sets it below the file's current size, so `1` answers
    /// that size and leaves no room for another page. Answers the cap in effect.
    pub async fn limit_writer_pages(&mut self, pages: u32) -> anyhow::Result<u64> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the server's standard input is closed")?;
        let command = format!("{LIMIT_WRITER_PAGES} {pages}\n");
        async {
            stdin.write_all(command.as_bytes()).await?;
            stdin.flush().await
        }
        .await
        .context("sending a control command to the server")?;
        let answer = tokio::time::timeout(CONTROL_TIMEOUT, self.answers.recv())
            .await
            .with_context(|| {
                format!(
                    "the server did not answer `{LIMIT_WRITER_PAGES} {pages}` within {} s",
                    CONTROL_TIMEOUT.as_secs()
                )
            })?
            .with_context(|| {
                format!(
                    "the server closed its output without answering `{LIMIT_WRITER_PAGES} {pages}`; its log: {}",
                    tail(&self.log)
                )
            })?;
        match answer.strip_prefix("= ").map(str::parse) {
            Some(Ok(cap)) => Ok(cap),
            _ => bail!("`{LIMIT_WRITER_PAGES} {pages}` answered {answer:?}"),
        }
    }

    /// `kill -9`, and waits until the process is gone.
    pub async fn kill9(mut self) -> anyhow::Result<()> {
        self.child
            .kill()
            .await
            .context("killing the server with SIGKILL")
    }

    /// Closes its standard input, which stops it gracefully, and waits for it to exit with
    /// success (killing it after 60 s).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("waiting for the server to stop")?;
                if !status.success() {
                    bail!(
                        "the server stopped with {status}; its log: {}",
                        tail(&self.log)
                    );
                }
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("the server did not stop within 60 s of being asked and was killed")
            }
        }
    }
}

/// Starts a server with `settings`, registers a user `username` (email
/// `USERNAME@example.com`, password [`crate::api::PASSWORD`]) and logs in over HTTP, and
/// creates `sessions` chat sessions for it.
pub async fn start_with_user(
    settings: &Settings,
    username: &str,
    sessions: usize,
) -> anyhow::Result<(ServerProcess, Account)> {
    let server = ServerProcess::start(settings).await?;
    let api = server.api()?;
    let mut account = api.register_and_login(username).await?;
    for number in 0..sessions {
        let session = api
            .create_session(&account, &format!("{username} {number}"))
            .await?;
        account.sessions.push(session);
    }
    Ok((server, account))
}

/// `VmRSS` of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The last lines of the log at `path`, on one line, for a finding.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let last = &lines[lines.len().saturating_sub(5)..];
    if last.is_empty() {
        format!("{} (empty)", path.display())
    } else {
        format!("{}: {}", path.display(), last.join(" | "))
    }
}

/// Reads main's line `Narutalk is listening on http://ADDR/ (...)`.
fn parse_listening(line: &str) -> anyhow::Result<SocketAddr> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("http://"))
        .and_then(|rest| rest.strip_suffix('/'))
        .and_then(|addr| addr.parse().ok())
        .with_context(|| format!("unexpected first line from the server: {line:?}"))
}

/// `bytes` random bytes from the kernel, hex-encoded.
fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut buffer))
        .context("reading /dev/urandom")?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

// ---------------------------------------------------------------------------------------
// The child's side
// ---------------------------------------------------------------------------------------

/// The suite's binary as the server: `--serve-child [--max-connections N]`.
pub fn serve_child(args: &[String]) -> ExitCode {
    let mut options = ServeOptions::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match (
            arg.as_str(),
            args.next().map(|value| value.parse::<usize>()),
        ) {
            ("--max-connections", Some(Ok(cap))) => options.max_connections = cap,
            _ => {
                eprintln!("reliability server: unexpected argument {arg}");
                return ExitCode::from(2);
            }
        }
    }
    // Slow-clients holds thousands of connections.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(serve(options)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("narutalk-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `narutalk-server`'s `main` does (its own [`Launch`]), with `options` and the
/// suite's stop and control channel.
async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let (config, settings_file) = narutalk_server::settings::Settings::load(
        &narutalk_server::settings::Overrides::default(),
    )?;
    Launch::new(config, settings_file)
        .options(options)
        .until(stop_signal)
        .run()
        .await?;
    println!("Narutalk stopped.");
    Ok(())
}

/// Completes when standard input closes (the suite stopped it or went away), or on SIGINT
/// or SIGTERM; until then it carries out the control commands read there on `core`.
async fn stop_signal(core: Arc<Narutalk>) {
    let stdin_closed = obey_commands(core);
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = stdin_closed => {}
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Reads control commands from standard input and answers each on standard output (see
/// the module's doc) until standard input closes or fails.
async fn obey_commands(core: Arc<Narutalk>) {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    loop {
        line.clear();
        match stdin.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = String::from_utf8_lossy(&line).trim().to_owned();
        let pages = command
            .strip_prefix(LIMIT_WRITER_PAGES)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|pages| pages.parse::<u32>().ok());
        let answer = match pages {
            Some(pages) => {
                let core = core.clone();
                let limited = tokio::task::spawn_blocking(move || {
                    core.sqlite()
                        .map(|store| store.limit_writer_pages(pages).map_err(|e| e.detail()))
                })
                .await;
                match limited {
                    Ok(Some(Ok(cap))) => format!("= {cap}"),
                    Ok(Some(Err(error))) => format!("failed: {error}"),
                    Ok(None) => "failed: the store is not SQLite".to_owned(),
                    Err(error) => format!("failed: {error}"),
                }
            }
            None => format!("failed: unknown command {command:?}"),
        };
        println!("{LIMIT_WRITER_PAGES} {answer}");
    }
}
