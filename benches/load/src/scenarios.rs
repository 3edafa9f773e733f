//! The scenarios: what each one sends, and its rows of the results table.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ValueEnum;

use crate::ceilings::{Ceilings, kib_to_mib};
use crate::child::ServerProcess;
use crate::client::{self, Choice, Lane, RequestBytes, Timing};
use crate::measure::Measured;
use crate::report::{Row, ms, thousands};
use crate::seed::{Fixture, PASSWORD};
use crate::slow_ai::{self, SlowAiPlan};
use crate::ws::{self, FanoutPlan};

/// Every scenario, in the order of a full run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// `GET /api/health/`.
    Health,
    /// `POST /api/auth/login/` at full rate (argon2).
    Login,
    /// `GET /api/chat/sessions/`: page 1 of a user with 50 sessions.
    SessionsList,
    /// `GET /api/chat/sessions/{id}/`: sessions of 20 messages.
    SessionDetail,
    /// `POST /api/chat/sessions/{id}/messages/`: one session per connection, template AI.
    PostMessage,
    /// One socket: a message, then its AI reply, one at a time.
    WsRoundtrip,
    /// Sockets on many sessions, every message counted at every socket.
    WsFanout,
    /// Many idle sockets: the server's memory.
    WsIdle,
    /// Logins at full rate while health and sessions-list are measured.
    LoginFlood,
    /// A blend of the REST requests.
    Mixed,
    /// `health` and `sessions-list` beside 1,024 turns in flight on a 2 s model, on a
    /// server of its own.
    SlowAi,
}

impl Scenario {
    /// Its name on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Health => "health",
            Scenario::Login => "login",
            Scenario::SessionsList => "sessions-list",
            Scenario::SessionDetail => "session-detail",
            Scenario::PostMessage => "post-message",
            Scenario::WsRoundtrip => "ws-roundtrip",
            Scenario::WsFanout => "ws-fanout",
            Scenario::WsIdle => "ws-idle",
            Scenario::LoginFlood => "login-flood",
            Scenario::Mixed => "mixed",
            Scenario::SlowAi => "slow-ai",
        }
    }
}

/// The sizes of a run (smaller in `--smoke`).
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Load connections of the HTTP scenarios.
    pub connections: usize,
    /// Warm-up and measured time of each scenario.
    pub timing: Timing,
    /// Messages measured by `ws-roundtrip`.
    pub roundtrip_messages: usize,
    /// Sessions of `ws-fanout` (seeded).
    pub fanout_sessions: usize,
    /// Sockets per session in `ws-fanout`.
    pub fanout_per_session: usize,
    /// Messages posted per second in `ws-fanout`.
    pub fanout_rate: u32,
    /// Sockets of `ws-idle`.
    pub idle_sockets: usize,
    /// How long `ws-idle` holds its sockets before reading the server's memory.
    pub idle_hold: Duration,
    /// The turns and the model of `slow-ai`.
    pub slow_ai: SlowAiPlan,
}

/// The blend of `mixed`, in percent: (group name, weight).
pub const MIXED_BLEND: [(&str, u32); 5] = [
    ("sessions-list", 30),
    ("session-detail", 30),
    ("post-message", 25),
    ("health", 14),
    ("login", 1),
];

/// What a scenario runs against.
pub struct Target<'a> {
    /// The Narutalk server process.
    pub server: &'a mut ServerProcess,
    /// The seeded accounts and sessions.
    pub fixture: &'a Fixture,
    /// This run's ceilings.
    pub ceilings: &'a Ceilings,
    /// The sizes.
    pub plan: &'a Plan,
    /// The run's temporary folder (`slow-ai` makes its own database in it).
    pub dir: &'a Path,
    /// The connection cap of the run's servers.
    pub max_connections: usize,
}

/// Runs `scenario` and answers its rows, each with the server's peak memory during it.
pub async fn run(scenario: Scenario, target: &mut Target<'_>) -> anyhow::Result<Vec<Row>> {
    let reset = target.server.reset_peak();
    let mut rows = match scenario {
        Scenario::Health => vec![health(target).await?],
        Scenario::Login => vec![login(target).await?],
        Scenario::SessionsList => vec![sessions_list(target).await?],
        Scenario::SessionDetail => vec![session_detail(target).await?],
        Scenario::PostMessage => vec![post_message(target).await?],
        Scenario::WsRoundtrip => vec![ws_roundtrip(target).await?],
        Scenario::WsFanout => vec![ws_fanout(target).await?],
        Scenario::WsIdle => vec![ws_idle(target).await?],
        Scenario::LoginFlood => login_flood(target).await?,
        Scenario::Mixed => vec![mixed(target).await?],
        Scenario::SlowAi => {
            slow_ai::run(
                target.dir,
                target.plan.connections,
                target.max_connections,
                target.plan.timing,
                target.plan.slow_ai,
                target.ceilings,
            )
            .await?
        }
    };
    target
        .server
        .check_running()
        .with_context(|| format!("after {}", scenario.name()))?;
    let peak = target.server.peak_kib().map(kib_to_mib);
    // A row that measured a server of its own (`slow-ai`) keeps that server's peak.
    for row in rows.iter_mut().filter(|row| row.server_peak_mib.is_none()) {
        row.server_peak_mib = peak;
        if !reset {
            row.notes.push("peak so far (no reset)".to_owned());
        }
    }
    Ok(rows)
}

/// The requests of the REST scenarios, built once.
struct Requests {
    addr: SocketAddr,
}

impl Requests {
    fn health(&self) -> RequestBytes {
        client::get(self.addr, "/api/health/", None)
    }

    fn login(&self, fixture: &Fixture) -> RequestBytes {
        let body = serde_json::json!({"email": fixture.login.email, "password": PASSWORD});
        client::post_json(self.addr, "/api/auth/login/", None, &body.to_string())
    }

    fn sessions_list(&self, fixture: &Fixture) -> RequestBytes {
        client::get(
            self.addr,
            "/api/chat/sessions/",
            Some(&fixture.reader.access),
        )
    }

    fn session_detail(&self, fixture: &Fixture, lane: usize) -> anyhow::Result<RequestBytes> {
        let session = pick(&fixture.detail_sessions, lane)?;
        Ok(client::get(
            self.addr,
            &format!("/api/chat/sessions/{session}/"),
            Some(&fixture.detail.access),
        ))
    }

    fn post_message(&self, fixture: &Fixture, lane: usize) -> anyhow::Result<RequestBytes> {
        // One session per connection: the messages of one session are answered one at a
        // time, so connections sharing a session would wait for each other.
        let session = fixture
            .writer_sessions
            .get(lane)
            .context("fewer writer sessions than connections")?;
        Ok(client::post_json(
            self.addr,
            &format!("/api/chat/sessions/{session}/messages/"),
            Some(&fixture.writer.access),
            r#"{"content":"How should a mild headache be treated?"}"#,
        ))
    }
}

fn pick(items: &[String], index: usize) -> anyhow::Result<&String> {
    if items.is_empty() {
        bail!("nothing seeded to pick from");
    }
    Ok(&items[index % items.len()])
}

/// `connections` lanes built by `request(lane)`, counted in group 0.
fn lanes(
    connections: usize,
    mut request: impl FnMut(usize) -> anyhow::Result<RequestBytes>,
) -> anyhow::Result<Vec<Lane>> {
    (0..connections)
        .map(|lane| Ok(Lane::single(0, request(lane)?)))
        .collect()
}

async fn drive_one(addr: SocketAddr, lanes: Vec<Lane>, timing: Timing) -> anyhow::Result<Measured> {
    client::drive(addr, lanes, 1, timing)
        .await?
        .into_iter()
        .next()
        .context("no results")
}

/// A closed-loop HTTP scenario: each of the plan's connections repeats the request that
/// `request` builds for its lane; the row is named `name`.
async fn closed_loop(
    target: &Target<'_>,
    name: &str,
    request: impl Fn(&Requests, usize) -> anyhow::Result<RequestBytes>,
) -> anyhow::Result<Row> {
    let requests = Requests {
        addr: target.server.addr,
    };
    let n = target.plan.connections;
    let measured = drive_one(
        requests.addr,
        lanes(n, |lane| request(&requests, lane))?,
        target.plan.timing,
    )
    .await?;
    Ok(Row::new(name, n, "req/s", &measured))
}

async fn health(target: &Target<'_>) -> anyhow::Result<Row> {
    let mut row = closed_loop(target, "health", |requests, _| Ok(requests.health())).await?;
    row.compare("req/s warp hello", target.ceilings.hello_per_second);
    Ok(row)
}

async fn login(target: &Target<'_>) -> anyhow::Result<Row> {
    let mut row = closed_loop(target, "login", |requests, _| {
        Ok(requests.login(target.fixture))
    })
    .await?;
    row.compare("verifies/s argon2", target.ceilings.argon2_per_second);
    Ok(row)
}

async fn sessions_list(target: &Target<'_>) -> anyhow::Result<Row> {
    let mut row = closed_loop(target, "sessions-list", |requests, _| {
        Ok(requests.sessions_list(target.fixture))
    })
    .await?;
    row.compare("req/s warp hello", target.ceilings.hello_per_second);
    row.notes.push("page 1 of 50 sessions".to_owned());
    Ok(row)
}

async fn session_detail(target: &Target<'_>) -> anyhow::Result<Row> {
    let mut row = closed_loop(target, "session-detail", |requests, lane| {
        requests.session_detail(target.fixture, lane)
    })
    .await?;
    row.compare("req/s warp hello", target.ceilings.hello_per_second);
    row.notes.push("20 messages each".to_owned());
    Ok(row)
}

/// Compares a post-message rate with the SQLite ceilings: each post commits twice (the
/// user message before the AI runs, then the reply), so the ceilings are halved.
fn compare_with_sqlite(row: &mut Row, ceilings: &Ceilings) {
    row.compare(
        "req/s SQLite 1 row/tx ÷ 2",
        ceilings.sqlite_one_row_per_second / 2.0,
    );
    row.compare(
        "req/s SQLite batched ÷ 2",
        ceilings.sqlite_batched_rows_per_second / 2.0,
    );
}

async fn post_message(target: &Target<'_>) -> anyhow::Result<Row> {
    let mut row = closed_loop(target, "post-message", |requests, lane| {
        requests.post_message(target.fixture, lane)
    })
    .await?;
    compare_with_sqlite(&mut row, target.ceilings);
    row.notes
        .push("REST, template AI,\nsynchronous=FULL".to_owned());
    Ok(row)
}

async fn ws_roundtrip(target: &Target<'_>) -> anyhow::Result<Row> {
    let measured = ws::roundtrip(
        target.server.addr,
        &target.fixture.roundtrip_session,
        &target.fixture.writer.access,
        target.plan.timing.warmup,
        target.plan.roundtrip_messages,
    )
    .await?;
    let mut row = Row::new("ws-roundtrip", 1, "msg/s", &measured);
    row.notes.push(format!(
        "{} messages, send to AI reply",
        target.plan.roundtrip_messages
    ));
    Ok(row)
}

async fn ws_fanout(target: &Target<'_>) -> anyhow::Result<Row> {
    let plan = target.plan;
    let sessions = target
        .fixture
        .fanout_sessions
        .get(..plan.fanout_sessions)
        .context("fewer fan-out sessions than planned")?;
    let fanout = ws::fanout(
        target.server.addr,
        sessions,
        &target.fixture.fanout.access,
        FanoutPlan {
            per_session: plan.fanout_per_session,
            rate: plan.fanout_rate,
            warmup: plan.timing.warmup,
            duration: plan.timing.duration,
        },
    )
    .await?;
    let mut row = Row::new("ws-fanout", fanout.sockets, "msg/s", &fanout.measured);
    let lost = fanout.lost();
    row.notes.push(format!(
        "{} sockets on {} sessions,\n{} posted over the sockets\nframes: expected {}, received {},\nlost {lost}, out of order {}\n{} frames/s; latency: post to\nframe at each socket",
        fanout.sockets,
        fanout.sessions,
        fanout.posted,
        fanout.expected,
        fanout.received,
        fanout.out_of_order,
        thousands(fanout.received as f64 / fanout.elapsed.as_secs_f64().max(1e-9)),
    ));
    row.figures.insert("expected", fanout.expected as f64);
    row.figures.insert("received", fanout.received as f64);
    row.figures.insert("lost", lost as f64);
    row.figures
        .insert("out_of_order", fanout.out_of_order as f64);
    Ok(row)
}

async fn ws_idle(target: &Target<'_>) -> anyhow::Result<Row> {
    let plan = target.plan;
    let server = &*target.server;
    let idle = ws::idle(
        server.addr,
        &target.fixture.fanout_sessions,
        &target.fixture.fanout.access,
        plan.idle_sockets,
        plan.idle_hold,
        || server.rss_kib(),
    )
    .await?;
    let mut row = Row::new("ws-idle", idle.open, "sockets/s", &idle.measured);
    if let (Some(before), Some(open)) = (idle.rss_before_kib, idle.rss_open_kib) {
        let per_socket = open.saturating_sub(before) as f64 / idle.open.max(1) as f64;
        row.notes.push(format!(
            "RSS {:.1} MiB with {} sockets open\n({:.1} MiB before: +{:.1} MiB,\n{per_socket:.1} KiB/socket); latency: handshake",
            kib_to_mib(open),
            idle.open,
            kib_to_mib(before),
            kib_to_mib(open.saturating_sub(before)),
        ));
        row.figures.insert("rss_before_mib", kib_to_mib(before));
        row.figures.insert("rss_open_mib", kib_to_mib(open));
        row.figures.insert("kib_per_socket", per_socket);
    }
    Ok(row)
}

async fn login_flood(target: &Target<'_>) -> anyhow::Result<Vec<Row>> {
    let requests = Requests {
        addr: target.server.addr,
    };
    let n = target.plan.connections;
    let logins = (n / 2).max(1);
    let healths = (n / 4).max(1);
    let lists = n.saturating_sub(logins + healths).max(1);
    let measured_lanes = || -> Vec<Lane> {
        let mut lanes = Vec::new();
        lanes.extend((0..healths).map(|_| Lane::single(0, requests.health())));
        lanes.extend((0..lists).map(|_| Lane::single(1, requests.sessions_list(target.fixture))));
        lanes
    };
    // First the same connections alone, then with the logins beside them.
    let alone = client::drive(requests.addr, measured_lanes(), 2, target.plan.timing).await?;
    let mut flood_lanes = measured_lanes();
    flood_lanes.extend((0..logins).map(|_| Lane::single(2, requests.login(target.fixture))));
    let flood = client::drive(requests.addr, flood_lanes, 3, target.plan.timing).await?;
    let [health, list, login] = flood.as_slice() else {
        bail!("login-flood: missing results");
    };
    let mut login_row = Row::new("login-flood: login", logins, "req/s", login);
    login_row.compare("verifies/s argon2", target.ceilings.argon2_per_second);
    let mut health_row = Row::new("login-flood: health", healths, "req/s", health);
    health_row.compare("req/s warp hello", target.ceilings.hello_per_second);
    let mut list_row = Row::new("login-flood: sessions-list", lists, "req/s", list);
    list_row.compare("req/s warp hello", target.ceilings.hello_per_second);
    for (row, alone) in [
        (&mut health_row, alone.first()),
        (&mut list_row, alone.get(1)),
    ] {
        if let Some(alone) = alone {
            row.notes.push(format!(
                "alone (same conns):\np99 {} ms, {} req/s",
                ms(alone.quantile_ms(0.99)),
                thousands(alone.rate())
            ));
            row.figures.insert("alone_p99_ms", alone.quantile_ms(0.99));
            row.figures.insert("alone_per_second", alone.rate());
        }
    }
    Ok(vec![login_row, health_row, list_row])
}

async fn mixed(target: &Target<'_>) -> anyhow::Result<Row> {
    let requests = Requests {
        addr: target.server.addr,
    };
    let fixture = target.fixture;
    let n = target.plan.connections;
    let mut lanes = Vec::with_capacity(n);
    for lane in 0..n {
        let built = [
            requests.sessions_list(fixture),
            requests.session_detail(fixture, lane)?,
            requests.post_message(fixture, lane)?,
            requests.health(),
            requests.login(fixture),
        ];
        let choices = built
            .into_iter()
            .zip(MIXED_BLEND)
            .enumerate()
            .map(|(group, (request, (_, weight)))| Choice {
                group,
                weight,
                request,
            })
            .collect();
        lanes.push(Lane { choices });
    }
    let groups = client::drive(requests.addr, lanes, MIXED_BLEND.len(), target.plan.timing).await?;
    let mut total = Measured::new(target.plan.timing.duration, 3)?;
    let mut parts = Vec::new();
    for ((name, weight), group) in MIXED_BLEND.iter().zip(&groups) {
        total.merge(group)?;
        parts.push(format!(
            "{weight}% {name}: {} req/s, p99 {} ms",
            thousands(group.rate()),
            ms(group.quantile_ms(0.99))
        ));
    }
    let mut row = Row::new("mixed", n, "req/s", &total);
    row.notes.push(parts.join("\n"));
    Ok(row)
}
