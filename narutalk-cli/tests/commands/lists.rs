//! Protects how `user list` and `session list` page and fit: every row in a pipe or with
//! `--json`, a screenful on a terminal, `--limit N|all` with a last line on stderr counting
//! what was cut; tables no wider than the terminal (or `COLUMNS`), ids and emails never
//! split, the least useful columns left out first and named, `--wide` for all of them.

use narutalk_core::accounts::Role;
use narutalk_core::chat::Category;

use crate::support::{Env, error_line, json_of};

/// `n` doctors with long emails (`kim.minjun.01@cardiology.hospital.example`, 41
/// characters) and usernames (`kim.minjun.01`), created through the core.
fn doctors(env: &Env, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| {
            let username = format!("kim.minjun.{i:02}");
            let email = format!("{username}@cardiology.hospital.example");
            env.account(&email, &username, Role::Doctor, true);
            email
        })
        .collect()
}

fn output(command: &mut assert_cmd::Command) -> (String, String) {
    let output = command.assert().success().get_output().clone();
    (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn in_a_pipe_a_list_shows_every_row_and_limit_cuts_it_with_a_line_saying_so() {
    // Arrange
    let env = Env::new();
    doctors(&env, 30);
    let kim = env.user("kim", Role::User);
    for n in 0..7 {
        env.session(&kim, &format!("Question {n}"), Category::General);
    }

    // Act and assert
    let (all, note) = output(&mut env.run(&["user", "list"]));
    assert_eq!((all.lines().count(), note.as_str()), (1 + 31, ""));
    let (cut, note) = output(&mut env.run(&["user", "list", "--limit", "5"]));
    assert_eq!(cut.lines().count(), 1 + 5);
    assert_eq!(
        note,
        "26 more users; use --limit N or --limit all to see them.\n"
    );
    assert_eq!(
        json_of(&mut env.run(&["user", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        31
    );
    let (json, note) = output(&mut env.run(&["user", "list", "--json", "--limit", "2"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap()[1]["id"],
        2
    );
    assert_eq!(
        note,
        "29 more users; use --limit N or --limit all to see them.\n"
    );
    let (sessions, note) = output(&mut env.run(&["session", "list", "--limit", "3"]));
    assert_eq!(sessions.lines().count(), 1 + 3);
    assert_eq!(
        note,
        "4 more sessions; use --limit N or --limit all to see them.\n"
    );
    let (sessions, note) = output(&mut env.run(&["session", "list", "--limit", "all"]));
    assert_eq!((sessions.lines().count(), note.as_str()), (1 + 7, ""));
    env.run(&["user", "list", "--limit", "0"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(error_line(
            "Invalid value '0' for '--limit <N|all>': expected a number of rows from 1, or all (see --help).",
        ));
}

#[test]
fn a_table_fits_columns_without_splitting_an_email_and_names_the_columns_left_out() {
    // Arrange
    let env = Env::new();
    let emails = doctors(&env, 3);

    // Act
    let (narrow, note) = output(env.run(&["user", "list"]).env("COLUMNS", "80"));
    let (wide, wide_note) = output(env.run(&["user", "list", "--wide"]).env("COLUMNS", "80"));

    // Assert
    assert!(narrow.lines().all(|line| line.len() <= 80), "{narrow}");
    assert!(
        narrow.starts_with(
            "ID  EMAIL                                      USERNAME       ROLE    VERIFIED\n"
        ),
        "{narrow}"
    );
    for (n, email) in emails.iter().enumerate() {
        let row = format!("{}   {email}  kim.minjun.0{}  doctor  yes", n + 1, n + 1);
        assert!(narrow.lines().any(|line| line == row), "{row} in {narrow}");
    }
    assert_eq!(
        note,
        "Left out to fit 80 columns: DEPARTMENT, ACTIVE, JOINED, LAST LOGIN; --wide shows every column.\n"
    );
    assert!(
        wide.lines()
            .next()
            .unwrap()
            .ends_with("JOINED            LAST LOGIN")
    );
    assert_eq!(wide_note, "");
}

#[test]
fn session_titles_wrap_while_ids_and_owners_stay_whole() {
    // Arrange
    let env = Env::new();
    let emails = doctors(&env, 1);
    let core = env.core();
    let owner = core.accounts().find_by_email(&emails[0]).unwrap();
    let title = "Persistent headache after three night shifts in a row";
    let id = core
        .chat()
        .create_session(owner.id, title, Category::Medical)
        .unwrap()
        .session
        .id;

    // Act
    let (table, note) = output(env.run(&["session", "list"]).env("COLUMNS", "100"));

    // Assert
    assert!(table.lines().all(|line| line.len() <= 100), "{table}");
    let first_row = table.lines().nth(1).unwrap();
    assert!(
        first_row.starts_with(&format!("{id}  {}  ", emails[0])),
        "{table}"
    );
    let words: Vec<&str> = table
        .lines()
        .skip(1)
        .flat_map(|line| line[36 + 2 + emails[0].len() + 2..].split_whitespace())
        .collect();
    assert_eq!(words.join(" "), title, "{table}");
    assert_eq!(
        note,
        "Left out to fit 100 columns: CATEGORY, ACTIVE, MESSAGES, UPDATED; --wide shows every column.\n"
    );
}

#[test]
fn on_a_terminal_a_list_stops_after_a_screenful_and_fits_the_terminal() {
    // Arrange
    let env = Env::new();
    let emails = doctors(&env, 30);

    // Act
    let Some(shown) = env.on_terminal(
        &["user", "list"],
        12,
        80,
        "on_a_terminal_a_list_stops_after_a_screenful_and_fits_the_terminal",
    ) else {
        return;
    };
    let Some(all) = env.on_terminal(&["user", "list", "--limit", "all"], 12, 80, "") else {
        return;
    };

    // Assert: 12 rows less 3 kept free: the header and 9 users, then the notes.
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 1 + 9 + 2, "{shown}");
    assert!(lines[0].starts_with("ID  EMAIL "), "{shown}");
    for (n, email) in emails.iter().take(9).enumerate() {
        assert!(
            lines[1 + n].starts_with(&format!("{}   {email}  ", n + 1)),
            "{shown}"
        );
    }
    assert!(lines[..10].iter().all(|line| line.len() <= 80), "{shown}");
    assert_eq!(
        lines[10],
        "Left out to fit 80 columns: DEPARTMENT, ACTIVE, JOINED, LAST LOGIN; --wide shows every column."
    );
    assert_eq!(
        lines[11],
        "21 more users; use --limit N or --limit all to see them."
    );
    assert_eq!(all.lines().count(), 1 + 30 + 1, "{all}");
}
