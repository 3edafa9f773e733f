//! The servers under load, each in a child process of its own so that its memory can be
//! read alone: both ends of that arrangement.
//!
//! The harness re-executes itself (`std::env::current_exe()`) with a hidden subcommand:
//! `serve` starts Narutalk through the `narutalk-server` binary's own start
//! (`narutalk_server::Launch`: the listeners bound, the core opened on a blocking thread,
//! the metrics served beside it when the settings ask for them), `hello` starts the bare warp
//! JSON hello server of the throughput ceiling. The child prints one line,
//! `listening ADDR open-files N`, and stops gracefully when its standard input closes
//! (or on SIGINT/SIGTERM), so it never outlives the harness.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use narutalk_core::config::SettingsFile;
use narutalk_server::{Launch, ServeOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use warp::Filter;

use crate::seed;

/// How long a child gets to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a child gets to stop after its standard input closes, before it is killed:
/// the server's own bounds, its drain of the AI turns in flight (60 s, which `slow-ai`'s
/// 1,024 turns on a 2 s model fill) and its sockets' close handshakes (16 s), with room.
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

/// Which server a child runs.
#[derive(Clone, Debug)]
pub enum Server {
    /// Narutalk on the harness's settings file, with this connection cap.
    Narutalk {
        /// The settings file written by [`seed::write_settings`].
        settings: PathBuf,
        /// [`ServeOptions::max_connections`].
        max_connections: usize,
    },
    /// The bare warp JSON hello server.
    Hello,
}

/// A running child server.
pub struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    /// Where it listens (127.0.0.1 and a free port).
    pub addr: SocketAddr,
    /// Its open-files limit after raising it.
    pub open_files: u64,
}

impl ServerProcess {
    /// Starts `server` in a child process and waits for its address.
    pub async fn start(server: &Server) -> anyhow::Result<ServerProcess> {
        let exe = std::env::current_exe().context("finding the harness's own executable")?;
        let mut command = Command::new(exe);
        match server {
            Server::Narutalk {
                settings,
                max_connections,
            } => {
                command
                    .arg("serve")
                    .arg("--settings")
                    .arg(settings)
                    .arg("--max-connections")
                    .arg(max_connections.to_string());
            }
            Server::Hello => {
                command.arg("hello");
            }
        }
        command
            .arg("--bind")
            .arg("127.0.0.1:0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().context("starting the server process")?;
        let pid = child.id().context("the server process has no id")?;
        let stdout = child
            .stdout
            .take()
            .context("the server's standard output")?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let read = tokio::time::timeout(START_TIMEOUT, reader.read_line(&mut line))
            .await
            .context("the server did not start within 60 s")?
            .context("reading the server's address")?;
        if read == 0 {
            let status = child.wait().await.context("waiting for the server")?;
            bail!("the server process exited before listening ({status})");
        }
        let (addr, open_files) = parse_ready_line(&line)?;
        // Anything else the child prints goes to the harness's output.
        tokio::spawn(async move {
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest).await;
            print!("{rest}");
        });
        Ok(ServerProcess {
            child,
            stdin,
            pid,
            addr,
            open_files,
        })
    }

    /// An error when the process has exited (it must run until told to stop).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self
            .child
            .try_wait()
            .context("checking the server process")?
        {
            None => Ok(()),
            Some(status) => bail!("the server process exited during the run ({status})"),
        }
    }

    /// Its resident memory now (`VmRSS`), in KiB; `None` where `/proc` is not readable.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid, "VmRSS:")
    }

    /// Its peak resident memory (`VmHWM`) since start or since the last
    /// [`ServerProcess::reset_peak`], in KiB.
    pub fn peak_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid, "VmHWM:")
    }

    /// Resets the peak to the current resident memory (writes `5` to
    /// `/proc/PID/clear_refs`); false when the kernel refused, in which case the peak is
    /// the peak so far.
    pub fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    /// Closes its standard input, which stops it gracefully, and waits for it to exit
    /// (killing it after [`STOP_TIMEOUT`]).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("waiting for the server to stop")?;
                if !status.success() {
                    bail!("the server process stopped with {status}");
                }
                Ok(())
            }
            Err(_) => {
                self.child
                    .kill()
                    .await
                    .context("killing the server process")?;
                bail!(
                    "the server process did not stop within {} s and was killed",
                    STOP_TIMEOUT.as_secs()
                )
            }
        }
    }
}

/// Reads `listening ADDR open-files N`.
fn parse_ready_line(line: &str) -> anyhow::Result<(SocketAddr, u64)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["listening", addr, "open-files", files] => Ok((
            addr.parse().context("the server's address")?,
            files.parse().context("the server's open-files limit")?,
        )),
        _ => bail!("unexpected first line from the server: {line:?}"),
    }
}

/// The value of `key` (such as `VmRSS:`) in `/proc/PID/status`, in KiB.
fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Raises this process's open-files limit as far as the hard limit allows and answers
/// the new limit.
pub fn raise_open_files() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// The child's side
// ---------------------------------------------------------------------------------------

/// `narutalk-load serve`: Narutalk, started by the `narutalk-server` binary's own start
/// ([`Launch`]) on the harness's settings file, announcing itself with the line the
/// harness waits for and stopping when its standard input closes.
pub async fn serve(settings: &Path, bind: &str, max_connections: usize) -> anyhow::Result<()> {
    let open_files = raise_open_files();
    let config = seed::load_settings(settings, Some(bind))?;
    let options = ServeOptions {
        max_connections,
        ..ServeOptions::default()
    };
    Launch::new(config, SettingsFile::Named(settings.to_owned()))
        .options(options)
        .announce(move |started| announce(started.address, open_files))
        .until(|_| stop_signal())
        .run()
        .await?;
    Ok(())
}

/// `narutalk-load hello`: the bare warp JSON hello server, `GET /hello` answering
/// `{"message": "hello"}`.
pub async fn hello(bind: &str) -> anyhow::Result<()> {
    let open_files = raise_open_files();
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let route =
        warp::path!("hello").map(|| warp::reply::json(&serde_json::json!({"message": "hello"})));
    announce(addr, open_files);
    warp::serve(route)
        .incoming(listener)
        .graceful(stop_signal())
        .run()
        .await;
    Ok(())
}

/// Prints the line the harness waits for.
fn announce(addr: SocketAddr, open_files: u64) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "listening {addr} open-files {open_files}");
    let _ = stdout.flush();
}

/// Completes when standard input closes (the harness stopped or went away), or on
/// SIGINT or SIGTERM.
async fn stop_signal() {
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buffer = [0u8; 64];
        while matches!(stdin.read(&mut buffer).await, Ok(n) if n > 0) {}
    };
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
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
            _ = interrupt => {}
            () = terminate => {}
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            () = stdin_closed => {}
            _ = interrupt => {}
        }
    }
}
