//! Disk full: the server's database runs out of room while a user posts. Then writes must
//! answer 503 with `Retry-After`, reads must work, and health must say
//! `"database": "read_only"`. Room comes back: writes must work again without a restart,
//! health must recover, and nothing acknowledged may be lost.
//!
//! Two ways to run out of room ([`Variant`], `--disk-full-variant`; the row's "what ran"
//! says which one ran):
//!
//! - `tmpfs`: the database on a small tmpfs that the suite mounts (it needs root and
//!   permission to mount), with a filler file placed on it first. Big posts fill it, then
//!   title changes use up the last bytes (every commit needs room in the WAL), so that
//!   every write fails. Deleting the filler frees space.
//! - `pages`: the database in the part's folder, and the server's writer connection capped
//!   with SQLite's `PRAGMA max_page_count` through the child's control channel
//!   ([`ServerProcess::limit_writer_pages`]): the cap [`HEADROOM_PAGES`] above the file's
//!   size, big posts until they are refused, then the cap lowered to the file's size, so
//!   that not one more page can be added. Lifting the cap frees space. A page cap refuses
//!   only writes that need a new page: a new session or a title change that fits in the
//!   pages the file has succeeds, as it should. So of the writes tried while full, only
//!   the post (whose content needs pages of its own) must be refused here; the other two
//!   are counted.
//! - `auto` (the default): `tmpfs` when the mount works, `pages` otherwise.
//!
//! The rest (filling with big posts, the writes tried while full, reads, health, the
//! recovery and the final checks) is the same code for both.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::Method;
use serde_json::json;

use crate::api::{Account, Answer, Api, Exchange, check_stored};
use crate::report::{Row, latencies};
use crate::server::{ServerProcess, Settings, start_with_user};
use crate::{Context, sqlite};

/// The tmpfs's size.
const DISK_KIB: u64 = 3 * 1024;

/// The filler file placed before the database, deleted to free space.
const FILLER_KIB: u64 = 512;

/// How far above the file's size (in pages) the `pages` variant first caps it: room for a
/// few dozen big posts.
const HEADROOM_PAGES: u32 = 256;

/// Posts of about 9 KB of text (and as much in the reply) before giving up on filling.
const MAX_FILL_POSTS: usize = 2_000;

/// Small writes (session title changes) after the big posts fail, before giving up.
const MAX_SMALL_WRITES: usize = 2_000;

/// Consecutive refused writes that mean "full".
const REFUSALS_FOR_FULL: usize = 3;

/// How long writes and health get to recover once space is freed (an upper bound for
/// "it must happen").
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How the part runs out of room: `--disk-full-variant`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// A tmpfs when it can be mounted, the page cap otherwise (the default).
    Auto,
    /// A tmpfs only: the part skips when it cannot be mounted.
    Tmpfs,
    /// The page cap only.
    Pages,
}

impl FromStr for Variant {
    type Err = String;

    fn from_str(text: &str) -> Result<Variant, String> {
        match text {
            "auto" => Ok(Variant::Auto),
            "tmpfs" => Ok(Variant::Tmpfs),
            "pages" => Ok(Variant::Pages),
            _ => Err(format!(
                "--disk-full-variant needs auto, tmpfs or pages, not {text:?}"
            )),
        }
    }
}

/// Runs the part.
pub async fn run(ctx: &Context) -> anyhow::Result<Row> {
    if ctx.disk_full_variant == Variant::Pages {
        return fill_and_recover(ctx, Room::pages(), pages_ran("--disk-full-variant pages")).await;
    }
    let ran = format!(
        "tmpfs of {DISK_KIB} KiB with a {FILLER_KIB} KiB filler: fill with posts, probe, delete the filler, recover"
    );
    match Tmpfs::mount(&ctx.dir.join("disk"), DISK_KIB).await {
        Ok(mount) => {
            let room = Room::Tmpfs {
                filler: mount.path.join("filler"),
                database: mount.path.join("db.sqlite3"),
            };
            let outcome = fill_and_recover(ctx, room, ran).await;
            drop(mount);
            outcome
        }
        Err(reason) if ctx.disk_full_variant == Variant::Tmpfs => Ok(Row::skipped(
            ran,
            format!("cannot mount a tmpfs ({reason}); --disk-full-variant pages runs without"),
        )),
        Err(reason) => {
            let why = format!("no tmpfs: {reason}");
            fill_and_recover(ctx, Room::pages(), pages_ran(&why)).await
        }
    }
}

/// "What ran" of the `pages` variant, which ran because of `why`.
fn pages_ran(why: &str) -> String {
    format!(
        "SQLite max_page_count ({why}): cap the writer {HEADROOM_PAGES} pages above the file, fill with posts, cap at the file's size, probe, lift the cap, recover"
    )
}

/// How the database runs out of room and gets it back: one per variant.
enum Room {
    /// On a mounted tmpfs, with a filler file.
    Tmpfs {
        /// The filler file.
        filler: PathBuf,
        /// The database file.
        database: PathBuf,
    },
    /// A page cap on the server's writer connection.
    Pages {
        /// The file's size in pages when the cap was first set.
        size: u64,
        /// The cap in effect when the fill began.
        cap: u64,
        /// The cap once lowered to the file's size, when it was.
        full_at: Option<u64>,
    },
}

impl Room {
    /// The page cap, not yet set.
    fn pages() -> Room {
        Room::Pages {
            size: 0,
            cap: 0,
            full_at: None,
        }
    }

    /// The part's server settings, once the room is ready for the server (the filler
    /// placed before the database).
    fn prepare(&self, ctx: &Context) -> anyhow::Result<Settings> {
        let settings = Settings::new(ctx)?;
        match self {
            Room::Tmpfs { filler, database } => {
                std::fs::write(filler, vec![0x5Au8; (FILLER_KIB * 1024) as usize])
                    .context("writing the filler file")?;
                Ok(settings.sqlite_file(database))
            }
            Room::Pages { .. } => Ok(settings),
        }
    }

    /// Limits the room of the running server (the page cap; a tmpfs is limited already).
    async fn limit(&mut self, server: &mut ServerProcess) -> anyhow::Result<()> {
        if let Room::Pages { size, cap, .. } = self {
            // A cap of one page is never below the file's size: it answers that size.
            *size = server.limit_writer_pages(1).await?;
            let wanted = u32::try_from(*size)
                .unwrap_or(u32::MAX)
                .saturating_add(HEADROOM_PAGES);
            *cap = server.limit_writer_pages(wanted).await?;
        }
        Ok(())
    }

    /// Once big posts are refused: uses up what room is left. A tmpfs gets title changes
    /// until they are refused too ([`REFUSALS_FOR_FULL`] in a row; not full when they
    /// never were); the page cap is lowered to the file's size. Answers whether it is
    /// full, and what it took, to follow "N big posts" in the counts.
    async fn use_up(
        &mut self,
        server: &mut ServerProcess,
        user: &User,
        findings: &mut Vec<String>,
    ) -> anyhow::Result<(bool, String)> {
        match self {
            Room::Tmpfs { .. } => {
                let mut small_writes = 0;
                let mut refusals = 0;
                while refusals < REFUSALS_FOR_FULL && small_writes < MAX_SMALL_WRITES {
                    small_writes += 1;
                    let answer = user.rename(&format!("t{small_writes}")).await?;
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
                let until = if full { " until full" } else { "" };
                Ok((full, format!(" and {small_writes} title changes{until}")))
            }
            Room::Pages { size, cap, full_at } => {
                let pages = server.limit_writer_pages(1).await?;
                *full_at = Some(pages);
                Ok((
                    true,
                    format!(
                        " until refused under a cap of {cap} pages (the file had {size}),\nthen the cap lowered to the file's {pages}"
                    ),
                ))
            }
        }
    }

    /// Whether every write must be refused while full (on a tmpfs), or only those that need
    /// a new page (under the page cap).
    fn refuses_every_write(&self) -> bool {
        matches!(self, Room::Tmpfs { .. })
    }

    /// Gives the room back: deletes the filler, or lifts the cap.
    async fn free(&mut self, server: &mut ServerProcess) -> anyhow::Result<()> {
        match self {
            Room::Tmpfs { filler, .. } => {
                std::fs::remove_file(filler).context("deleting the filler file")
            }
            Room::Pages { cap, full_at, .. } => {
                let before = full_at.unwrap_or(*cap);
                let lifted = server.limit_writer_pages(u32::MAX).await?;
                anyhow::ensure!(
                    lifted > before,
                    "lifting the page cap of {before} pages left it at {lifted}"
                );
                Ok(())
            }
        }
    }
}

/// The part's user and its session, on the part's server.
struct User {
    api: Api,
    account: Account,
    session: String,
}

impl User {
    /// Posts `content` to the session.
    async fn post(&self, content: &str) -> anyhow::Result<Answer> {
        self.api
            .post_message(&self.account, &self.session, &json!({ "content": content }))
            .await
    }

    /// `PATCH` the session's title.
    async fn rename(&self, title: &str) -> anyhow::Result<Answer> {
        rename(&self.api, &self.account.access, &self.session, title).await
    }
}

/// Everything between readying the room (and, for a tmpfs, mounting it) and giving it up.
async fn fill_and_recover(ctx: &Context, mut room: Room, ran: String) -> anyhow::Result<Row> {
    let settings = room.prepare(ctx)?;
    let (mut server, account) = start_with_user(&settings, "disk", 1).await?;
    room.limit(&mut server).await?;
    let user = User {
        api: server.api()?,
        session: account.sessions[0].clone(),
        account,
    };
    let mut findings = Vec::new();
    let mut acknowledged = Vec::new();

    // Fill: big posts until writes are refused, then use up the rest.
    let big = "디스크가 가득 찼어요 full disk ".repeat(300);
    let mut refusals = 0;
    let mut posts = 0;
    while refusals < REFUSALS_FOR_FULL && posts < MAX_FILL_POSTS {
        posts += 1;
        let answer = user.post(&format!("fill {posts} {big}")).await?;
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
    let mut full = false;
    let mut rest = String::new();
    if findings.is_empty() && refusals >= REFUSALS_FOR_FULL {
        (full, rest) = room.use_up(&mut server, &user, &mut findings).await?;
    }
    if findings.is_empty() && !full {
        findings.push(format!("writes never failed: {posts} big posts{rest} fit"));
    }

    // Full: the writes answer section 1's 503 (under the page cap, those that need a new
    // page; the last tried is one, so that health sees writes failing); reads and health
    // work.
    let mut probe_latencies = Vec::new();
    let mut refused_titles = Vec::new();
    let mut tried = 0;
    let mut refused = 0;
    if full {
        // What was tried, whether it must be refused, the session title it would create.
        let created = "created while full";
        let probes: Vec<(&str, bool, Option<&str>, Answer)> = vec![
            (
                "POST a session",
                room.refuses_every_write(),
                Some(created),
                user.api
                    .send(
                        Method::POST,
                        "/api/chat/sessions/",
                        Some(&user.account.access),
                        Some(&json!({ "title": created })),
                    )
                    .await?,
            ),
            (
                "PATCH a session",
                room.refuses_every_write(),
                None,
                user.rename("renamed while full").await?,
            ),
            (
                "POST a message",
                true,
                None,
                user.post(&format!("while full {big}")).await?,
            ),
        ];
        for (what, must_refuse, creates, answer) in &probes {
            tried += 1;
            if answer.is_unavailable() {
                refused += 1;
                probe_latencies.push(answer.millis);
                refused_titles.extend(creates.map(str::to_owned));
            } else if *must_refuse || !(200..300).contains(&answer.status) {
                let or = if *must_refuse { "" } else { ", or success" };
                findings.push(format!(
                    "while full, {what} answered {} (expected 503, Retry-After: 1, section 1's body{or})",
                    answer.describe()
                ));
            }
        }
        let session = &user.session;
        for (what, path) in [
            ("the session", format!("/api/chat/sessions/{session}/")),
            ("the session list", "/api/chat/sessions/".to_owned()),
            (
                "the messages",
                format!("/api/chat/sessions/{session}/messages/"),
            ),
        ] {
            let answer = user
                .api
                .send(Method::GET, &path, Some(&user.account.access), None)
                .await?;
            if answer.status != 200 {
                findings.push(format!(
                    "while full, reading {what} answered {}",
                    answer.describe()
                ));
            }
        }
        let health = user.api.health().await?;
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

    // Give the room back: writes work again, health recovers.
    room.free(&mut server).await?;
    let freed = Instant::now();
    let mut recovered_after = None;
    let mut last = None;
    while freed.elapsed() < RECOVERY_TIMEOUT {
        let answer = user
            .post(&format!("after freeing space {}", acknowledged.len()))
            .await?;
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
        let health = user.api.health().await?;
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
    let stored = check_stored(
        &user.api,
        &user.account,
        &user.account.sessions,
        &acknowledged,
    )
    .await?;
    findings.extend(stored.problems.iter().cloned());
    let list = user
        .api
        .send(
            Method::GET,
            "/api/chat/sessions/",
            Some(&user.account.access),
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
    findings.extend(sqlite::problems(settings.database_file()?).await?);
    let seconds = |at: Option<Duration>| {
        at.map_or("never".to_owned(), |at| {
            format!("{:.1} s", at.as_secs_f64())
        })
    };
    Ok(Row::new(
        ran,
        format!(
            "{posts} big posts{rest}\nwhile full, {refused} of {tried} writes refused\n{} acknowledged, {} lost or different",
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
async fn rename(api: &Api, access: &str, session: &str, title: &str) -> anyhow::Result<Answer> {
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
            // mount's first line says why ("mount: PATH: permission denied."); the rest
            // is advice.
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(
                match stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
                    Some(line) if line.starts_with("mount") => line.to_owned(),
                    Some(line) => format!("mount: {line}"),
                    None => format!("mount exited with {}", output.status),
                },
            );
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
