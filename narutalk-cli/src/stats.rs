//! `narutalk stats`: users by role and verification, sessions by category, and messages on
//! each of the last 14 UTC days.

use clap::Args;
use narutalk_core::Narutalk;
use narutalk_core::admin::Stats;

use crate::core_error;
use crate::output::{grouped, print_json, print_lines, print_table, table};

/// `narutalk stats [--json]`
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print JSON instead of tables, for scripts.
    #[arg(long)]
    json: bool,
}

/// Prints the statistics as of today (UTC).
pub fn run(narutalk: &Narutalk, args: &StatsArgs) -> anyhow::Result<()> {
    let today = chrono::Utc::now().date_naive();
    let stats = narutalk.admin().stats(today).map_err(core_error)?;
    if args.json {
        return print_json(&stats);
    }
    print_tables(&stats)
}

fn print_tables(stats: &Stats) -> anyhow::Result<()> {
    let mut users = table([
        "ROLE",
        "USERS",
        "VERIFIED",
        "UNVERIFIED",
        "ACTIVE",
        "INACTIVE",
    ]);
    for row in &stats.users.by_role {
        users.add_row(vec![
            row.role.to_string(),
            grouped(row.total),
            grouped(row.verified),
            grouped(row.unverified),
            grouped(row.active),
            grouped(row.inactive),
        ]);
    }
    let sum = |f: fn(&narutalk_core::admin::RoleCount) -> u64| {
        grouped(stats.users.by_role.iter().map(f).sum::<u64>())
    };
    users.add_row(vec![
        "all".to_owned(),
        grouped(stats.users.total),
        sum(|r| r.verified),
        sum(|r| r.unverified),
        sum(|r| r.active),
        sum(|r| r.inactive),
    ]);
    print_table(&mut users, &[])?;
    print_lines("")?;

    let mut sessions = table(["CATEGORY", "SESSIONS", "MESSAGES"]);
    for row in &stats.sessions.by_category {
        sessions.add_row(vec![
            row.category.to_string(),
            grouped(row.sessions),
            grouped(row.messages),
        ]);
    }
    sessions.add_row(vec![
        "all".to_owned(),
        grouped(stats.sessions.total),
        grouped(stats.messages.total),
    ]);
    print_table(&mut sessions, &[])?;
    print_lines("")?;

    let mut days = table(["DAY (UTC)", "MESSAGES"]);
    for day in &stats.messages.per_day {
        days.add_row(vec![day.date.to_string(), grouped(day.messages)]);
    }
    print_table(&mut days, &[])
}
