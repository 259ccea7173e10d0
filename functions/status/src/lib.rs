//! The status function: `GET /runs/{id}` returns run.json with a URL for every artifact
//! (presigned when the store can sign), `GET /runs/{id}/artifacts/` lists the run's
//! artifacts with those URLs (the "Logs" link of every pull request),
//! `GET /runs/{id}/artifacts/...` serves an artifact of that run,
//! `GET /runs/{id}/logs/{phase}?offset=` tails a phase's log while it runs (`logs`), and
//! `GET /runs?limit=&cursor=&status=&repository=` lists recent runs newest first,
//! optionally only those of a status or whose repository contains a text.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, Method, Response, StatusCode};
use specrun_core::batch::BatchId;
use specrun_core::keys::{self, RunId};
use specrun_core::ports::{BlobStore, StoreError};
use specrun_core::state::RunRecord;
use specrun_http::{
    error, invalid_request, json, path, single_query_param, ApiRequest, ApiResponse,
};
use specrun_store::{batches, runs};
use std::sync::Arc;
use std::time::Duration;

pub mod logs;

/// Most runs one listing page returns.
pub const MAX_LIMIT: usize = 100;

/// How many of a listing page's run records are read at once.
const PAGE_READS_AT_ONCE: usize = 8;

/// What the status function needs.
#[derive(Clone)]
pub struct Status {
    pub store: Arc<dyn BlobStore>,
    /// How long presigned artifact URLs stay valid.
    pub presign_expiry: Duration,
    /// This function's own public base URL, for artifact links the store cannot sign.
    pub public_base: String,
}

impl Status {
    /// Answers one HTTP request.
    pub async fn handle(&self, request: ApiRequest) -> ApiResponse {
        if request.method() != Method::GET {
            return specrun_http::method_not_allowed("GET");
        }
        let path = path(&request).to_owned();
        let parts: Vec<&str> = path.trim_start_matches('/').splitn(4, '/').collect();
        match parts.as_slice() {
            ["runs"] => self.list(&request).await,
            ["batches", id] => self.batch(id).await,
            ["runs", id] => self.run(id).await,
            ["runs", id, "artifacts"] | ["runs", id, "artifacts", ""] => {
                self.artifacts(id).await
            }
            ["runs", id, "artifacts", rest] => self.artifact(id, rest).await,
            ["runs", id, "logs", phase] => self.log(&request, id, phase).await,
            _ => specrun_http::not_found(&format!(
                "no route {path}; use GET /runs, GET /runs/{{run_id}}, GET /runs/{{run_id}}/artifacts/, GET /runs/{{run_id}}/logs/{{phase}} or GET /batches/{{batch_id}}"
            )),
        }
    }

    /// `GET /batches/{id}`: batch.json with every run's status and the counts read from
    /// the runs themselves now (batch.json's own copy is as of the last run's end), and a
    /// status URL per run.
    async fn batch(&self, id: &str) -> ApiResponse {
        let Ok(batch_id) = BatchId::parse(id) else {
            return specrun_http::not_found(&format!("no batch {id}"));
        };
        let record = match batches::current(self.store.as_ref(), &batch_id).await {
            Ok(Some(record)) => record,
            Ok(None) => return specrun_http::not_found(&format!("no batch {id}")),
            Err(e) => return store_failure(&e),
        };
        let base = self.public_base.trim_end_matches('/');
        let mut body = serde_json::to_value(&record).unwrap_or_default();
        if let Some(runs) = body["runs"].as_array_mut() {
            for run in runs {
                let run_id = run["run_id"].as_str().unwrap_or_default().to_owned();
                run["status_url"] = format!("{base}/runs/{run_id}").into();
            }
        }
        json(StatusCode::OK, &body)
    }

    async fn load(&self, id: &str) -> Result<RunRecord, ApiResponse> {
        let run_id = RunId::parse(id)
            .map_err(|e| error(StatusCode::NOT_FOUND, "not_found", &e.to_string(), None))?;
        match runs::load_run(self.store.as_ref(), &run_id).await {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(specrun_http::not_found(&format!("no run {id}"))),
            Err(e) => Err(store_failure(&e)),
        }
    }

    async fn run(&self, id: &str) -> ApiResponse {
        let record = match self.load(id).await {
            Ok(record) => record,
            Err(response) => return response,
        };
        let mut urls = serde_json::Map::new();
        for artifact in &record.artifacts {
            let url = match self.artifact_url(&record.run_id, &artifact.key).await {
                Ok(url) => url,
                Err(response) => return *response,
            };
            urls.insert(artifact.key.clone(), serde_json::Value::from(url));
        }
        let mut body = serde_json::to_value(&record).unwrap_or_default();
        body["artifact_urls"] = serde_json::Value::Object(urls);
        json(StatusCode::OK, &body)
    }

    /// The run's artifacts, each with its record and a URL that fetches it.
    async fn artifacts(&self, id: &str) -> ApiResponse {
        let record = match self.load(id).await {
            Ok(record) => record,
            Err(response) => return response,
        };
        let mut artifacts = Vec::new();
        for artifact in &record.artifacts {
            let mut entry = serde_json::to_value(artifact).unwrap_or_default();
            entry["url"] = match self.artifact_url(&record.run_id, &artifact.key).await {
                Ok(url) => serde_json::Value::from(url),
                Err(response) => return *response,
            };
            artifacts.push(entry);
        }
        json(
            StatusCode::OK,
            &serde_json::json!({
                "run_id": record.run_id,
                "status": record.status,
                "artifacts": artifacts,
            }),
        )
    }

    /// A presigned URL of the artifact when the store signs, else this API's own.
    async fn artifact_url(&self, run_id: &str, key: &str) -> Result<String, Box<ApiResponse>> {
        match self.store.presign_get(key, self.presign_expiry).await {
            Ok(Some(url)) => Ok(url),
            Ok(None) => Ok(self.served_url(run_id, key)),
            Err(e) => Err(Box::new(store_failure(&e))),
        }
    }

    fn served_url(&self, run_id: &str, key: &str) -> String {
        let prefix = format!("runs/{run_id}/artifacts/");
        let rest = key.strip_prefix(&prefix).unwrap_or(key);
        format!(
            "{}/runs/{run_id}/artifacts/{rest}",
            self.public_base.trim_end_matches('/')
        )
    }

    /// Serves an artifact the run lists; nothing else under the bucket is reachable here.
    async fn artifact(&self, id: &str, rest: &str) -> ApiResponse {
        let record = match self.load(id).await {
            Ok(record) => record,
            Err(response) => return response,
        };
        let key = format!("runs/{id}/artifacts/{rest}");
        let Some(artifact) = record.artifacts.iter().find(|a| a.key == key) else {
            return specrun_http::not_found(&format!("run {id} has no artifact {rest}"));
        };
        match self.store.get(&key).await {
            Ok(bytes) => {
                let mut response = Response::new(Bytes::from(bytes));
                if let Ok(value) = header::HeaderValue::from_str(&artifact.content_type) {
                    response.headers_mut().insert(header::CONTENT_TYPE, value);
                }
                response
            }
            Err(StoreError::NotFound(_)) => {
                specrun_http::not_found(&format!("artifact {rest} has expired or was removed"))
            }
            Err(e) => store_failure(&e),
        }
    }

    /// A phase's log from an offset (see [`logs`]).
    async fn log(&self, request: &ApiRequest, id: &str, phase: &str) -> ApiResponse {
        let record = match self.load(id).await {
            Ok(record) => record,
            Err(response) => return response,
        };
        match logs::LogQuery::parse(request, id, phase) {
            Ok(query) => logs::answer(self.store.as_ref(), &record, query).await,
            Err(refused) => *refused,
        }
    }

    /// `GET /runs?limit=&cursor=&status=&repository=`: newest first; with a filter, pages
    /// of the index are read until `limit` runs match, at most [`MAX_SCAN`] records a
    /// request (then `next_cursor` goes on from where the scan stopped).
    async fn list(&self, request: &ApiRequest) -> ApiResponse {
        let (limit, mut cursor) = match page_query(request) {
            Ok(query) => query,
            Err(refused) => return *refused,
        };
        let filter = match RunFilter::from_query(request) {
            Ok(filter) => filter,
            Err(refused) => return *refused,
        };
        let filter = &filter;
        let mut summaries = Vec::new();
        let mut scanned = 0;
        loop {
            // Never more ids than runs still wanted: a page holds at most `limit` runs,
            // and every page ends on an index entry a cursor can go on from.
            let want = limit - summaries.len();
            let (ids, next) =
                match runs::list_runs(self.store.as_ref(), cursor.as_deref(), want).await {
                    Ok(page) => page,
                    Err(e) => return store_failure(&e),
                };
            scanned += ids.len();
            // The page's records are read a few at a time, in the page's order: a page
            // costs about as much as its slowest reads, not the sum of them.
            let found: Vec<serde_json::Value> = futures_util::stream::iter(ids)
                .map(|id| async move { runs::load_run(self.store.as_ref(), &id).await })
                .buffered(PAGE_READS_AT_ONCE)
                .filter_map(|loaded| async move {
                    loaded
                        .ok()
                        .flatten()
                        .filter(|r| filter.matches(r))
                        .map(|r| summary(&r))
                })
                .collect()
                .await;
            summaries.extend(found);
            cursor = next;
            if summaries.len() >= limit || cursor.is_none() || scanned >= MAX_SCAN {
                break;
            }
        }
        json(
            StatusCode::OK,
            &serde_json::json!({ "runs": summaries, "next_cursor": cursor }),
        )
    }
}

/// Most run records one filtered listing request reads.
const MAX_SCAN: usize = 500;

/// `status` and `repository` of `GET /runs`: a run status by name, and a part of the
/// repository (any case).
#[derive(Default)]
struct RunFilter {
    status: Option<specrun_core::RunStatus>,
    repository: Option<String>,
}

impl RunFilter {
    fn from_query(request: &ApiRequest) -> Result<Self, Box<ApiResponse>> {
        let status = match single_query_param(request, "status")?.filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => Some(serde_json::from_value(text.clone().into()).map_err(|_| {
                Box::new(invalid_request(
                    "status",
                    &format!("status {text:?} is not a run status; use queued, running, succeeded, no_changes, needs_clarification, failed or cancelled"),
                ))
            })?),
        };
        let repository = single_query_param(request, "repository")?
            .map(|r| r.trim().to_lowercase())
            .filter(|r| !r.is_empty());
        Ok(RunFilter { status, repository })
    }

    fn matches(&self, record: &RunRecord) -> bool {
        self.status.is_none_or(|status| record.status == status)
            && self
                .repository
                .as_deref()
                .is_none_or(|part| record.repository.to_lowercase().contains(part))
    }
}

/// What `GET /runs` tells of one run.
fn summary(record: &RunRecord) -> serde_json::Value {
    serde_json::json!({
        "run_id": record.run_id,
        "status": record.status,
        "repository": record.repository,
        "branch_name": record.branch_name,
        "created_at": record.created_at.format(&time::format_description::well_known::Rfc3339).ok(),
        "status_reason": record.status_reason,
    })
}

/// The answer to a store failure: a missing bucket is this deployment's setting to fix
/// (500, naming it), anything else an outage worth retrying (503).
pub(crate) fn store_failure(e: &StoreError) -> ApiResponse {
    match e {
        StoreError::NoSuchBucket(bucket) => specrun_http::misconfigured(&format!(
            "the state bucket {bucket} does not exist: set SPECRUN_BUCKET (specrun serve --bucket) to the deployment's bucket, or create it (infra/specrun.yaml)"
        )),
        e => specrun_http::unavailable(&e.to_string()),
    }
}

/// Runs one listing page returns when the query names no limit.
const DEFAULT_LIMIT: usize = 20;

/// `limit` and `cursor` of `GET /runs`, each given at most once. `limit` is 1 to
/// [`MAX_LIMIT`] in plain digits, no leading zero; `cursor` is empty (the first page) or a `next_cursor`
/// this API returned: the store is never handed anything else.
fn page_query(request: &ApiRequest) -> Result<(usize, Option<String>), Box<ApiResponse>> {
    let limit = match single_query_param(request, "limit")? {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| {
                !text.starts_with('0')
                    && text.bytes().all(|b| b.is_ascii_digit())
                    && (1..=MAX_LIMIT).contains(limit)
            })
            .ok_or_else(|| {
                Box::new(invalid_request(
                    "limit",
                    &format!("limit must be a whole number from 1 to {MAX_LIMIT}; got {text:?}"),
                ))
            })?,
    };
    let cursor = single_query_param(request, "cursor")?.filter(|c| !c.is_empty());
    if let Some(cursor) = cursor.as_deref().filter(|c| !keys::is_run_index(c)) {
        return Err(Box::new(invalid_request(
            "cursor",
            &format!("cursor {cursor:?} is not one this API returned; pass next_cursor from the previous page, or none for the first page"),
        )));
    }
    Ok((limit, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use specrun_core::request::Publish;
    use specrun_core::state::{AgentConfiguration, ArtifactRef};
    use specrun_store::FsBlobStore;
    use time::macros::datetime;

    fn get(path: &str) -> ApiRequest {
        http::Request::get(path)
            .body(Bytes::new())
            .unwrap_or_default()
    }

    fn body(response: &ApiResponse) -> serde_json::Value {
        serde_json::from_slice(response.body()).unwrap_or_default()
    }

    async fn status_with_runs(dir: &std::path::Path) -> Result<Status, StoreError> {
        let store = Arc::new(FsBlobStore::new(dir));
        for (id, day) in [("run-aaaa-1", 1), ("run-bbbb-2", 2), ("run-cccc-3", 3)] {
            let at = datetime!(2026-01-01 0:00 UTC) + time::Duration::days(day);
            let mut record = RunRecord::queued(
                id,
                "octo/hello",
                Publish::Pr,
                AgentConfiguration::default(),
                at,
            );
            if id == "run-cccc-3" {
                let key = format!("runs/{id}/artifacts/specify/agent.stdout.log");
                store
                    .put(&key, Bytes::from_static(b"hello log"), "text/plain")
                    .await?;
                record.artifacts.push(ArtifactRef {
                    name: "agent.stdout.log".into(),
                    key,
                    size: 9,
                    sha256: String::new(),
                    content_type: "text/plain".into(),
                    phase: Some(specrun_core::Phase::Specify),
                    expires_at: at,
                });
            }
            runs::create_run(store.as_ref(), &record).await?;
        }
        store
            .put(
                "runs/run-cccc-3/secret.txt",
                Bytes::from_static(b"not an artifact"),
                "text/plain",
            )
            .await?;
        Ok(Status {
            store,
            presign_expiry: Duration::from_secs(60),
            public_base: "http://status.local".into(),
        })
    }

    #[tokio::test]
    async fn a_run_comes_with_links_to_its_artifacts() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let status = status_with_runs(dir.path()).await?;
        let response = status.handle(get("/runs/run-cccc-3")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let url = body(&response)["artifact_urls"]
            ["runs/run-cccc-3/artifacts/specify/agent.stdout.log"]
            .clone();
        assert_eq!(
            url,
            "http://status.local/runs/run-cccc-3/artifacts/specify/agent.stdout.log"
        );
        let log = status
            .handle(get("/runs/run-cccc-3/artifacts/specify/agent.stdout.log"))
            .await;
        assert_eq!(log.body().as_ref(), b"hello log");
        let other = status
            .handle(get("/runs/run-cccc-3/artifacts/../secret.txt"))
            .await;
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
        Ok(())
    }

    #[tokio::test]
    async fn the_artifacts_page_lists_each_artifact_with_its_link(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let status = status_with_runs(dir.path()).await?;
        for path in ["/runs/run-cccc-3/artifacts/", "/runs/run-cccc-3/artifacts"] {
            let response = status.handle(get(path)).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let listing = body(&response);
            assert_eq!(listing["run_id"], "run-cccc-3");
            assert_eq!(
                listing["artifacts"][0]["url"],
                "http://status.local/runs/run-cccc-3/artifacts/specify/agent.stdout.log"
            );
            assert_eq!(listing["artifacts"][0]["name"], "agent.stdout.log");
        }
        let missing = status.handle(get("/runs/run-zzzz-9/artifacts/")).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        Ok(())
    }

    #[tokio::test]
    async fn runs_list_newest_first_with_a_cursor() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let status = status_with_runs(dir.path()).await?;
        let first = body(&status.handle(get("/runs?limit=2")).await);
        let ids: Vec<_> = first["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["run_id"].clone())
            .collect();
        assert_eq!(ids, ["run-cccc-3", "run-bbbb-2"]);
        let cursor = first["next_cursor"]
            .as_str()
            .unwrap_or_default()
            .replace('/', "%2F");
        let rest = body(
            &status
                .handle(get(&format!("/runs?limit=2&cursor={cursor}")))
                .await,
        );
        assert_eq!(rest["runs"][0]["run_id"], "run-aaaa-1");
        assert!(rest["next_cursor"].is_null());
        Ok(())
    }

    #[tokio::test]
    async fn runs_are_filtered_by_status_and_repository_across_pages(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let status = status_with_runs(dir.path()).await?;
        let mut other = RunRecord::queued(
            "run-dddd-4",
            "octo/Other",
            Publish::Pr,
            AgentConfiguration::default(),
            datetime!(2026-01-09 0:00 UTC),
        );
        other.status = specrun_core::RunStatus::Failed;
        runs::create_run(status.store.as_ref(), &other).await?;
        let ids = |page: &serde_json::Value| -> Vec<String> {
            page["runs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["run_id"].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        // The only failed run is the newest; the queued ones are found past it, a
        // page of one at a time.
        let failed = body(&status.handle(get("/runs?status=failed")).await);
        assert_eq!(ids(&failed), ["run-dddd-4"]);
        let hello = body(&status.handle(get("/runs?limit=2&repository=HELLO")).await);
        assert_eq!(ids(&hello), ["run-cccc-3", "run-bbbb-2"]);
        let cursor = hello["next_cursor"]
            .as_str()
            .unwrap_or_default()
            .replace('/', "%2F");
        let rest = body(
            &status
                .handle(get(&format!(
                    "/runs?limit=2&repository=hello&cursor={cursor}"
                )))
                .await,
        );
        assert_eq!(ids(&rest), ["run-aaaa-1"]);
        let none = body(&status.handle(get("/runs?status=succeeded")).await);
        assert_eq!(ids(&none), Vec::<String>::new());
        let bad = status.handle(get("/runs?status=done")).await;
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body(&bad)["error"]["field"], "status");
        Ok(())
    }

    #[tokio::test]
    async fn unknown_runs_and_bad_queries_are_clear() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let status = status_with_runs(dir.path()).await?;
        let missing = status.handle(get("/runs/run-zzzz-9")).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(body(&missing)["error"]["message"], "no run run-zzzz-9");
        assert_eq!(
            status.handle(get("/runs/..%2F..%2Fetc")).await.status(),
            StatusCode::NOT_FOUND
        );
        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=-1", "limit"),
            ("limit=%2B5", "limit"),
            ("limit=5.0", "limit"),
            ("limit=0005", "limit"),
            ("limit=05", "limit"),
            ("limit=", "limit"),
            ("limit=5&limit=6", "limit"),
            ("cursor=runs%2Frun-cccc-3%2Frun.json", "cursor"),
            ("cursor=index%2Fruns%2F..%2F..%2Fetc", "cursor"),
            ("cursor=zzzz", "cursor"),
            ("cursor=index%2Fruns%2F9999-run-cccc-3", "cursor"),
        ] {
            let response = status.handle(get(&format!("/runs?{query}"))).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(body(&response)["error"]["field"], field, "{query}");
        }
        for ok in ["limit=100", "limit=1", "cursor=", "limit=7&cursor="] {
            let response = status.handle(get(&format!("/runs?{ok}"))).await;
            assert_eq!(response.status(), StatusCode::OK, "{ok}");
        }
        let post = http::Request::post("/runs").body(Bytes::new())?;
        assert_eq!(
            status.handle(post).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        Ok(())
    }
}
