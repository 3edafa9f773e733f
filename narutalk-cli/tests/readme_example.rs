//! Protects the README's worked example of the administrators' command line: the shell
//! block between `<!-- worked-example:start -->` and `<!-- worked-example:end -->` runs as
//! printed (bash, `set -euo pipefail`, the built `narutalk` first on `PATH`, in an empty
//! folder), and every command of the output block that follows prints what that block
//! says, apart from times, sizes and durations. Between steps 3 and 4 the test adds Dr
//! Kim's chats through the core, as the server would while she uses it: 12 sessions of 4
//! questions, each with its reply.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use narutalk_core::Narutalk;
use narutalk_core::chat::Category;
use narutalk_core::config::Config;

/// The text between two marker lines of the README, without the code fence lines.
fn block(readme: &str, start: &str, end: &str) -> String {
    let from = readme.find(start).unwrap() + start.len();
    let to = from + readme[from..].find(end).unwrap();
    readme[from..to]
        .lines()
        .filter(|line| !line.starts_with("```"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `script` with bash in `dir`, tracing each command as `$ command` among its
/// output, and returns stdout and stderr together.
fn run(script: &str, dir: &Path) -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_narutalk")).parent().unwrap();
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec 2>&1\nset -euo pipefail\nPS4='$ '\nset -x\n{script}"
        ))
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "the example failed:\n{text}");
    text
}

/// What Dr Kim did through the API between steps 3 and 4: 12 sessions, 4 questions each.
fn kim_chats(dir: &Path) {
    let config = Config {
        database: dir.join("data/databases/db.sqlite3"),
        ..Config::for_tests(dir)
    };
    let core = Narutalk::open_for_administration(&config).unwrap();
    let kim = core
        .accounts()
        .find_by_email("kim@hospital.example")
        .unwrap();
    for n in 0..12 {
        let category = Category::ALL[n % Category::ALL.len()];
        let session = core
            .chat()
            .create_session(kim.id, &format!("Ward round {n}"), category)
            .unwrap()
            .session
            .id;
        for question in 0..4 {
            core.send_message(kim.id, session, &format!("Question {question}"))
                .unwrap();
        }
    }
}

/// `line` with every `YYYY-MM-DD HH:MM` time and every `(N bytes in T s)` made the same.
fn normalized(line: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = line.chars().collect();
    let shape: Vec<char> = "0000-00-00 00:00".chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let window = chars.get(i..i + shape.len());
        let is_time = window.is_some_and(|w| {
            w.iter().zip(&shape).all(|(c, s)| {
                if *s == '0' {
                    c.is_ascii_digit()
                } else {
                    c == s
                }
            })
        });
        if is_time {
            out.push_str("TIME");
            i += shape.len();
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    match (out.find(" ("), out.rfind(" s).")) {
        (Some(open), Some(close)) if out[open..].contains(" bytes in ") => {
            format!("{} (SIZE){}", &out[..open], &out[close + 3..])
        }
        _ => out,
    }
}

/// The output of every `$ command` of `transcript`, by command.
fn outputs(transcript: &str) -> Vec<(String, Vec<String>)> {
    let mut outputs: Vec<(String, Vec<String>)> = Vec::new();
    for line in transcript.lines() {
        // bash's trace repeats the `$` for commands in subshells (`$$ head -c 18 ...`).
        let traced = line
            .starts_with('$')
            .then(|| line.trim_start_matches('$').strip_prefix(' '))
            .flatten();
        match traced {
            Some(command) => outputs.push((command.to_owned(), Vec::new())),
            None => {
                if let Some((_, lines)) = outputs.last_mut() {
                    lines.push(normalized(line));
                }
            }
        }
    }
    outputs
}

#[test]
fn the_readme_worked_example_runs_as_printed_and_prints_what_it_shows() {
    // Arrange
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let script = block(
        &readme,
        "<!-- worked-example:start -->",
        "<!-- worked-example:end -->",
    );
    let expected = block(
        &readme,
        "<!-- worked-example-output:start -->",
        "<!-- worked-example-output:end -->",
    );
    let step_4 = script.find("\n# 4.").unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Act
    let mut transcript = run(&script[..step_4], dir.path());
    kim_chats(dir.path());
    transcript.push_str(&run(&script[step_4..], dir.path()));

    // Assert
    let ran = outputs(&transcript);
    for (command, lines) in outputs(&expected) {
        let printed = ran
            .iter()
            .find(|(ran_command, printed)| *ran_command == command && *printed == lines)
            .map(|(_, printed)| printed);
        assert_eq!(
            printed,
            Some(&lines),
            "`{command}` in the README's output does not match a run of the example:\n{transcript}"
        );
    }
    assert!(
        dir.path()
            .join("backups/narutalk-2026-11-26.sqlite3")
            .is_file()
    );
}
