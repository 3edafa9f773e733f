//! The suite's outcome: one row per part, the table, the findings and the closing line.

use std::path::PathBuf;

use comfy_table::{ContentArrangement, Table, presets};

/// What one part did and found.
#[derive(Debug)]
pub struct Row {
    /// The part's name (filled in by the runner).
    pub part: &'static str,
    /// What ran, in a few words.
    pub ran: String,
    /// The counts (requests, rounds, messages, connections).
    pub counts: String,
    /// The figures: latencies, memory, times (printed, never asserted).
    pub figures: String,
    /// Passed, failed with findings, or skipped with the reason.
    pub verdict: Verdict,
    /// How long the part took (filled in by the runner).
    pub seconds: f64,
    /// The part's folder, kept when it failed (filled in by the runner).
    pub kept: Option<PathBuf>,
}

/// A part's verdict.
#[derive(Debug)]
pub enum Verdict {
    /// Every check held.
    Passed,
    /// These checks did not hold, each a sentence.
    Failed(Vec<String>),
    /// The part could not run here, for this reason.
    Skipped(String),
}

impl Verdict {
    /// `passed`, `FAILED` or `skipped`.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed(_) => "FAILED",
            Verdict::Skipped(_) => "skipped",
        }
    }
}

impl Row {
    /// A row whose verdict is passed when `findings` is empty, failed otherwise.
    pub fn new(ran: String, counts: String, figures: String, findings: Vec<String>) -> Row {
        let verdict = if findings.is_empty() {
            Verdict::Passed
        } else {
            Verdict::Failed(findings)
        };
        Row {
            part: "",
            ran,
            counts,
            figures,
            verdict,
            seconds: 0.0,
            kept: None,
        }
    }

    /// A part that could not finish: `finding` says why.
    pub fn failed(finding: String) -> Row {
        Row::new(
            "(did not finish)".to_owned(),
            String::new(),
            String::new(),
            vec![finding],
        )
    }

    /// A part that cannot run here.
    pub fn skipped(ran: String, reason: String) -> Row {
        Row {
            verdict: Verdict::Skipped(reason),
            ..Row::new(ran, String::new(), String::new(), Vec::new())
        }
    }
}

/// Prints `title` (which names the backend), the table, every finding of the failed
/// parts, and the closing line `N passed, N failed`.
pub fn print(title: &str, rows: &[Row]) {
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(180)
        .set_header(["part", "what ran", "counts", "figures", "verdict"]);
    for row in rows {
        let verdict = match &row.verdict {
            Verdict::Passed => format!("passed ({:.0} s)", row.seconds),
            Verdict::Failed(findings) => {
                format!(
                    "FAILED: {} finding(s) ({:.0} s)",
                    findings.len(),
                    row.seconds
                )
            }
            Verdict::Skipped(reason) => format!("skipped: {reason}"),
        };
        table.add_row([
            row.part.to_owned(),
            row.ran.clone(),
            row.counts.clone(),
            row.figures.clone(),
            verdict,
        ]);
    }
    println!("\n{title}\n{table}");
    for row in rows {
        if let Verdict::Failed(findings) = &row.verdict {
            println!("\n{} failed:", row.part);
            for finding in findings {
                println!("  - {finding}");
            }
            if let Some(kept) = &row.kept {
                println!(
                    "  (its folder, with the server's log, is kept: {})",
                    kept.display()
                );
            }
        }
    }
    let passed = rows
        .iter()
        .filter(|row| matches!(row.verdict, Verdict::Passed))
        .count();
    let failed = rows
        .iter()
        .filter(|row| matches!(row.verdict, Verdict::Failed(_)))
        .count();
    println!("\n{passed} passed, {failed} failed");
}

/// `p50 / p99 / max` of `samples` in milliseconds, or `-` when there are none.
pub fn latencies(samples: &[f64]) -> String {
    if samples.is_empty() {
        return "-".to_owned();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |fraction: f64| {
        let index = ((sorted.len() as f64 * fraction).ceil() as usize).saturating_sub(1);
        sorted[index.min(sorted.len() - 1)]
    };
    format!(
        "p50 {:.1} / p99 {:.1} / max {:.1} ms",
        at(0.50),
        at(0.99),
        sorted[sorted.len() - 1]
    )
}
