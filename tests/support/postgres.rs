//! A throwaway PostgreSQL cluster for tests: `initdb` into a fresh folder, a server on a
//! free loopback port, stopped and removed when the [`Cluster`] is dropped, or, should the
//! test process die first, within a second of its end (a watchdog process).
//!
//! PostgreSQL comes from Debian's `postgresql` package, which `.ci/install-deps`
//! installs. Without it [`Cluster::start`] prints one line and answers `None` (the test
//! skips), or panics when `NARUTALK_REQUIRE_ALL=1`. `initdb` refuses to run as root: as
//! root, the cluster runs as the `postgres` user the package creates.
//!
//! Included with `#[path]` by the test binaries that need it; standard library only.

#![allow(
    dead_code,
    reason = "shared by several test binaries, each using a part"
)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether the cluster must survive a crash of the machine's power (for tests of
/// durability) or may skip every fsync (faster; the data of a test needs no more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fsync=off`, `synchronous_commit=off`.
    Fast,
    /// PostgreSQL's defaults.
    Durable,
}

/// A running throwaway cluster; its superuser is `narutalk`, trusted on loopback.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// The server's options (`pg_ctl -o`), for a start again.
    options: String,
}

/// The newest installed PostgreSQL's programs, if any.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// Starts a cluster for `test`, or answers `None` after printing why it skips.
    pub fn start(test: &str, durability: Durability) -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            let line = format!(
                "{test}: skipped: PostgreSQL is missing (Debian package `postgresql`; `.ci/install-deps` installs it)"
            );
            if std::env::var("NARUTALK_REQUIRE_ALL").is_ok_and(|value| value == "1") {
                panic!("{line}, and NARUTALK_REQUIRE_ALL=1 forbids skipping");
            }
            eprintln!("{line}");
            return None;
        };
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "narutalk-pg-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("cluster folder");
        let mut cluster = Cluster {
            dir,
            bin,
            port: 0,
            as_postgres,
            options: String::new(),
        };
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(&cluster.dir));
        }
        run(cluster
            .command("initdb")
            .arg("-D")
            .arg(cluster.dir.join("data"))
            .args([
                "-U",
                "narutalk",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]));
        let fast = match durability {
            Durability::Fast => " -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            Durability::Durable => "",
        };
        // A free port can be taken between the probe and the start: try a few.
        for _ in 0..5 {
            cluster.port = free_port();
            cluster.options = format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=400 \
                 -c shared_buffers=32MB{fast}",
                cluster.port,
                cluster.dir.display()
            );
            if cluster.pg_ctl_start() {
                cluster.watch();
                return Some(cluster);
            }
        }
        panic!("PostgreSQL did not start:\n{}", cluster.log());
    }

    /// `pg_ctl start` with the cluster's options; whether it started.
    fn pg_ctl_start(&self) -> bool {
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-o", &self.options, "start"])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs")
            .success()
    }

    /// Stops the server (a fast shutdown: every connection is closed) and waits for it.
    pub fn stop(&self) {
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]));
    }

    /// Starts the server again after [`Cluster::stop`], on the same port.
    pub fn start_again(&self) {
        assert!(
            self.pg_ctl_start(),
            "PostgreSQL did not start again:\n{}",
            self.log()
        );
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://narutalk@127.0.0.1:{}/{name}", self.port)
    }

    /// The port the cluster listens on (loopback).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a new empty database and answers its URL.
    pub fn create_database(&self) -> String {
        static DATABASES: AtomicU32 = AtomicU32::new(0);
        let name = format!("t{}", DATABASES.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs `sql` in database `database` with `psql` and answers its output, unaligned
    /// and without headers (one row a line, columns split by `|`). Panics when it fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "narutalk",
                "-d",
                database,
            ])
            .args(["-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// A program of the cluster's PostgreSQL, as the user that owns the cluster.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// Starts the watchdog: a shell that stops the cluster and removes its folder once
    /// this process has ended, should [`Drop`] never run (a panic that aborts, a kill).
    fn watch(&self) {
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {runuser}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            runuser = if self.as_postgres {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.dir.join("data").display(),
            dir = self.dir.display(),
        );
        // Its own session, so that a signal to the test's process group spares it.
        let _ = Command::new("setsid")
            .args(["sh", "-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(command: &mut Command) {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}
