//! The forge: open or update the run's pull request through GitHub's REST API (or GitHub
//! Enterprise's, at a configurable base URL) with octocrab. Only the runner talks to it,
//! with the forge token; the job container never does. Without the `forge` feature (the
//! demo's build) there is no client: [`SUPPORTED`] is false and [`Forge::new`] says why.

#[cfg(feature = "forge")]
use octocrab::{params::State, Octocrab};

/// Whether this build can open pull requests (the `forge` feature).
pub const SUPPORTED: bool = cfg!(feature = "forge");

/// A pull request as specrun needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub number: u64,
    pub url: String,
}

/// What to open or update.
#[derive(Debug, Clone)]
pub struct PullRequestSpec {
    pub owner: String,
    pub repo: String,
    pub head: String,
    pub base: String,
    pub title: String,
    pub body: String,
    pub draft: bool,
    pub labels: Vec<String>,
}

/// The forge refused or could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("the forge answered {status}: {message}")]
pub struct ForgeError {
    /// HTTP status, 0 when there was no answer.
    pub status: u16,
    pub message: String,
}

#[cfg(feature = "forge")]
impl From<octocrab::Error> for ForgeError {
    fn from(e: octocrab::Error) -> Self {
        match e {
            octocrab::Error::GitHub { source, .. } => {
                let details = source
                    .errors
                    .iter()
                    .flatten()
                    .filter_map(|e| e.get("message").and_then(|m| m.as_str()))
                    .collect::<Vec<_>>()
                    .join("; ");
                let message = if details.is_empty() {
                    source.message.clone()
                } else {
                    format!("{} ({details})", source.message)
                };
                ForgeError {
                    status: source.status_code.as_u16(),
                    message,
                }
            }
            other => ForgeError {
                status: 0,
                message: other.to_string(),
            },
        }
    }
}

/// A client for one forge API.
#[cfg(feature = "forge")]
#[derive(Debug, Clone)]
pub struct Forge {
    client: Octocrab,
}

/// No client in a build without the `forge` feature: none can be made.
#[cfg(not(feature = "forge"))]
#[derive(Debug, Clone)]
pub enum Forge {}

#[cfg(not(feature = "forge"))]
impl Forge {
    pub fn new(_api_url: &str, _token: &str) -> Result<Self, ForgeError> {
        Err(ForgeError {
            status: 0,
            message: "this specrun was built without pull request support: build it with \
                      --features forge (a default feature), or publish with branch"
                .to_owned(),
        })
    }

    pub async fn open_or_update(
        &self,
        _spec: &PullRequestSpec,
    ) -> Result<(PullRequest, bool), ForgeError> {
        match *self {}
    }
}

#[cfg(feature = "forge")]
impl Forge {
    /// `api_url` is e.g. `https://api.github.com` or `https://ghe.example/api/v3`.
    pub fn new(api_url: &str, token: &str) -> Result<Self, ForgeError> {
        let client = Octocrab::builder()
            .base_uri(api_url)
            .map_err(ForgeError::from)?
            .personal_token(token.to_owned())
            .build()
            .map_err(ForgeError::from)?;
        Ok(Forge { client })
    }

    /// The open pull request from `head` into `base`, if there is one. GitHub filters by
    /// head only in `owner:branch` form.
    pub async fn find_open(
        &self,
        spec: &PullRequestSpec,
    ) -> Result<Option<PullRequest>, ForgeError> {
        let page = self
            .client
            .pulls(&spec.owner, &spec.repo)
            .list()
            .state(State::Open)
            .head(format!("{}:{}", spec.owner, spec.head))
            .base(&spec.base)
            .send()
            .await?;
        Ok(page.items.into_iter().next().map(|pr| PullRequest {
            number: pr.number,
            url: pr.html_url.map(|u| u.to_string()).unwrap_or_default(),
        }))
    }

    /// Opens the pull request, or updates the open one for the same head instead of
    /// opening a second; then adds the labels. Returns it and whether it was new.
    pub async fn open_or_update(
        &self,
        spec: &PullRequestSpec,
    ) -> Result<(PullRequest, bool), ForgeError> {
        let (pr, created) = match self.find_open(spec).await? {
            Some(existing) => (self.update(spec, existing).await?, false),
            None => match self.create(spec).await {
                Ok(pr) => (pr, true),
                // Another run opened it between our lookup and our create.
                Err(e) if e.status == 422 && e.message.contains("already exists") => {
                    match self.find_open(spec).await? {
                        Some(existing) => (self.update(spec, existing).await?, false),
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            },
        };
        if !spec.labels.is_empty() {
            self.client
                .issues(&spec.owner, &spec.repo)
                .add_labels(pr.number, &spec.labels)
                .await?;
        }
        Ok((pr, created))
    }

    async fn create(&self, spec: &PullRequestSpec) -> Result<PullRequest, ForgeError> {
        let pr = self
            .client
            .pulls(&spec.owner, &spec.repo)
            .create(&spec.title, &spec.head, &spec.base)
            .body(&spec.body)
            .draft(spec.draft)
            .send()
            .await?;
        Ok(PullRequest {
            number: pr.number,
            url: pr.html_url.map(|u| u.to_string()).unwrap_or_default(),
        })
    }

    /// Title and body only: GitHub sets `draft` at creation.
    async fn update(
        &self,
        spec: &PullRequestSpec,
        existing: PullRequest,
    ) -> Result<PullRequest, ForgeError> {
        let route = format!(
            "/repos/{}/{}/pulls/{}",
            spec.owner, spec.repo, existing.number
        );
        let body = serde_json::json!({ "title": spec.title, "body": spec.body });
        let pr: octocrab::models::pulls::PullRequest =
            self.client.patch(route, Some(&body)).await?;
        Ok(PullRequest {
            number: pr.number,
            url: pr.html_url.map(|u| u.to_string()).unwrap_or(existing.url),
        })
    }
}
