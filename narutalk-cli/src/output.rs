//! How results are shown: aligned tables for people, pretty JSON for scripts (`--json`),
//! the one format for times in tables, progress bars, and list limits.
//!
//! A table fits the width of the terminal it is printed on (or `COLUMNS`, when set, as
//! `ls` reads it): columns that hold ids, emails, times and counts are never split; long
//! free text (titles, departments, message contents) wraps; and when that is not enough,
//! the least useful columns are left out, with a line on stderr that says so. Without a
//! terminal and without `COLUMNS` nothing wraps and every column is shown, so `grep` and
//! `awk` see one row per line.

use std::fmt::Display;
use std::io::{IsTerminal, Write};

use chrono::{DateTime, Utc};
use comfy_table::{ColumnConstraint, ContentArrangement, Table, presets};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Spaces between two columns.
const GAP: u16 = 2;

/// The narrowest a wrapping column is made before columns are left out instead.
const WRAP_MIN: u16 = 12;

/// Rows of the terminal kept free by a list's default limit: the header, the line that
/// counts the rows left out, and the shell's next prompt.
const ROWS_KEPT_FREE: u16 = 3;

/// What a column of a table does when the table is wider than the terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Give {
    /// Never split, never left out (ids, emails).
    Keep,
    /// Wraps onto more lines (free text), down to a dozen characters.
    Wrap,
    /// Never split; left out when the table still does not fit, those with the highest
    /// rank first.
    Drop(u8),
}

/// A borderless table with a header row: columns separated by two spaces, no trailing
/// spaces, so that it reads well and `grep`/`awk` still work on it.
pub fn table<I: IntoIterator<Item = S>, S: Into<comfy_table::Cell>>(header: I) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    table
}

/// Prints a table built with [`table`] to stdout, fitted to the terminal's width as
/// `gives` says column by column (a column without an entry is [`Give::Keep`]).
pub fn print_table(table: &mut Table, gives: &[Give]) -> anyhow::Result<()> {
    print_fitted(table, gives, terminal_width())
}

/// Like [`print_table`], for a list that has `--wide`: with it, every column at full
/// width whatever the terminal.
pub fn print_list(table: &mut Table, gives: &[Give], wide: bool) -> anyhow::Result<()> {
    print_fitted(table, gives, if wide { None } else { terminal_width() })
}

/// A two-column table of labels and values, without a header; long values wrap.
pub fn print_fields(fields: &[(&str, String)]) -> anyhow::Result<()> {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic);
    for (label, value) in fields {
        table.add_row(vec![(*label).to_owned(), value.clone()]);
    }
    print_table(&mut table, &[Give::Keep, Give::Wrap])
}

fn print_fitted(table: &mut Table, gives: &[Give], width: Option<u16>) -> anyhow::Result<()> {
    let left_out = fit(table, gives, width);
    print_lines(&table.trim_fmt())?;
    if !left_out.is_empty() {
        note(&format!(
            "Left out to fit {} columns: {}; --wide shows every column.",
            width.unwrap_or_default(),
            left_out.join(", ")
        ));
    }
    Ok(())
}

/// Sets the table's width and its columns' constraints for `width` (`None`: no limit),
/// and returns the headers of the columns left out.
fn fit(table: &mut Table, gives: &[Give], width: Option<u16>) -> Vec<String> {
    // Columns are discovered from the rows; pad the ones added after the header too.
    for column in table.column_iter_mut() {
        column.set_padding((0, GAP));
    }
    let natural = table.column_max_content_widths();
    let give = |index: usize| gives.get(index).copied().unwrap_or(Give::Keep);
    let Some(width) = width else {
        table.set_content_arrangement(ContentArrangement::Disabled);
        return Vec::new();
    };
    // The last column's padding is trimmed from every line: it may reach past `width`.
    table.set_width(width.saturating_add(GAP));
    let needed = |shown: &[bool], wrapped: bool| -> u32 {
        natural
            .iter()
            .enumerate()
            .filter(|(index, _)| shown[*index])
            .map(|(index, &content)| {
                let content = match give(index) {
                    Give::Wrap if wrapped => content.min(WRAP_MIN),
                    _ => content,
                };
                u32::from(content) + u32::from(GAP)
            })
            .sum()
    };
    let mut shown = vec![true; natural.len()];
    let limit = u32::from(width) + u32::from(GAP);
    let mut by_rank: Vec<(u8, usize)> = (0..natural.len())
        .filter_map(|index| match give(index) {
            Give::Drop(rank) => Some((rank, index)),
            _ => None,
        })
        .collect();
    by_rank.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let mut left_out = Vec::new();
    for (_, index) in by_rank {
        if needed(&shown, true) <= limit {
            break;
        }
        shown[index] = false;
        left_out.push(index);
    }
    left_out.sort_unstable();
    let headers: Vec<String> = table
        .header()
        .map(|header| header.cell_iter().map(|c| c.content()).collect())
        .unwrap_or_default();
    for (index, column) in table.column_iter_mut().enumerate() {
        if !shown[index] {
            column.set_constraint(ColumnConstraint::Hidden);
        } else if give(index) != Give::Wrap {
            column.set_constraint(ColumnConstraint::ContentWidth);
        }
    }
    left_out
        .into_iter()
        .map(|index| headers.get(index).cloned().unwrap_or_default())
        .collect()
}

/// The width tables are fitted to: `COLUMNS` when it is set to a number (as `ls` reads
/// it), otherwise the terminal's when stdout is one, otherwise none.
pub fn terminal_width() -> Option<u16> {
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok())
        .filter(|&columns| columns > 0)
    {
        return Some(columns);
    }
    if !std::io::stdout().is_terminal() {
        return None;
    }
    console::Term::stdout()
        .size_checked()
        .map(|(_, columns)| columns)
}

/// How many rows of a list fit on the terminal: `None` (every row) when stdout is not a
/// terminal, otherwise its height less a few rows (at least 5; 24 rows when the terminal
/// does not say).
pub fn screenful() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let rows = console::Term::stdout()
        .size_checked()
        .map_or(24, |(rows, _)| rows);
    Some(usize::from(rows.saturating_sub(ROWS_KEPT_FREE).max(5)))
}

/// How many rows a list shows: `--limit N`, `--limit all`, or a screenful on a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// At most this many rows.
    Rows(usize),
    /// Every row.
    All,
}

/// Parses `--limit`: a number of rows from 1, or `all`.
pub fn limit(text: &str) -> Result<Limit, String> {
    if text == "all" {
        return Ok(Limit::All);
    }
    match text.parse::<usize>() {
        Ok(rows) if rows > 0 => Ok(Limit::Rows(rows)),
        _ => Err("expected a number of rows from 1, or all".to_owned()),
    }
}

/// The rows a list keeps: `limit` when given; otherwise every row with `--json` or
/// without a terminal, and a screenful on one.
pub fn rows_shown(limit: Option<Limit>, json: bool) -> Option<usize> {
    match limit {
        Some(Limit::Rows(rows)) => Some(rows),
        Some(Limit::All) => None,
        None if json => None,
        None => screenful(),
    }
}

/// Cuts `items` to `shown` rows (`None`: all) and returns how many were cut.
pub fn cut<T>(items: &mut Vec<T>, shown: Option<usize>) -> usize {
    match shown {
        Some(shown) if items.len() > shown => {
            let more = items.len() - shown;
            items.truncate(shown);
            more
        }
        _ => 0,
    }
}

/// The line on stderr after a list cut by its limit.
pub fn note_more(more: usize, what: &str) {
    if more > 0 {
        note(&format!(
            "{} more {what}; use --limit N or --limit all to see them.",
            grouped(more)
        ));
    }
}

/// A line for the administrator on stderr, beside the results on stdout.
pub fn note(text: &str) {
    eprintln!("{text}");
}

/// A progress bar on stderr when `shown`, hidden otherwise; `template` is indicatif's.
pub fn progress_bar(shown: bool, template: &str) -> ProgressBar {
    let progress = if shown {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress
}

/// Pretty JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    print_lines(&serde_json::to_string_pretty(value)?)
}

/// `text` and a final line break on stdout; a closed stdout is an error like any other.
pub fn print_lines(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    Ok(())
}

/// A time in a table: UTC to the minute (`2026-11-26 10:14`). JSON keeps microseconds.
pub fn minute(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M").to_string()
}

/// `yes` or `no`.
pub fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// `12,345,678`: a count people can read at a glance.
pub fn grouped(n: impl Display) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
