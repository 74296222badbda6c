//! Versions in the store (DESIGN §8): publish under a commit sha with `manifest.json` last
//! and write-once; the production pointer moved by conditional writes (promote, rollback)
//! with an append-only history; fetch that verifies every digest before anything is placed.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Cond, Put, Store};
use crate::error::{Error, Result};

pub use crate::artifacts::{MANIFEST, POINTER};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub sha: String,
    pub files: Vec<Entry>,
}

/// `production.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pointer {
    pub sha: String,
    pub manifest_sha256: String,
    pub promoted_at: String,
    pub by: String,
    pub reason: Option<String>,
    /// promote or rollback.
    pub action: String,
    pub previous: Option<String>,
    /// Promoted with `--force` past a fail verdict (who and why: `by`, `reason`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
}

fn key(sha: &str, name: &str) -> String {
    format!("versions/{sha}/{name}")
}

fn store_err(store: &dyn Store, message: String, hint: &str) -> Error {
    Error::Store {
        uri: store.uri(),
        message,
        hint: hint.into(),
    }
}

pub fn check_sha(sha: &str) -> Result<()> {
    let ok = (4..=64).contains(&sha.len()) && sha.chars().all(|c| c.is_ascii_alphanumeric());
    if !ok {
        return Err(Error::usage(
            "--sha",
            format!("'{sha}' (give the commit sha: 4 to 64 letters and digits)"),
        ));
    }
    Ok(())
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Uploads a version: every file, then the manifest (if absent). Re-publishing the same
/// files is a no-op; other files under a published sha are an error. Returns whether it
/// was created.
pub fn publish(store: &dyn Store, sha: &str, files: &[(String, Vec<u8>)]) -> Result<bool> {
    check_sha(sha)?;
    let mut entries: Vec<Entry> = files
        .iter()
        .map(|(name, b)| Entry {
            name: name.clone(),
            bytes: b.len() as u64,
            sha256: sha256(b),
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let same_as_published = |store: &dyn Store| -> Result<Option<bool>> {
        match store.get(&key(sha, MANIFEST))? {
            None => Ok(None),
            Some(o) => {
                let m: Manifest = serde_json::from_slice(&o.bytes).map_err(|e| {
                    store_err(
                        store,
                        format!("version {sha}'s manifest is unreadable: {e}"),
                        "inspect the store",
                    )
                })?;
                Ok(Some(m.files == entries))
            }
        }
    };
    match same_as_published(store)? {
        Some(true) => return Ok(false),
        Some(false) => {
            return Err(store_err(
                store,
                format!("version {sha} is already published with other files"),
                "versions are write-once: publish under the new commit's sha",
            ))
        }
        None => {}
    }
    for (name, bytes) in files {
        store.put(&key(sha, name), bytes, Cond::Always)?;
    }
    let manifest = Manifest {
        format: "emshap-ci.manifest/1".into(),
        sha: sha.into(),
        files: entries.clone(),
    };
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.into()))?;
    json.push(b'\n');
    match store.put(&key(sha, MANIFEST), &json, Cond::IfAbsent)? {
        Put::Written { .. } => Ok(true),
        // Published by someone else meanwhile: fine if it is the same version.
        Put::ConditionFailed => match same_as_published(store)? {
            Some(true) => Ok(false),
            _ => Err(store_err(
                store,
                format!("version {sha} was published with other files while this publish ran"),
                "versions are write-once: publish under the new commit's sha",
            )),
        },
    }
}

/// A version's manifest and its sha256; checks that every file it lists is there, whole.
pub fn complete_version(store: &dyn Store, sha: &str) -> Result<(Manifest, String)> {
    check_sha(sha)?;
    let o = store.get(&key(sha, MANIFEST))?.ok_or_else(|| {
        store_err(
            store,
            format!("version {sha} does not exist (no {MANIFEST})"),
            "publish it first, or give a published sha",
        )
    })?;
    let m: Manifest = serde_json::from_slice(&o.bytes).map_err(|e| {
        store_err(
            store,
            format!("version {sha}'s manifest is unreadable: {e}"),
            "republish it",
        )
    })?;
    for f in &m.files {
        if store.head(&key(sha, &f.name))? != Some(f.bytes) {
            return Err(store_err(
                store,
                format!(
                    "version {sha} is incomplete: {} is missing or has the wrong size",
                    f.name
                ),
                "republish it, or give another sha",
            ));
        }
    }
    Ok((m, sha256(&o.bytes)))
}

/// The production pointer and its entity tag, if there is one.
pub fn production(store: &dyn Store) -> Result<Option<(Pointer, String)>> {
    match store.get(POINTER)? {
        None => Ok(None),
        Some(o) => {
            let p: Pointer = serde_json::from_slice(&o.bytes).map_err(|e| {
                store_err(
                    store,
                    format!("{POINTER} is unreadable: {e}"),
                    "inspect the store",
                )
            })?;
            Ok(Some((p, o.etag)))
        }
    }
}

fn move_pointer(
    store: &dyn Store,
    sha: &str,
    manifest_sha256: String,
    by: &str,
    reason: Option<String>,
    action: &str,
    forced: bool,
) -> Result<Pointer> {
    let current = production(store)?;
    let pointer = Pointer {
        sha: sha.into(),
        manifest_sha256,
        promoted_at: now(),
        by: by.into(),
        reason,
        action: action.into(),
        previous: current.as_ref().map(|(p, _)| p.sha.clone()),
        forced,
    };
    let mut json = serde_json::to_vec_pretty(&pointer).map_err(|e| Error::Internal(e.into()))?;
    json.push(b'\n');
    let cond = match current {
        Some((_, etag)) => Cond::IfMatch(etag),
        None => Cond::IfAbsent,
    };
    if store.put(POINTER, &json, cond)? == Put::ConditionFailed {
        return Err(store_err(
            store,
            format!("the production pointer moved while {action} to {sha} ran (another run won); nothing changed"),
            "re-run to apply it on top of the new production version",
        ));
    }
    let stamp = pointer.promoted_at.replace([':', '-'], "");
    store.put(
        &format!("history/{stamp}-{sha}.json"),
        &json,
        Cond::IfAbsent,
    )?;
    Ok(pointer)
}

/// Points production at `sha`: the version must be complete and its metrics.json verdict
/// pass or forced, or, with `force` (and a reason, which the command layer requires), fail:
/// then the pointer and the history record that it was forced, by whom and why.
pub fn promote(
    store: &dyn Store,
    sha: &str,
    by: &str,
    reason: Option<String>,
    force: bool,
) -> Result<Pointer> {
    let (_, digest) = complete_version(store, sha)?;
    let verdict = store
        .get(&key(sha, crate::artifacts::METRICS_FILE))?
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.bytes).ok())
        .and_then(|v| v["verdict"].as_str().map(String::from));
    match verdict.as_deref() {
        Some("pass") | Some("forced") => {
            move_pointer(store, sha, digest, by, reason, "promote", false)
        }
        Some("fail") if force => move_pointer(store, sha, digest, by, reason, "promote", true),
        other => Err(Error::GateFailed {
            message: format!(
                "version {sha} has verdict {} in its metrics.json; not promoted{}",
                other.unwrap_or("(none)"),
                if other == Some("fail") {
                    " (an emergency? `promote --force --reason TEXT` promotes it and records who and why)"
                } else {
                    ""
                }
            ),
        }),
    }
}

/// Points production back at `to`, or at the version `steps` promotions before the current.
pub fn rollback(
    store: &dyn Store,
    to: Option<&str>,
    steps: Option<usize>,
    by: &str,
    reason: Option<String>,
) -> Result<Pointer> {
    let target = match (to, steps) {
        (Some(sha), None) => sha.to_string(),
        (None, Some(n)) if n > 0 => {
            // The production sequence from the history, oldest first.
            let mut seq: Vec<String> = Vec::new();
            for k in store.list("history/")? {
                if let Some(o) = store.get(&k)? {
                    if let Ok(p) = serde_json::from_slice::<Pointer>(&o.bytes) {
                        if seq.last() != Some(&p.sha) {
                            seq.push(p.sha);
                        }
                    }
                }
            }
            let len = seq.len();
            if n >= len {
                return Err(Error::usage(
                    "--steps",
                    format!(
                        "{n}, but the history has only {} earlier version(s)",
                        len.saturating_sub(1)
                    ),
                ));
            }
            seq[len - 1 - n].clone()
        }
        _ => {
            return Err(Error::usage(
                "rollback",
                "give either --to SHA or --steps N (N ≥ 1)",
            ))
        }
    };
    let (_, digest) = complete_version(store, &target)?;
    move_pointer(store, &target, digest, by, reason, "rollback", false)
}

/// Downloads a version (default: production) into `dest`: every file is verified against
/// the manifest in a temporary folder beside `dest` before `dest` is replaced.
pub fn fetch(store: &dyn Store, sha: Option<&str>, dest: &Path) -> Result<Manifest> {
    let sha = match sha {
        Some(s) => s.to_string(),
        None => production(store)?.map(|(p, _)| p.sha).ok_or_else(|| {
            store_err(
                store,
                "has no production version yet".into(),
                "promote a version first, or give --sha",
            )
        })?,
    };
    let (m, _) = complete_version(store, &sha)?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "fetch".into());
    fs::create_dir_all(&parent).map_err(|e| Error::write(&parent, e))?;
    crate::pull::snapshot::remove_stale(&parent, &format!(".{name}.fetch-"));
    let tmp = parent.join(format!(".{name}.fetch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(|e| Error::write(&tmp, e))?;
    let result = (|| -> Result<()> {
        for f in m.files.iter() {
            let o = store.get(&key(&sha, &f.name))?.ok_or_else(|| {
                store_err(
                    store,
                    format!("version {sha}: {} disappeared", f.name),
                    "republish it",
                )
            })?;
            let digest = sha256(&o.bytes);
            if digest != f.sha256 || o.bytes.len() as u64 != f.bytes {
                return Err(store_err(
                    store,
                    format!(
                        "version {sha}: {} has sha256 {digest}, the manifest says {}; nothing was placed",
                        f.name, f.sha256
                    ),
                    "the stored version is corrupt: republish it or fetch another sha",
                ));
            }
            let path = tmp.join(&f.name);
            fs::write(&path, &o.bytes).map_err(|e| Error::write(&path, e))?;
        }
        let mut json = serde_json::to_vec_pretty(&m).map_err(|e| Error::Internal(e.into()))?;
        json.push(b'\n');
        fs::write(tmp.join(MANIFEST), json).map_err(|e| Error::write(&tmp, e))?;
        let old = parent.join(format!(".{name}.fetch-{}.old", std::process::id()));
        crate::fsutil::swap_dir(&tmp, dest, &old)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.map(|_| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;

    fn files(power: &[u8], verdict: &str) -> Vec<(String, Vec<u8>)> {
        vec![
            ("power_predictor.onnx".into(), power.to_vec()),
            ("emshap_model.onnx".into(), b"emshap".to_vec()),
            (
                "metrics.json".into(),
                format!("{{\"verdict\":\"{verdict}\"}}").into_bytes(),
            ),
        ]
    }

    #[test]
    fn publish_promote_fetch_rollback_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().join("store"));
        assert!(publish(&s, "aaaa111", &files(b"p1", "pass")).unwrap());
        assert!(
            !publish(&s, "aaaa111", &files(b"p1", "pass")).unwrap(),
            "same files: no-op"
        );
        let e = publish(&s, "aaaa111", &files(b"other", "pass")).unwrap_err();
        assert!(e.to_string().contains("write-once"), "{e}");
        assert_eq!(e.exit_code(), 3);

        let p = promote(&s, "aaaa111", "ci", None, false).unwrap();
        assert_eq!((p.sha.as_str(), p.previous.as_deref()), ("aaaa111", None));
        publish(&s, "bbbb222", &files(b"p2", "pass")).unwrap();
        let p = promote(&s, "bbbb222", "ci", None, false).unwrap();
        assert_eq!(p.previous.as_deref(), Some("aaaa111"));

        publish(&s, "cccc333", &files(b"p3", "fail")).unwrap();
        let e = promote(&s, "cccc333", "ci", None, false).unwrap_err();
        assert_eq!(e.exit_code(), 1, "{e}");

        let dest = dir.path().join("models");
        fetch(&s, None, &dest).unwrap();
        assert_eq!(fs::read(dest.join("power_predictor.onnx")).unwrap(), b"p2");
        assert!(dest.join(MANIFEST).is_file());

        let p = rollback(&s, None, Some(1), "oncall", Some("bad deploy".into())).unwrap();
        assert_eq!((p.sha.as_str(), p.action.as_str()), ("aaaa111", "rollback"));
        assert_eq!(s.list("history/").unwrap().len(), 3);
        fetch(&s, None, &dest).unwrap();
        assert_eq!(fs::read(dest.join("power_predictor.onnx")).unwrap(), b"p1");
    }

    #[test]
    fn a_corrupt_object_fails_fetch_and_leaves_the_destination_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().join("store"));
        publish(&s, "aaaa111", &files(b"good", "pass")).unwrap();
        publish(&s, "bbbb222", &files(b"also", "pass")).unwrap();
        let dest = dir.path().join("models");
        fetch(&s, Some("aaaa111"), &dest).unwrap();
        // Same size, other bytes: only the digest can tell.
        fs::write(
            dir.path()
                .join("store/versions/bbbb222/power_predictor.onnx"),
            b"ALSO",
        )
        .unwrap();
        let e = fetch(&s, Some("bbbb222"), &dest).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        assert_eq!(
            fs::read(dest.join("power_predictor.onnx")).unwrap(),
            b"good"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // A missing file makes the version incomplete.
        fs::remove_file(dir.path().join("store/versions/bbbb222/emshap_model.onnx")).unwrap();
        assert!(fetch(&s, Some("bbbb222"), &dest)
            .unwrap_err()
            .to_string()
            .contains("incomplete"));
    }

    #[test]
    fn a_version_without_its_manifest_does_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().join("store"));
        // An interrupted publish: files, no manifest.
        s.put("versions/dddd444/power_predictor.onnx", b"p", Cond::Always)
            .unwrap();
        let e = promote(&s, "dddd444", "ci", None, false).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        // The re-run completes it.
        assert!(publish(&s, "dddd444", &files(b"p", "pass")).unwrap());
        promote(&s, "dddd444", "ci", None, false).unwrap();
    }

    #[test]
    fn a_fail_verdict_is_promoted_only_with_force_and_the_pointer_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().join("store"));
        publish(&s, "aaaa111", &files(b"p1", "pass")).unwrap();
        promote(&s, "aaaa111", "ci", None, false).unwrap();
        publish(&s, "bbbb222", &files(b"p2", "fail")).unwrap();
        let e = promote(&s, "bbbb222", "ci", None, false).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("promote --force --reason"), "{e}");
        assert_eq!(production(&s).unwrap().unwrap().0.sha, "aaaa111");

        let p = promote(&s, "bbbb222", "oncall", Some("incident 12".into()), true).unwrap();
        assert!(p.forced);
        let (stored, _) = production(&s).unwrap().unwrap();
        assert_eq!(
            (stored.sha.as_str(), stored.forced, stored.by.as_str()),
            ("bbbb222", true, "oncall")
        );
        assert_eq!(stored.reason.as_deref(), Some("incident 12"));
        let history = s.list("history/").unwrap();
        let last = s.get(history.iter().max().unwrap()).unwrap().unwrap();
        let h: serde_json::Value = serde_json::from_slice(&last.bytes).unwrap();
        assert_eq!(
            (h["forced"].as_bool(), h["reason"].as_str()),
            (Some(true), Some("incident 12"))
        );
        // A version without metrics is never promoted, forced or not.
        publish(&s, "cccc333", &files(b"p3", "pass")[..2]).unwrap();
        assert!(promote(&s, "cccc333", "oncall", Some("x".into()), true).is_err());
    }
}
