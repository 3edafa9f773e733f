//! A temporary folder with a migrated database, the `narutalk` binary pointed at it, and
//! the core on the same file for arranging and checking.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use narutalk_core::Narutalk;
use narutalk_core::accounts::{NewUser, Role, User};
use narutalk_core::chat::{Category, SessionId};
use narutalk_core::config::Config;
use narutalk_core::store::OpenMode;
use narutalk_core::store::sqlite::SqliteStore;
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
        drop(SqliteStore::open(&database, Default::default(), OpenMode::CreateIfMissing).unwrap());
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

    /// A user `name@example.com` with [`PASSWORD`], not verified, created through the core.
    pub fn user(&self, name: &str, role: Role) -> User {
        self.account(&format!("{name}@example.com"), name, role, false)
    }

    /// A user with [`PASSWORD`] and these fields, created through the core.
    pub fn account(&self, email: &str, username: &str, role: Role, is_verified: bool) -> User {
        self.core()
            .accounts()
            .create(&NewUser {
                email: email.to_owned(),
                username: username.to_owned(),
                password: PASSWORD.to_owned(),
                role,
                department: String::new(),
                is_verified,
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

impl Env {
    /// `narutalk ARGS` on this database on a real terminal of `rows` by `columns`: a
    /// pseudo-terminal that `script` (util-linux) opens, sized with `stty`. Returns what
    /// the terminal showed (stdout and stderr as they interleave, `\r\n` turned into
    /// `\n`) after checking that the command succeeded, or `None` when `script` is missing
    /// (the test then skips with a line).
    pub fn on_terminal(
        &self,
        args: &[&str],
        rows: u16,
        columns: u16,
        test: &str,
    ) -> Option<String> {
        let script = require("script", "bsdutils", test)?;
        let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_narutalk"))
            .chain(args.iter().copied())
            .map(|word| format!("'{}'", word.replace('\'', r"'\''")))
            .collect();
        let output = std::process::Command::new(script)
            .args(["--quiet", "--return", "--command"])
            .arg(format!(
                "stty rows {rows} cols {columns}; exec {}",
                quoted.join(" ")
            ))
            .arg("/dev/null")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("TERM", "xterm")
            .env("NARUTALK_DATABASE", &self.database)
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&output.stdout).replace("\r\n", "\n");
        assert!(output.status.success(), "{output:?}: {shown}");
        Some(shown)
    }
}

/// The path of `program`, or `None` after printing why the calling test skips; a panic
/// instead under `NARUTALK_REQUIRE_ALL=1`.
pub fn require(program: &str, package: &str, test: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file());
    if found.is_some() {
        return found;
    }
    let line = format!("{test}: skipped: `{program}` is missing (Debian package `{package}`)");
    if std::env::var("NARUTALK_REQUIRE_ALL").is_ok_and(|value| value == "1") {
        panic!("{line}, and NARUTALK_REQUIRE_ALL=1 forbids skipping");
    }
    eprintln!("{line}");
    None
}
