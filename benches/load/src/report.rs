//! The results: the tables printed at the end of a run, the targets of the issue, and the
//! JSON written by `--json` for comparison between commits.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use comfy_table::{Cell, CellAlignment, Table};
use serde::Serialize;

use crate::ceilings::{Ceilings, kib_to_mib};
use crate::measure::Measured;

/// One row of the results table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The scenario (`login-flood: health` for a part of one).
    pub scenario: String,
    /// Load connections (or sockets) of this row.
    pub connections: usize,
    /// What is counted per second: `req/s`, `msg/s`, `sockets/s`.
    pub unit: &'static str,
    /// Successful operations per second of the measured window.
    pub per_second: f64,
    /// Successful operations in the measured window.
    pub operations: u64,
    /// Successful operations started in the window that ended after it (not counted in
    /// `operations`).
    pub finished_late: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Highest latency, ms.
    pub max_ms: f64,
    /// Failed operations (includes `refused`).
    pub errors: u64,
    /// Of the errors, answers refusing the harness's own requests (4xx, `error` frames).
    pub refused: u64,
    /// The server's peak resident memory during the scenario, MiB.
    pub server_peak_mib: Option<f64>,
    /// This row beside its ceilings.
    pub comparisons: Vec<Comparison>,
    /// What else the scenario found, in words.
    pub notes: Vec<String>,
    /// What else the scenario found, as numbers (`lost`, `rss_open_mib`, ...).
    pub figures: BTreeMap<&'static str, f64>,
}

impl Row {
    /// A row of `measured`.
    pub fn new(scenario: &str, connections: usize, unit: &'static str, measured: &Measured) -> Row {
        Row {
            scenario: scenario.to_owned(),
            connections,
            unit,
            per_second: measured.rate(),
            operations: measured.ok,
            finished_late: measured.finished_late,
            p50_ms: measured.quantile_ms(0.5),
            p99_ms: measured.quantile_ms(0.99),
            max_ms: measured.max_ms(),
            errors: measured.errors,
            refused: measured.refused,
            server_peak_mib: None,
            comparisons: Vec::new(),
            notes: Vec::new(),
            figures: BTreeMap::new(),
        }
    }

    /// Adds a comparison with a ceiling of `per_second`.
    pub fn compare(&mut self, ceiling: &str, per_second: f64) {
        self.comparisons.push(Comparison {
            ceiling: ceiling.to_owned(),
            per_second,
            ratio: if per_second > 0.0 {
                self.per_second / per_second
            } else {
                0.0
            },
        });
    }
}

/// A row's figure beside one ceiling.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Which ceiling.
    pub ceiling: String,
    /// The ceiling, in the row's unit per second.
    pub per_second: f64,
    /// The row's rate divided by the ceiling.
    pub ratio: f64,
}

/// The server's memory over the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    /// Resident memory after start, before any load, MiB.
    pub idle_mib: Option<f64>,
    /// Resident memory after the whole run, MiB.
    pub after_run_mib: Option<f64>,
    /// Whether the peak could be reset between scenarios (`/proc/PID/clear_refs`); when
    /// not, each peak is the peak so far.
    pub peak_reset: bool,
}

/// Everything `--json` writes.
#[derive(Debug, Serialize)]
pub struct Results {
    /// `git rev-parse --short HEAD`, when available.
    pub commit: Option<String>,
    /// True when the working tree had uncommitted changes.
    pub dirty: bool,
    /// Available cores.
    pub cores: usize,
    /// Load connections.
    pub connections: usize,
    /// Warm-up per scenario, seconds.
    pub warmup_seconds: f64,
    /// Measured time per scenario, seconds.
    pub duration_seconds: f64,
    /// A `--smoke` run (smaller counts; figures not comparable).
    pub smoke: bool,
    /// Open-files limits after raising: the harness's and the server's.
    pub open_files: [u64; 2],
    /// The ceilings.
    pub ceilings: Ceilings,
    /// The server's memory.
    pub memory: Memory,
    /// The rows of the results table.
    pub scenarios: Vec<Row>,
    /// The targets and whether this run met them (full runs only).
    pub targets: Vec<Target>,
}

/// One target of the issue, and this run's figure.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// The target, in words.
    pub target: String,
    /// What this run measured.
    pub measured: String,
    /// Whether the figure meets the target.
    pub met: bool,
}

/// The ceilings table.
pub fn ceilings_table(ceilings: &Ceilings, connections: usize) -> Table {
    let mut table = new_table(&["ceiling", "measured", "how"]);
    let hello_peak = ceilings
        .hello_peak_mib
        .map_or(String::new(), |mib| format!(", server peak {mib:.1} MiB"));
    table.add_row(vec![
        Cell::new("warp hello"),
        right(format!(
            "{} req/s\np50 {} ms, p99 {} ms",
            thousands(ceilings.hello_per_second),
            ms(ceilings.hello_p50_ms),
            ms(ceilings.hello_p99_ms)
        )),
        Cell::new(format!(
            "GET /hello -> {{\"message\":\"hello\"}} on bare warp (same runtime),\n{connections} connections, same warm-up and duration; {} errors{hello_peak}",
            ceilings.hello_errors
        )),
    ]);
    table.add_row(vec![
        Cell::new("SQLite insert, 1 row/tx"),
        right(format!(
            "{} rows/s",
            thousands(ceilings.sqlite_one_row_per_second)
        )),
        Cell::new("rusqlite, fresh file, WAL, synchronous=FULL, foreign keys,\na chat_messages-like table; one INSERT per transaction"),
    ]);
    table.add_row(vec![
        Cell::new("SQLite insert, batched"),
        right(format!(
            "{} rows/s",
            thousands(ceilings.sqlite_batched_rows_per_second)
        )),
        Cell::new(format!(
            "the same, {} rows per transaction (one per load connection:\nthe most a group commit can gather)",
            ceilings.sqlite_batch_rows
        )),
    ]);
    table.add_row(vec![
        Cell::new("argon2id verify"),
        right(format!(
            "{} verifies/s\n{:.1} ms each",
            thousands(ceilings.argon2_per_second),
            ceilings.argon2_ms
        )),
        Cell::new(format!(
            "bare argon2id at the core's parameters (m=19456 KiB, t=2, p=1)\non {} threads (the available cores), memory reused",
            ceilings.argon2_threads
        )),
    ]);
    table
}

/// The results table.
pub fn results_table(rows: &[Row]) -> Table {
    let mut table = new_table(&[
        "scenario", "conns", "rate", "p50 ms", "p99 ms", "max ms", "errors", "peak MiB", "ceiling",
        "ratio", "notes",
    ]);
    for row in rows {
        let ceiling = row
            .comparisons
            .iter()
            .map(|c| format!("{} {}", thousands(c.per_second), c.ceiling))
            .collect::<Vec<_>>()
            .join("\n");
        let ratio = row
            .comparisons
            .iter()
            .map(|c| format!("{:.2}", c.ratio))
            .collect::<Vec<_>>()
            .join("\n");
        let errors = if row.refused > 0 {
            format!("{} ({} refused)", row.errors, row.refused)
        } else {
            row.errors.to_string()
        };
        table.add_row(vec![
            Cell::new(&row.scenario),
            right(row.connections.to_string()),
            right(format!("{} {}", thousands(row.per_second), row.unit)),
            right(ms(row.p50_ms)),
            right(ms(row.p99_ms)),
            right(ms(row.max_ms)),
            right(errors),
            right(
                row.server_peak_mib
                    .map_or("-".to_owned(), |m| format!("{m:.1}")),
            ),
            Cell::new(ceiling),
            right(ratio),
            Cell::new(row.notes.join("\n")),
        ]);
    }
    table
}

/// The targets, checked against this run (meaningful at the default 32
/// connections on the 2-core reference machine).
pub fn targets(rows: &[Row], memory: &Memory) -> Vec<Target> {
    let find = |name: &str| rows.iter().find(|row| row.scenario == name);
    let mut targets = Vec::new();
    let mut add = |target: &str, measured: String, met: bool| {
        targets.push(Target {
            target: target.to_owned(),
            measured,
            met,
        });
    };
    if let Some(row) = find("health") {
        add(
            "health >= 50,000 req/s",
            format!("{} req/s", thousands(row.per_second)),
            row.per_second >= 50_000.0,
        );
    }
    if let Some(row) = find("sessions-list") {
        add(
            "sessions-list >= 10,000 req/s, p99 <= 10 ms",
            format!(
                "{} req/s, p99 {} ms",
                thousands(row.per_second),
                ms(row.p99_ms)
            ),
            row.per_second >= 10_000.0 && row.p99_ms <= 10.0,
        );
    }
    if let Some(row) = find("post-message") {
        add(
            "post-message >= 4,000 req/s, p99 <= 20 ms (synchronous=FULL)",
            format!(
                "{} req/s, p99 {} ms",
                thousands(row.per_second),
                ms(row.p99_ms)
            ),
            row.per_second >= 4_000.0 && row.p99_ms <= 20.0,
        );
    }
    if let Some(row) = find("login") {
        let ratio = row.comparisons.first().map_or(0.0, |c| c.ratio);
        add(
            "login >= 90% of the argon2 ceiling",
            format!("{:.0}%", ratio * 100.0),
            ratio >= 0.9,
        );
    }
    if let Some(row) = find("login-flood: health") {
        add(
            "health p99 < 5 ms during login-flood",
            format!("p99 {} ms", ms(row.p99_ms)),
            row.p99_ms < 5.0,
        );
    }
    if let Some(row) = find("ws-roundtrip") {
        add(
            "ws-roundtrip p50 <= 1 ms, p99 <= 2 ms",
            format!("p50 {} ms, p99 {} ms", ms(row.p50_ms), ms(row.p99_ms)),
            row.p50_ms <= 1.0 && row.p99_ms <= 2.0,
        );
    }
    if let Some(row) = find("ws-fanout") {
        let lost = row.figures.get("lost").copied();
        add(
            "ws-fanout zero lost",
            lost.map_or("lost ?".to_owned(), |lost| format!("lost {lost}")),
            lost == Some(0.0),
        );
    }
    if let Some(row) = find("ws-idle") {
        let open_mib = row.figures.get("rss_open_mib").copied();
        let before_mib = row.figures.get("rss_before_mib").copied();
        add(
            "ws-idle: 10,000 sockets in <= 150 MiB",
            match (open_mib, before_mib) {
                (Some(open), Some(before)) => format!(
                    "{} sockets: {open:.1} MiB\n(+{:.1} MiB on {before:.1} MiB before)",
                    row.connections,
                    open - before
                ),
                _ => format!("{} sockets: ?", row.connections),
            },
            row.connections >= 10_000 && open_mib.is_some_and(|mib| mib <= 150.0),
        );
    }
    let slow_ai: Vec<&Row> = ["slow-ai: health", "slow-ai: sessions-list"]
        .into_iter()
        .filter_map(&find)
        .collect();
    if !slow_ai.is_empty() {
        let ratio = |row: &Row| {
            row.figures
                .get("p99_ratio")
                .copied()
                .unwrap_or(f64::INFINITY)
        };
        let failed = |row: &Row| {
            row.errors as f64 + row.figures.get("alone_errors").copied().unwrap_or_default()
        };
        let turns_failed = find("slow-ai: turns").map_or(0, |row| row.errors);
        let measured = slow_ai
            .iter()
            .map(|row| {
                format!(
                    "{}: p99 {} ms, {:.2}x alone, {} failed",
                    row.scenario.trim_start_matches("slow-ai: "),
                    ms(row.p99_ms),
                    ratio(row),
                    failed(row)
                )
            })
            .chain(std::iter::once(format!("turns: {turns_failed} failed")))
            .collect::<Vec<_>>()
            .join("\n");
        add(
            "slow-ai: health and sessions-list p99 within 2x of alone, no failed request",
            measured,
            slow_ai.len() == 2
                && slow_ai.iter().all(|row| {
                    ratio(row) <= crate::slow_ai::P99_RATIO_TARGET && failed(row) == 0.0
                })
                && turns_failed == 0,
        );
    }
    if let Some(idle) = memory.idle_mib {
        add(
            "idle server <= 20 MiB",
            format!("{idle:.1} MiB"),
            idle <= 20.0,
        );
    }
    if let Some(after) = memory.after_run_mib {
        add(
            "server <= 64 MiB after the whole run",
            format!("{after:.1} MiB"),
            after <= 64.0,
        );
    }
    targets
}

/// The targets table.
pub fn targets_table(targets: &[Target]) -> Table {
    let mut table = new_table(&["target", "measured", "met"]);
    for target in targets {
        table.add_row(vec![
            Cell::new(&target.target),
            Cell::new(&target.measured),
            Cell::new(if target.met { "yes" } else { "NO" }),
        ]);
    }
    table
}

/// Writes `results` as pretty JSON to `file`.
pub fn write_json(file: &Path, results: &Results) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(results)?;
    std::fs::write(file, json + "\n").with_context(|| format!("writing {}", file.display()))
}

/// A memory figure in MiB from KiB, or `n/a`.
pub fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".to_owned(), |kib| {
        format!("{:.1} MiB", kib_to_mib(kib))
    })
}

fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(comfy_table::presets::UTF8_FULL);
    table.set_header(header.iter().map(Cell::new));
    table
}

fn right(text: impl Into<String>) -> Cell {
    Cell::new(text.into()).set_alignment(CellAlignment::Right)
}

/// Milliseconds with two decimals (three below 1 ms).
pub fn ms(value: f64) -> String {
    if value < 1.0 {
        format!("{value:.3}")
    } else {
        format!("{value:.2}")
    }
}

/// A rate rounded to a whole number with thousands separators (one decimal below 100).
pub fn thousands(value: f64) -> String {
    if value < 100.0 {
        return format!("{value:.1}");
    }
    let whole = value.round() as u64;
    let digits = whole.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_get_thousands_separators() {
        assert_eq!(thousands(146_012.4), "146,012");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(999.6), "1,000");
        assert_eq!(thousands(42.25), "42.2");
        assert_eq!(ms(0.1234), "0.123");
        assert_eq!(ms(12.345), "12.35");
    }
}
