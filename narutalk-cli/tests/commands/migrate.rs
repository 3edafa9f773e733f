//! Protects `narutalk migrate`: the one command that creates a database, idempotent on an
//! up-to-date one (it says `Created` the first time, that the schema is current after, and
//! how many migrations it applied to an older database), and stopped by a bad setting with
//! one line naming it. The settings file it shares with the server may hold the server's
//! settings, which it accepts without reading; a key neither reads is refused.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn narutalk() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_narutalk"));
    command.env_clear();
    command
}

fn migrate(database: &std::path::Path) -> std::process::Output {
    narutalk()
        .arg("migrate")
        .arg("--database")
        .arg(database)
        .output()
        .unwrap()
}

fn stdout(output: std::process::Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn migrate_creates_the_database_then_says_its_schema_is_current() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("nested/db.sqlite3");

    // Act
    let first = migrate(&database);
    let second = migrate(&database);

    // Assert
    assert_eq!(
        stdout(first),
        format!(
            "Created {} with 4 migration(s), the latest V4 pending_turns_and_outbox.\n",
            database.display()
        )
    );
    assert_eq!(
        stdout(second),
        format!(
            "The schema of {} is current (4 migration(s) applied, the latest V4 pending_turns_and_outbox).\n",
            database.display()
        )
    );
}

#[test]
fn migrate_says_how_many_migrations_it_applied_to_an_older_database() {
    // Arrange: a database as the build before V4 left it.
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite3");
    stdout(migrate(&database));
    let conn = rusqlite::Connection::open(&database).unwrap();
    conn.execute_batch(
        "ALTER TABLE chat_sessions DROP COLUMN turns_pending; \
         ALTER TABLE chat_sessions DROP COLUMN answered_seq; \
         ALTER TABLE chat_sessions DROP COLUMN turn_holder; \
         ALTER TABLE chat_sessions DROP COLUMN turn_expires; \
         DROP TABLE outbox; DELETE FROM refinery_schema_history WHERE version = 4;",
    )
    .unwrap();
    drop(conn);

    // Act
    let output = migrate(&database);

    // Assert
    assert_eq!(
        stdout(output),
        format!(
            "Migrated {}: 1 migration(s) applied now, 4 in all, the latest V4 pending_turns_and_outbox.\n",
            database.display()
        )
    );
}

#[test]
fn migrate_reads_the_database_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("env.sqlite3");
    let output = narutalk()
        .arg("migrate")
        .env("NARUTALK_DATABASE", &database)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(database.is_file());
}

#[test]
fn a_bad_setting_fails_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = narutalk()
        .arg("migrate")
        .current_dir(dir.path())
        .env("NARUTALK_ACCESS_TOKEN_MINUTES", "0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("NARUTALK_ACCESS_TOKEN_MINUTES"), "{stderr}");
    assert!(!dir.path().join("data").exists());
}

#[test]
fn the_servers_settings_in_a_shared_file_are_accepted_and_left_to_the_server() {
    // Arrange: the file both binaries read, with the server's settings beside the core's,
    // one of them a value the server would refuse.
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("db.sqlite3");
    let settings = dir.path().join("narutalk.toml");
    std::fs::write(
        &settings,
        format!(
            "database = {:?}\nbind = \"0.0.0.0:9000\"\nlog_format = \"json\"\nws_idle_seconds = 1\n",
            database.to_str().unwrap()
        ),
    )
    .unwrap();

    // Act
    let output = narutalk()
        .arg("--config")
        .arg(&settings)
        .arg("migrate")
        .env("NARUTALK_BIND", "nowhere")
        .output()
        .unwrap();

    // Assert
    assert!(output.status.success(), "{output:?}");
    assert!(database.is_file());
}

#[test]
fn a_key_neither_the_core_nor_the_server_knows_fails_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("narutalk.toml");
    std::fs::write(
        &settings,
        "bind = \"127.0.0.1:8000\"\nbnd = \"127.0.0.1:8000\"\n",
    )
    .unwrap();
    let output = narutalk()
        .arg("--config")
        .arg(&settings)
        .arg("migrate")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "setting NARUTALK_CONFIG: {}: unknown key \"bnd\"",
            settings.display()
        )),
        "{stderr}"
    );
    assert!(!dir.path().join("data").exists());
}

#[test]
fn an_unknown_command_is_a_usage_error_with_exit_code_2() {
    let output = narutalk().arg("frobnicate").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}
