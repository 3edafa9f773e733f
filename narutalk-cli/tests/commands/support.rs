//! A temporary folder with a migrated database, the `narutalk` binary pointed at it, and
//! the core on the same file for arranging and checking.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use narutalk_core::Narutalk;
use narutalk_core::accounts::{NewUser, Role, User};
use narutalk_core::chat::{Category, SessionId};
use narutalk_core::config::Config;
use narutalk_core::db::{Database, OpenMode};
use tempfile::TempDir;

/// A password that breaks no rule for the users the tests create.
pub const PASSWORD: &str = "violet-harbour-42";

/// The binary with a clean environment, run in `dir`.
pub fn narutalk_in(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_narutalk"));
    command.env_clear().current_dir(dir);
    command
}

/// A migrated database in a temporary folder.
pub struct Env {
    /// The database file.
    pub database: PathBuf,
    /// The folder (removed on drop); the binary runs in it.
    pub dir: TempDir,
}

impl Env {
    /// A fresh, migrated database.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("db.sqlite3");
        drop(Database::open(&database, Default::default(), OpenMode::CreateIfMissing).unwrap());
        Env { database, dir }
    }

    /// `narutalk` on this database (through `NARUTALK_DATABASE`, as an administrator would
    /// set it), with `args`.
    pub fn run(&self, args: &[&str]) -> Command {
        let mut command = narutalk_in(self.dir.path());
        command.env("NARUTALK_DATABASE", &self.database).args(args);
        command
    }

    /// The core on the same database, as an administrator's handle.
    pub fn core(&self) -> Narutalk {
        Narutalk::open_for_administration(&self.config()).unwrap()
    }

    /// Settings naming this database, with a signing secret (for logins in tests).
    pub fn config(&self) -> Config {
        Config {
            database: self.database.clone(),
            ..Config::for_tests(self.dir.path())
        }
    }

    /// A user `name@example.com` with [`PASSWORD`], created through the core.
    pub fn user(&self, name: &str, role: Role) -> User {
        self.core()
            .accounts()
            .create(&NewUser {
                email: format!("{name}@example.com"),
                username: name.to_owned(),
                password: PASSWORD.to_owned(),
                role,
                department: String::new(),
                is_verified: false,
            })
            .unwrap()
    }

    /// A session of `user` with one question and its reply, created through the core.
    pub fn session(&self, user: &User, title: &str, category: Category) -> SessionId {
        let core = self.core();
        let session = core
            .chat()
            .create_session(user.id, title, category)
            .unwrap();
        core.send_message(user.id, session.session.id, "What helps?")
            .unwrap();
        session.session.id
    }

    /// A path in the temporary folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The one stderr line of a failure: `narutalk: {message}`.
pub fn error_line(message: &str) -> String {
    format!("narutalk: {message}\n")
}

/// Stdout of a successful run, as text.
pub fn stdout_of(command: &mut Command) -> String {
    let output = command.assert().success().get_output().stdout.clone();
    String::from_utf8(output).unwrap()
}

/// Stdout of a successful run, parsed as JSON.
pub fn json_of(command: &mut Command) -> serde_json::Value {
    serde_json::from_str(&stdout_of(command)).unwrap()
}
