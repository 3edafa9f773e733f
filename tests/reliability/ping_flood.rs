//! A never-reading socket flooding pings: a logged-in WebSocket client with a small receive
//! buffer sends control pings and `{"type": "ping"}` text frames as fast as the server
//! takes them and reads nothing. The server owes it a pong for each; its resident memory
//! (the child's `VmRSS`, sampled every 100 ms) must grow by less than 32 MiB, and it must
//! close the socket (within `NARUTALK_WS_IDLE_SECONDS`, here 10 s; the part waits 45 s).
//!
//! The server measured is a fresh process on a database seeded by an earlier one, so that
//! no password hashing (whose working memory is given back a second later) blurs the
//! baseline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::Context;
use crate::report::Row;
use crate::server::{ServerProcess, Settings, rss_kib, start_with_user};

/// The server's idle limit for sockets in this part (seconds).
const IDLE_SECONDS: u64 = 10;

/// The longest the flood goes on when the server does not close the socket.
const FLOOD_LIMIT: Duration = Duration::from_secs(45);

/// Frames written before each flush.
const BURST: usize = 64;

/// The growth that fails the part.
const GROWTH_LIMIT_KIB: u64 = 32 * 1024;

/// Runs the part.
pub async fn run(ctx: &Context) -> anyhow::Result<Row> {
    let ran = format!(
        "one socket (4 KiB receive buffer) sends control pings and {{\"type\": \"ping\"}} frames, never reads; idle limit {IDLE_SECONDS} s"
    );
    let settings = Settings::new(ctx)?
        .set("NARUTALK_WS_IDLE_SECONDS", IDLE_SECONDS)
        .set("NARUTALK_WS_PING_SECONDS", IDLE_SECONDS / 2);
    let (seeding, account) = start_with_user(&settings, "flood", 1).await?;
    seeding.stop().await?;
    let mut server = ServerProcess::start(&settings).await?;

    let tcp = tokio::net::TcpSocket::new_v4()?;
    tcp.set_recv_buffer_size(4096)?;
    let stream = tcp
        .connect(server.addr)
        .await
        .context("connecting the socket")?;
    let url = format!(
        "ws://{}/ws/chat/{}/?token={}",
        server.addr, account.sessions[0], account.access
    );
    let (mut socket, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .context("the WebSocket handshake")?;
    anyhow::ensure!(
        response.status() == 101,
        "the handshake answered {}",
        response.status()
    );
    let baseline = server.rss_kib().context("reading the server's VmRSS")?;
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        let pid = server.pid();
        tokio::spawn(async move {
            while let Some(rss) = rss_kib(pid) {
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut closed_after = None;
    let mut blocked = false;
    'flood: while started.elapsed() < FLOOD_LIMIT {
        let burst = async {
            for number in 0..BURST {
                let frame = if number % 2 == 0 {
                    Message::Ping(vec![0x70; 125].into())
                } else {
                    Message::text(r#"{"type": "ping"}"#)
                };
                socket.feed(frame).await?;
            }
            socket.flush().await
        };
        match tokio::time::timeout(FLOOD_LIMIT.saturating_sub(started.elapsed()), burst).await {
            Ok(Ok(())) => sent += BURST as u64,
            Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break 'flood;
            }
            Err(_) => {
                blocked = true;
                break 'flood;
            }
        }
    }
    let flood_seconds = started.elapsed().as_secs_f64();
    drop(socket);
    let after = server.rss_kib().unwrap_or_default();
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed).max(after);
    let growth = peak.saturating_sub(baseline);

    let mut findings = Vec::new();
    if growth >= GROWTH_LIMIT_KIB {
        findings.push(format!(
            "the server's memory grew by {:.1} MiB (limit 32 MiB)",
            growth as f64 / 1024.0
        ));
    }
    if closed_after.is_none() {
        findings.push(format!(
            "the server had not closed the socket after {flood_seconds:.0} s of flood ({}; contract: within NARUTALK_WS_IDLE_SECONDS = {IDLE_SECONDS} s)",
            if blocked {
                "its writes to the server were blocked"
            } else {
                "it still read every frame"
            }
        ));
    }
    let health = server.api()?.health().await;
    match health {
        Ok(health) if health.status == 200 => {}
        Ok(health) => findings.push(format!(
            "after the flood, health answered {}",
            health.describe()
        )),
        Err(error) => findings.push(format!("after the flood, health got no answer: {error:#}")),
    }
    server.check_running()?;
    server.stop().await?;
    Ok(Row::new(
        ran,
        format!(
            "{sent} frames sent in {flood_seconds:.1} s\n{}",
            match closed_after {
                Some(at) => format!("closed by the server after {:.1} s", at.as_secs_f64()),
                None => "not closed by the server".to_owned(),
            }
        ),
        format!(
            "server VmRSS {:.1} MiB before, peak {:.1} MiB, {:.1} MiB after: growth {:.1} MiB (limit 32)",
            baseline as f64 / 1024.0,
            peak as f64 / 1024.0,
            after as f64 / 1024.0,
            growth as f64 / 1024.0
        ),
        findings,
    ))
}
