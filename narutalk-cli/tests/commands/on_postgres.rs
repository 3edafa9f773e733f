//! The administrators' commands on a PostgreSQL database (contract section 10: the same
//! commands on either backend): the schema created by `migrate`, users and sessions
//! managed, the database's status and checks, and `db backup` refused naming `pg_dump`.
//! No output ever shows the URL's password.

use std::sync::OnceLock;

use serde_json::json;

use crate::postgres::{Cluster, Durability};
use crate::support::{PASSWORD, json_of, narutalk_in, stdout_of};

/// The settings require a signing key with PostgreSQL (every server shares one).
const SECRET: &str = "0123456789abcdef0123456789abcdef-cli-on-postgres";

/// The password in the URL: the cluster trusts loopback, so any will do, and none may show.
const URL_PASSWORD: &str = "hunter2-secret";

fn cluster(test: &str) -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| Cluster::start(test, Durability::Fast))
        .as_ref()
}

#[test]
fn every_administrators_command_works_on_postgresql_and_never_shows_the_password() {
    let Some(cluster) = cluster("cli_on_postgres") else {
        return;
    };
    let url = cluster.create_database();
    let secret_url = url.replacen("narutalk@", &format!("narutalk:{URL_PASSWORD}@"), 1);
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut command = narutalk_in(dir.path());
        command
            .env("NARUTALK_DATABASE", &secret_url)
            .env("NARUTALK_SECRET_KEY", SECRET)
            .args(args);
        command
    };

    let mut outputs = Vec::new();
    let mut out = |text: String| {
        outputs.push(text.clone());
        text
    };

    // A tool other than `migrate` refuses a database without the schema.
    let refused = run(&["user", "list"])
        .assert()
        .failure()
        .get_output()
        .clone();
    let refused = out(String::from_utf8(refused.stderr).unwrap());
    assert!(refused.contains("does not exist"), "{refused}");

    let created = out(stdout_of(&mut run(&["migrate"])));
    assert!(
        created.starts_with(&format!("Created {url} with ")),
        "{created}"
    );
    let current = out(stdout_of(&mut run(&["migrate"])));
    assert!(
        current.starts_with(&format!("The schema of {url} is current")),
        "{current}"
    );

    let made = out(stdout_of(
        run(&[
            "user",
            "create",
            "--email",
            "Root@Example.com",
            "--username",
            "root",
            "--role",
            "admin",
            "--password-stdin",
        ])
        .write_stdin(format!("{PASSWORD}\n")),
    ));
    assert_eq!(
        made,
        "Created user 1 (root@example.com, root), role admin, verified.\n"
    );
    let users = json_of(&mut run(&["user", "list", "--json"]));
    assert_eq!(users[0]["email"], "root@example.com");
    assert_eq!(users.as_array().unwrap().len(), 1);
    out(stdout_of(&mut run(&["user", "list"])));
    let sessions = json_of(&mut run(&["session", "list", "--json"]));
    assert_eq!(sessions, json!([]));

    let status = json_of(&mut run(&["db", "status", "--json"]));
    assert_eq!(status["database"], json!(url));
    assert_eq!(status["engine"], "postgresql");
    assert!(status["postgresql_version"].is_string(), "{status}");
    assert_eq!(status["rows"]["users"], 1);
    out(stdout_of(&mut run(&["db", "status"])));
    let check = out(stdout_of(&mut run(&["db", "check"])));
    assert_eq!(
        check,
        "integrity_check: ok\nforeign_key_check: ok\nsession counters: ok\n"
    );

    let backup = run(&["db", "backup", "copy.sqlite3"])
        .assert()
        .failure()
        .get_output()
        .clone();
    let backup = out(String::from_utf8(backup.stderr).unwrap());
    assert!(backup.contains("pg_dump"), "{backup}");
    assert!(!dir.path().join("copy.sqlite3").exists());

    for text in &outputs {
        assert!(!text.contains(URL_PASSWORD), "the password shows: {text}");
    }
}
