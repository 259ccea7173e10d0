//! Batches: one specification for many repositories (`POST /batches`). The request's
//! shape and validation, the batch record (`batches/<id>/batch.json`) with its counts by
//! status, and which of its held runs may be released next under `max_in_flight`. No I/O:
//! `specrun_store::batches` reads and writes, the submit function validates.

use crate::request::{RequestError, RunRequest, ValidatedRequest};
use crate::RunStatus;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use time::OffsetDateTime;

pub const BATCH_SCHEMA_VERSION: u32 = 1;

/// What a deployment allows one batch: both are configuration (`SPECRUN_BATCH_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most repositories one batch may name.
    pub max_repositories: usize,
    /// Most runs of one batch queued for the runners at once; a request asking for more
    /// gets this many.
    pub max_in_flight: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_repositories: 100,
            max_in_flight: 4,
        }
    }
}

/// A batch id: `b-` and 32 lowercase hex digits (a key path component as it stands).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BatchId(String);

impl BatchId {
    pub fn parse(text: &str) -> Result<BatchId, RequestError> {
        let hex = text.strip_prefix("b-").unwrap_or_default();
        if hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(BatchId(text.to_owned()))
        } else {
            Err(field_error(
                "batch_id",
                format!("{text:?} is not a batch id (b- and 32 hex digits)"),
            ))
        }
    }

    /// The id made of 32 hex digits (a digest or a UUID's digits); `None` otherwise.
    pub fn from_hex(hex: &str) -> Option<BatchId> {
        BatchId::parse(&format!("b-{}", hex.get(..32)?)).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key of a batch's record.
pub fn batch_json(id: &BatchId) -> String {
    format!("batches/{id}/batch.json")
}

/// A `POST /batches` body, parsed and checked: every run's request validated, in the
/// order the repositories were given.
#[derive(Debug, Clone)]
pub struct BatchRequest {
    /// The client's name for the batch: the same key is the same batch, so sending the
    /// body again resubmits it.
    pub batch_key: Option<String>,
    /// As asked, capped by [`BatchLimits::max_in_flight`].
    pub max_in_flight: usize,
    pub runs: Vec<ValidatedRequest>,
}

fn field_error(field: &str, reason: impl Into<String>) -> RequestError {
    RequestError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Fields of a run request a batch sets itself.
const BATCH_OWNED: [(&str, &str); 2] = [
    ("repository", "a batch names its repositories in \"repositories\""),
    (
        "idempotency_key",
        "a batch gives each run its own key; name the batch with \"batch_key\" to make resubmitting it safe",
    ),
];

impl BatchRequest {
    /// Parses `body`: the fields of a run request shared by every run, plus
    /// `repositories` (each a repository, or an object with `repository` and any run
    /// request field that differs for it), `batch_key` and `max_in_flight`. `check`
    /// validates what the run request alone cannot (the agent and its options). A
    /// refused entry is named by its index: `repositories[2]`, `repositories[2].agent`.
    pub fn parse(
        body: &[u8],
        limits: BatchLimits,
        check: impl Fn(&RunRequest) -> Result<ValidatedRequest, RequestError>,
    ) -> Result<BatchRequest, RequestError> {
        let value = crate::request::parse_body(body)?;
        let Value::Object(mut shared) = value else {
            return Err(field_error("body", "a batch request is a JSON object"));
        };
        for (field, why) in BATCH_OWNED {
            if shared.contains_key(field) {
                return Err(field_error(field, why));
            }
        }
        let batch_key = take_batch_key(&mut shared)?;
        let max_in_flight = take_max_in_flight(&mut shared, limits)?;
        let entries = match shared.remove("repositories") {
            Some(Value::Array(entries)) => entries,
            Some(_) => return Err(field_error("repositories", "must be a list")),
            None => {
                return Err(field_error(
                    "repositories",
                    "is required: the repositories to run the specification on",
                ))
            }
        };
        if entries.is_empty() {
            return Err(field_error(
                "repositories",
                "is empty: name at least one repository",
            ));
        }
        if entries.len() > limits.max_repositories {
            return Err(field_error(
                "repositories",
                format!(
                    "names {} repositories; a batch takes at most {} (split it into several batches)",
                    entries.len(),
                    limits.max_repositories
                ),
            ));
        }
        let mut runs: Vec<ValidatedRequest> = Vec::with_capacity(entries.len());
        let mut first_index: HashMap<String, usize> = HashMap::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let run = entry_request(index, entry, &shared, &check)?;
            let repository = run.repository.to_string();
            if let Some(first) = first_index.insert(repository.clone(), index) {
                return Err(field_error(
                    &format!("repositories[{index}]"),
                    format!(
                        "{repository} is already repositories[{first}]; name each repository once"
                    ),
                ));
            }
            runs.push(run);
        }
        Ok(BatchRequest {
            batch_key,
            max_in_flight,
            runs,
        })
    }

    /// The canonical form of the whole batch (every run's wire form, in order): two
    /// bodies that make the same runs have equal forms, whatever their spelling.
    pub fn canonical(&self) -> Vec<u8> {
        let wires: Vec<RunRequest> = self.runs.iter().map(ValidatedRequest::to_wire).collect();
        let form = serde_json::json!({"runs": wires, "max_in_flight": self.max_in_flight});
        serde_json::to_vec(&form).unwrap_or_default()
    }
}

fn take_batch_key(shared: &mut Map<String, Value>) -> Result<Option<String>, RequestError> {
    match shared.remove("batch_key") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(key))
            if !key.is_empty()
                && key.len() <= 128
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)) =>
        {
            Ok(Some(key))
        }
        Some(_) => Err(field_error(
            "batch_key",
            "must be 1-128 of A-Z, a-z, 0-9, '.', '_', ':', '-'",
        )),
    }
}

fn take_max_in_flight(
    shared: &mut Map<String, Value>,
    limits: BatchLimits,
) -> Result<usize, RequestError> {
    let cap = limits.max_in_flight.max(1);
    match shared.remove("max_in_flight") {
        None | Some(Value::Null) => Ok(cap),
        Some(value) => match value.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n >= 1 => Ok(n.min(cap)),
            _ => Err(field_error(
                "max_in_flight",
                format!("must be a whole number from 1 (at most {cap} are in flight here)"),
            )),
        },
    }
}

/// Entry `index` merged over the shared fields and validated; errors name the entry.
fn entry_request(
    index: usize,
    entry: Value,
    shared: &Map<String, Value>,
    check: &impl Fn(&RunRequest) -> Result<ValidatedRequest, RequestError>,
) -> Result<ValidatedRequest, RequestError> {
    let at = format!("repositories[{index}]");
    let own: Map<String, Value> = match entry {
        Value::String(repository) => Map::from_iter([("repository".to_owned(), Value::String(repository))]),
        Value::Object(own) => own,
        _ => {
            return Err(field_error(
                &at,
                "must be a repository, or an object with \"repository\" and the fields that differ for it",
            ))
        }
    };
    if !own.contains_key("repository") {
        return Err(field_error(&at, "names no \"repository\""));
    }
    if own.contains_key("idempotency_key") {
        return Err(field_error(
            &format!("{at}.idempotency_key"),
            BATCH_OWNED[1].1,
        ));
    }
    let overridden: BTreeSet<String> = own.keys().cloned().collect();
    let mut merged = shared.clone();
    merged.extend(own);
    let request: RunRequest = serde_json::from_value(Value::Object(merged))
        .map_err(|e| field_error(&at, format!("not a valid run request: {e}")))?;
    check(&request).map_err(|e| {
        let field = match e.field.as_str() {
            "repository" => at.clone(),
            field if overridden.contains(field) => format!("{at}.{field}"),
            // A shared field is refused for every entry: named as sent.
            field => field.to_owned(),
        };
        field_error(&field, e.reason)
    })
}

/// One run of a batch, as batch.json lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRun {
    pub repository: String,
    pub run_id: String,
    /// Whether its message has been released to the queue; a held run waits for a slot.
    #[serde(default)]
    pub released: bool,
    /// Its status when batch.json was last written; `GET /batches/{id}` reads each run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    #[serde(default)]
    pub attempt: u32,
}

impl BatchRun {
    /// Holds a runner slot: released and not yet final.
    fn in_flight(&self) -> bool {
        self.released && self.status.is_some_and(|s| !s.is_final())
    }
}

/// How many of a batch's runs are in each status; `held` are queued runs waiting for a
/// slot (counted in `queued` too).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCounts {
    pub total: usize,
    pub queued: usize,
    pub held: usize,
    pub running: usize,
    pub succeeded: usize,
    pub no_changes: usize,
    pub needs_clarification: usize,
    pub failed: usize,
    pub cancelled: usize,
    /// Every run is final.
    pub finished: bool,
}

/// `batches/<id>/batch.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub schema_version: u32,
    pub batch_id: BatchId,
    /// SHA-256 of [`BatchRequest::canonical`]: a resubmission must match it.
    pub request_sha256: String,
    pub max_in_flight: usize,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// How many times the batch was submitted (1, then one more per resubmission).
    pub submissions: u32,
    pub counts: BatchCounts,
    pub runs: Vec<BatchRun>,
}

impl BatchRecord {
    pub fn new(
        batch_id: BatchId,
        request_sha256: String,
        max_in_flight: usize,
        runs: Vec<BatchRun>,
        now: OffsetDateTime,
    ) -> BatchRecord {
        let mut record = BatchRecord {
            schema_version: BATCH_SCHEMA_VERSION,
            batch_id,
            request_sha256,
            max_in_flight: max_in_flight.max(1),
            created_at: now,
            updated_at: now,
            submissions: 1,
            counts: BatchCounts::default(),
            runs,
        };
        record.counts = record.count();
        record
    }

    /// Takes the runs' statuses (and attempts) as read now, by run id; a run not read
    /// keeps what was recorded.
    pub fn observe(&mut self, read: &HashMap<String, (RunStatus, u32)>, now: OffsetDateTime) {
        for run in &mut self.runs {
            if let Some((status, attempt)) = read.get(&run.run_id) {
                run.status = Some(*status);
                run.attempt = *attempt;
            }
        }
        self.counts = self.count();
        self.updated_at = now;
    }

    pub fn count(&self) -> BatchCounts {
        let mut counts = BatchCounts {
            total: self.runs.len(),
            ..BatchCounts::default()
        };
        for run in &self.runs {
            match run.status.unwrap_or(RunStatus::Queued) {
                RunStatus::Queued => {
                    counts.queued += 1;
                    counts.held += usize::from(!run.released);
                }
                RunStatus::Running => counts.running += 1,
                RunStatus::Succeeded => counts.succeeded += 1,
                RunStatus::NoChanges => counts.no_changes += 1,
                RunStatus::NeedsClarification => counts.needs_clarification += 1,
                RunStatus::Failed => counts.failed += 1,
                RunStatus::Cancelled => counts.cancelled += 1,
            }
        }
        counts.finished = self
            .runs
            .iter()
            .all(|r| r.status.is_some_and(RunStatus::is_final));
        counts
    }

    /// Marks released the held queued runs that fit under `max_in_flight`, first given
    /// first; returns their indexes. Call after [`BatchRecord::observe`], and store the
    /// record (conditionally) before sending any of them.
    pub fn release(&mut self) -> Vec<usize> {
        let mut in_flight = self.runs.iter().filter(|r| r.in_flight()).count();
        let mut released = Vec::new();
        for (index, run) in self.runs.iter_mut().enumerate() {
            if in_flight >= self.max_in_flight {
                break;
            }
            if !run.released && run.status == Some(RunStatus::Queued) {
                run.released = true;
                in_flight += 1;
                released.push(index);
            }
        }
        self.counts = self.count();
        released
    }

    /// A run queued again by a resubmission waits for a slot like a new one.
    pub fn hold(&mut self, run_id: &str) {
        for run in self.runs.iter_mut().filter(|r| r.run_id == run_id) {
            run.released = false;
            run.status = Some(RunStatus::Queued);
        }
        self.counts = self.count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::RepoPolicy;
    use time::macros::datetime;

    fn policy() -> RepoPolicy {
        RepoPolicy {
            allowed_hosts: vec!["git.example.com".into()],
            trusted: false,
            callbacks: Default::default(),
        }
    }

    fn parse(body: &str) -> Result<BatchRequest, RequestError> {
        let limits = BatchLimits {
            max_repositories: 3,
            max_in_flight: 2,
        };
        BatchRequest::parse(body.as_bytes(), limits, |r| r.validate(&policy()))
    }

    fn field_of(body: &str) -> String {
        match parse(body) {
            Ok(_) => format!("accepted: {body}"),
            Err(e) => e.field,
        }
    }

    #[test]
    fn each_repository_gets_the_shared_fields_and_its_own() -> Result<(), RequestError> {
        let batch = parse(
            r#"{"specify_text":"Add login","publish":"branch","repositories":["octo/a",{"repository":"octo/b","base_branch":"dev"}],"batch_key":"nightly-1","max_in_flight":9}"#,
        )?;
        assert_eq!(batch.runs.len(), 2);
        assert_eq!(batch.runs[0].repository.to_string(), "octo/a");
        assert_eq!(
            batch.runs[1].base_branch.as_ref().map(ToString::to_string),
            Some("dev".to_owned())
        );
        assert!(batch.runs.iter().all(|r| r.specify_text == "Add login"));
        assert_eq!(batch.max_in_flight, 2, "capped by the configuration");
        assert_eq!(batch.batch_key.as_deref(), Some("nightly-1"));
        Ok(())
    }

    #[test]
    fn bad_batches_name_the_field_or_the_entry() {
        for (body, field) in [
            (r#"{"specify_text":"x","repositories":[]}"#, "repositories"),
            (r#"{"specify_text":"x"}"#, "repositories"),
            (
                r#"{"specify_text":"x","repositories":"octo/a"}"#,
                "repositories",
            ),
            (
                r#"{"specify_text":"x","repositories":["a/a","a/b","a/c","a/d"]}"#,
                "repositories",
            ),
            (
                r#"{"specify_text":"x","repositories":["octo/a","octo/b","octo/a"]}"#,
                "repositories[2]",
            ),
            (
                r#"{"specify_text":"x","repositories":["octo/a","file:///etc"]}"#,
                "repositories[1]",
            ),
            (
                r#"{"specify_text":"x","repositories":["octo/a",7]}"#,
                "repositories[1]",
            ),
            (
                r#"{"specify_text":"x","repositories":[{"base_branch":"dev"}]}"#,
                "repositories[0]",
            ),
            (
                r#"{"specify_text":"x","repositories":[{"repository":"octo/a","branch_name":"a..b"}]}"#,
                "repositories[0].branch_name",
            ),
            (
                r#"{"specify_text":"x","repositories":[{"repository":"octo/a","idempotency_key":"k"}]}"#,
                "repositories[0].idempotency_key",
            ),
            (
                r#"{"specify_text":"x","branch_name":"a..b","repositories":["octo/a"]}"#,
                "branch_name",
            ),
            (r#"{"repositories":["octo/a"]}"#, "repositories[0]"),
            (
                r#"{"specify_text":"x","repository":"octo/a","repositories":["octo/a"]}"#,
                "repository",
            ),
            (
                r#"{"specify_text":"x","idempotency_key":"k","repositories":["octo/a"]}"#,
                "idempotency_key",
            ),
            (
                r#"{"specify_text":"x","max_in_flight":0,"repositories":["octo/a"]}"#,
                "max_in_flight",
            ),
            (
                r#"{"specify_text":"x","batch_key":"a b","repositories":["octo/a"]}"#,
                "batch_key",
            ),
            (
                r#"{"specify_text":"x","repositories":["octo/a"],"repositories":["octo/b"]}"#,
                "body",
            ),
            ("[1]", "body"),
        ] {
            assert_eq!(field_of(body), field, "{body}");
        }
    }

    fn record(n: usize, max_in_flight: usize) -> BatchRecord {
        let runs = (0..n)
            .map(|i| BatchRun {
                repository: format!("octo/{i}"),
                run_id: format!("run-{i}"),
                released: false,
                status: Some(RunStatus::Queued),
                attempt: 0,
            })
            .collect();
        let id = BatchId::from_hex(&"a".repeat(32)).unwrap_or_else(|| unreachable!());
        BatchRecord::new(
            id,
            String::new(),
            max_in_flight,
            runs,
            datetime!(2026-01-01 0:00 UTC),
        )
    }

    fn seen(pairs: &[(usize, RunStatus)]) -> HashMap<String, (RunStatus, u32)> {
        pairs
            .iter()
            .map(|(i, s)| (format!("run-{i}"), (*s, 1)))
            .collect()
    }

    #[test]
    fn no_more_than_max_in_flight_are_released_and_an_end_frees_a_slot() {
        let mut batch = record(5, 2);
        assert_eq!(batch.release(), vec![0, 1]);
        assert_eq!(batch.counts.held, 3);
        assert_eq!(batch.release(), Vec::<usize>::new(), "both slots are taken");
        let now = datetime!(2026-01-01 0:01 UTC);
        batch.observe(
            &seen(&[(0, RunStatus::Running), (1, RunStatus::Failed)]),
            now,
        );
        assert_eq!(batch.release(), vec![2]);
        batch.observe(
            &seen(&[(0, RunStatus::Succeeded), (2, RunStatus::Succeeded)]),
            now,
        );
        assert_eq!(batch.release(), vec![3, 4]);
        batch.observe(
            &seen(&[(3, RunStatus::Succeeded), (4, RunStatus::Succeeded)]),
            now,
        );
        assert_eq!((batch.counts.succeeded, batch.counts.failed), (4, 1));
        assert!(batch.counts.finished);
        batch.hold("run-1");
        assert_eq!(batch.counts.held, 1);
        assert!(!batch.counts.finished);
        assert_eq!(batch.release(), vec![1]);
    }

    #[test]
    fn batch_ids_are_checked() {
        assert!(BatchId::parse(&format!("b-{}", "0".repeat(32))).is_ok());
        for bad in [
            "",
            "b-",
            "b-../../x",
            &format!("b-{}", "A".repeat(32)),
            &format!("x-{}", "0".repeat(32)),
        ] {
            assert!(BatchId::parse(bad).is_err(), "{bad}");
        }
    }
}
