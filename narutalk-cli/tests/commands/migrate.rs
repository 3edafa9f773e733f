//! Protects `narutalk migrate`: the one command that creates a database, idempotent on an
//! up-to-date one (it says `created` the first time, `migrated` after), and stopped by a
//! bad setting with one line naming it.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn narutalk() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_narutalk"));
    command.env_clear();
    command
}

#[test]
fn migrate_creates_the_database_then_migrates_it_again_as_a_no_op() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("nested/db.sqlite3");

    // Act
    let first = narutalk()
        .arg("migrate")
        .arg("--database")
        .arg(&database)
        .output()
        .unwrap();
    let second = narutalk()
        .arg("migrate")
        .arg("--database")
        .arg(&database)
        .output()
        .unwrap();

    // Assert
    assert!(first.status.success(), "{first:?}");
    assert_eq!(
        String::from_utf8(first.stdout).unwrap(),
        format!(
            "created {}: 3 migration(s) applied, latest V3 write_probe\n",
            database.display()
        )
    );
    assert!(second.status.success(), "{second:?}");
    assert_eq!(
        String::from_utf8(second.stdout).unwrap(),
        format!(
            "migrated {}: 3 migration(s) applied, latest V3 write_probe\n",
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
fn an_unknown_command_is_a_usage_error_with_exit_code_2() {
    let output = narutalk().arg("frobnicate").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}
