//! This machine's ceilings, measured in the same run as the scenarios, so that results
//! read as ratios that hold on a noisy machine:
//!
//! - a bare warp JSON hello endpoint under the same connections, warm-up and duration as
//!   the HTTP scenarios (the most any endpoint of warp can do here);
//! - a raw rusqlite insert loop on a fresh file at the core's pragmas (WAL,
//!   `synchronous=FULL`, foreign keys), into a table shaped like `chat_messages`: one row
//!   per transaction, then batches of one row per load connection (the most a group
//!   commit could gather with that many requests in flight);
//! - argon2id verification by the argon2 crate alone at the core's parameters, on one
//!   thread per available core, each reusing its working memory.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use narutalk_core::accounts::password;
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::child::{Server, ServerProcess};
use crate::client::{self, Lane, Timing};
use crate::seed::PASSWORD;

/// The ceilings of this run.
#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    /// `GET /hello` on bare warp: requests per second.
    pub hello_per_second: f64,
    /// Its median latency, in milliseconds.
    pub hello_p50_ms: f64,
    /// Its 99th percentile, in milliseconds.
    pub hello_p99_ms: f64,
    /// Its errors.
    pub hello_errors: u64,
    /// The hello server's peak memory, in MiB.
    pub hello_peak_mib: Option<f64>,
    /// SQLite, one row per transaction: transactions (rows) per second.
    pub sqlite_one_row_per_second: f64,
    /// SQLite, batches of `sqlite_batch_rows`: rows per second.
    pub sqlite_batched_rows_per_second: f64,
    /// Rows per batched transaction.
    pub sqlite_batch_rows: usize,
    /// argon2id verifications per second on all threads.
    pub argon2_per_second: f64,
    /// Threads that verified (the available cores).
    pub argon2_threads: usize,
    /// Milliseconds of one verification on one thread.
    pub argon2_ms: f64,
}

/// How long each ceiling runs.
#[derive(Clone, Copy, Debug)]
pub struct CeilingTimes {
    /// The hello server's load: the scenarios' timing.
    pub http: Timing,
    /// Each SQLite loop and the argon2 loop.
    pub local: Duration,
}

/// Measures every ceiling.
pub async fn measure(
    dir: &Path,
    connections: usize,
    times: CeilingTimes,
) -> anyhow::Result<Ceilings> {
    let hello = ServerProcess::start(&Server::Hello)
        .await
        .context("starting the hello server")?;
    let request = client::get(hello.addr, "/hello", None);
    let lanes = (0..connections)
        .map(|_| Lane::single(0, request.clone()))
        .collect();
    hello.reset_peak();
    let measured = client::drive(hello.addr, lanes, 1, times.http)
        .await
        .context("loading the hello server")?;
    let hello_peak_mib = hello.peak_kib().map(kib_to_mib);
    hello.stop().await.context("stopping the hello server")?;
    let hello_measured = measured.first().context("the hello results")?;

    let file = dir.join("ceiling.sqlite3");
    let batch = connections.max(1);
    let local = times.local;
    let (one_row, batched) =
        tokio::task::spawn_blocking(move || sqlite_ceilings(&file, batch, local))
            .await
            .context("the SQLite ceiling panicked")??;
    let (argon2_per_second, argon2_threads) =
        tokio::task::spawn_blocking(move || argon2_ceiling(local))
            .await
            .context("the argon2 ceiling panicked")??;
    Ok(Ceilings {
        hello_per_second: hello_measured.rate(),
        hello_p50_ms: hello_measured.quantile_ms(0.5),
        hello_p99_ms: hello_measured.quantile_ms(0.99),
        hello_errors: hello_measured.errors,
        hello_peak_mib,
        sqlite_one_row_per_second: one_row,
        sqlite_batched_rows_per_second: batched,
        sqlite_batch_rows: batch,
        argon2_per_second,
        argon2_threads,
        argon2_ms: if argon2_per_second > 0.0 {
            argon2_threads as f64 * 1000.0 / argon2_per_second
        } else {
            0.0
        },
    })
}

/// KiB to MiB.
pub fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Rows per second inserted one per transaction, then `batch` per transaction, each for
/// `length`, into a fresh file at the core's pragmas.
fn sqlite_ceilings(file: &Path, batch: usize, length: Duration) -> anyhow::Result<(f64, f64)> {
    let conn = Connection::open(file).with_context(|| format!("opening {}", file.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, updated_at INTEGER NOT NULL);
         CREATE TABLE messages (
             id         TEXT    PRIMARY KEY,
             session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
             seq        INTEGER NOT NULL,
             sender     TEXT    NOT NULL,
             content    TEXT    NOT NULL,
             metadata   TEXT    NOT NULL DEFAULT '{}',
             created_at INTEGER NOT NULL,
             UNIQUE (session_id, seq)
         );
         INSERT INTO sessions VALUES ('ceiling', 0);",
    )?;
    let mut seq: i64 = 0;
    let mut insert_rows = |conn: &Connection, rows: usize| -> anyhow::Result<()> {
        let tx = conn.unchecked_transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (id, session_id, seq, sender, content, created_at)
                 VALUES (?1, 'ceiling', ?2, 'user', 'How should a mild headache be treated?', ?2)",
            )?;
            for _ in 0..rows {
                seq += 1;
                insert.execute(params![uuid_like(seq as u64), seq])?;
            }
        }
        tx.commit()?;
        Ok(())
    };
    let mut rate = |rows: usize| -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut inserted = 0u64;
        while started.elapsed() < length {
            insert_rows(&conn, rows)?;
            inserted += rows as u64;
        }
        Ok(inserted as f64 / started.elapsed().as_secs_f64())
    };
    let one_row = rate(1)?;
    let batched = rate(batch)?;
    Ok((one_row, batched))
}

/// A random-looking 36-character id, as the UUIDs the core stores (random keys insert
/// into the primary key's B-tree like the real ones).
fn uuid_like(counter: u64) -> String {
    let mut x = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let high = x;
    let low = x.rotate_left(29) ^ counter;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xfff,
        low & 0xfff,
        low >> 16
    )
}

/// Verifications per second of bare argon2id at the core's parameters on one thread per
/// core, for `length`, and the number of threads: the argon2 crate alone, each thread
/// reusing its own working memory (the cheapest a verification can be), with none of the
/// core's code in the way.
fn argon2_ceiling(length: Duration) -> anyhow::Result<(f64, usize)> {
    use argon2::{Algorithm, Argon2, Block, Params, Version};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let params = Params::new(
        password::MEMORY_KIB,
        password::ITERATIONS,
        password::PARALLELISM,
        None,
    )
    .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = *b"narutalk-ceiling";
    let mut expected = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2
        .hash_password_into(PASSWORD.as_bytes(), &salt, &mut expected)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    let started = Instant::now();
    let verified: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut memory = vec![Block::default(); params.block_count()];
                    let mut count = 0u64;
                    while started.elapsed() < length {
                        let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
                        let hashed = argon2.hash_password_into_with_memory(
                            PASSWORD.as_bytes(),
                            &salt,
                            &mut output,
                            &mut memory,
                        );
                        if hashed.is_ok() && output == expected {
                            count += 1;
                        }
                    }
                    count
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or(0))
            .sum()
    });
    Ok((verified as f64 / started.elapsed().as_secs_f64(), threads))
}
