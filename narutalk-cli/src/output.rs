//! How results are shown: aligned tables for people, pretty JSON for scripts (`--json`),
//! and the one format for times in tables. Tables are the same on a terminal and in a
//! pipe, except that on a terminal wide cells wrap to its width.

use std::fmt::Display;
use std::io::Write;

use chrono::{DateTime, Utc};
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

/// A borderless table with a header row: columns separated by two spaces, no trailing
/// spaces, so that it reads well and `grep`/`awk` still work on it.
pub fn table<I: IntoIterator<Item = S>, S: Into<comfy_table::Cell>>(header: I) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// Prints a table built with [`table`] to stdout.
pub fn print_table(table: &mut Table) -> anyhow::Result<()> {
    // Columns are discovered from the rows; pad the ones added after the header too.
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    print_lines(&table.trim_fmt())
}

/// A two-column table of labels and values, without a header.
pub fn print_fields(fields: &[(&str, String)]) -> anyhow::Result<()> {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic);
    for (label, value) in fields {
        table.add_row(vec![(*label).to_owned(), value.clone()]);
    }
    print_table(&mut table)
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
