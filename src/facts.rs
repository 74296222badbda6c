//! What GitHub Actions says about the run (DESIGN §10), read from the environment in this
//! one place: the commit, the repository, the ref and its pull request, the workflow, the
//! actor, the token and the API URL. Outside Actions every fact is absent (the actor falls
//! back to `$USER`), and each command says what it needs instead.

/// GitHub's facts about this run.
#[derive(Clone, Default)]
pub struct GitHubFacts {
    /// `GITHUB_SHA`: the commit being built.
    pub sha: Option<String>,
    /// `GITHUB_REPOSITORY`: owner/name.
    pub repository: Option<String>,
    /// `GITHUB_REF`: e.g. refs/heads/main, refs/pull/7/merge.
    pub git_ref: Option<String>,
    /// The pull request number, from a `refs/pull/N/merge` ref.
    pub pr: Option<u64>,
    /// `GITHUB_WORKFLOW`: the workflow's name.
    pub workflow: Option<String>,
    /// `GITHUB_ACTOR`, else `$USER`: who ran it (recorded in pointers and forced verdicts).
    pub actor: Option<String>,
    /// `GITHUB_TOKEN` (masked by main before anything is printed; never in Debug).
    pub token: Option<String>,
    /// `GITHUB_API_URL`, default `https://api.github.com`.
    pub api_url: String,
}

impl std::fmt::Debug for GitHubFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubFacts")
            .field("sha", &self.sha)
            .field("repository", &self.repository)
            .field("git_ref", &self.git_ref)
            .field("pr", &self.pr)
            .field("workflow", &self.workflow)
            .field("actor", &self.actor)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("api_url", &self.api_url)
            .finish()
    }
}

fn var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// The PR number of a `refs/pull/N/merge` (or `/head`) ref.
pub fn pr_of_ref(git_ref: &str) -> Option<u64> {
    git_ref
        .strip_prefix("refs/pull/")
        .and_then(|r| r.split('/').next())
        .and_then(|n| n.parse().ok())
}

impl GitHubFacts {
    pub fn from_env() -> Self {
        let git_ref = var("GITHUB_REF");
        GitHubFacts {
            sha: var("GITHUB_SHA"),
            repository: var("GITHUB_REPOSITORY"),
            pr: git_ref.as_deref().and_then(pr_of_ref),
            git_ref,
            workflow: var("GITHUB_WORKFLOW"),
            actor: var("GITHUB_ACTOR").or_else(|| var("USER")),
            token: var("GITHUB_TOKEN"),
            api_url: var("GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".into()),
        }
    }

    /// Who ran it, for the records ("unknown" when nothing says).
    pub fn actor(&self) -> String {
        self.actor.clone().unwrap_or_else(|| "unknown".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pr_number_comes_from_a_pull_ref_only() {
        assert_eq!(pr_of_ref("refs/pull/7/merge"), Some(7));
        assert_eq!(pr_of_ref("refs/pull/12/head"), Some(12));
        assert_eq!(pr_of_ref("refs/heads/main"), None);
        assert_eq!(pr_of_ref("refs/pull/x/merge"), None);
    }

    #[test]
    fn the_token_never_shows_in_debug() {
        let f = GitHubFacts {
            token: Some("ghs_secret".into()),
            ..Default::default()
        };
        let s = format!("{f:?}");
        assert!(!s.contains("ghs_secret") && s.contains("(set)"), "{s}");
    }
}
