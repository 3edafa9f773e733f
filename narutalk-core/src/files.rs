//! Writing files that must be private and durable: the generated signing secret, and the
//! administrators' backups and exports, each written beside its target and moved into
//! place only once complete ([`PendingFile`]). Only the standard library; nothing here
//! knows what the files hold.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to a new file readable only by its owner (mode 0600 on Unix), and
/// syncs it. Fails when the file exists: the callers write under a fresh name and link or
/// rename it into place.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a new directory entry in `dir` durable, where the platform allows it (best
/// effort: a folder that cannot be opened is left as it is). An empty path is the working
/// directory.
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// A new file written under a temporary name beside its target (`.NAME.partial-PID`) and
/// moved into place only by [`PendingFile::commit`], after it was synced: a reader never
/// sees a half-written target, and a process killed midway leaves at most the hidden
/// temporary file. The file is readable by its owner only (mode 0600 on Unix): backups
/// and exports hold every conversation. Dropped without a commit, it removes the
/// temporary file.
#[derive(Debug)]
pub struct PendingFile {
    target: PathBuf,
    temp: PathBuf,
    overwrite: bool,
    committed: bool,
}

impl PendingFile {
    /// Prepares to write `target`. Without `overwrite`, a target that exists already is
    /// refused now ([`io::ErrorKind::AlreadyExists`]) and again, race-free, at commit. A
    /// target that is a folder is always refused.
    pub fn new(target: &Path, overwrite: bool) -> io::Result<PendingFile> {
        match fs::metadata(target) {
            Ok(meta) if meta.is_dir() => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{} is a folder", target.display()),
                ));
            }
            Ok(_) if !overwrite => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists", target.display()),
                ));
            }
            _ => {}
        }
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the folder {} does not exist", dir.display()),
            ));
        }
        let name = target.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a file name", target.display()),
            )
        })?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".partial-{}", std::process::id()));
        let temp = target.with_file_name(temp_name);
        // A leftover of a killed run with the same process id is ours to replace.
        match fs::remove_file(&temp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // Created empty and private now, so the data written into it never is readable by
        // others, even for a moment (SQLite's VACUUM INTO accepts an empty file).
        write_private(&temp, &[])?;
        Ok(PendingFile {
            target: target.to_owned(),
            temp,
            overwrite,
            committed: false,
        })
    }

    /// The temporary file to write.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The file this becomes.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Syncs the temporary file and moves it to the target: with `overwrite` by an atomic
    /// rename, otherwise by a hard link that fails if the target appeared meanwhile.
    pub fn commit(mut self) -> io::Result<()> {
        fs::File::open(&self.temp)?.sync_all()?;
        if self.overwrite {
            fs::rename(&self.temp, &self.target)?;
        } else {
            fs::hard_link(&self.temp, &self.target).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} already exists", self.target.display()),
                    )
                } else {
                    e
                }
            })?;
            fs::remove_file(&self.temp)?;
        }
        self.committed = true;
        sync_dir(self.target.parent().unwrap_or(Path::new("")));
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: there may be nothing to remove.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn write_private_makes_a_new_owner_only_file_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_private(&path, b"first").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = write_private(&path, b"second").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        sync_dir(dir.path());
        sync_dir(Path::new(""));
    }

    #[test]
    fn a_pending_file_dropped_without_commit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.jsonl");
        let pending = PendingFile::new(&target, false).unwrap();
        fs::write(pending.temp_path(), "half").unwrap();
        drop(pending);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_pending_file_refuses_a_target_that_appeared_before_commit() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.jsonl");
        let pending = PendingFile::new(&target, false).unwrap();
        fs::write(pending.temp_path(), "new").unwrap();
        fs::write(&target, "theirs").unwrap();
        let error = pending.commit().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&target).unwrap(), "theirs");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
