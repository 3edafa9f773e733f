//! `narutalk-load`: the load harness of Narutalk.
//!
//! It starts the real server in a child process on a loopback port with a fresh
//! database, seeds that database through the core, drives the server over real HTTP and
//! WebSocket connections, and prints, for each scenario, the requests per second,
//! p50/p99/max latency, errors and the server's peak memory, beside this machine's
//! ceilings measured in the same run. `cargo load` runs it in release; see
//! `benches/README.md` for the scenarios and the flags.
//!
//! Modules: `child` (the server processes, both ends), `balancer` (the forwarder of
//! `--servers N`), `budget` (the sockets the harness's open-files limit holds), `seed`
//! (settings and seeded data), `client` (the HTTP client and the closed-loop driver), `ws`
//! (the WebSocket scenarios), `slow_ai` (the `slow-ai` scenario and its slow model),
//! `scenarios` (every scenario's requests and rows), `ceilings`, `measure` (histograms),
//! `report` (tables, targets, JSON).

mod balancer;
mod budget;
mod ceilings;
mod child;
// The throwaway PostgreSQL cluster of `--postgres` (the tests' own support module).
mod client;
#[path = "../../../tests/support/postgres.rs"]
mod cluster;
mod measure;
mod report;
mod scenarios;
mod seed;
mod slow_ai;
mod ws;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::ceilings::CeilingTimes;
use crate::child::{Server, ServerProcess};
use crate::client::Timing;
use crate::report::{Memory, Results, Row};
use crate::scenarios::{Plan, Scenario};
use crate::slow_ai::SlowAiPlan;

/// Narutalk's load harness: the real server under HTTP and WebSocket load, beside this
/// machine's ceilings.
#[derive(Debug, Parser)]
#[command(about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    child: Option<ChildCommand>,
    #[command(flatten)]
    flags: Flags,
}

/// The flags of a run.
#[derive(Debug, clap::Args)]
struct Flags {
    /// Load connections of the HTTP scenarios (and of the hello ceiling).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    connections: u16,
    /// Measured time of each scenario, such as 10s, 500ms or 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before each scenario, run but not recorded.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// The scenarios to run, comma-separated (default: all, in this order).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Also write the results and ceilings as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Every scenario for 1 s with no warm-up and smaller counts (a check that the
    /// harness works, not a measurement); overrides --duration and --warmup.
    #[arg(long)]
    smoke: bool,
    /// Serve the Prometheus metrics too (NARUTALK_METRICS_BIND on a free loopback port),
    /// to measure what recording them costs.
    #[arg(long)]
    metrics: bool,
    /// Run the servers on PostgreSQL: a throwaway cluster the harness starts (Debian's
    /// `postgresql` package; as root it runs as the `postgres` user), with PostgreSQL's
    /// durable defaults, instead of a SQLite file.
    #[arg(long)]
    postgres: bool,
    /// Run this many servers on the one PostgreSQL database (needs --postgres), behind a
    /// round-robin TCP forwarder of the harness's own.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    servers: u8,
}

/// The hidden subcommands the harness runs its servers with.
#[derive(Debug, Subcommand)]
enum ChildCommand {
    /// Narutalk on the harness's settings file.
    #[command(hide = true)]
    Serve {
        /// The settings file.
        #[arg(long)]
        settings: PathBuf,
        /// Listen address.
        #[arg(long)]
        bind: String,
        /// The connection cap.
        #[arg(long)]
        max_connections: usize,
    },
    /// The bare warp JSON hello server.
    #[command(hide = true)]
    Hello {
        /// Listen address.
        #[arg(long)]
        bind: String,
    },
}

const ALL_SCENARIOS: [Scenario; 11] = [
    Scenario::Health,
    Scenario::Login,
    Scenario::SessionsList,
    Scenario::SessionDetail,
    Scenario::PostMessage,
    Scenario::WsRoundtrip,
    Scenario::WsFanout,
    Scenario::WsIdle,
    Scenario::LoginFlood,
    Scenario::Mixed,
    Scenario::SlowAi,
];

/// How long the server sits idle after the last scenario before its memory is read.
const AFTER_RUN_SETTLE: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The same runtime flavour as the server's `#[tokio::main]`, for all three roles.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("narutalk-load: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.child {
        Some(ChildCommand::Serve {
            settings,
            bind,
            max_connections,
        }) => runtime.block_on(child::serve(&settings, &bind, max_connections)),
        Some(ChildCommand::Hello { bind }) => runtime.block_on(child::hello(&bind)),
        None => runtime.block_on(run(cli.flags)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("narutalk-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A whole run: ceilings, seeding, the server, every scenario, the report.
async fn run(flags: Flags) -> anyhow::Result<()> {
    let started = Instant::now();
    if flags.servers > 1 && !flags.postgres {
        bail!(
            "--servers {} needs --postgres: servers share a PostgreSQL database",
            flags.servers
        );
    }
    if flags.postgres {
        seed::use_postgres()?;
    }
    let connections = usize::from(flags.connections);
    let (timing, local) = if flags.smoke {
        (
            Timing {
                warmup: Duration::ZERO,
                duration: Duration::from_secs(1),
            },
            Duration::from_millis(300),
        )
    } else {
        (
            Timing {
                warmup: flags.warmup,
                duration: flags.duration,
            },
            Duration::from_secs(3),
        )
    };
    let scenarios: Vec<Scenario> = if flags.scenarios.is_empty() {
        ALL_SCENARIOS.to_vec()
    } else {
        ALL_SCENARIOS
            .into_iter()
            .filter(|s| flags.scenarios.contains(s))
            .collect()
    };
    let open_files = child::raise_open_files();
    let mut plan = Plan {
        connections,
        timing,
        roundtrip_messages: if flags.smoke { 100 } else { 1_000 },
        fanout_sessions: if flags.smoke { 10 } else { 100 },
        fanout_per_session: 10,
        fanout_rate: if flags.smoke { 100 } else { 500 },
        idle_sockets: if flags.smoke { 200 } else { 10_000 },
        idle_hold: if flags.smoke {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(2)
        },
        slow_ai: if flags.smoke {
            SlowAiPlan {
                turns: 50,
                reply_delay: Duration::from_millis(200),
            }
        } else {
            // At least 1,000 in flight at every moment (a poster between an answer and its
            // next post has none), and fewer than the pool and its queue hold (64 + 1,024).
            SlowAiPlan {
                turns: 1_024,
                reply_delay: Duration::from_secs(2),
            }
        },
    };
    // The harness holds every socket's client end, and behind the forwarder its two ends
    // too: the scenarios with many sockets are sized to what its limit holds.
    let budget_notes = budget::fit(&mut plan, open_files, flags.servers, &scenarios)?;
    let max_connections = plan.idle_sockets.max(10_000) + 10_000 + connections;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (commit, dirty) = git_commit();

    println!(
        "narutalk-load{}: {connections} connections, {} warm-up + {} measured per scenario, {cores} cores, commit {}{}",
        if flags.smoke { " --smoke" } else { "" },
        seconds(timing.warmup),
        seconds(timing.duration),
        commit.as_deref().unwrap_or("unknown"),
        if dirty { " (uncommitted changes)" } else { "" },
    );
    if flags.smoke {
        println!(
            "smoke: 1 s per scenario, no warm-up; ws-roundtrip {} messages, ws-fanout {} sockets on {} sessions at {} msg/s, ws-idle {} sockets, slow-ai {} turns on a {} ms model; ceilings: hello 1 s, SQLite and argon2 {} each (not a measurement)",
            plan.roundtrip_messages,
            plan.fanout_sessions * plan.fanout_per_session,
            plan.fanout_sessions,
            plan.fanout_rate,
            plan.idle_sockets,
            plan.slow_ai.turns,
            plan.slow_ai.reply_delay.as_millis(),
            seconds(local),
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("narutalk-load-")
        .tempdir()
        .context("creating the temporary folder")?;
    if flags.postgres {
        println!(
            "server: {} child process(es) on 127.0.0.1 on one fresh PostgreSQL database (a throwaway cluster, durable defaults: fsync on, synchronous_commit on){}, template AI, log level warn, connection cap {max_connections} each",
            flags.servers,
            if flags.servers > 1 {
                ", behind the harness's round-robin TCP forwarder (new connections alternate between the servers; the forwarder runs on the same cores)"
            } else {
                ""
            }
        );
    } else {
        println!(
            "server: a child process on 127.0.0.1 with a fresh database in {}, synchronous=FULL, template AI, log level warn, connection cap {max_connections}",
            dir.path().display()
        );
    }
    println!(
        "server: throttles OFF (auth_throttle_per_minute = 0, message_throttle_per_minute = 0): the harness measures the server, not its limiters"
    );
    println!(
        "server: Prometheus metrics {}",
        if flags.metrics {
            "ON (recorded, served on a loopback port of their own)"
        } else {
            "off (--metrics turns them on)"
        }
    );
    for (_, note) in &budget_notes {
        println!("{note}");
    }

    // Ceilings first.
    let ceilings = ceilings::measure(
        dir.path(),
        connections,
        CeilingTimes {
            http: timing,
            local,
        },
    )
    .await
    .context("measuring the ceilings")?;
    println!("\nCeilings of this machine (measured now):");
    println!("{}", report::ceilings_table(&ceilings, connections));

    // Seed, then start the server on the seeded database.
    let settings = seed::write_settings(dir.path(), &seed::Ai::Template, flags.metrics)?;
    let config = seed::load_settings(&settings, None)?.core;
    let sizes = seed::Sizes {
        writer_sessions: connections,
        fanout_sessions: plan.fanout_sessions,
    };
    let fixture = tokio::task::spawn_blocking(move || seed::seed(&config, sizes))
        .await
        .context("seeding panicked")?
        .context("seeding the database")?;
    println!("\nseeded through the core: {}", fixture.summary);
    let mut server = ServerProcess::start(&Server::Narutalk {
        settings: settings.clone(),
        max_connections,
    })
    .await
    .context("starting the server")?;
    println!(
        "open-files limit raised to {open_files} (harness) and {} (server)",
        server.open_files
    );
    // The other servers of the group, on the same settings (so the same database), and
    // the forwarder in front of them all; the scenarios then address the forwarder. The
    // first server's memory stands for each.
    let mut others = Vec::new();
    if flags.servers > 1 {
        let mut addrs = vec![server.addr];
        for _ in 1..flags.servers {
            let other = ServerProcess::start(&Server::Narutalk {
                settings: settings.clone(),
                max_connections,
            })
            .await
            .context("starting another server")?;
            addrs.push(other.addr);
            others.push(other);
        }
        server.addr = balancer::start(addrs).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut memory = Memory {
        idle_mib: server.rss_kib().map(ceilings::kib_to_mib),
        after_run_mib: None,
        peak_reset: server.reset_peak(),
    };
    println!("server idle after start: {}", report::mib(server.rss_kib()));

    let mut rows: Vec<Row> = Vec::new();
    let mut failure = None;
    for scenario in &scenarios {
        print!("running {} ... ", scenario.name());
        let _ = std::io::stdout().flush();
        let began = Instant::now();
        let mut target = scenarios::Target {
            server: &mut server,
            fixture: &fixture,
            ceilings: &ceilings,
            plan: &plan,
            dir: dir.path(),
            max_connections,
        };
        match scenarios::run(*scenario, &mut target).await {
            Ok(mut scenario_rows) => {
                println!("{:.1} s", began.elapsed().as_secs_f64());
                rows.append(&mut scenario_rows);
            }
            Err(error) => {
                println!("failed");
                failure = Some(error.context(format!("scenario {}", scenario.name())));
                break;
            }
        }
    }
    // The server is measured once idle, as it sits after a burst: long enough for it to
    // give back what the load needed (the hashing threads let their memory go after 1 s).
    tokio::time::sleep(AFTER_RUN_SETTLE).await;
    memory.after_run_mib = server.rss_kib().map(ceilings::kib_to_mib);
    let server_open_files = server.open_files;
    let stopped = server.stop().await;
    for other in others {
        other.stop().await?;
    }

    println!(
        "\nResults (closed loop: each connection sends its next request when the previous one is answered):"
    );
    println!("{}", report::results_table(&rows));
    println!(
        "server memory: idle after start {}, after the whole run (idle for {} s) {}{}",
        memory
            .idle_mib
            .map_or("n/a".to_owned(), |m| format!("{m:.1} MiB")),
        AFTER_RUN_SETTLE.as_secs(),
        memory
            .after_run_mib
            .map_or("n/a".to_owned(), |m| format!("{m:.1} MiB")),
        if memory.peak_reset {
            "; peaks are per scenario (VmHWM reset through /proc/PID/clear_refs)"
        } else {
            "; peaks are peaks so far (the kernel refused to reset VmHWM)"
        }
    );
    println!(
        "post-message ratios: each post commits twice (the user message, then the AI reply), so its ceilings are the SQLite rates halved."
    );
    let targets = if flags.smoke {
        Vec::new()
    } else {
        let targets = report::targets(&rows, &memory);
        println!("\nTargets of the issue (2-core reference machine, 32 connections):");
        println!("{}", report::targets_table(&targets));
        targets
    };
    if let Some(file) = &flags.json {
        let results = Results {
            commit,
            dirty,
            cores,
            connections,
            warmup_seconds: timing.warmup.as_secs_f64(),
            duration_seconds: timing.duration.as_secs_f64(),
            smoke: flags.smoke,
            open_files: [open_files, server_open_files],
            ceilings: ceilings.clone(),
            memory: memory.clone(),
            scenarios: rows.clone(),
            targets,
        };
        report::write_json(file, &results)?;
        println!("results written to {}", file.display());
    }
    println!("run took {:.1} s", started.elapsed().as_secs_f64());

    if let Some(error) = failure {
        return Err(error);
    }
    stopped?;
    if flags.smoke {
        smoke_verdict(&rows)?;
    }
    Ok(())
}

/// A smoke run fails when the harness no longer works: a scenario that got nothing done
/// (not even an operation that started in the window and ended after it), or the server
/// refusing the harness's own requests (4xx, `error` frames), which means the harness no
/// longer speaks the API. Slowness, 5xx answers and lost frames are reported, not failed
/// on: the smoke is one second on a shared CI machine.
fn smoke_verdict(rows: &[Row]) -> anyhow::Result<()> {
    for row in rows {
        if row.operations == 0 && row.finished_late == 0 {
            bail!("smoke: {} completed no operation", row.scenario);
        }
        if row.refused > 0 {
            bail!(
                "smoke: the server refused {} of the harness's requests in {}",
                row.refused,
                row.scenario
            );
        }
    }
    println!("smoke: every scenario ran");
    Ok(())
}

/// `git rev-parse --short HEAD`, and whether the working tree has changes.
fn git_commit() -> (Option<String>, bool) {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let commit = run(&["rev-parse", "--short", "HEAD"]).filter(|c| !c.is_empty());
    let dirty = commit.is_some()
        && run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    (commit, dirty)
}

/// Parses `10s`, `500ms`, `1m` or a plain number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(index) => text.split_at(index),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s, 500ms or 1m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("{text:?}: {error}"))
}

/// A duration as seconds, such as `3 s` or `0.3 s`.
fn seconds(duration: Duration) -> String {
    let value = duration.as_secs_f64();
    if value.fract() == 0.0 {
        format!("{value:.0} s")
    } else {
        format!("{value} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Measured;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("10h").is_err());
    }

    #[test]
    fn the_flags_parse() {
        let cli = Cli::try_parse_from([
            "narutalk-load",
            "--connections",
            "8",
            "--scenarios",
            "health,ws-fanout",
            "--duration",
            "2s",
        ])
        .unwrap();
        assert_eq!(cli.flags.connections, 8);
        assert_eq!(cli.flags.scenarios, [Scenario::Health, Scenario::WsFanout]);
        let slow = Cli::try_parse_from(["narutalk-load", "--scenarios", "slow-ai"]).unwrap();
        assert_eq!(slow.flags.scenarios, [Scenario::SlowAi]);
        assert!(Cli::try_parse_from(["narutalk-load", "--scenarios", "nope"]).is_err());
        assert!(Cli::try_parse_from(["narutalk-load", "--connections", "0"]).is_err());
    }

    fn row(operations: u64, finished_late: u64, refused: u64) -> Row {
        let mut measured = Measured::new(Duration::from_secs(1), 3).unwrap();
        measured.ok = operations;
        measured.finished_late = finished_late;
        measured.refused = refused;
        measured.errors = refused;
        Row::new("login-flood: login", 16, "req/s", &measured)
    }

    /// A smoke passes a scenario whose only operations ended after its one-second window
    /// (logins hashing on a busy machine), and fails one that got nothing done at all or
    /// had its requests refused.
    #[test]
    fn the_smoke_counts_operations_that_ended_after_the_window() {
        assert!(smoke_verdict(&[row(3, 0, 0)]).is_ok());
        assert!(smoke_verdict(&[row(0, 1, 0)]).is_ok());
        let nothing = smoke_verdict(&[row(0, 0, 0)]).unwrap_err().to_string();
        assert_eq!(nothing, "smoke: login-flood: login completed no operation");
        assert!(smoke_verdict(&[row(3, 0, 1)]).is_err());
    }
}
