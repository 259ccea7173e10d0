//! `GET /runs/{id}/logs/{phase}?offset=N[&stream=stdout|stderr][&max=BYTES]`: a phase's
//! redacted log from an offset, live while the phase runs, its final artifact's bytes
//! once it ended. The body is the bytes; the headers say where to read next and whether
//! more may come, so a client tails a log by asking again from `Specrun-Log-Next-Offset`
//! until `Specrun-Log-Writing` is false.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use specrun_core::live_log::LogStream;
use specrun_core::ports::{BlobStore, StoreError};
use specrun_core::state::RunRecord;
use specrun_core::Phase;
use specrun_http::{error_with, invalid_request, single_query_param, ApiRequest, ApiResponse};
use specrun_store::log_tail::{read_phase_log, LogChunk, TailError, MAX_READ_BYTES};

/// Where the next read starts.
pub const NEXT_OFFSET_HEADER: &str = "specrun-log-next-offset";
/// `true` while the phase may still write, `false` once its log is final.
pub const WRITING_HEADER: &str = "specrun-log-writing";

/// What a log read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogQuery {
    pub phase: Phase,
    pub stream: LogStream,
    pub offset: u64,
    pub max: u64,
}

impl LogQuery {
    /// The query of a request for `phase` (the path's last segment); the answer to give
    /// instead when it is not one.
    pub fn parse(
        request: &ApiRequest,
        run_id: &str,
        phase: &str,
    ) -> Result<Self, Box<ApiResponse>> {
        let Ok(phase) = phase.parse::<Phase>() else {
            return Err(Box::new(specrun_http::not_found(&format!(
                "run {run_id} has no phase {phase:?}; phases are prepare, clone, specify, plan, tasks, commit, push, pull_request, cleanup"
            ))));
        };
        let stream = match single_query_param(request, "stream")? {
            None => LogStream::Stdout,
            Some(text) => LogStream::parse(&text).ok_or_else(|| {
                Box::new(invalid_request(
                    "stream",
                    &format!("stream must be stdout or stderr; got {text:?}"),
                ))
            })?,
        };
        let offset = number(request, "offset")?.unwrap_or(0);
        let max = number(request, "max")?
            .unwrap_or(MAX_READ_BYTES)
            .min(MAX_READ_BYTES);
        Ok(LogQuery {
            phase,
            stream,
            offset,
            max,
        })
    }
}

/// A byte count given at most once, in plain digits.
fn number(request: &ApiRequest, name: &str) -> Result<Option<u64>, Box<ApiResponse>> {
    let Some(text) = single_query_param(request, name)? else {
        return Ok(None);
    };
    let parsed = text
        .parse::<u64>()
        .ok()
        .filter(|_| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()));
    match parsed {
        Some(value) => Ok(Some(value)),
        None => Err(Box::new(invalid_request(
            name,
            &format!(
                "{name} must be a whole number of bytes (0 or more, digits only); got {text:?}"
            ),
        ))),
    }
}

/// Answers a log read for the run `record`.
pub async fn answer(store: &dyn BlobStore, record: &RunRecord, query: LogQuery) -> ApiResponse {
    let read = read_phase_log(
        store,
        record,
        query.phase,
        query.stream,
        query.offset,
        query.max,
    )
    .await;
    match read {
        Ok(chunk) => log_response(chunk),
        Err(TailError::PastEnd { offset, size }) => {
            let mut extra = serde_json::Map::new();
            extra.insert("size".to_owned(), size.into());
            error_with(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "offset_past_end",
                &format!("offset {offset} is past the {size} bytes of the {} {} log stored so far; read from {size} or less", query.phase, query.stream),
                Some("offset"),
                extra,
            )
        }
        Err(TailError::Store(StoreError::NotFound(_))) => specrun_http::not_found(&format!(
            "the {} {} log has expired or was removed",
            query.phase, query.stream
        )),
        Err(TailError::Store(e)) => crate::store_failure(&e),
    }
}

fn log_response(chunk: LogChunk) -> ApiResponse {
    let LogChunk {
        bytes,
        next_offset,
        writing,
    } = chunk;
    let mut response = Response::new(Bytes::from(bytes));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(NEXT_OFFSET_HEADER, HeaderValue::from(next_offset));
    headers.insert(
        WRITING_HEADER,
        HeaderValue::from_static(if writing { "true" } else { "false" }),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;
    use sha2::{Digest, Sha256};
    use specrun_core::keys::RunId;
    use specrun_core::live_log::{LiveLogIndex, LiveLogKeys};
    use specrun_core::request::Publish;
    use specrun_core::state::{AgentConfiguration, ArtifactRef, PhaseOutcome};
    use specrun_core::PhaseStatus;
    use specrun_store::{runs, FsBlobStore};
    use std::sync::Arc;
    use time::macros::datetime;

    const RUN: &str = "run-logs-0001";

    fn get(path: &str) -> ApiRequest {
        http::Request::get(path)
            .body(Bytes::new())
            .unwrap_or_default()
    }

    fn header<'a>(response: &'a ApiResponse, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn assert_empty_ok(response: &ApiResponse) {
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.body().is_empty(), "{:?}", response.body());
    }

    /// A run in its specify phase whose agent log has two live parts.
    async fn running(dir: &std::path::Path) -> Result<(Status, RunRecord), StoreError> {
        let store = Arc::new(FsBlobStore::new(dir));
        let at = datetime!(2026-01-01 0:00 UTC);
        let mut record = RunRecord::queued(
            RUN,
            "octo/hello",
            Publish::Pr,
            AgentConfiguration::default(),
            at,
        );
        record.start("runner-1", at).ok();
        record.begin_phase(Phase::Specify, at).ok();
        runs::create_run(store.as_ref(), &record).await?;
        let run = RunId::parse(RUN).map_err(|e| StoreError::InvalidKey(e.to_string()))?;
        let keys = LiveLogKeys::new(&run, record.attempt, Phase::Specify, "agent.stdout.log");
        let mut index = LiveLogIndex::new();
        for part in ["line one\n", "line two\n"] {
            let number = index.push_part(part.len() as u64);
            store
                .put(&keys.part(number), Bytes::from(part), "text/plain")
                .await?;
        }
        store
            .put(
                &keys.index(),
                Bytes::from(serde_json::to_vec(&index).unwrap_or_default()),
                "application/json",
            )
            .await?;
        let status = Status {
            store,
            presign_expiry: std::time::Duration::from_secs(60),
            public_base: "http://status.local".into(),
        };
        Ok((status, record))
    }

    #[tokio::test]
    async fn a_running_phase_is_read_from_an_offset_across_its_parts(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (status, _) = running(dir.path()).await?;
        let base = format!("/runs/{RUN}/logs/specify");
        let all = status.handle(get(&base)).await;
        assert_eq!(all.status(), StatusCode::OK);
        assert_eq!(all.body().as_ref(), b"line one\nline two\n");
        assert_eq!(header(&all, NEXT_OFFSET_HEADER), "18");
        assert_eq!(header(&all, WRITING_HEADER), "true");
        assert_eq!(header(&all, "cache-control"), "no-store");
        assert_eq!(header(&all, "content-type"), "text/plain; charset=utf-8");
        let middle = status.handle(get(&format!("{base}?offset=5&max=6"))).await;
        assert_eq!(middle.body().as_ref(), b"one\nli");
        assert_eq!(header(&middle, NEXT_OFFSET_HEADER), "11");
        let at_end = status.handle(get(&format!("{base}?offset=18"))).await;
        assert_empty_ok(&at_end);
        assert_eq!(header(&at_end, NEXT_OFFSET_HEADER), "18");
        let past = status.handle(get(&format!("{base}?offset=19"))).await;
        assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        let refused: serde_json::Value = serde_json::from_slice(past.body())?;
        assert_eq!(refused["error"]["size"], 18);
        // Not started yet, in a run that goes on: nothing yet, more may come.
        let plan = status.handle(get(&format!("/runs/{RUN}/logs/plan"))).await;
        assert_eq!(plan.status(), StatusCode::OK);
        assert_eq!(header(&plan, WRITING_HEADER), "true");
        let stderr = status.handle(get(&format!("{base}?stream=stderr"))).await;
        assert_empty_ok(&stderr);
        Ok(())
    }

    #[tokio::test]
    async fn an_ended_phase_is_read_from_its_final_artifact(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (status, mut record) = running(dir.path()).await?;
        let log = b"line one\nline two\nand the end\n";
        let key = format!("runs/{RUN}/artifacts/specify/agent.stdout.log");
        status
            .store
            .put(&key, Bytes::from_static(log), "text/plain")
            .await?;
        let artifact = ArtifactRef {
            name: "agent.stdout.log".into(),
            key,
            size: log.len() as u64,
            sha256: format!("{:x}", Sha256::digest(log)),
            content_type: "text/plain; charset=utf-8".into(),
            phase: Some(Phase::Specify),
            expires_at: record.created_at,
        };
        let outcome = PhaseOutcome {
            exit_code: Some(0),
            message: None,
            artifacts: vec![artifact],
        };
        record.end_phase(
            Phase::Specify,
            PhaseStatus::Succeeded,
            outcome,
            record.created_at,
        )?;
        let (_, version) = runs::load_run_versioned(status.store.as_ref(), &RunId::parse(RUN)?)
            .await?
            .ok_or("no run")?;
        runs::save_run_fenced(status.store.as_ref(), &record, &version).await?;
        let base = format!("/runs/{RUN}/logs/specify");
        let tail = status.handle(get(&format!("{base}?offset=18"))).await;
        assert_eq!(tail.body().as_ref(), b"and the end\n");
        assert_eq!(header(&tail, WRITING_HEADER), "false");
        assert_eq!(header(&tail, NEXT_OFFSET_HEADER), log.len().to_string());
        let whole = status.handle(get(&base)).await;
        assert_eq!(whole.body().as_ref(), log);
        // A phase that runs no command has an empty log, final once the run is.
        assert_empty_ok(&status.handle(get(&format!("/runs/{RUN}/logs/push"))).await);
        Ok(())
    }

    #[tokio::test]
    async fn unknown_runs_and_phases_and_bad_queries_are_refused(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (status, _) = running(dir.path()).await?;
        for path in [
            "/runs/run-none-0001/logs/specify".to_owned(),
            format!("/runs/{RUN}/logs/deploy"),
            format!("/runs/{RUN}/logs/specify/more"),
        ] {
            let response = status.handle(get(&path)).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        }
        for (query, field) in [
            ("offset=-1", "offset"),
            ("offset=1.5", "offset"),
            ("offset=", "offset"),
            ("offset=%2B1", "offset"),
            ("offset=1&offset=2", "offset"),
            ("max=lots", "max"),
            ("stream=both", "stream"),
        ] {
            let response = status
                .handle(get(&format!("/runs/{RUN}/logs/specify?{query}")))
                .await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
            let body: serde_json::Value = serde_json::from_slice(response.body())?;
            assert_eq!(body["error"]["field"], field, "{query}");
        }
        Ok(())
    }
}
