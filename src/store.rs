//! The versioned model store of DESIGN §8, behind one small trait so that the version
//! logic (`versions`) is the same for a local directory (the embedded default) and S3/MinIO
//! (issue 4). The trait is the S3 object model, nothing more: whole-object get and put,
//! conditional puts on an entity tag (If-Match / If-None-Match), head and list.

pub mod local;
pub mod s3;
pub mod versions;

use crate::error::{Error, Result};

/// An object's bytes and entity tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub bytes: Vec<u8>,
    pub etag: String,
}

/// When a put may happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    Always,
    /// Only if no object exists at the key (If-None-Match: *).
    IfAbsent,
    /// Only if the object's entity tag is this one (If-Match).
    IfMatch(String),
}

/// What a conditional put found instead of the state it required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    Written { etag: String },
    ConditionFailed,
}

pub trait Store {
    /// Where it is, for messages (never with credentials).
    fn uri(&self) -> String;
    fn get(&self, key: &str) -> Result<Option<Object>>;
    /// Size in bytes, if the object exists.
    fn head(&self, key: &str) -> Result<Option<u64>>;
    fn put(&self, key: &str, bytes: &[u8], cond: Cond) -> Result<Put>;
    /// Keys under `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Removes the object at `key` (absent is fine). Only `doctor --write` deletes: versions
    /// and the history are never removed.
    fn delete(&self, key: &str) -> Result<()>;
}

/// Opens a store from its URI: `s3://bucket/prefix` (S3 or an S3-compatible server, see
/// `s3`), `file:///abs/path` or a plain path (local directory).
pub fn open(uri: &str) -> Result<Box<dyn Store>> {
    if uri.starts_with("s3://") {
        return Ok(Box::new(s3::S3Store::open(uri)?));
    }
    if let Some((scheme, _)) = uri.split_once("://").filter(|(s, _)| *s != "file") {
        return Err(Error::usage(
            "--store",
            format!("{uri}: unknown scheme '{scheme}' (give s3://bucket/prefix or a folder)"),
        ));
    }
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    if path.is_empty() {
        return Err(Error::usage("--store", "an empty store path"));
    }
    Ok(Box::new(local::LocalStore::new(path.into())))
}
