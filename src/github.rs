//! The GitHub REST API through octocrab (DESIGN §9): one PR comment per PR and workflow,
//! found by a hidden marker among the token user's own comments and edited in place, and the
//! deploy workflow's `workflow_dispatch`.
//!
//! Requests go through octocrab's raw methods with relative paths (octocrab adds the base URL
//! from `GITHUB_API_URL` and the token), so that this module sees every status and header:
//! rate limits (429, or 403 with `retry-after` / `x-ratelimit-remaining: 0`) are retried
//! with bounded waits, a fork PR's read-only 403 becomes "summary only", and 404/422 on
//! dispatch say what to fix. The token is never formatted into anything.

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;
use octocrab::Octocrab;
use serde_json::{json, Value};

use crate::error::{deepest, Error, Result};

/// Rate-limited requests are tried this many times in all.
const ATTEMPTS: usize = 4;
/// The longest a single rate-limit wait may be; longer and the run fails with a message.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The login GitHub gives the Actions token's comments; /user is not readable with it.
pub const ACTIONS_BOT: &str = "github-actions[bot]";

pub struct GitHub {
    crab: Octocrab,
    rt: tokio::runtime::Runtime,
    api: String,
    owner: String,
    repo: String,
}

/// What `upsert_comment` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommentOutcome {
    Posted {
        id: u64,
        url: String,
        created: bool,
        /// Older duplicates with the same marker, deleted.
        removed: usize,
    },
    /// The token may not comment (a fork PR's read-only token): the report goes to the job
    /// summary only.
    ReadOnly { message: String },
}

struct Reply {
    status: StatusCode,
    body: Value,
}

/// The hidden marker of one workflow's comment.
pub fn marker(workflow: &str) -> String {
    let clean: String = workflow
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ' | '/'))
        .collect();
    format!("<!-- emshap-ci:report workflow=\"{clean}\" -->")
}

impl GitHub {
    /// `api` is `GITHUB_API_URL` (`https://api.github.com` on github.com), `repository` is
    /// `owner/name` (`GITHUB_REPOSITORY`).
    pub fn new(api: &str, repository: &str, token: &str) -> Result<Self> {
        let (owner, repo) = repository
            .split_once('/')
            .filter(|(o, r)| !o.is_empty() && !r.is_empty() && !r.contains('/'))
            .ok_or_else(|| {
                Error::usage(
                    "GITHUB_REPOSITORY",
                    format!("'{repository}' (give owner/name)"),
                )
            })?;
        if token.trim().is_empty() {
            return Err(Error::usage(
                "github-token",
                "empty (pass secrets.GITHUB_TOKEN to the action's github-token input)",
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(e.into()))?;
        let _guard = rt.enter();
        let crab = Octocrab::builder()
            .base_uri(api)
            .map_err(|e| Error::usage("GITHUB_API_URL", format!("'{api}': {e}")))?
            .personal_token(token.to_string())
            .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| Error::Internal(anyhow::anyhow!("octocrab: {e}")))?;
        drop(_guard);
        Ok(GitHub {
            crab,
            rt,
            api: api.trim_end_matches('/').to_string(),
            owner: owner.into(),
            repo: repo.into(),
        })
    }

    fn error(&self, message: String, hint: &str) -> Error {
        Error::GitHub {
            api: self.api.clone(),
            message,
            hint: hint.into(),
        }
    }

    /// How long GitHub asks us to wait, if this reply is a rate limit.
    fn rate_limit_wait(status: StatusCode, headers: &http::HeaderMap) -> Option<Duration> {
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
        let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
        let exhausted = header("x-ratelimit-remaining") == Some("0");
        let limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN && (retry_after.is_some() || exhausted));
        if !limited {
            return None;
        }
        if let Some(s) = retry_after {
            return Some(Duration::from_secs(s));
        }
        let reset = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Some(Duration::from_secs(
            reset.map_or(60, |r| r.saturating_sub(now).max(1)),
        ))
    }

    /// One request (path relative to the API), retried on rate limits within bounds.
    fn call(&self, method: http::Method, path: &str, body: Option<&Value>) -> Result<Reply> {
        let what = format!("{method} {path}");
        self.rt.block_on(async {
            let mut backoff = Duration::from_secs(1);
            for attempt in 1..=ATTEMPTS {
                let resp = match method {
                    http::Method::GET => self.crab._get(path).await,
                    http::Method::POST => self.crab._post(path, body).await,
                    http::Method::PATCH => self.crab._patch(path, body).await,
                    http::Method::DELETE => self.crab._delete(path, body).await,
                    _ => unreachable!("not used"),
                };
                let resp = resp.map_err(|e| {
                    self.error(
                        format!("{what}: cannot reach the API: {}", deepest(&e)),
                        "check GITHUB_API_URL and the network",
                    )
                })?;
                let status = resp.status();
                let wait = Self::rate_limit_wait(status, resp.headers());
                let text = self.crab.body_to_string(resp).await.map_err(|e| {
                    self.error(
                        format!("{what}: the reply broke off: {}", deepest(&e)),
                        "retry",
                    )
                })?;
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                match wait {
                    Some(w) if attempt < ATTEMPTS && w <= MAX_WAIT => {
                        let w = w.max(backoff);
                        tracing::warn!(
                            "GitHub rate limit on {what} ({status}); retrying in {} s",
                            w.as_secs()
                        );
                        tokio::time::sleep(w).await;
                        backoff *= 2;
                    }
                    Some(w) => {
                        return Err(self.error(
                            format!(
                                "{what}: rate limited ({status}) after {attempt} attempt(s); GitHub asks to wait {} s",
                                w.as_secs()
                            ),
                            "re-run the job later, or use a token with a higher limit",
                        ))
                    }
                    None => return Ok(Reply { status, body }),
                }
            }
            unreachable!("the loop returns")
        })
    }

    fn unexpected(&self, what: &str, r: &Reply, hint: &str) -> Error {
        let msg = r.body["message"].as_str().unwrap_or("");
        self.error(
            format!(
                "{what}: HTTP {}{}{msg}",
                r.status.as_u16(),
                if msg.is_empty() { "" } else { ": " }
            ),
            hint,
        )
    }

    /// Checks that the repository is reachable with the token and, when given, that the
    /// workflow file exists there; says what it found.
    pub fn check(&self, workflow: Option<&str>) -> Result<String> {
        let path = format!("/repos/{}/{}", self.owner, self.repo);
        let r = self.call(http::Method::GET, &path, None)?;
        match r.status.as_u16() {
            200 => {}
            401 => {
                return Err(self.unexpected(
                    &format!("GET {path}"),
                    &r,
                    "the token was refused: check the github-token input",
                ))
            }
            404 => {
                return Err(self.unexpected(
                    &format!("GET {path}"),
                    &r,
                    "no such repository, or the token cannot see it: check --repo and the token's access",
                ))
            }
            _ => {
                return Err(self.unexpected(&format!("GET {path}"), &r, "check the token's permissions"))
            }
        }
        let mut found = format!("{}/{}", self.owner, self.repo);
        if let Some(w) = workflow {
            let wpath = format!("{path}/actions/workflows/{w}");
            let r = self.call(http::Method::GET, &wpath, None)?;
            match r.status.as_u16() {
                200 => {
                    let state = r.body["state"].as_str().unwrap_or("active");
                    if state != "active" {
                        return Err(self.error(
                            format!("workflow {w} is {state}"),
                            "enable it in the repository's Actions tab",
                        ));
                    }
                    found.push_str(&format!(", workflow {w} ({state})"));
                }
                404 => {
                    return Err(self.unexpected(
                        &format!("GET {wpath}"),
                        &r,
                        &format!(
                            "add .github/workflows/{w} on the default branch, or set --workflow"
                        ),
                    ))
                }
                _ => {
                    return Err(self.unexpected(
                        &format!("GET {wpath}"),
                        &r,
                        "the token needs actions: read",
                    ))
                }
            }
        }
        Ok(found)
    }

    /// The login whose comments are ours: /user when the token may read it, else the
    /// Actions bot (the GITHUB_TOKEN cannot read /user).
    pub fn login(&self) -> Result<String> {
        let r = self.call(http::Method::GET, "/user", None)?;
        match r.status.as_u16() {
            200 => Ok(r.body["login"].as_str().unwrap_or(ACTIONS_BOT).to_string()),
            401 => Err(self.unexpected(
                "GET /user",
                &r,
                "the token was refused: check the github-token input",
            )),
            _ => Ok(ACTIONS_BOT.into()),
        }
    }

    /// Creates or edits in place the one comment on `pr` that carries `marker` and was
    /// written by the token's user; deletes older duplicates.
    pub fn upsert_comment(&self, pr: u64, marker: &str, body: &str) -> Result<CommentOutcome> {
        let me = self.login()?;
        let (o, r) = (&self.owner, &self.repo);
        let mut mine: Vec<(u64, String)> = Vec::new();
        for page in 1..=50 {
            let path = format!("/repos/{o}/{r}/issues/{pr}/comments?per_page=100&page={page}");
            let reply = self.call(http::Method::GET, &path, None)?;
            if !reply.status.is_success() {
                return Err(self.unexpected(
                    &format!("listing the comments of PR #{pr}"),
                    &reply,
                    "check the PR number and that the token can read pull requests",
                ));
            }
            let items = reply.body.as_array().cloned().unwrap_or_default();
            for c in &items {
                let author = c["user"]["login"].as_str().unwrap_or("");
                let text = c["body"].as_str().unwrap_or("");
                if author == me && text.contains(marker) {
                    if let Some(id) = c["id"].as_u64() {
                        mine.push((id, c["html_url"].as_str().unwrap_or("").to_string()));
                    }
                }
            }
            if items.len() < 100 {
                break;
            }
        }
        mine.sort();
        let full = if body.contains(marker) {
            body.to_string()
        } else {
            format!("{marker}\n{body}")
        };
        let payload = json!({ "body": full });
        let (reply, created, what) = match mine.first() {
            Some((id, _)) => (
                self.call(
                    http::Method::PATCH,
                    &format!("/repos/{o}/{r}/issues/comments/{id}"),
                    Some(&payload),
                )?,
                false,
                format!("editing comment {id} on PR #{pr}"),
            ),
            None => (
                self.call(
                    http::Method::POST,
                    &format!("/repos/{o}/{r}/issues/{pr}/comments"),
                    Some(&payload),
                )?,
                true,
                format!("commenting on PR #{pr}"),
            ),
        };
        if reply.status == StatusCode::FORBIDDEN {
            // A fork PR's token is read-only: not a failure of the evaluation.
            let msg = reply.body["message"].as_str().unwrap_or("forbidden");
            return Ok(CommentOutcome::ReadOnly {
                message: format!(
                    "{what}: HTTP {} ({msg}); the token is read-only (a fork PR?)",
                    reply.status.as_u16()
                ),
            });
        }
        if !reply.status.is_success() {
            return Err(self.unexpected(
                &what,
                &reply,
                "give the workflow `permissions: pull-requests: write`",
            ));
        }
        let id = reply.body["id"].as_u64().unwrap_or_default();
        let url = reply.body["html_url"].as_str().unwrap_or("").to_string();
        let mut removed = 0;
        for (dup, _) in mine.iter().skip(1) {
            let r2 = self.call(
                http::Method::DELETE,
                &format!("/repos/{o}/{r}/issues/comments/{dup}"),
                None,
            )?;
            if r2.status.is_success() {
                removed += 1;
            } else {
                tracing::warn!(
                    "could not delete duplicate comment {dup}: HTTP {}",
                    r2.status
                );
            }
        }
        Ok(CommentOutcome::Posted {
            id,
            url,
            created,
            removed,
        })
    }

    /// `workflow_dispatch` of `workflow` (a file name such as deploy.yml) on `git_ref`.
    pub fn dispatch(
        &self,
        workflow: &str,
        git_ref: &str,
        inputs: &BTreeMap<String, String>,
    ) -> Result<()> {
        let (o, r) = (&self.owner, &self.repo);
        let path = format!("/repos/{o}/{r}/actions/workflows/{workflow}/dispatches");
        let reply = self.call(
            http::Method::POST,
            &path,
            Some(&json!({ "ref": git_ref, "inputs": inputs })),
        )?;
        let what = format!("dispatching {workflow} on {git_ref}");
        match reply.status.as_u16() {
            200..=299 => Ok(()),
            404 => Err(self.unexpected(
                &what,
                &reply,
                &format!("no workflow {workflow} in {o}/{r} on its default branch: add .github/workflows/{workflow} there, or set the deploy-workflow input"),
            )),
            422 => Err(self.unexpected(
                &what,
                &reply,
                &format!("{workflow} must have `on: workflow_dispatch` with inputs `sha` and `manifest_uri` declared"),
            )),
            403 => Err(self.unexpected(
                &what,
                &reply,
                "give the job `permissions: actions: write`",
            )),
            _ => Err(self.unexpected(&what, &reply, "see GitHub's message")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_per_workflow_and_cannot_close_the_comment_early() {
        assert_eq!(
            marker("pr-eval"),
            "<!-- emshap-ci:report workflow=\"pr-eval\" -->"
        );
        assert_ne!(marker("a"), marker("b"));
        assert!(!marker("x --> <script>").contains("-->\n"));
        assert_eq!(marker("x --> y").matches("-->").count(), 1);
    }

    #[test]
    fn rate_limits_are_recognised_by_status_and_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(GitHub::rate_limit_wait(StatusCode::FORBIDDEN, &h), None);
        assert_eq!(
            GitHub::rate_limit_wait(StatusCode::TOO_MANY_REQUESTS, &h),
            Some(Duration::from_secs(60))
        );
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(
            GitHub::rate_limit_wait(StatusCode::FORBIDDEN, &h),
            Some(Duration::from_secs(3))
        );
        let mut h = http::HeaderMap::new();
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        assert!(GitHub::rate_limit_wait(StatusCode::FORBIDDEN, &h).is_some());
        assert_eq!(GitHub::rate_limit_wait(StatusCode::OK, &h), None);
    }
}
