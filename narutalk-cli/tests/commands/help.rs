//! Protects the command line's shape: every command's `--help` has an example, usage
//! errors are one line with exit code 2, and every command but `migrate` refuses a missing
//! database with one line naming it, creating nothing.

use crate::support::{Env, error_line, narutalk_in};

/// Every command, as typed after `narutalk`.
const COMMANDS: &[&[&str]] = &[
    &[],
    &["migrate"],
    &["db"],
    &["db", "status"],
    &["db", "check"],
    &["db", "backup"],
    &["user"],
    &["user", "create"],
    &["user", "list"],
    &["user", "show"],
    &["user", "set-role"],
    &["user", "verify"],
    &["user", "unverify"],
    &["user", "activate"],
    &["user", "deactivate"],
    &["user", "logout-all"],
    &["user", "reset-password"],
    &["user", "delete"],
    &["session"],
    &["session", "list"],
    &["session", "show"],
    &["session", "delete"],
    &["session", "export"],
    &["session", "import"],
    &["stats"],
];

#[test]
fn every_command_has_an_example_in_its_help() {
    let env = Env::new();
    for command in COMMANDS {
        let mut args = command.to_vec();
        args.push("--help");
        let output = env.run(&args).assert().success().get_output().clone();
        let help = String::from_utf8(output.stdout).unwrap();
        let example_line = help
            .lines()
            .skip_while(|line| !line.starts_with("Example"))
            .nth(1)
            .unwrap_or_default()
            .trim_start();
        assert!(
            example_line.starts_with("narutalk ") || example_line.starts_with("printf "),
            "`narutalk {}` --help has no example:\n{help}",
            command.join(" ")
        );
    }
}

#[test]
fn an_unknown_command_is_one_usage_line_with_exit_code_2() {
    Env::new()
        .run(&["frobnicate"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(error_line(
            "Unrecognized subcommand 'frobnicate' (see --help).",
        ));
}

#[test]
fn a_missing_argument_is_one_usage_line_with_exit_code_2() {
    Env::new()
        .run(&["user", "create", "--username", "kim"])
        .assert()
        .code(2)
        .stderr(error_line(
            "The following required arguments were not provided: --email <EMAIL> (see --help).",
        ));
}

#[test]
fn a_bad_role_is_a_usage_error_listing_the_roles() {
    let env = Env::new();
    for args in [
        &[
            "user",
            "create",
            "--email",
            "kim@example.com",
            "--username",
            "kim",
            "--role",
            "boss",
        ][..],
        &["user", "set-role", "kim@example.com", "boss"][..],
        &["user", "list", "--role", "boss"][..],
    ] {
        let flag = if args[1] == "set-role" {
            "<ROLE>"
        } else {
            "--role <ROLE>"
        };
        env.run(args).assert().code(2).stdout("").stderr(error_line(&format!(
            "Invalid value 'boss' for '{flag}' [possible values: admin, doctor, nurse, user] (see --help)."
        )));
    }
}

#[test]
fn a_filter_value_that_is_not_true_or_false_or_a_day_is_a_usage_error() {
    let env = Env::new();
    env.run(&["user", "list", "--verified", "maybe"])
        .assert()
        .code(2)
        .stderr(error_line(
            "Invalid value 'maybe' for '--verified <true|false>' [possible values: true, false] (see --help).",
        ));
    env.run(&["session", "list", "--since", "26/11/2026"])
        .assert()
        .code(2)
        .stderr(error_line(
            "Invalid value '26/11/2026' for '--since <YYYY-MM-DD>': expected a day as YYYY-MM-DD (see --help).",
        ));
    env.run(&["session", "export", "--format", "csv"])
        .assert()
        .code(2)
        .stderr(error_line(
            "Invalid value 'csv' for '--format <FORMAT>' [possible values: jsonl, json] (see --help).",
        ));
}

#[test]
fn every_command_but_migrate_refuses_a_missing_database_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere/db.sqlite3");
    let session = "11111111-1111-4111-8111-111111111111";
    let commands: &[&[&str]] = &[
        &["db", "status"],
        &["db", "check"],
        &["db", "backup", "copy.sqlite3"],
        &[
            "user",
            "create",
            "--email",
            "kim@example.com",
            "--username",
            "kim",
            "--password-stdin",
        ],
        &["user", "list"],
        &["user", "show", "kim@example.com"],
        &["user", "set-role", "1", "admin"],
        &["user", "verify", "1"],
        &["user", "unverify", "1"],
        &["user", "activate", "1"],
        &["user", "deactivate", "1"],
        &["user", "logout-all", "1"],
        &["user", "reset-password", "1", "--password-stdin"],
        &["user", "delete", "1", "--yes"],
        &["session", "list"],
        &["session", "show", session],
        &["session", "delete", session, "--yes"],
        &["session", "export"],
        &["session", "import", "file.jsonl"],
        &["stats"],
    ];
    for args in commands {
        narutalk_in(dir.path())
            .arg("--database")
            .arg(&missing)
            .args(*args)
            .write_stdin("violet-harbour-42\n")
            .assert()
            .code(1)
            .stdout("")
            .stderr(error_line(&format!(
                "Database {} does not exist (run `narutalk migrate` to create it).",
                missing.display()
            )));
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Words that would send a reader of the help outside the repository (to files a clone
/// does not have), compared in lower case.
const OUTSIDE: &[&str] = &["../", "shared/", "spec/", "api.md", "contract", "section "];

#[test]
fn no_help_of_any_command_sends_its_reader_outside_the_repository() {
    // Every command and subcommand, found by walking the `Commands:` lists of the help
    // itself, so that a command added later is covered too.
    let env = Env::new();
    let mut pending: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = 0;
    while let Some(command) = pending.pop() {
        let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
        args.push("--help");
        let output = env.run(&args).assert().success().get_output().clone();
        let help = String::from_utf8(output.stdout).unwrap();
        seen += 1;
        let lower = help.to_lowercase();
        for outside in OUTSIDE {
            assert!(
                !lower.contains(outside),
                "`narutalk {} --help` has {outside:?}:\n{help}",
                command.join(" ")
            );
        }
        for sub in subcommands(&help) {
            let mut deeper = command.clone();
            deeper.push(sub);
            pending.push(deeper);
        }
    }
    assert!(seen >= COMMANDS.len(), "only {seen} commands were found");
}

/// The names listed under `Commands:` in a help text, `help` itself left out.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim_end() != "Commands:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        // A name sits two spaces in; deeper lines continue a wrapped description.
        .filter(|line| !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn help_names_the_default_settings_file() {
    let output = Env::new()
        .run(&["--help"])
        .assert()
        .success()
        .get_output()
        .clone();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(
        help.contains("without either, /etc/narutalk/narutalk.toml when it exists"),
        "{help}"
    );
}
