//! The runner's metrics: their names, types, units and tags, what a run's record says
//! about each, and the two line formats they are sent in: StatsD (with DogStatsD tags, or
//! none) and CloudWatch Embedded Metric Format. Names follow OpenTelemetry where it has
//! one (`gen_ai.client.token.usage` with `gen_ai.token.type`); specrun's own are put under
//! a prefix (`specrun.` by default). Sending is the runner's (`runner/src/metrics/`).

use crate::phase::{Phase, PhaseStatus, RunStatus};
use crate::state::{RunRecord, Timestamp};
use std::fmt::Write as _;

/// A metric specrun emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricName {
    RunsStarted,
    RunsFinished,
    RunDuration,
    QueueWait,
    PhaseDuration,
    CleanupFailures,
    Retries,
    TokenUsage,
    CostUsd,
}

/// How a metric aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Adds up (StatsD `c`).
    Counter,
    /// A duration in milliseconds (StatsD `ms`).
    Timing,
    /// A distribution of values (StatsD `h`).
    Histogram,
}

impl MetricName {
    /// Every metric, in the order the README lists them.
    pub const ALL: [MetricName; 9] = [
        MetricName::RunsStarted,
        MetricName::RunsFinished,
        MetricName::RunDuration,
        MetricName::QueueWait,
        MetricName::PhaseDuration,
        MetricName::CleanupFailures,
        MetricName::Retries,
        MetricName::TokenUsage,
        MetricName::CostUsd,
    ];

    /// The name without a prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricName::RunsStarted => "runs.started",
            MetricName::RunsFinished => "runs.finished",
            MetricName::RunDuration => "run.duration",
            MetricName::QueueWait => "queue.wait",
            MetricName::PhaseDuration => "phase.duration",
            MetricName::CleanupFailures => "cleanup.failures",
            MetricName::Retries => "retries",
            MetricName::TokenUsage => "gen_ai.client.token.usage",
            MetricName::CostUsd => "cost.usd",
        }
    }

    /// OpenTelemetry's own names are sent as they are, never under specrun's prefix.
    pub fn is_otel(self) -> bool {
        self == MetricName::TokenUsage
    }

    pub fn kind(self) -> MetricKind {
        match self {
            MetricName::RunsStarted
            | MetricName::RunsFinished
            | MetricName::CleanupFailures
            | MetricName::Retries
            | MetricName::CostUsd => MetricKind::Counter,
            MetricName::RunDuration | MetricName::QueueWait | MetricName::PhaseDuration => {
                MetricKind::Timing
            }
            MetricName::TokenUsage => MetricKind::Histogram,
        }
    }

    /// The CloudWatch unit of the value.
    pub fn emf_unit(self) -> &'static str {
        match self.kind() {
            MetricKind::Timing => "Milliseconds",
            MetricKind::Counter if self == MetricName::CostUsd => "None",
            _ => "Count",
        }
    }

    /// The name with `prefix` (`specrun.`), unless OpenTelemetry names it.
    pub fn full_name(self, prefix: &str) -> String {
        if self.is_otel() {
            self.as_str().to_owned()
        } else {
            format!("{prefix}{}", self.as_str())
        }
    }
}

/// One value of one metric, with its tags.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: MetricName,
    pub value: f64,
    pub tags: Vec<(&'static str, String)>,
}

impl Metric {
    fn new(name: MetricName, value: f64, tags: Vec<(&'static str, String)>) -> Self {
        Metric { name, value, tags }
    }
}

/// How tags travel in StatsD lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TagStyle {
    /// `|#key:value,key:value` (DogStatsD, also the Datadog agent and Telegraf).
    #[default]
    DogStatsd,
    /// No tags: plain StatsD.
    None,
}

impl std::str::FromStr for TagStyle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dogstatsd" => Ok(TagStyle::DogStatsd),
            "none" => Ok(TagStyle::None),
            other => Err(format!("{other:?} is not a tag style: dogstatsd or none")),
        }
    }
}

/// A StatsD line: `<name>:<value>|<type>[|#k:v,...]`.
pub fn statsd_line(metric: &Metric, prefix: &str, tags: TagStyle) -> String {
    let kind = match metric.name.kind() {
        MetricKind::Counter => "c",
        MetricKind::Timing => "ms",
        MetricKind::Histogram => "h",
    };
    let mut line = format!(
        "{}:{}|{kind}",
        metric.name.full_name(prefix),
        number(metric.value)
    );
    if tags == TagStyle::DogStatsd && !metric.tags.is_empty() {
        line.push_str("|#");
        for (i, (key, value)) in metric.tags.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            let _ = write!(line, "{key}:{}", tag_value(value));
        }
    }
    line
}

/// A CloudWatch Embedded Metric Format line: the value under the metric's name, each tag
/// a dimension, all declared in `_aws.CloudWatchMetrics`.
pub fn emf_line(metric: &Metric, namespace: &str, prefix: &str, at: Timestamp) -> String {
    let name = metric.name.full_name(prefix);
    let mut object = serde_json::Map::new();
    let dimensions: Vec<&str> = metric.tags.iter().map(|(key, _)| *key).collect();
    object.insert(
        "_aws".to_owned(),
        serde_json::json!({
            "Timestamp": (at.unix_timestamp_nanos() / 1_000_000) as i64,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [dimensions],
                "Metrics": [{ "Name": name, "Unit": metric.name.emf_unit() }],
            }],
        }),
    );
    for (key, value) in &metric.tags {
        object.insert((*key).to_owned(), serde_json::Value::String(value.clone()));
    }
    object.insert(name, serde_json::json!(metric.value));
    serde_json::Value::Object(object).to_string()
}

/// Whole numbers without a fraction, others as Rust prints them; never NaN or infinity.
fn number(value: f64) -> String {
    if !value.is_finite() {
        "0".to_owned()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// StatsD's separators cannot appear in a tag value.
fn tag_value(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            '|' | ',' | '#' | '\n' | '\r' => '_',
            c => c,
        })
        .collect()
}

fn millis(from: Timestamp, to: Timestamp) -> f64 {
    ((to - from).whole_milliseconds().max(0)) as f64
}

fn agent(record: &RunRecord) -> (&'static str, String) {
    ("agent", record.agent.name.clone())
}

/// When a runner starts an attempt of `record` (already `running`): the run started,
/// how long it waited in the queue, and whether it is a retry.
pub fn run_started(record: &RunRecord) -> Vec<Metric> {
    let mut metrics = vec![Metric::new(
        MetricName::RunsStarted,
        1.0,
        vec![agent(record)],
    )];
    // The wait is from the last time the run was queued (a retried run's requeue).
    let queued = record
        .status_timeline
        .iter()
        .rev()
        .find(|event| event.status == RunStatus::Queued)
        .map(|event| event.at);
    if let (Some(queued), Some(started)) = (queued, record.started_at) {
        metrics.push(Metric::new(
            MetricName::QueueWait,
            millis(queued, started),
            vec![agent(record)],
        ));
    }
    if record.attempt > 1 {
        let kind = match record.previous_attempts.last().and_then(|a| a.status) {
            // The previous attempt never finished: its runner died.
            None => "takeover",
            Some(RunStatus::NeedsClarification) => "answered",
            Some(_) => "retry",
        };
        metrics.push(Metric::new(
            MetricName::Retries,
            1.0,
            vec![agent(record), ("kind", kind.to_owned())],
        ));
    }
    metrics
}

/// When `phase` of `record` ended: its duration, its tokens, a failed cleanup.
pub fn phase_ended(record: &RunRecord, phase: Phase) -> Vec<Metric> {
    let state = record.phase(phase);
    let mut metrics = Vec::new();
    let tags = || {
        vec![
            ("phase", phase.as_str().to_owned()),
            agent(record),
            ("status", state.status.as_str().to_owned()),
        ]
    };
    if let Some(ms) = state.duration_ms {
        metrics.push(Metric::new(MetricName::PhaseDuration, ms as f64, tags()));
    }
    if phase == Phase::Cleanup && state.status == PhaseStatus::Failed {
        metrics.push(Metric::new(
            MetricName::CleanupFailures,
            1.0,
            vec![agent(record)],
        ));
    }
    if let Some(usage) = &state.usage {
        for (kind, tokens) in [
            ("input", usage.tokens.input),
            ("output", usage.tokens.output),
        ] {
            metrics.push(Metric::new(
                MetricName::TokenUsage,
                tokens as f64,
                vec![
                    ("gen_ai.token.type", kind.to_owned()),
                    ("phase", phase.as_str().to_owned()),
                    agent(record),
                ],
            ));
        }
    }
    metrics
}

/// When `record` reached its final status: the run finished, how long it ran, its cost.
pub fn run_finished(record: &RunRecord) -> Vec<Metric> {
    let status = ("status", record.status.as_str().to_owned());
    let mut finished_tags = vec![status.clone(), agent(record)];
    if let Some(error) = &record.error {
        finished_tags.push(("error_code", error.code.to_string()));
    }
    let mut metrics = vec![Metric::new(MetricName::RunsFinished, 1.0, finished_tags)];
    if let (Some(started), Some(finished)) = (record.started_at, record.finished_at) {
        metrics.push(Metric::new(
            MetricName::RunDuration,
            millis(started, finished),
            vec![status.clone(), agent(record)],
        ));
    }
    if let Some(usage) = &record.usage {
        metrics.push(Metric::new(
            MetricName::CostUsd,
            usage.cost_usd,
            vec![status, agent(record)],
        ));
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Publish;
    use crate::state::{AgentConfiguration, PhaseOutcome};
    use time::macros::datetime;
    use time::Duration;

    fn finished_run() -> RunRecord {
        let t0 = datetime!(2026-12-03 12:00 UTC);
        let mut record = RunRecord::queued(
            "run-1",
            "https://git.example/a/b",
            Publish::Pr,
            AgentConfiguration {
                name: "scripted".into(),
                ..Default::default()
            },
            t0,
        );
        record.start("r", t0 + Duration::seconds(2)).expect("start");
        record
            .begin_phase(Phase::Specify, t0 + Duration::seconds(3))
            .expect("begin");
        record
            .end_phase(
                Phase::Specify,
                PhaseStatus::Succeeded,
                PhaseOutcome::default(),
                t0 + Duration::milliseconds(4500),
            )
            .expect("end");
        record
            .finish(RunStatus::Succeeded, None, t0 + Duration::seconds(10))
            .expect("finish");
        record
    }

    #[test]
    fn statsd_lines_carry_the_prefix_the_type_and_dogstatsd_tags() {
        let record = finished_run();
        let lines: Vec<String> = phase_ended(&record, Phase::Specify)
            .iter()
            .map(|m| statsd_line(m, "specrun.", TagStyle::DogStatsd))
            .collect();
        assert_eq!(
            lines,
            ["specrun.phase.duration:1500|ms|#phase:specify,agent:scripted,status:succeeded"]
        );
        let started = run_started(&record);
        let plain: Vec<String> = started
            .iter()
            .map(|m| statsd_line(m, "x.", TagStyle::None))
            .collect();
        assert_eq!(plain, ["x.runs.started:1|c", "x.queue.wait:2000|ms"]);
    }

    #[test]
    fn token_usage_keeps_its_opentelemetry_name() {
        let metric = Metric::new(
            MetricName::TokenUsage,
            42.0,
            vec![("gen_ai.token.type", "input".into())],
        );
        assert_eq!(
            statsd_line(&metric, "specrun.", TagStyle::DogStatsd),
            "gen_ai.client.token.usage:42|h|#gen_ai.token.type:input"
        );
    }

    #[test]
    fn emf_declares_every_dimension_and_holds_the_value() {
        let record = finished_run();
        let at = datetime!(2026-12-03 12:00 UTC);
        for metric in run_finished(&record) {
            let line = emf_line(&metric, "specrun", "specrun.", at);
            let json: serde_json::Value = serde_json::from_str(&line).expect("json");
            let directive = &json["_aws"]["CloudWatchMetrics"][0];
            assert_eq!(directive["Namespace"], "specrun");
            let name = directive["Metrics"][0]["Name"].as_str().expect("name");
            assert!(json[name].is_number(), "{line}");
            for dimension in directive["Dimensions"][0].as_array().expect("dims") {
                let key = dimension.as_str().expect("dimension");
                assert!(json[key].is_string(), "{line}");
            }
            assert_eq!(json["_aws"]["Timestamp"], 1_796_299_200_000_i64);
        }
    }

    #[test]
    fn a_tag_value_cannot_break_the_line() {
        let metric = Metric::new(MetricName::Retries, 1.0, vec![("kind", "a|b,c#d".into())]);
        assert_eq!(
            statsd_line(&metric, "", TagStyle::DogStatsd),
            "retries:1|c|#kind:a_b_c_d"
        );
    }
}
