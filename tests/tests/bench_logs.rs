//! The benchmark behind `scripts/bench-logs.sh` (ignored in test runs): what streaming
//! logs costs and gives.
//!
//! One run per store (the embedded one, then a bucket on moto) and setting of the flush
//! interval (streaming off, then each interval given) on the real engine and job image,
//! the store wrapped in a counter of the operations the runner makes (each is one S3
//! request on the bucket, bar a multipart upload of a log over 8 MiB, which none here
//! is). The agent prints a
//! timestamped line every quarter second for a while in specify; a reader polls the
//! status API's handler (`GET /runs/{id}/logs/specify?offset=`, the code the status
//! function and `specrun serve` run) every 100 ms and, for each line, takes the time
//! from the agent printing it to the reader having it: the tail latency, p50 and p95.
//! Prints a table and writes JSON to `$BENCH_LOGS_OUT` (or `target/bench/logs.json`).

use specrun_core::ports::{BlobStore, Bytes};
use specrun_runner::progress::TracingProgress;
use specrun_runner::{Execution, Pipeline};
use specrun_status::Status;
use specrun_store::{CountingStore, S3BlobStore};
use specrun_tests::emulator::Moto;
use specrun_tests::harness::Harness;
use specrun_tests::world::BUCKET;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Polls the log endpoint of the run's specify phase until stopped; returns each tick
/// line's latency in milliseconds.
async fn tail(status: Status, run_id: String, stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut offset = 0u64;
    let mut pending = String::new();
    let mut latencies = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let request = hyper::Request::get(format!("/runs/{run_id}/logs/specify?offset={offset}"))
            .body(Bytes::new())
            .unwrap_or_default();
        let response = status.handle(request).await;
        let received = now_ns();
        if response.status() == 200 && !response.body().is_empty() {
            offset += response.body().len() as u64;
            pending.push_str(&String::from_utf8_lossy(response.body()));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let printed = line
                    .strip_prefix("tick ")
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    .and_then(|ns| ns.parse::<u128>().ok());
                if let Some(printed) = printed {
                    latencies.push(received.saturating_sub(printed) as f64 / 1e6);
                }
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: scripts/bench-logs.sh"]
async fn bench_log_streaming() -> anyhow::Result<()> {
    let ticks = env_number("BENCH_LOGS_TICKS", 60);
    let intervals: Vec<u64> = std::env::var("BENCH_LOGS_FLUSH_MS")
        .unwrap_or_else(|_| "0,2000,500".to_owned())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("bench-logs", "# Bench\n")?;
    h.use_shell_agent(
        "ticker",
        &[(
            "specify",
            &format!(
                "i=1; while [ $i -le {ticks} ]; do echo \"tick $i $(date +%s%N)\"; i=$((i+1)); sleep 0.25; done; exec specrun-scripted-agent specify \"$1\""
            ),
        )],
        "",
    )?;
    let moto = Moto::start().await?;
    moto.create_bucket(BUCKET).await?;
    let s3: Arc<dyn BlobStore> = Arc::new(S3BlobStore::new(moto.s3().clone(), BUCKET));
    let fs: Arc<dyn BlobStore> = h.store.clone();
    let settings = [("fs", fs), ("s3", s3)]
        .into_iter()
        .flat_map(|(name, store)| intervals.iter().map(move |ms| (name, store.clone(), *ms)));
    let mut results = Vec::new();
    for (n, (store_name, base, flush_ms)) in settings.enumerate() {
        let store = Arc::new(CountingStore::new(base.clone()));
        let mut config = h.config.clone();
        config.log_flush_interval = (flush_ms > 0).then(|| Duration::from_millis(flush_ms));
        let mut request = h.request(&url, "Tick away while the log is tailed");
        request.agent = Some("ticker".to_owned());
        request.branch_name = Some(format!("bench-logs-{n}"));
        let policy = specrun_core::repo::RepoPolicy {
            allowed_hosts: Vec::new(),
            trusted: true,
            callbacks: Default::default(),
        };
        let request = request.validate(&policy)?;
        let pipeline = Pipeline::new(config, store.clone(), Arc::new(TracingProgress));
        let run_id = specrun_store::runs::new_run_id();
        let record = pipeline.enqueue_record(&run_id, &request).await?;
        let stop = Arc::new(AtomicBool::new(false));
        // The reader reads the store directly: its requests are not the runner's.
        let status = Status {
            store: base.clone(),
            presign_expiry: Duration::from_secs(60),
            public_base: "http://127.0.0.1".to_owned(),
        };
        let reader = tokio::spawn(tail(status, run_id.to_string(), stop.clone()));
        let before = store.counts();
        let executed = pipeline.execute(record, request).await?;
        let after = store.counts();
        stop.store(true, Ordering::Relaxed);
        let mut latencies = reader.await?;
        let Execution::Finished(record) = executed else {
            anyhow::bail!("the run was abandoned");
        };
        anyhow::ensure!(
            record.status == specrun_core::RunStatus::Succeeded,
            "{:?}",
            record.error
        );
        latencies.sort_by(f64::total_cmp);
        let put = after.writes() - before.writes();
        let list = after.list - before.list;
        let get = after.reads() - before.reads() - list;
        results.push((store_name, flush_ms, put, get, list, latencies));
    }
    let mut rows = Vec::new();
    println!(
        "\n{:>5} {:>9} {:>6} {:>6} {:>6} {:>11} {:>8} {:>8} {:>8} {:>6}",
        "store",
        "flush_ms",
        "PUT",
        "GET",
        "LIST",
        "extra_PUT",
        "p50_ms",
        "p95_ms",
        "max_ms",
        "lines"
    );
    for (store_name, flush_ms, put, get, list, latencies) in &results {
        let baseline = results
            .iter()
            .find(|r| r.0 == *store_name && r.1 == 0)
            .map(|r| r.2);
        let extra = baseline.map(|p| *put as i64 - p as i64);
        let (p50, p95) = (percentile(latencies, 50.0), percentile(latencies, 95.0));
        let max = latencies.last().copied().unwrap_or(f64::NAN);
        println!(
            "{store_name:>5} {flush_ms:>9} {put:>6} {get:>6} {list:>6} {:>11} {p50:>8.0} {p95:>8.0} {max:>8.0} {:>6}",
            extra.map(|e| e.to_string()).unwrap_or_default(),
            latencies.len()
        );
        let mut row = BTreeMap::new();
        row.insert("store", serde_json::json!(store_name));
        row.insert("flush_ms", serde_json::json!(flush_ms));
        row.insert("runner_put", serde_json::json!(put));
        row.insert("runner_get", serde_json::json!(get));
        row.insert("runner_list", serde_json::json!(list));
        row.insert("extra_put_vs_off", serde_json::json!(extra));
        row.insert("lines_seen_live", serde_json::json!(latencies.len()));
        if !latencies.is_empty() {
            row.insert("tail_latency_ms_p50", serde_json::json!(p50));
            row.insert("tail_latency_ms_p95", serde_json::json!(p95));
            row.insert("tail_latency_ms_max", serde_json::json!(max));
        }
        rows.push(row);
    }
    let out = std::env::var("BENCH_LOGS_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/logs.json").to_owned()
    });
    if let Some(dir) = Path::new(&out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let report = serde_json::json!({
        "ticks": ticks,
        "tick_interval_ms": 250,
        "reader_poll_ms": 100,
        "stores": "fs: the embedded store; s3: a bucket on moto; operations counted in the runner",
        "runs": rows,
    });
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    println!("JSON: {out}");
    Ok(())
}
