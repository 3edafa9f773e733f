//! Protects `narutalk db status|check|backup`: what the file holds, damage found by
//! SQLite's checks and by the session counters (exit 1), and backups that are consistent
//! while another process writes, never overwrite without `--force`, and never target the
//! database itself.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use narutalk_core::Narutalk;
use narutalk_core::accounts::{Role, UserId};
use narutalk_core::admin::SessionQuery;
use narutalk_core::chat::Category;
use narutalk_core::config::Config;
use serde_json::json;

use crate::support::{Env, error_line, json_of, narutalk_in, stdout_of};

/// Rusqlite on the test database, for damaging it on purpose.
fn raw(env: &Env) -> rusqlite::Connection {
    rusqlite::Connection::open(&env.database).unwrap()
}

#[test]
fn status_shows_the_file_its_migrations_and_every_tables_rows() {
    let env = Env::new();
    env.user("kim", Role::Doctor);

    let json = json_of(&mut env.run(&["db", "status", "--json"]));
    let table = stdout_of(&mut env.run(&["db", "status"]));

    assert_eq!(json["database"], json!(env.database));
    assert_eq!(
        json["migrations"],
        json!([
            {"version": 1, "name": "initial_schema"},
            {"version": 2, "name": "device_tokens"},
            {"version": 3, "name": "write_probe"},
            {"version": 4, "name": "pending_turns_and_outbox"},
        ])
    );
    assert_eq!(
        json["rows"],
        json!({"chat_messages": 0, "chat_sessions": 0, "device_tokens": 0, "idempotency_keys": 0,
               "outbox": 0,
               "refinery_schema_history": 4, "refresh_tokens": 0, "users": 1,
               "write_probe": 0})
    );
    assert_eq!(json["sqlite_version"], json!(rusqlite::version()));
    let size = std::fs::metadata(&env.database).unwrap().len();
    assert!(json["size_bytes"].as_u64().unwrap() >= size.min(4096));
    assert!(
        table.starts_with(&format!(
            "database    {}\nsize        ",
            env.database.display()
        )),
        "{table}"
    );
    assert!(
        table.ends_with(
            "TABLE                    ROWS\n\
             chat_messages            0\n\
             chat_sessions            0\n\
             device_tokens            0\n\
             idempotency_keys         0\n\
             outbox                   0\n\
             refinery_schema_history  4\n\
             refresh_tokens           0\n\
             users                    1\n\
             write_probe              0\n"
        ),
        "{table}"
    );
}

#[test]
fn check_passes_a_sound_database() {
    let env = Env::new();
    env.user("kim", Role::Doctor);
    env.run(&["db", "check"])
        .assert()
        .success()
        .stdout("integrity_check: ok\nforeign_key_check: ok\nsession counters: ok\n")
        .stderr("");
    assert_eq!(
        json_of(&mut env.run(&["db", "check", "--json"])),
        json!({"database": env.database, "sound": true, "integrity": [],
               "foreign_keys": [], "counters": []})
    );
}

#[test]
fn check_fails_on_broken_counters_and_rows_without_parents() {
    // Arrange: a session whose counter is wrong, and one whose owner is gone.
    let env = Env::new();
    let kim = env.user("kim", Role::Doctor);
    let session = env.session(&kim, "Headache", Category::Medical);
    let conn = raw(&env);
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF; \
         UPDATE chat_sessions SET message_count = 3; \
         INSERT INTO chat_sessions (id, user_id, title, created_at, updated_at) \
         VALUES ('00000000-0000-4000-8000-000000000001', 42, 'orphan', 0, 0);",
    )
    .unwrap();
    drop(conn);

    // Act and assert
    env.run(&["db", "check"])
        .assert()
        .code(1)
        .stdout(format!(
            "integrity_check: ok\n\
             foreign_key_check: 1 problem(s)\n\
             \x20 chat_sessions row 2 refers to a missing row of users\n\
             session counters: 1 problem(s)\n\
             \x20 session {session}: message_count 3 and last_seq 2, but it has 2 message(s) and its last seq is 2\n",
        ))
        .stderr(error_line(&format!(
            "Database {} is damaged: 2 problem(s) found.",
            env.database.display()
        )));
    let json = env
        .run(&["db", "check", "--json"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["sound"], json!(false));
    assert_eq!(json["foreign_keys"].as_array().unwrap().len(), 1);
}

#[test]
fn check_fails_on_an_index_that_disagrees_with_its_table() {
    // Arrange: point the users' email index at an empty b-tree, as a torn write or a bad
    // disk can leave a file; SQLite's integrity check must notice.
    let env = Env::new();
    env.user("kim", Role::Doctor);
    raw(&env)
        .execute_batch(
            "PRAGMA writable_schema = ON; \
             CREATE TABLE scratch (email TEXT); CREATE UNIQUE INDEX scratch_email ON scratch (email); \
             UPDATE sqlite_schema SET rootpage = \
               (SELECT rootpage FROM sqlite_schema WHERE name = 'scratch_email') \
               WHERE name = 'sqlite_autoindex_users_2'; \
             PRAGMA writable_schema = OFF;",
        )
        .unwrap();

    // Act and assert
    env.run(&["db", "check"])
        .assert()
        .code(1)
        .stdout(
            "integrity_check: 4 problem(s)\n\
             \x20 2nd reference to page 32\n\
             \x20 Page 6: never used\n\
             \x20 wrong # of entries in index sqlite_autoindex_users_2\n\
             \x20 row 1 missing from index sqlite_autoindex_users_2\n\
             foreign_key_check: ok\n\
             session counters: ok\n",
        )
        .stderr(error_line(&format!(
            "Database {} is damaged: 4 problem(s) found.",
            env.database.display()
        )));
}

#[test]
fn a_backup_is_refused_onto_an_existing_file_unless_forced_and_never_onto_the_database() {
    let env = Env::new();
    env.user("kim", Role::Doctor);
    std::fs::write(env.path("taken.sqlite3"), "keep me").unwrap();

    env.run(&["db", "backup", "taken.sqlite3"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(error_line(
            "taken.sqlite3 already exists (use --force to overwrite it).",
        ));
    assert_eq!(
        std::fs::read_to_string(env.path("taken.sqlite3")).unwrap(),
        "keep me"
    );
    env.run(&["db", "backup", "./db.sqlite3", "--force"])
        .assert()
        .code(1)
        .stderr(error_line(
            "./db.sqlite3 is the database itself; choose another file.",
        ));
    env.run(&["db", "backup", "."])
        .assert()
        .code(1)
        .stderr(error_line("Cannot write .: . is a folder."));
}

#[cfg(unix)]
#[test]
fn a_backup_creates_its_missing_folders_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    // Arrange: `a` exists with its own mode; `b` and `c` do not.
    let env = Env::new();
    env.user("kim", Role::Doctor);
    std::fs::create_dir(env.path("a")).unwrap();
    std::fs::set_permissions(env.path("a"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mode = |path: &str| {
        std::fs::metadata(env.path(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };

    // Act
    let stdout = stdout_of(&mut env.run(&["db", "backup", "a/b/c/copy.sqlite3"]));

    // Assert
    assert!(
        stdout.starts_with(&format!(
            "Backed up {} to a/b/c/copy.sqlite3 (",
            env.database.display()
        )),
        "{stdout}"
    );
    assert_eq!(mode("a"), 0o755, "a folder that existed keeps its mode");
    assert_eq!(mode("a/b"), 0o700);
    assert_eq!(mode("a/b/c"), 0o700);
    assert_eq!(mode("a/b/c/copy.sqlite3"), 0o600);
    env.run(&["--database", "a/b/c/copy.sqlite3", "db", "check"])
        .assert()
        .success();
}

#[test]
fn a_forced_backup_replaces_the_file_with_a_sound_copy() {
    let env = Env::new();
    env.user("kim", Role::Doctor);
    std::fs::write(env.path("copy.sqlite3"), "old").unwrap();

    let stdout = stdout_of(&mut env.run(&["db", "backup", "copy.sqlite3", "--force"]));

    assert!(
        stdout.starts_with(&format!(
            "Backed up {} to copy.sqlite3 (",
            env.database.display()
        )),
        "{stdout}"
    );
    let copy = env.path("copy.sqlite3");
    narutalk_in(env.dir.path())
        .arg("--database")
        .arg(&copy)
        .args(["user", "list", "--json"])
        .assert()
        .success();
    assert_eq!(
        json_of(
            narutalk_in(env.dir.path())
                .arg("--database")
                .arg(&copy)
                .args(["db", "status", "--json"])
        )["rows"]["users"],
        json!(1)
    );
}

/// Not a test on its own: the writer process of
/// [`a_backup_taken_while_another_process_writes_is_consistent`], which runs this test
/// binary again with these variables set. Without them it does nothing.
#[test]
fn writer_process() {
    let (Ok(database), Ok(stop)) = (
        std::env::var("NARUTALK_TEST_WRITER_DATABASE"),
        std::env::var("NARUTALK_TEST_WRITER_STOP"),
    ) else {
        return;
    };
    let config = Config {
        database: database.into(),
        ..Config::default()
    };
    let core = Narutalk::open_for_administration(&config).unwrap();
    let owner = UserId(1);
    let mut turns = 0u64;
    let mut slowest = Duration::ZERO;
    while !Path::new(&stop).exists() {
        let started = Instant::now();
        let session = core
            .chat()
            .create_session(owner, "written during the backup", Category::General)
            .unwrap();
        core.send_message(owner, session.session.id, "still writing")
            .unwrap();
        slowest = slowest.max(started.elapsed());
        turns += 1;
    }
    println!("writer: {turns} turns, slowest {} ms", slowest.as_millis());
}

#[test]
fn a_backup_taken_while_another_process_writes_is_consistent() {
    // Arrange: a database of some size (imported), and a second process writing to it.
    let env = Env::new();
    env.user("kim", Role::Doctor);
    let mut file = String::new();
    for s in 0..300 {
        let messages: Vec<serde_json::Value> = (1..=20)
            .map(|n| {
                json!({"id": format!("aaaaaaaa-aaaa-4aaa-8aaa-{:06x}{n:06x}", s), "seq": n,
                       "sender": "user", "message_type": "text", "content": "x".repeat(400),
                       "metadata": {}, "timestamp": "2026-11-20T08:00:00.000000Z", "reply_to": null})
            })
            .collect();
        let line = json!({"id": format!("bbbbbbbb-bbbb-4bbb-8bbb-{s:012x}"), "owner_email": "kim@example.com",
                          "title": "seed", "category": "medical", "is_active": true,
                          "created_at": "2026-11-20T08:00:00.000000Z", "updated_at": "2026-11-20T08:00:00.000000Z",
                          "message_count": 20, "messages": messages});
        file.push_str(&line.to_string());
        file.push('\n');
    }
    std::fs::write(env.path("seed.jsonl"), file).unwrap();
    env.run(&["session", "import", "seed.jsonl"])
        .assert()
        .success();
    let stop = env.path("stop");
    let writer = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "db::writer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NARUTALK_TEST_WRITER_DATABASE", &env.database)
        .env("NARUTALK_TEST_WRITER_STOP", &stop)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let sessions = |core: &Narutalk| {
        core.admin()
            .sessions(&SessionQuery::default())
            .unwrap()
            .len()
    };
    let core = env.core();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sessions(&core) < 310 {
        assert!(
            Instant::now() < deadline,
            "the writer did not start writing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Act: a backup during which the writer wrote. On a busy machine one turn of the
    // writer (three commits) can outlast a whole backup: then another backup is taken,
    // under another name, ten at most.
    let mut attempt = 0;
    let (before, after, copy, backup) = loop {
        attempt += 1;
        let name = format!("copy-{attempt}.sqlite3");
        let before = sessions(&core);
        let backup = env
            .run(&["db", "backup", &name])
            .assert()
            .success()
            .get_output()
            .clone();
        let after = sessions(&core);
        if after > before || attempt == 10 {
            break (before, after, env.path(&name), backup);
        }
    };
    // The writer goes on after the backup (however slow the machine's disk).
    let deadline = Instant::now() + Duration::from_secs(30);
    while sessions(&core) <= after {
        assert!(
            Instant::now() < deadline,
            "the writer did not go on after the backup"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&stop, "").unwrap();
    let written = writer.wait_with_output().unwrap();

    // Assert: the writer kept going, and the copy is a sound snapshot between the two
    // counts, every session with its messages.
    assert!(written.status.success(), "{written:?}");
    assert!(after > before, "the writer wrote while the backup ran");
    narutalk_in(env.dir.path())
        .arg("--database")
        .arg(&copy)
        .args(["db", "check"])
        .assert()
        .success()
        .stdout("integrity_check: ok\nforeign_key_check: ok\nsession counters: ok\n");
    let rows = json_of(
        narutalk_in(env.dir.path())
            .arg("--database")
            .arg(&copy)
            .args(["db", "status", "--json"]),
    )["rows"]
        .clone();
    let copied = usize::try_from(rows["chat_sessions"].as_u64().unwrap()).unwrap();
    assert!(
        (before..=after).contains(&copied),
        "{before} <= {copied} <= {after}"
    );
    // Each turn of the writer is three transactions (session, question, reply): the
    // snapshot falls between two of them, so only the newest session may lack messages.
    let complete = u64::try_from(300 * 20 + (copied - 300) * 2).unwrap();
    let messages = rows["chat_messages"].as_u64().unwrap();
    assert!(
        (complete - 2..=complete).contains(&messages),
        "{messages} of {complete}"
    );
    eprintln!(
        "{} {}",
        String::from_utf8_lossy(&backup.stdout).trim(),
        String::from_utf8_lossy(&written.stdout)
            .split_once("writer:")
            .map_or("", |(_, counts)| counts.lines().next().unwrap_or(""))
    );
}
