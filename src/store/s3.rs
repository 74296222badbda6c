//! S3 (AWS, MinIO, any S3-compatible server) as the store, through `aws-sdk-s3`.
//!
//! Connection settings are the standard AWS ones, read from the environment and the shared
//! config files by the SDK's default chain: credentials (`AWS_ACCESS_KEY_ID`/
//! `AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, profiles, web identity for GitHub OIDC,
//! instance roles), region (`AWS_REGION`, default us-east-1), endpoint override
//! (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`). With an endpoint override, addressing is
//! path-style (what MinIO needs) unless `EMSHAP_CI_S3_PATH_STYLE=false`.
//!
//! Only plain S3 REST calls are used: GetObject, HeadObject, PutObject (with If-Match /
//! If-None-Match for the conditional writes), multipart upload for large unconditional
//! objects, and ListObjectsV2. The SDK's optional CRC checksums are off (`WhenRequired`): not every
//! S3-compatible server accepts them, and every file's sha256 is in the manifest and checked
//! on fetch anyway. Nothing here ever formats a credential.
//!
//! The SDK is async; the store is called from synchronous code, so each store owns a small
//! current-thread tokio runtime and blocks on it.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::{Cond, Object, Put, Store};
use crate::error::{deepest, Error, Result};

/// Objects above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
/// The size of each part (S3's minimum is 5 MiB, except the last).
pub const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once.
const PART_CONCURRENCY: usize = 4;

pub struct S3Store {
    bucket: String,
    /// Empty, or ends without a slash.
    prefix: String,
    /// The endpoint override, or a description of the default one, for messages.
    endpoint: String,
    client: Client,
    rt: tokio::runtime::Runtime,
}

/// Splits `s3://bucket/prefix` into the bucket and the prefix (without slashes at its ends).
pub fn parse_uri(uri: &str) -> Result<(String, String)> {
    let rest = uri.strip_prefix("s3://").unwrap_or(uri);
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !valid_bucket {
        return Err(Error::usage(
            "--store",
            format!("{uri}: '{bucket}' is not an S3 bucket name (give s3://bucket/prefix)"),
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
        return Err(Error::usage(
            "--store",
            format!("{uri}: the prefix '{prefix}' has an empty, '.' or '..' part"),
        ));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// How to reach S3: what the environment says (`S3Options::from_env`), or set in code.
/// Not `Debug`: it can hold a secret.
#[derive(Clone, Default)]
pub struct S3Options {
    /// Endpoint override (MinIO, a test server); None: AWS's endpoint for the region.
    pub endpoint: Option<String>,
    /// Path-style addressing; None: on when there is an endpoint override.
    pub path_style: Option<bool>,
    /// None: the SDK's region chain, then us-east-1.
    pub region: Option<String>,
    /// Access key id and secret; None: the SDK's credential chain.
    pub credentials: Option<(String, String)>,
}

impl S3Options {
    /// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, and `EMSHAP_CI_S3_PATH_STYLE`; region and
    /// credentials are left to the SDK's chains.
    pub fn from_env() -> Result<Self> {
        let endpoint =
            env_nonempty("AWS_ENDPOINT_URL_S3").or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
        let path_style = match env_nonempty("EMSHAP_CI_S3_PATH_STYLE").as_deref() {
            None => None,
            Some("true" | "1") => Some(true),
            Some("false" | "0") => Some(false),
            Some(other) => {
                return Err(Error::usage(
                    "EMSHAP_CI_S3_PATH_STYLE",
                    format!("'{other}' (give true or false)"),
                ))
            }
        };
        Ok(Self {
            endpoint,
            path_style,
            ..Self::default()
        })
    }
}

impl S3Store {
    /// Opens `s3://bucket/prefix` with the standard AWS settings from the environment.
    pub fn open(uri: &str) -> Result<Self> {
        Self::open_with(uri, S3Options::from_env()?)
    }

    /// Opens `s3://bucket/prefix` with these settings. Makes no request: a wrong credential
    /// or endpoint shows at the first call, with the endpoint and bucket named.
    pub fn open_with(uri: &str, options: S3Options) -> Result<Self> {
        let (bucket, prefix) = parse_uri(uri)?;
        let S3Options {
            endpoint,
            path_style,
            region,
            credentials,
        } = options;
        let path_style = path_style.unwrap_or(endpoint.is_some());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(e.into()))?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(
            aws_config::meta::region::RegionProviderChain::first_try(region.map(Region::new))
                .or_default_provider()
                .or_else(Region::new("us-east-1")),
        );
        if let Some((id, secret)) = credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id,
                secret,
                None,
                None,
                "emshap-ci",
            ));
        }
        let sdk = rt.block_on(
            loader
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(5))
                        .read_timeout(Duration::from_secs(60))
                        .build(),
                )
                .retry_config(RetryConfig::standard().with_max_attempts(3))
                .load(),
        );
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into());
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &endpoint {
            conf = conf.endpoint_url(e);
        }
        let client = Client::from_conf(conf.build());
        let endpoint = endpoint.unwrap_or_else(|| format!("AWS S3 in {region}"));
        Ok(Self {
            bucket,
            prefix,
            endpoint,
            client,
            rt,
        })
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// Where, for messages: the store URI and the endpoint (never a credential).
    fn location(&self) -> String {
        format!("{} at {}", self.uri(), self.endpoint)
    }

    fn store_error(&self, message: String, hint: &str) -> Error {
        Error::Store {
            uri: self.location(),
            message,
            hint: hint.into(),
        }
    }

    /// One line for a failed request: what was asked, and why it failed in words that say
    /// what to fix. The SDK's messages carry no credential, and neither does this.
    fn request_error<E, R>(&self, op: &str, key: &str, err: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HttpStatus + 'static,
    {
        let what = format!("{op} {key}");
        // No credentials anywhere in the chain: the SDK reports it as a dispatch failure
        // (after trying instance metadata), which is not a connection problem.
        let mut chain: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut no_credentials = false;
        while let Some(e) = chain {
            let text = e.to_string().to_lowercase();
            no_credentials |= text.contains("credential") && !text.contains("refused");
            chain = e.source();
        }
        if no_credentials
            && matches!(
                err,
                SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_)
            )
        {
            return self.store_error(
                format!("{what}: no AWS credentials were found"),
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the action's s3 inputs), or AWS_PROFILE with ~/.aws/credentials, or a web identity (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN), or run where instance or container metadata gives a role; `-v` shows where the SDK looked",
            );
        }
        match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                let cause = std::error::Error::source(&err)
                    .map(deepest)
                    .unwrap_or_else(|| err.to_string());
                self.store_error(
                    format!(
                        "{what}: cannot reach the endpoint {}: {cause}",
                        self.endpoint
                    ),
                    "check the endpoint (AWS_ENDPOINT_URL) and that the server is up",
                )
            }
            SdkError::ServiceError(se) => {
                let status = se.raw().status_code();
                let code = se.err().code().unwrap_or("");
                let detail = se.err().message().unwrap_or("");
                let (why, hint) = match (status, code) {
                    (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidClientTokenId" | "ExpiredToken" | "InvalidToken")
                    | (401, _) => (
                        format!("the credentials were refused ({})", if code.is_empty() { "401" } else { code }),
                        "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the role) for this bucket",
                    ),
                    (_, "AccessDenied") | (403, _) => (
                        format!("access denied ({})", if code.is_empty() { "403" } else { code }),
                        "give these credentials read and write access to the bucket and prefix (or check the secret)",
                    ),
                    (_, "NoSuchBucket") => (
                        format!("bucket {} does not exist", self.bucket),
                        "create the bucket, or fix the bucket name in the store URI",
                    ),
                    _ => (
                        format!(
                            "HTTP {status} {code}{}{detail}",
                            if detail.is_empty() { "" } else { ": " }
                        ),
                        "see the message; the request can be retried",
                    ),
                };
                self.store_error(format!("{what}: {why}"), hint)
            }
            _ => self.store_error(
                format!("{what}: {}", deepest(&err)),
                "check the endpoint, region and credentials",
            ),
        }
    }

    async fn put_multipart(&self, key: &str, bytes: Bytes) -> std::result::Result<Put, Error> {
        let full = self.full_key(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.request_error("start upload of", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            let chunks: Vec<(i32, Bytes)> = (0..bytes.len())
                .step_by(PART_SIZE)
                .enumerate()
                .map(|(i, start)| {
                    let end = (start + PART_SIZE).min(bytes.len());
                    (i as i32 + 1, bytes.slice(start..end))
                })
                .collect();
            for batch in chunks.chunks(PART_CONCURRENCY) {
                let mut set = tokio::task::JoinSet::new();
                for (n, chunk) in batch.iter().cloned() {
                    let req = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(&full)
                        .upload_id(&upload_id)
                        .part_number(n)
                        .body(ByteStream::from(chunk));
                    set.spawn(async move { (n, req.send().await) });
                }
                while let Some(done) = set.join_next().await {
                    let (n, out) = done.map_err(|e| Error::Internal(e.into()))?;
                    let out = out
                        .map_err(|e| self.request_error(&format!("upload part {n} of"), key, e))?;
                    parts.push(
                        CompletedPart::builder()
                            .part_number(n)
                            .set_e_tag(out.e_tag().map(String::from))
                            .build(),
                    );
                }
            }
            parts.sort_by_key(|p| p.part_number());
            let out = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.request_error("complete upload of", key, e))?;
            Ok(Put::Written {
                etag: out.e_tag().unwrap_or_default().to_string(),
            })
        }
        .await;
        if !matches!(result, Ok(Put::Written { .. })) {
            // Best effort: an abandoned upload holds storage until the bucket's lifecycle
            // rule removes it, but it is never visible as an object.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

/// The HTTP status of a raw response, for the error mapping.
pub trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// 412 is a failed precondition; 409 is S3's answer when a concurrent conditional write to
/// the same key is in flight; 404 on If-Match means the object it had to match is gone.
fn condition_failed<E, R: HttpStatus>(err: &SdkError<E, R>, cond: &Cond) -> bool {
    let SdkError::ServiceError(se) = err else {
        return false;
    };
    match (se.raw().status_code(), cond) {
        (_, Cond::Always) => false,
        (412 | 409, _) => true,
        (404, Cond::IfMatch(_)) => true,
        _ => false,
    }
}

impl Store for S3Store {
    fn uri(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn get(&self, key: &str) -> Result<Option<Object>> {
        self.rt.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
                .send()
                .await;
            let out = match out {
                Ok(o) => o,
                Err(SdkError::ServiceError(se)) if se.err().is_no_such_key() => return Ok(None),
                Err(e) => return Err(self.request_error("get", key, e)),
            };
            let etag = out.e_tag().unwrap_or_default().to_string();
            let body = out.body.collect().await.map_err(|e| {
                self.store_error(
                    format!("get {key}: the download broke off: {}", deepest(&e)),
                    "check the connection to the endpoint and retry",
                )
            })?;
            Ok(Some(Object {
                bytes: Vec::from(body.into_bytes()),
                etag,
            }))
        })
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        self.rt.block_on(async {
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
                .send()
                .await
            {
                Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
                Err(SdkError::ServiceError(se)) if se.err().is_not_found() => Ok(None),
                Err(e) => Err(self.request_error("head", key, e)),
            }
        })
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.rt.block_on(async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.request_error("delete", key, e))
        })
    }

    fn put(&self, key: &str, bytes: &[u8], cond: Cond) -> Result<Put> {
        let bytes = Bytes::copy_from_slice(bytes);
        self.rt.block_on(async {
            // Conditional puts are single requests: the objects they guard are small JSON
            // (pointer, manifest, history), and a single PutObject's If-Match/If-None-Match
            // is supported everywhere conditional writes are, unlike the condition on
            // CompleteMultipartUpload. A single PUT takes up to 5 GiB.
            if bytes.len() > MULTIPART_THRESHOLD && cond == Cond::Always {
                return self.put_multipart(key, bytes).await;
            }
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
                .body(ByteStream::from(bytes));
            req = match &cond {
                Cond::Always => req,
                Cond::IfAbsent => req.if_none_match("*"),
                Cond::IfMatch(etag) => req.if_match(etag),
            };
            match req.send().await {
                Ok(out) => Ok(Put::Written {
                    etag: out.e_tag().unwrap_or_default().to_string(),
                }),
                Err(e) if condition_failed(&e, &cond) => Ok(Put::ConditionFailed),
                Err(e) => Err(self.request_error("put", key, e)),
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        self.rt.block_on(async {
            let mut keys = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let out = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(self.full_key(prefix))
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| self.request_error("list", prefix, e))?;
                for o in out.contents() {
                    if let Some(k) = o.key().and_then(|k| k.strip_prefix(&strip)) {
                        keys.push(k.to_string());
                    }
                }
                match out.next_continuation_token() {
                    Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            keys.sort();
            Ok(keys)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_split_into_bucket_and_prefix() {
        assert_eq!(
            parse_uri("s3://models/emshap/prod/").unwrap(),
            ("models".into(), "emshap/prod".into())
        );
        assert_eq!(
            parse_uri("s3://models").unwrap(),
            ("models".into(), "".into())
        );
        for bad in [
            "s3://",
            "s3://Models/x",
            "s3://ab",
            "s3://b_b/x",
            "s3://bucket/a/../b",
            "s3://bucket/a//b",
        ] {
            let e = parse_uri(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }
}
