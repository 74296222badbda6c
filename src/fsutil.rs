//! Writing the tool's own outputs so that a reader never sees half of them: one way to write
//! a file atomically (`write_with`, `write_atomic`), one to write a set of files together
//! (`write_all`), one directory swap (`swap_dir`), and the clean-up of what killed runs left
//! (`remove_stale`). Every temporary name is `.<name>.tmp-<pid>` (files) or
//! `.<name>.<what>-<pid>` (folders) in the destination's own folder, so a rename never
//! crosses file systems and a leftover names the process that left it.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The temporary name `path` is written under first.
pub fn temp_path(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    dir.join(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `path` atomically with `write`: into the temporary file, synced, then renamed into
/// place. On any error the temporary file is removed and `path` is as it was.
pub fn write_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let res = (|| {
        let mut f = File::create(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// `bytes` to `path`, atomically; the error names `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |f| f.write_all(bytes)).map_err(|e| Error::write(path, e))
}

/// Files written together into `dir`: every one goes to its temporary name first, and only
/// when all are written are they renamed into place. Temporary files of killed runs are
/// removed first.
pub fn write_all(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<Vec<String>> {
    fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    for (name, _) in files {
        remove_stale(dir, &format!(".{name}.tmp-"));
    }
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let cleanup = |staged: &[(PathBuf, PathBuf)]| {
        for (tmp, _) in staged {
            let _ = fs::remove_file(tmp);
        }
    };
    for (name, bytes) in files {
        let dest = dir.join(name);
        let tmp = temp_path(&dest);
        if let Err(e) = fs::write(&tmp, bytes).and_then(|_| File::open(&tmp)?.sync_all()) {
            let _ = fs::remove_file(&tmp);
            cleanup(&staged);
            return Err(Error::write(&dest, e));
        }
        staged.push((tmp, dest));
    }
    for (tmp, dest) in &staged {
        fs::rename(tmp, dest).map_err(|e| {
            cleanup(&staged);
            Error::write(dest, e)
        })?;
    }
    Ok(files.iter().map(|(n, _)| n.to_string()).collect())
}

/// Moves the complete folder `staged` to `dest`, replacing what was there: the old folder
/// goes aside to `old` first and comes back if the move fails, so `dest` is always either
/// the old folder or the new one, never a mix; `old` is removed after.
pub fn swap_dir(staged: &Path, dest: &Path, old: &Path) -> Result<()> {
    if dest.exists() {
        fs::rename(dest, old).map_err(|e| Error::write(dest, e))?;
    }
    if let Err(e) = fs::rename(staged, dest) {
        let _ = fs::rename(old, dest);
        return Err(Error::write(dest, e));
    }
    let _ = fs::remove_dir_all(old);
    Ok(())
}

/// Removes files and folders in `parent` named `PREFIX<pid>` (or `PREFIX<pid>.old`) whose
/// process is gone: what a killed run left half-written.
pub fn remove_stale(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let pid = rest.trim_end_matches(".old");
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let path = e.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_file_as_it_was_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"old").unwrap();
        let e = write_with(&p, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("disk went away"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "disk went away");
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn swap_dir_replaces_whole_or_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (staged, dest, old) = (
            dir.path().join(".d.staging-1"),
            dir.path().join("d"),
            dir.path().join(".d.staging-1.old"),
        );
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("x"), b"old").unwrap();
        // Nothing staged: the move fails and the old folder is back in place.
        assert!(swap_dir(&staged, &dest, &old).is_err());
        assert_eq!(fs::read(dest.join("x")).unwrap(), b"old");
        fs::create_dir(&staged).unwrap();
        fs::write(staged.join("x"), b"new").unwrap();
        swap_dir(&staged, &dest, &old).unwrap();
        assert_eq!(fs::read(dest.join("x")).unwrap(), b"new");
        assert!(!old.exists() && !staged.exists());
    }
}
