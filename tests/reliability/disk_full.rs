//! Disk full: the database on a small tmpfs that the suite mounts (as root), with a filler
//! file placed on it first. Posts fill it until writes fail; then writes must answer 503
//! with `Retry-After`, reads must work, and health must say `"database": "read_only"`.
//! Deleting the filler frees space: writes must work again without a restart, health
//! must recover, and nothing acknowledged may be lost.
//!
//! Without root (or where mounting is refused) the part skips. SQLite's
//! `PRAGMA max_page_count` could stand in for the mount, but it is per connection and the
//! server offers no way to apply it to its writer, so only the tmpfs variant exists.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::Method;
use serde_json::json;

use crate::api::{Answer, Exchange, check_stored};
use crate::report::{Row, latencies};
use crate::server::{Settings, start_with_user};
use crate::{Context, sqlite};

/// The tmpfs's size.
const DISK_KIB: u64 = 3 * 1024;

/// The filler file placed before the database, deleted to free space.
const FILLER_KIB: u64 = 512;

/// Posts of about 9 KB of text (and as much in the reply) before giving up on filling.
const MAX_FILL_POSTS: usize = 2_000;

/// Small writes (session title changes) after the big posts fail, before giving up.
const MAX_SMALL_WRITES: usize = 2_000;

/// Consecutive refused writes that mean "full".
const REFUSALS_FOR_FULL: usize = 3;

/// How long writes and health get to recover once space is freed (an upper bound for
/// "it must happen").
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the part.
pub async fn run(ctx: &Context) -> anyhow::Result<Row> {
    let ran = format!(
        "tmpfs of {} KiB with a {FILLER_KIB} KiB filler: fill with posts, probe, delete the filler, recover",
        DISK_KIB
    );
    let mount = match Tmpfs::mount(&ctx.dir.join("disk"), DISK_KIB).await {
        Ok(mount) => mount,
        Err(reason) => {
            return Ok(Row::skipped(
                ran,
                format!(
                    "cannot mount a tmpfs ({reason}); the PRAGMA max_page_count variant needs a server hook that does not exist yet"
                ),
            ));
        }
    };
    let outcome = fill_and_recover(ctx, &mount.path, ran).await;
    drop(mount);
    outcome
}

/// Everything between the mount and the unmount.
async fn fill_and_recover(ctx: &Context, disk: &Path, ran: String) -> anyhow::Result<Row> {
    let filler = disk.join("filler");
    std::fs::write(&filler, vec![0x5Au8; (FILLER_KIB * 1024) as usize])
        .context("writing the filler file")?;
    let settings =
        Settings::new(&ctx.dir)?.set("NARUTALK_DATABASE", disk.join("db.sqlite3").display());
    let (server, account) = start_with_user(&settings, "disk", 1).await?;
    let api = server.api()?;
    let session = account.sessions[0].clone();
    let mut findings = Vec::new();
    let mut acknowledged = Vec::new();

    // Fill: big posts until writes are refused, then small writes until they are too.
    let big = "디스크가 가득 찼어요 full disk ".repeat(300);
    let mut refusals = 0;
    let mut posts = 0;
    while refusals < REFUSALS_FOR_FULL && posts < MAX_FILL_POSTS {
        posts += 1;
        let body = json!({ "content": format!("fill {posts} {big}") });
        let answer = api.post_message(&account, &session, &body).await?;
        match Exchange::from_answer(&answer) {
            Some(exchange) => {
                acknowledged.push(exchange);
                refusals = 0;
            }
            None if answer.status == 503 => refusals += 1,
            None => {
                findings.push(format!("a filling post answered {}", answer.describe()));
                break;
            }
        }
    }
    let mut small_writes = 0;
    refusals = 0;
    while findings.is_empty() && refusals < REFUSALS_FOR_FULL && small_writes < MAX_SMALL_WRITES {
        small_writes += 1;
        let answer = rename(&api, &account.access, &session, &format!("t{small_writes}")).await?;
        match answer.status {
            200 => refusals = 0,
            503 => refusals += 1,
            _ => {
                findings.push(format!("a small write answered {}", answer.describe()));
                break;
            }
        }
    }
    let full = refusals >= REFUSALS_FOR_FULL;
    if findings.is_empty() && !full {
        findings.push(format!(
            "writes never failed: {posts} posts and {small_writes} title changes fit in {DISK_KIB} KiB"
        ));
    }

    // Full: every kind of write answers section 1's 503; reads and health work.
    let mut probe_latencies = Vec::new();
    let mut refused_titles = Vec::new();
    if full {
        let probes: Vec<(&str, Answer)> = vec![
            (
                "POST a message",
                api.post_message(&account, &session, &json!({ "content": "while full" }))
                    .await?,
            ),
            ("POST a session", {
                let title = "created while full";
                refused_titles.push(title.to_owned());
                api.send(
                    Method::POST,
                    "/api/chat/sessions/",
                    Some(&account.access),
                    Some(&json!({ "title": title })),
                )
                .await?
            }),
            (
                "PATCH a session",
                rename(&api, &account.access, &session, "renamed while full").await?,
            ),
        ];
        for (what, answer) in &probes {
            probe_latencies.push(answer.millis);
            if !answer.is_unavailable() {
                findings.push(format!(
                    "while full, {what} answered {} (expected 503, Retry-After: 1, section 1's body)",
                    answer.describe()
                ));
            }
        }
        for (what, path) in [
            ("the session", format!("/api/chat/sessions/{session}/")),
            ("the session list", "/api/chat/sessions/".to_owned()),
            (
                "the messages",
                format!("/api/chat/sessions/{session}/messages/"),
            ),
        ] {
            let answer = api
                .send(Method::GET, &path, Some(&account.access), None)
                .await?;
            if answer.status != 200 {
                findings.push(format!(
                    "while full, reading {what} answered {}",
                    answer.describe()
                ));
            }
        }
        let health = api.health().await?;
        if health.status != 200
            || health.body["services"]["database"] != "read_only"
            || health.body["status"] != "degraded"
        {
            findings.push(format!(
                "while full, health answered {} (expected 200, status degraded, database read_only)",
                health.describe()
            ));
        }
    }

    // Free the filler's space: writes work again, health recovers.
    std::fs::remove_file(&filler).context("deleting the filler file")?;
    let freed = Instant::now();
    let mut recovered_after = None;
    let mut last = None;
    while freed.elapsed() < RECOVERY_TIMEOUT {
        let body = json!({ "content": format!("after freeing space {}", acknowledged.len()) });
        let answer = api.post_message(&account, &session, &body).await?;
        if let Some(exchange) = Exchange::from_answer(&answer) {
            acknowledged.push(exchange);
            recovered_after = Some(freed.elapsed());
            break;
        }
        last = Some(answer.describe());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if recovered_after.is_none() {
        findings.push(format!(
            "writes did not work again within {} s of freeing space (last answer: {})",
            RECOVERY_TIMEOUT.as_secs(),
            last.unwrap_or_default()
        ));
    }
    let mut health_after = None;
    let health_started = Instant::now();
    while health_started.elapsed() < RECOVERY_TIMEOUT {
        let health = api.health().await?;
        if health.status == 200
            && health.body["services"]["database"] == "connected"
            && health.body["status"] == "healthy"
        {
            health_after = Some(freed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if health_after.is_none() {
        findings.push(format!(
            "health did not report the database connected and healthy within {} s of a successful write",
            RECOVERY_TIMEOUT.as_secs()
        ));
    }

    // Nothing acknowledged lost, nothing refused applied, the file sound.
    let stored = check_stored(&api, &account, &account.sessions, &acknowledged).await?;
    findings.extend(stored.problems.iter().cloned());
    let list = api
        .send(
            Method::GET,
            "/api/chat/sessions/",
            Some(&account.access),
            None,
        )
        .await?;
    for title in &refused_titles {
        let applied = list.body["results"]
            .as_array()
            .is_some_and(|sessions| sessions.iter().any(|s| s["title"] == title.as_str()));
        if applied {
            findings.push(format!("the session {title:?}, refused with 503, exists"));
        }
    }
    server.stop().await?;
    findings.extend(sqlite::problems(settings.database()).await?);
    let seconds = |at: Option<Duration>| {
        at.map_or("never".to_owned(), |at| {
            format!("{:.1} s", at.as_secs_f64())
        })
    };
    Ok(Row::new(
        ran,
        format!(
            "{posts} big posts and {small_writes} title changes until full\n{} acknowledged, {} lost or different",
            acknowledged.len(),
            stored.problems.len()
        ),
        format!(
            "refused writes: {}\nwrites again {} after freeing, health healthy after {}",
            latencies(&probe_latencies),
            seconds(recovered_after),
            seconds(health_after)
        ),
        findings,
    ))
}

/// `PATCH` the session's title.
async fn rename(
    api: &crate::api::Api,
    access: &str,
    session: &str,
    title: &str,
) -> anyhow::Result<Answer> {
    api.send(
        Method::PATCH,
        &format!("/api/chat/sessions/{session}/"),
        Some(access),
        Some(&json!({ "title": title })),
    )
    .await
}

/// A tmpfs mounted by the suite, unmounted when dropped (also when the part fails or
/// panics; lazily when something still holds a file on it).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `kib` KiB on `path` (created); the reason when it cannot.
    async fn mount(path: &Path, kib: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path)
            .map_err(|error| format!("creating the mount point: {error}"))?;
        let output = tokio::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={kib}k,mode=0700"))
            .arg("tmpfs")
            .arg(path)
            .output()
            .await
            .map_err(|error| format!("running mount: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmount = |lazy: bool| {
            let mut command = std::process::Command::new("umount");
            if lazy {
                command.arg("-l");
            }
            command
                .arg(&self.path)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        if !unmount(false) && !unmount(true) {
            eprintln!(
                "reliability: could not unmount the tmpfs on {}",
                self.path.display()
            );
        }
    }
}
