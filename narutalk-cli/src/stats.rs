//! `narutalk stats`: users by role and verification, sessions by category, and messages on
//! each of the last 14 UTC days.

use clap::Args;
use narutalk_core::Narutalk;
use narutalk_core::accounts::Role;
use narutalk_core::admin::{CategoryCount, DayCount, RoleCount, Stats};
use narutalk_core::chat::Category;
use serde::Serialize;

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
        return print_json(&StatsJson::from(&stats));
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

/// The statistics as `stats --json` shows them: `users`, `sessions` and `messages`, each
/// with its total and its rows.
#[derive(Serialize)]
struct StatsJson {
    users: UsersJson,
    sessions: SessionsJson,
    messages: MessagesJson,
}

#[derive(Serialize)]
struct UsersJson {
    total: u64,
    by_role: Vec<RoleJson>,
}

/// One role's users.
#[derive(Serialize)]
struct RoleJson {
    role: Role,
    total: u64,
    verified: u64,
    unverified: u64,
    active: u64,
    inactive: u64,
}

#[derive(Serialize)]
struct SessionsJson {
    total: u64,
    by_category: Vec<CategoryJson>,
}

/// One category's sessions and their messages.
#[derive(Serialize)]
struct CategoryJson {
    category: Category,
    sessions: u64,
    messages: u64,
}

#[derive(Serialize)]
struct MessagesJson {
    total: u64,
    per_day: Vec<DayJson>,
}

/// One UTC day's messages; the day as `2026-11-26`.
#[derive(Serialize)]
struct DayJson {
    date: String,
    messages: u64,
}

impl From<&Stats> for StatsJson {
    fn from(stats: &Stats) -> Self {
        let role = |row: &RoleCount| RoleJson {
            role: row.role,
            total: row.total,
            verified: row.verified,
            unverified: row.unverified,
            active: row.active,
            inactive: row.inactive,
        };
        let category = |row: &CategoryCount| CategoryJson {
            category: row.category,
            sessions: row.sessions,
            messages: row.messages,
        };
        let day = |row: &DayCount| DayJson {
            date: row.date.to_string(),
            messages: row.messages,
        };
        StatsJson {
            users: UsersJson {
                total: stats.users.total,
                by_role: stats.users.by_role.iter().map(role).collect(),
            },
            sessions: SessionsJson {
                total: stats.sessions.total,
                by_category: stats.sessions.by_category.iter().map(category).collect(),
            },
            messages: MessagesJson {
                total: stats.messages.total,
                per_day: stats.messages.per_day.iter().map(day).collect(),
            },
        }
    }
}
