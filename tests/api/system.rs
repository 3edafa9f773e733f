//! System programs that some tests run for real (nginx, the `sqlite3` shell), installed
//! by `.ci/install-deps`, never by a test.
//!
//! A test that lacks one skips with one printed line, so that `cargo test --workspace`
//! stays green on a machine without them; with `NARUTALK_REQUIRE_ALL=1` (set by
//! `.ci/run`) the missing program fails the test instead, so CI cannot pass by skipping.

#![allow(
    dead_code,
    reason = "shared by several test binaries, each using a part"
)]

use std::path::{Path, PathBuf};

/// The path of `program` (an absolute path, or a name looked up in `PATH`, `/usr/sbin` and
/// `/sbin`), or `None` after printing why the calling test skips. Panics instead of
/// skipping when `NARUTALK_REQUIRE_ALL=1`.
pub fn require(program: &str, package: &str, test: &str) -> Option<PathBuf> {
    if let Some(found) = find(program) {
        return Some(found);
    }
    let line = format!(
        "{test}: skipped: `{program}` is missing (Debian package `{package}`; `.ci/install-deps` installs it)"
    );
    if std::env::var("NARUTALK_REQUIRE_ALL").is_ok_and(|value| value == "1") {
        panic!("{line}, and NARUTALK_REQUIRE_ALL=1 forbids skipping");
    }
    eprintln!("{line}");
    None
}

/// Where `program` is, if it is installed and executable.
fn find(program: &str) -> Option<PathBuf> {
    let path = Path::new(program);
    if path.is_absolute() {
        return is_executable(path).then(|| path.to_path_buf());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
