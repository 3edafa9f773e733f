//! Protects `narutalk db copy --to TARGET`: a SQLite database copied to PostgreSQL and back
//! with every row and the counts printed (text and JSON), URLs shown without their
//! password, and the refusals (a non-empty target, the database itself, a NUL character
//! bound for PostgreSQL) as one line with nothing written.

use std::sync::OnceLock;

use narutalk_core::accounts::Role;
use narutalk_core::chat::Category;
use serde_json::json;

use crate::postgres::{Cluster, Durability};
use crate::support::{Env, error_line, json_of, stdout_of};

/// A signing key for the runs whose configured database is PostgreSQL (the settings
/// require one there; the copy signs nothing).
const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// The process's cluster; `None` (after one printed line) without PostgreSQL.
fn cluster(test: &str) -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| Cluster::start(test, Durability::Fast))
        .as_ref()
}

/// `url` with a password in it, which the trusted loopback ignores and no output may show.
fn with_password(url: &str) -> String {
    url.replacen("narutalk@", "narutalk:hunter2-secret@", 1)
}

/// A database with two users, one session with an exchange, and a deleted user: the
/// newest (id 3), so that the id counter is above every id left.
fn populated() -> Env {
    let env = Env::new();
    let kim = env.user("kim", Role::Doctor);
    env.session(&kim, "Headache", Category::Medical);
    env.user("max", Role::Nurse);
    let lee = env.user("lee", Role::User);
    env.core().accounts().delete(lee.id).unwrap();
    env
}

#[test]
fn a_sqlite_database_goes_to_postgresql_and_back_with_its_counts_printed() {
    let Some(cluster) = cluster("cli_copy_round_trip") else {
        return;
    };
    let env = populated();
    let url = cluster.create_database();
    let secret_url = with_password(&url);

    let output = env
        .run(&["db", "copy", "--to", &secret_url])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert_eq!(
        stdout,
        format!(
            "Copied {} to {url}.\n\n\
             TABLE             ROWS\n\
             users             2\n\
             refresh_tokens    0\n\
             device_tokens     0\n\
             chat_sessions     1\n\
             chat_messages     2\n\
             idempotency_keys  0\n\
             outbox            3\n",
            env.database.display()
        )
    );
    assert!(output.stderr.is_empty());

    // Back to a new SQLite file, from PostgreSQL configured as the database.
    let back = env.path("back/copy.sqlite3");
    let mut run = env.run(&["db", "copy", "--to", back.to_str().unwrap(), "--json"]);
    run.env("NARUTALK_DATABASE", &secret_url)
        .env("NARUTALK_SECRET_KEY", SECRET);
    assert_eq!(
        json_of(&mut run),
        json!({
            "source": url,
            "target": back,
            "rows": {"users": 2, "refresh_tokens": 0, "device_tokens": 0, "chat_sessions": 1,
                     "chat_messages": 2, "idempotency_keys": 0, "outbox": 3},
        })
    );
    // The configured database under another password is still itself.
    let mut same = env.run(&["db", "copy", "--to", &url]);
    same.env("NARUTALK_DATABASE", &secret_url)
        .env("NARUTALK_SECRET_KEY", SECRET)
        .assert()
        .failure()
        .code(1)
        .stderr(error_line(&format!(
            "Cannot copy {url} to {url}: it is the database itself; choose another."
        )));
    let rows = |database: &std::path::Path| {
        json_of(&mut env.run(&[
            "--database",
            database.to_str().unwrap(),
            "db",
            "status",
            "--json",
        ]))["rows"]
            .clone()
    };
    assert_eq!(rows(&back), rows(&env.database));
    // The deleted user's id is nobody's on the copy either.
    let mut create = env.run(&[
        "--database",
        back.to_str().unwrap(),
        "user",
        "create",
        "--email",
        "new@example.com",
        "--username",
        "new",
        "--password-stdin",
    ]);
    create.write_stdin("violet-harbour-42\n");
    let created = stdout_of(&mut create);
    assert!(created.starts_with("Created user 4 "), "{created}");
}

#[test]
fn a_target_holding_rows_is_refused_with_one_line_and_left_as_it_was() {
    let env = populated();
    let target = Env::new();
    target.user("zed", Role::User);
    let before = json_of(&mut target.run(&["db", "status", "--json"]))["rows"].clone();

    env.run(&["db", "copy", "--to", target.database.to_str().unwrap()])
        .assert()
        .failure()
        .code(1)
        .stdout("")
        .stderr(error_line(&format!(
            "Cannot copy {} to {}: the target is not empty (users holds 1 row(s)); copy into \
             an empty database.",
            env.database.display(),
            target.database.display()
        )));
    assert_eq!(
        json_of(&mut target.run(&["db", "status", "--json"]))["rows"],
        before
    );
}

#[test]
fn the_database_itself_is_refused_as_a_target() {
    let env = populated();
    let spelled = format!("./{}", env.database.file_name().unwrap().to_str().unwrap());
    env.run(&["db", "copy", "--to", &spelled])
        .assert()
        .failure()
        .code(1)
        .stdout("")
        .stderr(error_line(&format!(
            "Cannot copy {} to {spelled}: it is the database itself; choose another.",
            env.database.display()
        )));
}

#[test]
fn a_nul_character_bound_for_postgresql_is_named_and_nothing_is_written() {
    let Some(cluster) = cluster("cli_copy_nul") else {
        return;
    };
    let env = populated();
    let id: String = rusqlite::Connection::open(&env.database)
        .unwrap()
        .query_row(
            "UPDATE chat_messages SET content = 'x' || char(0) || 'y' WHERE seq = 1 RETURNING id",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let url = cluster.create_database();
    let output = env
        .run(&["db", "copy", "--to", &with_password(&url)])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        error_line(&format!(
            "Cannot copy {} to {url}: chat_messages row {id}: content holds a NUL character, \
             which PostgreSQL cannot store; nothing was copied.",
            env.database.display()
        ))
    );
    let name = url.rsplit('/').next().unwrap();
    assert_eq!(
        cluster.psql(
            name,
            "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM chat_messages)"
        ),
        "0"
    );
}
