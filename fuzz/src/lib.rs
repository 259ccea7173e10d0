//! The bodies of the fuzz targets, as plain functions: the binaries in `src/bin/` hand them
//! AFL's inputs, and `cargo test` replays the committed corpora through them without AFL.
//!
//! Each takes hostile bytes, must never panic, and asserts what the parsed types promise.
//! The checks are written from the rules in `specrun-core` (request.rs, repo.rs, branch.rs,
//! celery.rs), not by calling the code under test a second time.

use serde::de::DeserializeOwned;
use serde::Serialize;
use specrun_core::branch::BranchName;
use specrun_core::commit_scope;
use specrun_core::feature::FeatureDir;
use specrun_core::quote::quote_path;
use specrun_core::trailer::{self, RUN_TRAILER};
use specrun_core::celery::{self, CeleryError, CeleryState, CeleryTask};
use specrun_core::message::{Incoming, RUN_MESSAGE_KIND};
use specrun_core::repo::{RepoPolicy, RepoRef};
use specrun_core::request::{Publish, RunRequest, ValidatedRequest, MAX_SPECIFY_TEXT};
use specrun_core::state::{PhaseOutcome, PhaseState, RunRecord};
use specrun_core::strict_json::{self, StrictJsonError};
use specrun_core::{Phase, PhaseStatus, RunStatus};
use std::fmt::Debug;
use std::net::IpAddr;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;
use time::OffsetDateTime;

/// The repository hosts the request targets allow, as `SPECRUN_ALLOW_REPO_HOSTS` would.
pub const ALLOWED_HOSTS: &str = "github.com,git.example.test,127.0.0.1:8080";

/// The clock the targets pass in, fixed so that a crash reproduces.
const NOW: OffsetDateTime = datetime!(2026-11-25 12:00 UTC);

/// The policy of the submit function and the queue runner: untrusted input.
pub fn policy() -> RepoPolicy {
    RepoPolicy::allowing(ALLOWED_HOSTS)
}

/// Target `request`: a `POST /runs` body, read as the submit function reads it.
pub fn request(data: &[u8]) {
    check_strict_json(data);
    let Ok(request) = RunRequest::parse_json(data) else {
        return;
    };
    check_request(&request, &policy());
}

/// The duplicate-refusing parser reads what serde_json reads, the same way, and refuses
/// only what serde_json refuses or a body with a key given twice.
fn check_strict_json(data: &[u8]) {
    let lenient = serde_json::from_slice::<serde_json::Value>(data);
    match (strict_json::parse(data), &lenient) {
        (Ok(strict), Ok(lenient)) => {
            assert_eq!(&strict, lenient, "the strict parser read otherwise")
        }
        (Ok(strict), Err(e)) => {
            panic!("the strict parser took {strict:?}, serde_json refused it: {e}")
        }
        (Err(StrictJsonError::Syntax(e)), Ok(value)) => {
            panic!("the strict parser refused {value:?}, which serde_json reads: {e}")
        }
        (Err(StrictJsonError::DuplicateKey { path }), Ok(value)) => {
            // serde_json kept one of the two: written out again, each key is there once.
            let again = strict_json::parse(&to_json(value));
            assert_eq!(again.as_ref(), Ok(value), "a false duplicate {path:?}");
        }
        (Err(_), Err(_)) => {}
    }
}

/// Target `state`: a stored `run.json` or `phases/<phase>.json`, and what the agent or
/// a remote writes that specrun reads back (a commit message, a file name, feature.json,
/// an operator's commit path).
pub fn state(data: &[u8]) {
    agent_written(data);
    if let Ok(record) = serde_json::from_slice::<RunRecord>(data) {
        round_trip(&record);
        take_over(record);
    }
    if let Ok(phase) = serde_json::from_slice::<PhaseState>(data) {
        round_trip(&phase);
    }
}

fn agent_written(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(run) = trailer::run_of(&text) {
        // git's rule: the run is named on a line of the message's last paragraph.
        let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
        assert!(
            last.lines().any(|line| line
                .split_once(':')
                .is_some_and(|(token, value)| token.eq_ignore_ascii_case(RUN_TRAILER)
                    && value.trim() == run)),
            "{run:?} is not a trailer of {text:?}"
        );
    }
    let quoted = quote_path(&text);
    assert!(!quoted.contains(['\n', '\r']), "{quoted:?} spans lines");
    if quoted == text {
        assert!(!text.chars().any(char::is_control), "{text:?} left unquoted");
    }
    if let Ok(feature) = FeatureDir::from_feature_json(data) {
        if feature.require_spec_kit_layout().is_ok() {
            let name = feature.as_str().strip_prefix("specs/");
            assert!(name.is_some_and(|n| !n.is_empty() && !n.contains('/')), "{feature:?}");
        }
    }
    if commit_scope::check_pattern(&text).is_ok() {
        assert!(
            !text.starts_with('/') && !text.split('/').any(|p| p == ".." || p == ".git"),
            "{text:?} accepted as a commit path"
        );
    }
}

/// Target `queue_message`: an SQS message body, read as the queue runner reads it.
pub fn queue_message(data: &[u8]) {
    match celery::parse_task_message(data, celery::TASK_NAME) {
        Ok(Some(task)) => check_task(&task),
        Ok(None) => {}
        Err(error) => check_refusal(&error),
    }
    match Incoming::parse(data) {
        Ok(Incoming::Run(message)) => {
            assert_eq!(message.kind, RUN_MESSAGE_KIND);
            let again = Incoming::parse(&message.to_json());
            assert!(
                matches!(&again, Ok(Incoming::Run(m)) if *m == message),
                "a run message does not read back: {again:?}"
            );
            check_request(&message.request, &policy());
        }
        Ok(Incoming::Bare(request)) => {
            let json = to_json(&request);
            let again = Incoming::parse(&json);
            assert!(
                matches!(&again, Ok(Incoming::Bare(r)) if *r == request),
                "a bare request does not read back: {again:?}"
            );
            check_request(&request, &policy());
        }
        Ok(Incoming::Answers(message)) => {
            let again = Incoming::parse(&message.to_json());
            assert!(
                matches!(&again, Ok(Incoming::Answers(m)) if *m == message),
                "an answers message does not read back: {again:?}"
            );
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
}

/// Validates a request; when that succeeds, checks every promise of `ValidatedRequest`.
fn check_request(request: &RunRequest, policy: &RepoPolicy) {
    let validated = match request.validate(policy) {
        Ok(validated) => validated,
        Err(error) => {
            assert!(!error.field.is_empty(), "a refusal names no field");
            return;
        }
    };
    check_validated(request, &validated, policy);

    // The submit function queues `to_wire()`, and the runner validates it again: that must
    // succeed, and give the same request.
    let wire = validated.to_wire();
    let again = match wire.validate(policy) {
        Ok(again) => again,
        Err(error) => panic!("the wire form {wire:?} of a valid request is refused: {error}"),
    };
    assert_eq!(again.to_wire(), wire, "validating the wire form changed it");
    let read_back: RunRequest = from_json(&to_json(&wire));
    assert_eq!(read_back, wire, "the wire form does not survive JSON");
}

fn check_validated(request: &RunRequest, v: &ValidatedRequest, policy: &RepoPolicy) {
    check_repo(&v.repository, policy);
    if matches!(v.repository, RepoRef::Url(_)) {
        // repo.rs refuses '.' and '..' path segments before URL parsing can fold them away;
        // the URL parser reads '\' as '/', so those count as segment separators too.
        let after_scheme = request
            .repository
            .split_once("://")
            .map_or("", |(_, rest)| rest);
        let dot_segment = after_scheme.split(['/', '\\']).any(|segment| {
            let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
            decoded == "." || decoded == ".."
        });
        assert!(
            !dot_segment,
            "a URL with a '.' or '..' segment accepted: {:?}",
            request.repository
        );
    }

    let text = &v.specify_text;
    assert_eq!(text, &request.specify_text);
    assert!(!text.trim().is_empty(), "empty specify_text accepted");
    assert!(text.len() <= MAX_SPECIFY_TEXT, "oversized specify_text");
    assert!(
        text.chars()
            .all(|c| (!c.is_control() || matches!(c, '\n' | '\r' | '\t')) && !is_deceptive(c)),
        "specify_text with a control or format character accepted: {text:?}"
    );

    assert!(
        v.branch_name.is_none() || v.branch_name != v.base_branch,
        "the base branch accepted as the run's branch: {:?}",
        v.branch_name
    );
    for (given, branch) in [
        (&request.base_branch, &v.base_branch),
        (&request.branch_name, &v.branch_name),
    ] {
        assert_eq!(given.as_deref(), branch.as_ref().map(BranchName::as_str));
        if let Some(branch) = branch {
            check_branch(branch);
        }
    }

    if let Some(agent) = &v.agent {
        assert!(
            (1..=32).contains(&agent.len())
                && agent.starts_with(|c: char| c.is_ascii_lowercase())
                && agent
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "agent {agent:?} accepted"
        );
    }
    assert_eq!(v.agent, request.agent);

    assert!(v.agent_options.len() <= 16, "more than 16 agent options");
    for (key, value) in &v.agent_options {
        assert!(
            (1..=32).contains(&key.len())
                && key.starts_with(|c: char| c.is_ascii_lowercase())
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "agent option name {key:?} accepted"
        );
        assert!(
            value.len() <= 256 && !value.chars().any(|c| c.is_control() || is_deceptive(c)),
            "agent option value {value:?} accepted"
        );
    }
    assert_eq!(v.agent_options, request.agent_options);

    assert_eq!(v.publish, request.publish.unwrap_or(Publish::Pr));
    assert_eq!(v.draft, request.draft.unwrap_or(false));

    assert!(v.labels.len() <= 20, "more than 20 labels");
    for label in &v.labels {
        assert!(
            !label.trim().is_empty()
                && label.chars().count() <= 50
                && !label
                    .chars()
                    .any(|c| c.is_control() || is_deceptive(c) || c == ','),
            "label {label:?} accepted"
        );
    }
    assert_eq!(v.labels, request.labels);

    if let Some(external_ref) = &v.external_ref {
        assert!(
            !external_ref.is_empty()
                && external_ref.chars().count() <= 200
                && !external_ref
                    .chars()
                    .any(|c| c.is_control() || is_deceptive(c)),
            "external_ref {external_ref:?} accepted"
        );
    }
    assert_eq!(v.external_ref, request.external_ref);

    if let Some(key) = &v.idempotency_key {
        assert!(
            (1..=128).contains(&key.len())
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)),
            "idempotency_key {key:?} accepted"
        );
    }
    assert_eq!(v.idempotency_key, request.idempotency_key);
}

/// What an untrusted request may name: `owner/name` on the forge, or an https URL (http on
/// loopback) on an allowed host, without credentials, query, fragment or odd path segments.
fn check_repo(repo: &RepoRef, policy: &RepoPolicy) {
    match repo {
        RepoRef::Local(path) => panic!("an untrusted request named the local path {path:?}"),
        RepoRef::Forge { owner, name } => {
            assert!(
                (1..=39).contains(&owner.len())
                    && owner
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !owner.starts_with('-')
                    && !owner.ends_with('-')
                    && !owner.contains("--"),
                "owner {owner:?} accepted"
            );
            assert!(repo_segment_ok(name), "repository name {name:?} accepted");
        }
        RepoRef::Url(url) => {
            let Some(host) = url.host_str() else {
                panic!("a URL without a host accepted: {url}")
            };
            let host_port = match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            assert!(
                policy
                    .allowed_hosts
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(&host_port) || h.eq_ignore_ascii_case(host)),
                "host {host_port:?} is not on the allow-list: {url}"
            );
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            assert!(
                url.scheme() == "https" || (url.scheme() == "http" && loopback),
                "scheme of {url} accepted"
            );
            assert!(
                url.username().is_empty() && url.password().is_none(),
                "a URL with credentials accepted: {url}"
            );
            assert!(
                url.query().is_none() && url.fragment().is_none(),
                "a URL with a query or fragment accepted: {url}"
            );
            let path = url.path().trim_matches('/');
            assert!(
                path.split('/').all(|segment| {
                    let segment = segment.strip_suffix(".git").unwrap_or(segment);
                    repo_segment_ok(segment) && !segment.starts_with('-')
                }),
                "URL path of {url} accepted"
            );
        }
    }
}

fn repo_segment_ok(segment: &str) -> bool {
    (1..=100).contains(&segment.len())
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// git's `check-ref-format` rules for a branch, plus specrun's own: printable ASCII, at
/// most 200 bytes, not readable as an option, not `HEAD`.
fn check_branch(branch: &BranchName) {
    let name = branch.as_str();
    let ok = (1..=200).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_graphic())
        && !name.starts_with('-')
        && name != "@"
        && name != "HEAD"
        && !(name.ends_with("_HEAD") && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        && !name.starts_with("refs/")
        && !name.contains("..")
        && !name.contains("@{")
        && !name.ends_with('.')
        && !name.bytes().any(|b| b"~^:?*[\\".contains(&b))
        && name.split('/').all(|component| {
            !component.is_empty() && !component.starts_with('.') && !component.ends_with(".lock")
        });
    assert!(ok, "branch name {name:?} accepted");
    assert_eq!(
        branch.refname(),
        format!("refs/heads/{name}"),
        "refname of {name:?}"
    );
    assert_eq!(BranchName::parse(name).as_ref(), Ok(branch));
}

/// Characters no reader sees (the set core/src/invisible.rs documents): Unicode's format
/// characters (Cf, 15.1), the tag block, Hangul fillers, the combining grapheme joiner and
/// the supplementary variation selectors.
fn is_deceptive(c: char) -> bool {
    const RANGES: [(u32, u32); 25] = [
        (0x00AD, 0x00AD),
        (0x034F, 0x034F),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x115F, 0x1160),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0x3164, 0x3164),
        (0xFEFF, 0xFEFF),
        (0xFFA0, 0xFFA0),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0000, 0xE007F),
        (0xE0100, 0xE01EF),
    ];
    let code = u32::from(c);
    RANGES
        .iter()
        .any(|&(low, high)| (low..=high).contains(&code))
}

/// Celery's task ids as specrun accepts them: fit for a storage key.
fn task_id_ok(id: &str) -> bool {
    (1..=200).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// An accepted Celery task, used the way the queue runner uses it.
fn check_task(task: &CeleryTask) {
    assert!(task_id_ok(&task.task_id), "task id {:?}", task.task_id);
    assert_eq!(task.task_name, celery::TASK_NAME);
    assert!(task.kwargs.is_object(), "kwargs {:?}", task.kwargs);
    assert!(matches!(task.protocol, 1 | 2), "protocol {}", task.protocol);
    assert_eq!(
        task.eta.is_some(),
        task.eta_time().is_some(),
        "eta {:?}",
        task.eta
    );
    assert_eq!(
        task.expires.is_some(),
        task.expires_time().is_some(),
        "expires {:?}",
        task.expires
    );
    let _ = task.is_expired(NOW);
    if let Some(eta) = task.eta_time().filter(|eta| *eta > NOW) {
        let _ = (eta - NOW).whole_seconds().clamp(1, 12 * 3600);
    }
    assert_eq!(
        task.result_key("celery/"),
        format!("celery/celery-task-meta-{}", task.task_id)
    );
    let done = NOW.format(&Rfc3339).unwrap_or_default();
    let result = celery::failure_result("InvalidRunRequest", "fuzz");
    let document =
        celery::result_document(&task.task_id, CeleryState::Failure, result, &done, None);
    let _: serde_json::Value = from_json(&document);

    if let Ok(request) = serde_json::from_value::<RunRequest>(task.kwargs.clone()) {
        check_request(&request, &policy());
    }
}

/// A refused Celery message: the task id it reports is one a result may be stored under.
fn check_refusal(error: &CeleryError) {
    if let Some(id) = &error.task_id {
        assert!(task_id_ok(id), "a refusal reports the task id {id:?}");
    }
    let _ = error.to_string();
}

/// What a runner does with a stored record: read its phases, take it over, run a phase and
/// finish. None of it may panic, and the result must still round-trip.
fn take_over(mut record: RunRecord) {
    for phase in Phase::ALL {
        assert_eq!(
            record.phase(phase).phase,
            phase,
            "phase({phase}) of a stored run"
        );
    }
    let _ = record.failed_phase();
    if record.status == RunStatus::Running {
        let _ = record.restart("fuzz-runner", NOW);
    } else {
        let _ = record.start("fuzz-runner", NOW);
    }
    if record.begin_phase(Phase::Prepare, NOW).is_ok() {
        let outcome = PhaseOutcome {
            exit_code: Some(1),
            message: Some("fuzz".to_owned()),
            artifacts: Vec::new(),
        };
        let _ = record.end_phase(Phase::Prepare, PhaseStatus::Failed, outcome, NOW);
    }
    record.skip_pending("fuzz", &[Phase::Cleanup], NOW);
    let _ = record.finish(RunStatus::Failed, Some("fuzz".to_owned()), NOW);
    round_trip(&record);
}

/// Serialising and parsing again gives the same value, and the same JSON.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let json = to_json(value);
    let again: T = from_json(&json);
    assert_eq!(&again, value, "a value changed through JSON");
    assert_eq!(to_json(&again), json, "JSON changed through a value");
}

fn to_json<T: Serialize + Debug>(value: &T) -> Vec<u8> {
    match serde_json::to_vec(value) {
        Ok(json) => json,
        Err(error) => panic!("{value:?} does not serialise: {error}"),
    }
}

fn from_json<T: DeserializeOwned>(json: &[u8]) -> T {
    match serde_json::from_slice(json) {
        Ok(value) => value,
        Err(error) => panic!(
            "{} does not parse again: {error}",
            String::from_utf8_lossy(json)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The committed seeds of a target, with their names.
    fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        files.sort();
        assert!(!files.is_empty(), "{} is empty", dir.display());
        files
            .into_iter()
            .map(|path| {
                let bytes =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                (path.display().to_string(), bytes)
            })
            .collect()
    }

    #[test]
    fn request_seeds_pass_and_most_are_valid() {
        let seeds = corpus("request");
        for (_, bytes) in &seeds {
            request(bytes);
        }
        let valid = seeds
            .iter()
            .filter(|(_, bytes)| RunRequest::from_json(bytes, &policy()).is_ok())
            .count();
        assert!(valid * 2 > seeds.len(), "only {valid} valid request seeds");
    }

    #[test]
    fn state_seeds_pass_and_parse() {
        for (name, bytes) in corpus("state") {
            state(&bytes);
            let parses = serde_json::from_slice::<RunRecord>(&bytes).is_ok()
                || serde_json::from_slice::<PhaseState>(&bytes).is_ok();
            // `agent-*` seeds are what an agent or a remote writes, not state objects.
            assert!(
                parses || name.contains("agent-"),
                "{name} is neither a run nor a phase state"
            );
        }
    }

    #[test]
    fn queue_seeds_pass_and_are_messages() {
        for (name, bytes) in corpus("queue_message") {
            queue_message(&bytes);
            let celery = !matches!(
                celery::parse_task_message(&bytes, celery::TASK_NAME),
                Ok(None)
            );
            assert!(
                celery || Incoming::parse(&bytes).is_ok(),
                "{name} is no queue message"
            );
        }
    }
}
