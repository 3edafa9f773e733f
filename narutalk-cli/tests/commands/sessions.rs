//! Protects `narutalk session ...`: listing, showing and deleting any user's sessions,
//! the export (JSON Lines or one JSON array, to a file or stdout, with the list's filters),
//! and the import (whole file checked first, owners by email and created on request,
//! idempotent by ids, progress on a terminal).

use narutalk_core::Narutalk;
use narutalk_core::accounts::Role;
use narutalk_core::admin::SessionQuery;
use narutalk_core::chat::Category;
use narutalk_core::error::Error;
use narutalk_core::store::OpenMode;
use serde_json::{Value, json};

use crate::support::{Env, error_line, json_of, stdout_of};

const MISSING: &str = "11111111-1111-4111-8111-111111111111";

fn ids(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn list_shows_every_owners_sessions_with_the_filters() {
    // Arrange
    let env = Env::new();
    let kim = env.user("kim", Role::Doctor);
    let lee = env.user("lee", Role::Nurse);
    let first = env.session(&kim, "Headache", Category::Medical);
    let second = env.session(&lee, "Shift", Category::General);
    env.core()
        .chat()
        .update_session_fields(
            lee.id,
            second,
            json!({"is_active": false}).as_object().unwrap(),
        )
        .unwrap();
    let list = |args: &[&str]| {
        let mut all = vec!["session", "list", "--json"];
        all.extend_from_slice(args);
        ids(&json_of(&mut env.run(&all)))
    };

    // Act and assert
    assert_eq!(list(&[]), [second.to_string(), first.to_string()]);
    assert_eq!(list(&["--user", "kim@example.com"]), [first.to_string()]);
    assert_eq!(list(&["--user", "2"]), [second.to_string()]);
    assert_eq!(list(&["--category", "medical"]), [first.to_string()]);
    assert_eq!(list(&["--active", "false"]), [second.to_string()]);
    assert_eq!(list(&["--since", "2000-01-01"]).len(), 2);
    assert_eq!(list(&["--since", "2999-01-01"]), Vec::<String>::new());
    let table = stdout_of(&mut env.run(&["session", "list", "--user", "kim@example.com"]));
    let updated = env.core().admin().session(first).unwrap().updated_at;
    assert_eq!(
        table,
        format!(
            "ID                                    OWNER            TITLE     CATEGORY  ACTIVE  MESSAGES  UPDATED\n\
             {first}  kim@example.com  Headache  medical   yes     2         {}\n",
            updated.format("%Y-%m-%d %H:%M")
        )
    );
}

#[test]
fn show_prints_the_session_and_its_messages_and_json_is_the_export_form() {
    let env = Env::new();
    let kim = env.user("kim", Role::Doctor);
    let id = env.session(&kim, "Headache", Category::Medical);

    let json = json_of(&mut env.run(&["session", "show", &id.to_string(), "--json"]));
    let table = stdout_of(&mut env.run(&["session", "show", &id.to_string()]));

    let exported = env.core().admin().session(id).unwrap();
    assert_eq!(json, serde_json::to_value(&exported).unwrap());
    let time = |n: usize| {
        exported.messages[n]
            .timestamp
            .format("%Y-%m-%d %H:%M")
            .to_string()
    };
    assert!(
        table.ends_with(&format!(
            "SEQ  TIME              SENDER  TYPE  CONTENT\n\
             1    {}  user    text  What helps?\n\
             2    {}  ai      text  AI 응답: What helps?에 대한 의료 정보를 제공합니다.\n",
            time(0),
            time(1)
        )),
        "{table}"
    );
    assert!(
        table.starts_with(&format!("id        {id}\nowner     kim@example.com\n")),
        "{table}"
    );
}

#[test]
fn an_unknown_or_malformed_session_id_fails_with_one_line() {
    let env = Env::new();
    for args in [
        &["session", "show", MISSING][..],
        &["session", "delete", MISSING, "--yes"][..],
    ] {
        env.run(args)
            .assert()
            .code(1)
            .stdout("")
            .stderr(error_line(&format!("No session {MISSING}.")));
    }
    env.run(&["session", "show", "11111111-1111-4111-8111-11111111111A"])
        .assert()
        .code(2)
        .stderr(error_line(
            "Invalid value '11111111-1111-4111-8111-11111111111A' for '<ID>': not a session id (a lower-case hyphenated UUID) (see --help).",
        ));
}

#[test]
fn delete_refuses_without_a_terminal_and_deletes_any_owners_session_with_yes() {
    let env = Env::new();
    let kim = env.user("kim", Role::Doctor);
    let id = env.session(&kim, "Headache", Category::Medical);

    env.run(&["session", "delete", &id.to_string()])
        .assert()
        .code(2)
        .stderr(error_line(&format!(
            "Refusing to delete session {id} without confirmation: no terminal to ask on (add --yes)."
        )));
    env.run(&["session", "delete", &id.to_string(), "--yes"])
        .assert()
        .success()
        .stdout(format!(
            "Deleted session {id} (\"Headache\" of kim@example.com, 2 message(s)).\n"
        ))
        .stderr("");

    assert!(matches!(
        env.core().admin().session(id),
        Err(Error::NotFound)
    ));
}

#[test]
fn export_writes_json_lines_or_one_array_to_stdout_or_a_file() {
    // Arrange
    let env = Env::new();
    let kim = env.user("kim", Role::Doctor);
    let lee = env.user("lee", Role::Nurse);
    let first = env.session(&kim, "Headache", Category::Medical);
    let second = env.session(&lee, "Shift", Category::Emergency);
    let expected: Vec<Value> = [first, second]
        .iter()
        .map(|id| serde_json::to_value(env.core().admin().session(*id).unwrap()).unwrap())
        .collect();

    // Act
    let lines = stdout_of(&mut env.run(&["session", "export"]));
    let array = stdout_of(&mut env.run(&["session", "export", "--format", "json"]));
    let to_file = stdout_of(&mut env.run(&[
        "session",
        "export",
        "--category",
        "emergency",
        "--output",
        "out.jsonl",
    ]));

    // Assert
    let parsed: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed, expected, "one line per session, oldest first");
    assert_eq!(
        serde_json::from_str::<Value>(&array).unwrap(),
        Value::Array(expected.clone())
    );
    assert_eq!(
        to_file,
        "Exported 1 session(s) with 2 message(s) to out.jsonl.\n"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(env.path("out.jsonl"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "an export is readable by its owner only"
        );
    }
    let file = std::fs::read_to_string(env.path("out.jsonl")).unwrap();
    assert_eq!(file, format!("{}\n", lines.lines().nth(1).unwrap()));
    env.run(&["session", "export", "--output", "db.sqlite3"])
        .assert()
        .code(1)
        .stderr(error_line(
            "db.sqlite3 is the database itself; choose another file.",
        ));
    let names: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("partial"))
        .collect();
    assert_eq!(names, Vec::<String>::new(), "no temporary file is left");
}

#[test]
fn an_export_imported_into_another_database_twice_creates_no_duplicates() {
    // Arrange
    let source = Env::new();
    let kim = source.user("kim", Role::Doctor);
    source.session(&kim, "Headache", Category::Medical);
    source.session(&kim, "Cough", Category::General);
    source
        .run(&[
            "session",
            "export",
            "--user",
            "kim@example.com",
            "--output",
            "kim.jsonl",
        ])
        .assert()
        .success();
    let target = Env::new();
    target.user("someone", Role::User);
    target.user("kim", Role::Doctor);
    let file = source.path("kim.jsonl");
    let file_arg = file.to_str().unwrap();

    // Act and assert
    target.run(&["session", "import", file_arg]).assert().success().stdout(format!(
        "Imported {file_arg}: 2 session(s) created, 0 extended, 0 unchanged; 4 message(s) added, 0 already present.\n"
    ));
    target.run(&["session", "import", file_arg]).assert().success().stdout(format!(
        "Imported {file_arg}: 0 session(s) created, 0 extended, 2 unchanged; 0 message(s) added, 4 already present.\n"
    ));
    let exported_again = stdout_of(&mut target.run(&["session", "export"]));
    assert_eq!(exported_again, std::fs::read_to_string(&file).unwrap());
    let owners: Vec<String> = target
        .core()
        .admin()
        .sessions(&SessionQuery::default())
        .unwrap()
        .into_iter()
        .map(|s| format!("{} {}", s.owner_id, s.owner_email))
        .collect();
    assert_eq!(owners, ["2 kim@example.com", "2 kim@example.com"]);
    target.run(&["db", "check"]).assert().success();
}

#[test]
fn a_malformed_or_truncated_file_imports_nothing() {
    // Arrange: a valid two-session export of kim, and a target where kim exists too.
    let source = Env::new();
    let kim = source.user("kim", Role::Doctor);
    source.session(&kim, "Headache", Category::Medical);
    source.session(&kim, "Cough", Category::General);
    let lines = stdout_of(&mut source.run(&["session", "export"]));
    let target = Env::new();
    target.user("kim", Role::Doctor);
    let second_line_start = lines.find('\n').unwrap() + 1;
    let truncated = &lines[..second_line_start + 40];
    let malformed = lines.replacen("\"category\":\"medical\"", "\"category\":\"surgery\"", 1);
    let cases = [
        (
            "truncated.jsonl",
            truncated.to_owned(),
            "line 2: the JSON ends early (is the file truncated?)",
        ),
        (
            "malformed.jsonl",
            malformed,
            "line 1: category \"surgery\" is not one of medical, general, emergency, consultation",
        ),
    ];
    for (name, content, message) in cases {
        std::fs::write(target.path(name), content).unwrap();

        // Act and assert
        target
            .run(&["session", "import", name])
            .assert()
            .code(1)
            .stdout("")
            .stderr(error_line(&format!(
                "Cannot import {name}: {message}; nothing was imported."
            )));
        assert!(
            target
                .core()
                .admin()
                .sessions(&SessionQuery::default())
                .unwrap()
                .is_empty(),
            "{name} imported something"
        );
    }
    target
        .run(&["session", "import", "absent.jsonl"])
        .assert()
        .code(1)
        .stderr(error_line(
            "Cannot read absent.jsonl: No such file or directory (os error 2).",
        ));
}

/// An export of two owners' sessions: `kim@example.com` (username `kim`) and
/// `o'neil@example.com`, whose local part is no valid username.
fn two_owners_export(source: &Env) -> String {
    let kim = source.user("kim", Role::Doctor);
    let oneil = source.account("o'neil@example.com", "oneil", Role::User, true);
    source.session(&kim, "Headache", Category::Medical);
    source.session(&oneil, "Cough", Category::General);
    stdout_of(&mut source.run(&["session", "export"]))
}

#[test]
fn an_import_without_the_owners_names_them_and_the_flag_that_creates_them() {
    // Arrange
    let source = Env::new();
    let target = Env::new();
    std::fs::write(target.path("all.jsonl"), two_owners_export(&source)).unwrap();

    // Act and assert
    target
        .run(&["session", "import", "all.jsonl"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(error_line(
            "Cannot import all.jsonl: 2 owner(s) of the file's sessions are not users of this database: kim@example.com, o'neil@example.com; nothing was imported (--create-owners creates them).",
        ));
    assert!(
        target
            .core()
            .accounts()
            .list(&Default::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn create_owners_makes_users_with_unique_usernames_whom_no_password_logs_in() {
    // Arrange: `kim` is taken in the target by another account.
    let source = Env::new();
    let target = Env::new();
    let other = target.account("kim@elsewhere.example", "kim", Role::Nurse, true);
    std::fs::write(target.path("all.jsonl"), two_owners_export(&source)).unwrap();

    // Act
    let first = target
        .run(&["session", "import", "all.jsonl", "--create-owners"])
        .assert()
        .success()
        .stderr("")
        .get_output()
        .stdout
        .clone();
    let again = stdout_of(&mut target.run(&["session", "import", "all.jsonl"]));

    // Assert
    assert_eq!(
        String::from_utf8(first).unwrap(),
        "Imported all.jsonl: 2 session(s) created, 0 extended, 0 unchanged; 4 message(s) added, 0 already present.\n\
         Created 2 owner(s) with the role user and no usable password (set one with `narutalk user reset-password`): 2 kim2 (kim@example.com), 3 oneil (o'neil@example.com).\n"
    );
    assert_eq!(
        again,
        "Imported all.jsonl: 0 session(s) created, 0 extended, 2 unchanged; 0 message(s) added, 4 already present.\n"
    );
    let core = Narutalk::open(&target.config(), OpenMode::MustExist).unwrap();
    for (email, username) in [("kim@example.com", "kim2"), ("o'neil@example.com", "oneil")] {
        let user = core.accounts().find_by_email(email).unwrap();
        assert_eq!(
            (
                user.username.as_str(),
                user.role,
                user.is_verified,
                user.is_active
            ),
            (username, Role::User, false, true)
        );
        for password in [crate::support::PASSWORD, "", username, email] {
            assert!(
                matches!(
                    core.accounts().login(email, password),
                    Err(Error::BadCredentials)
                ),
                "{email} logged in with {password:?}"
            );
        }
        let sessions = core
            .admin()
            .sessions(&SessionQuery {
                owner: Some(user.id),
                ..SessionQuery::default()
            })
            .unwrap();
        assert_eq!(sessions.len(), 1);
    }
    assert_eq!(core.accounts().get(other.id).unwrap().username, "kim");
    target.run(&["db", "check"]).assert().success();
}

#[test]
fn an_import_on_a_terminal_shows_its_progress_and_clears_it() {
    // Arrange: a file of 1,200 messages, more than two batches.
    let source = Env::new();
    let kim = source.user("kim", Role::Doctor);
    let core = source.core();
    let session = core
        .chat()
        .create_session(kim.id, "Long", Category::General)
        .unwrap()
        .session
        .id;
    for n in 0..600 {
        core.send_message(kim.id, session, &format!("Question {n}"))
            .unwrap();
    }
    let target = Env::new();
    target.user("kim", Role::Doctor);
    std::fs::write(
        target.path("kim.jsonl"),
        stdout_of(&mut source.run(&["session", "export"])),
    )
    .unwrap();

    // Act
    let Some(shown) = target.on_terminal(
        &["session", "import", "kim.jsonl"],
        24,
        100,
        "an_import_on_a_terminal_shows_its_progress_and_clears_it",
    ) else {
        return;
    };
    let piped = target
        .run(&["session", "import", "kim.jsonl"])
        .assert()
        .success()
        .get_output()
        .stderr
        .clone();

    // Assert
    assert!(shown.contains("/1200 messages"), "{shown:?}");
    assert!(
        shown.ends_with(
            "Imported kim.jsonl: 1 session(s) created, 0 extended, 0 unchanged; 1200 message(s) added, 0 already present.\n"
        ),
        "{shown:?}"
    );
    assert_eq!(
        String::from_utf8(piped).unwrap(),
        "",
        "no progress in a pipe"
    );
}
