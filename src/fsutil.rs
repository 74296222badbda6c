//! Writing the tool's own outputs so that a reader never sees half of them.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A model's output files, written together: every file goes to a temporary name in
/// `dir` first, and only when all are written are they renamed into place. Temporary files
/// of killed runs are removed first.
pub fn write_all(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<Vec<String>> {
    fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    for (name, _) in files {
        crate::pull::snapshot::remove_stale(dir, &format!(".{name}.tmp-"));
    }
    let pid = std::process::id();
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let cleanup = |staged: &[(PathBuf, PathBuf)]| {
        for (tmp, _) in staged {
            let _ = fs::remove_file(tmp);
        }
    };
    for (name, bytes) in files {
        let dest = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp-{pid}"));
        if let Err(e) = fs::write(&tmp, bytes).and_then(|_| fs::File::open(&tmp)?.sync_all()) {
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
