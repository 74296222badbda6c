//! A local directory as the store: keys are relative paths. Puts go to a temporary file and
//! are renamed into place, so a reader never sees half an object; conditional puts hold an
//! exclusive lock on `.lock` in the store's root, so two processes cannot both win.
//! The entity tag is the sha256 of the content.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{Cond, Object, Put, Store};
use crate::error::{Error, Result};

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty()
            || key.starts_with('/')
            || key
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(Error::Internal(anyhow::anyhow!("bad store key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    fn err(&self, message: String) -> Error {
        Error::Store {
            uri: self.uri(),
            message,
            hint: "check that the folder exists and is writable".into(),
        }
    }

    fn etag(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// An exclusive lock on the store, released when the file is dropped.
    fn lock(&self) -> Result<File> {
        fs::create_dir_all(&self.root).map_err(|e| self.err(format!("cannot create it: {e}")))?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".lock"))
            .map_err(|e| self.err(format!("cannot open its lock file: {e}")))?;
        // SAFETY: flock on a file descriptor we own; the lock goes with the descriptor.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
        if rc != 0 {
            return Err(self.err(format!(
                "cannot lock it: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(f)
    }
}

impl Store for LocalStore {
    fn uri(&self) -> String {
        let abs = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        format!("file://{}", abs.display())
    }

    fn get(&self, key: &str) -> Result<Option<Object>> {
        let path = self.path(key)?;
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(Object {
                etag: Self::etag(&bytes),
                bytes,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(format!("cannot read {key}: {e}"))),
        }
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        match fs::metadata(self.path(key)?) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(format!("cannot stat {key}: {e}"))),
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(format!("cannot delete {key}: {e}"))),
        }
    }

    fn put(&self, key: &str, bytes: &[u8], cond: Cond) -> Result<Put> {
        let path = self.path(key)?;
        let _lock = match cond {
            Cond::Always => None,
            _ => Some(self.lock()?),
        };
        match &cond {
            Cond::Always => {}
            Cond::IfAbsent => {
                if path.exists() {
                    return Ok(Put::ConditionFailed);
                }
            }
            Cond::IfMatch(etag) => match self.get(key)? {
                Some(o) if &o.etag == etag => {}
                _ => return Ok(Put::ConditionFailed),
            },
        }
        let dir = path.parent().expect("a key has a parent");
        fs::create_dir_all(dir)
            .map_err(|e| self.err(format!("cannot create {key}'s folder: {e}")))?;
        crate::fsutil::write_with(&path, |f| f.write_all(bytes))
            .map_err(|e| self.err(format!("cannot write {key}: {e}")))?;
        Ok(Put::Written {
            etag: Self::etag(bytes),
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err(format!("cannot list {}: {e}", dir.display()))),
            };
            for e in entries.flatten() {
                let p = e.path();
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&self.root) {
                    let key = rel.to_string_lossy().replace('\\', "/");
                    if key.starts_with(prefix) {
                        out.push(key);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_puts_follow_s3_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().join("store"));
        assert_eq!(s.get("production.json").unwrap(), None);
        let Put::Written { etag } = s.put("production.json", b"a", Cond::IfAbsent).unwrap() else {
            panic!("first put must win")
        };
        assert_eq!(
            s.put("production.json", b"b", Cond::IfAbsent).unwrap(),
            Put::ConditionFailed
        );
        assert_eq!(
            s.put("production.json", b"c", Cond::IfMatch("stale".into()))
                .unwrap(),
            Put::ConditionFailed
        );
        assert!(matches!(
            s.put("production.json", b"d", Cond::IfMatch(etag)).unwrap(),
            Put::Written { .. }
        ));
        assert_eq!(s.get("production.json").unwrap().unwrap().bytes, b"d");
        s.put("versions/abc/x.onnx", b"xyz", Cond::Always).unwrap();
        assert_eq!(s.head("versions/abc/x.onnx").unwrap(), Some(3));
        assert_eq!(
            s.list("versions/").unwrap(),
            vec!["versions/abc/x.onnx".to_string()]
        );
        assert!(s.get("../escape").is_err());
    }

    #[test]
    fn concurrent_conditional_puts_have_exactly_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let wins: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let root = root.clone();
                    scope.spawn(move || {
                        let s = LocalStore::new(root);
                        matches!(
                            s.put("production.json", format!("{i}").as_bytes(), Cond::IfAbsent)
                                .unwrap(),
                            Put::Written { .. }
                        ) as usize
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
    }
}
