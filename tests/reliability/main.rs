//! The reliability suite: the real server in a child process, put through crashes (also in
//! the middle of AI turns), a full disk, a database locked by another process, slow clients
//! and a ping flood, each part on its own fresh data folder and loopback port with
//! throttles off.
//!
//! The parts' servers run on SQLite, or, with `NARUTALK_TEST_BACKEND=postgres`, each on a
//! fresh database of a throwaway PostgreSQL cluster the suite starts once (`backend.rs`);
//! the table's title names the backend. There the parts of SQLite's own faults
//! (`disk-full`, `locked`) print a skipped row saying so, which is no failure even under
//! `NARUTALK_REQUIRE_ALL=1`.
//!
//! It is a test target of its own (`harness = false`): `cargo test --workspace` runs it
//! with CI-sized counts, `cargo test --test reliability -- --rounds 20` with more crash
//! rounds. It prints one table row per part (what ran, the counts, the figures, the
//! verdict), then each failure's findings, then a closing line `N passed, N failed`, and
//! exits non-zero when anything failed. Verdicts never depend on the machine's speed:
//! loops are bounded, time limits are generous upper bounds for "it must happen", and
//! latencies are printed, never asserted.
//!
//! Flags (after `--`):
//!
//! - `--rounds N`: crash rounds (default 5);
//! - `--seed S`: the seed of the random kill moments and message texts (default: from
//!   the clock; every run prints the seed it used);
//! - `--disk-full-variant auto|tmpfs|pages`: how `disk-full` fills the disk (default
//!   `auto`): `tmpfs` mounts a small tmpfs (root, and permission to mount, needed; the part
//!   skips without), `pages` caps the server's writer connection with SQLite's
//!   `PRAGMA max_page_count` instead, `auto` mounts when it can and caps pages otherwise;
//!   the row's "what ran" says which ran (see `disk_full.rs`);
//! - `NAME`...: run only the parts whose name contains one of these words (`--exact`:
//!   equals); `--skip NAME` leaves parts out; `--list` lists the parts.
//!
//! The flags of Rust's test harness that make sense here (`--nocapture`, `--quiet`,
//! `--test-threads N`, `--color C`, ...) are accepted and ignored; `--ignored` runs
//! nothing (no part is ignored).
//!
//! The binary is also the server: started with [`server::SERVE_FLAG`] it runs Narutalk as
//! `narutalk-server`'s `main` does (see `server.rs`), so the server tested is always the
//! one this binary was built from.
//!
//! A part is an `async fn(&Context) -> anyhow::Result<Row>` listed in [`PARTS`]. A check
//! that runs from outside against a server with a logged-in user (schemathesis:
//! `fn run(base_url: &str, access_token: &str) -> Result<String, String>`) becomes a row
//! through [`external::run`].

mod api;
mod backend;
mod crash;
mod crash_turns;
mod disk_full;
mod external;
// The fake AI service is the core's own test fake, shared rather than copied.
#[path = "../../narutalk-core/src/ai/fake_service.rs"]
mod fake_ai;
mod locked;
mod ping_flood;
// The throwaway PostgreSQL cluster of the PostgreSQL run, as the API tests start it.
#[path = "../support/postgres.rs"]
mod postgres;
mod report;
mod schemathesis;
mod server;
mod slow_clients;
mod sqlite;
// The same lookup (and skip or fail) for system programs as the API tests.
#[path = "../api/system.rs"]
mod system;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use backend::{Backend, Chosen};
use report::{Row, Verdict};

/// Crash rounds when `--rounds` is not given: what CI runs.
const DEFAULT_ROUNDS: u32 = 5;

/// The longest a part may run before it counts as failed (and its server is killed), on
/// top of 30 s a crash round.
const PART_TIME_LIMIT: Duration = Duration::from_secs(10 * 60);

/// What a part gets: its own fresh folder and the run's flags.
#[derive(Clone, Debug)]
pub struct Context {
    /// A fresh, empty folder for this part's database, logs and mounts.
    pub dir: PathBuf,
    /// `--rounds`: crash rounds.
    pub rounds: u32,
    /// `--seed`: the seed of everything random in the part.
    pub seed: u64,
    /// `NARUTALK_REQUIRE_ALL=1`: a part that cannot run fails instead of skipping.
    pub require_all: bool,
    /// `--disk-full-variant`: how `disk-full` fills the disk.
    pub disk_full_variant: disk_full::Variant,
    /// The database the part's servers run on.
    pub backend: Backend,
}

/// A part's future.
pub type PartFuture = Pin<Box<dyn Future<Output = anyhow::Result<Row>> + Send>>;

/// One part of the suite: one row of the table.
pub struct Part {
    /// Its name in the table and for filters.
    pub name: &'static str,
    /// Runs it.
    pub run: fn(Context) -> PartFuture,
    /// Why it does not run on PostgreSQL, when it does not (a fault of SQLite's own): its
    /// row there says so, skipped, and is no failure even under `NARUTALK_REQUIRE_ALL=1`.
    pub not_on_postgres: Option<&'static str>,
}

/// Why the parts of SQLite's own faults skip on PostgreSQL.
const SQLITE_FAULT: &str = "SQLite's own fault; on PostgreSQL, tests/api/unavailable.rs stops the database under a running server";

/// Every part, in the order they run (one at a time: each measures the server alone).
const PARTS: &[Part] = &[
    Part {
        name: "crash",
        run: |ctx| Box::pin(async move { crash::run(&ctx).await }),
        not_on_postgres: None,
    },
    Part {
        name: "crash-mid-turn",
        run: |ctx| Box::pin(async move { crash_turns::run(&ctx).await }),
        not_on_postgres: None,
    },
    Part {
        name: "disk-full",
        run: |ctx| Box::pin(async move { disk_full::run(&ctx).await }),
        not_on_postgres: Some(SQLITE_FAULT),
    },
    Part {
        name: "locked",
        run: |ctx| Box::pin(async move { locked::run(&ctx).await }),
        not_on_postgres: Some(SQLITE_FAULT),
    },
    Part {
        name: "slow-clients",
        run: |ctx| Box::pin(async move { slow_clients::run(&ctx).await }),
        not_on_postgres: None,
    },
    Part {
        name: "ping-flood",
        run: |ctx| Box::pin(async move { ping_flood::run(&ctx).await }),
        not_on_postgres: None,
    },
    Part {
        name: "schemathesis",
        run: |ctx| {
            Box::pin(async move { external::run(&ctx, "schemathesis", schemathesis::run).await })
        },
        not_on_postgres: None,
    },
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(server::SERVE_FLAG) {
        return server::serve_child(&args[1..]);
    }
    let flags = match Flags::parse(&args) {
        Ok(flags) => flags,
        Err(message) => {
            eprintln!("reliability: {message}");
            eprintln!(
                "usage: cargo test --test reliability -- [--rounds N] [--seed S] [--disk-full-variant auto|tmpfs|pages] [--list] [--skip NAME] [NAME...]"
            );
            return ExitCode::from(2);
        }
    };
    let parts: Vec<&Part> = PARTS
        .iter()
        .filter(|part| flags.selects(part.name))
        .collect();
    if flags.list {
        for part in &parts {
            println!("{}: test", part.name);
        }
        return ExitCode::SUCCESS;
    }
    // Started before the runtime, so that the cluster is stopped after it (when the
    // servers it ran are gone).
    let chosen = if parts.is_empty() {
        Chosen::Ready(Backend::Sqlite)
    } else {
        Backend::from_env()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("reliability: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let failed = runtime.block_on(run_parts(&flags, &parts, &chosen));
    drop(runtime);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs `parts` one after the other, prints the table and the closing line, and answers
/// whether anything failed.
async fn run_parts(flags: &Flags, parts: &[&Part], chosen: &Chosen) -> bool {
    let require_all = std::env::var("NARUTALK_REQUIRE_ALL").is_ok_and(|value| value == "1");
    // Hundreds of sockets at once (slow-clients) need more than a default limit of files.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let backend_name = match chosen {
        Chosen::Ready(backend) => backend.name(),
        Chosen::Missing(_) => "PostgreSQL",
    };
    println!(
        "reliability on {backend_name}: {} part(s), {} crash round(s), seed {} (repeat with --seed {})",
        parts.len(),
        flags.rounds,
        flags.seed,
        flags.seed
    );
    let mut rows = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        let started = Instant::now();
        println!("reliability: {} ...", part.name);
        // A part of SQLite's own faults on PostgreSQL: skipped, and never a failure.
        let mut does_not_apply = false;
        let mut row = match (chosen, part.not_on_postgres) {
            (Chosen::Missing(reason), _) => Row::skipped(String::new(), reason.clone()),
            (Chosen::Ready(backend), Some(reason)) if backend.is_postgres() => {
                does_not_apply = true;
                Row::skipped("not run on PostgreSQL".to_owned(), reason.to_owned())
            }
            (Chosen::Ready(backend), _) => {
                run_one(part, flags, require_all, index as u64, backend).await
            }
        };
        row.part = part.name;
        row.seconds = started.elapsed().as_secs_f64();
        if require_all
            && !does_not_apply
            && let Verdict::Skipped(reason) = &row.verdict
        {
            row.verdict = Verdict::Failed(vec![format!(
                "{reason}, and NARUTALK_REQUIRE_ALL=1 forbids skipping"
            )]);
        }
        println!(
            "reliability: {} {} in {:.1} s",
            part.name,
            row.verdict.word(),
            row.seconds
        );
        rows.push(row);
    }
    report::print(&format!("reliability on {backend_name}"), &rows);
    rows.iter()
        .any(|row| matches!(row.verdict, Verdict::Failed(_)))
}

/// Runs one part in a task of its own, in a fresh folder, within its time limit: an error,
/// a panic or a timeout is a failed row. The folder is kept when the part failed.
async fn run_one(
    part: &Part,
    flags: &Flags,
    require_all: bool,
    index: u64,
    backend: &Backend,
) -> Row {
    let dir = match tempfile::Builder::new()
        .prefix(&format!("narutalk-reliability-{}-", part.name))
        .tempdir()
    {
        Ok(dir) => dir,
        Err(error) => return Row::failed(format!("creating the part's folder: {error}")),
    };
    let ctx = Context {
        dir: dir.path().to_path_buf(),
        rounds: flags.rounds,
        // Each part its own stream of random numbers, all from the one printed seed.
        seed: flags.seed ^ (index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        require_all,
        disk_full_variant: flags.disk_full_variant,
        backend: backend.clone(),
    };
    let limit = PART_TIME_LIMIT + Duration::from_secs(30) * flags.rounds;
    let task = tokio::spawn((part.run)(ctx));
    let abort = task.abort_handle();
    let row = match tokio::time::timeout(limit, task).await {
        Ok(Ok(Ok(row))) => row,
        Ok(Ok(Err(error))) => Row::failed(format!("{error:#}")),
        Ok(Err(join_error)) => Row::failed(panic_text(join_error)),
        Err(_) => {
            abort.abort();
            Row::failed(format!(
                "did not finish within {} s (its server was killed)",
                limit.as_secs()
            ))
        }
    };
    if matches!(row.verdict, Verdict::Failed(_)) {
        let kept = dir.keep();
        let mut row = row;
        row.kept = Some(kept);
        return row;
    }
    row
}

/// What a part's task panicked with.
fn panic_text(join_error: tokio::task::JoinError) -> String {
    match join_error.try_into_panic() {
        Ok(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned());
            format!("panicked: {text}")
        }
        Err(join_error) => format!("the part's task ended: {join_error}"),
    }
}

/// The command line.
#[derive(Debug)]
struct Flags {
    rounds: u32,
    seed: u64,
    disk_full_variant: disk_full::Variant,
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
    list: bool,
    ignored_only: bool,
}

impl Flags {
    fn parse(args: &[String]) -> Result<Flags, String> {
        let mut flags = Flags {
            rounds: DEFAULT_ROUNDS,
            seed: clock_seed(),
            disk_full_variant: disk_full::Variant::Auto,
            filters: Vec::new(),
            skips: Vec::new(),
            exact: false,
            list: false,
            ignored_only: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            let mut value = |what: &str| {
                inline
                    .clone()
                    .or_else(|| args.next().cloned())
                    .ok_or_else(|| format!("{name} needs {what}"))
            };
            match name {
                "--rounds" => {
                    flags.rounds = value("a number")?
                        .parse()
                        .ok()
                        .filter(|rounds| *rounds >= 1)
                        .ok_or("--rounds needs a whole number of at least 1")?;
                }
                "--seed" => {
                    flags.seed = value("a number")?
                        .parse()
                        .map_err(|_| "--seed needs a whole number")?;
                }
                "--disk-full-variant" => {
                    flags.disk_full_variant = value("auto, tmpfs or pages")?.parse()?;
                }
                "--skip" => flags.skips.push(value("a part name")?),
                "--exact" => flags.exact = true,
                "--list" => flags.list = true,
                "--ignored" => flags.ignored_only = true,
                // The test harness's flags that mean nothing here.
                "--nocapture" | "--no-capture" | "--show-output" | "--quiet" | "-q"
                | "--include-ignored" | "--test" => {}
                "--test-threads" | "--color" | "--format" | "-Z" | "--logfile" => {
                    value("a value")?;
                }
                _ if name.starts_with('-') => return Err(format!("unknown flag {name}")),
                _ => flags.filters.push(arg.clone()),
            }
        }
        Ok(flags)
    }

    /// Whether the part named `name` runs.
    fn selects(&self, name: &str) -> bool {
        if self.ignored_only {
            return false;
        }
        let matches = |word: &String| {
            if self.exact {
                name == word
            } else {
                name.contains(word.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skips.iter().any(matches)
    }
}

/// A seed from the clock, for runs without `--seed`.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos() as u64)
        .unwrap_or(0x5EED)
}

/// A small, seeded pseudo-random generator (xorshift64*): the kill moments and message
/// texts of a run are repeatable from its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}
