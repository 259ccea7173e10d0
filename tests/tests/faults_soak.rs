//! The fault-injection suite in CI: a short soak (see `specrun_tests::soak`) with runners
//! killed and replaced, partitioned from the store one at a time, run on a skewed clock
//! and killed in the middle of a push or a pull request call; shared store and queue
//! outages; duplicated messages; killed job containers; a lease lapsing during a run's
//! final write; and the runners' default `--max-receives`. No run may be lost, disagree
//! with what was pushed, push or open a pull request twice, or reach a final state twice;
//! runs fail only for the faults' own reasons, and at least half succeed.

use specrun_tests::harness::require_image;
use specrun_tests::soak::{soak, SoakConfig};
use std::time::Duration;

/// The seed; `SPECRUN_SOAK_SEED` picks another (to try a schedule CI does not run).
fn seed() -> u64 {
    std::env::var("SPECRUN_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_survive_random_faults_without_loss_or_duplicated_effects() -> anyhow::Result<()> {
    require_image().await?;
    let config = SoakConfig {
        runs: 12,
        runners: 3,
        seed: seed(),
        agent_sleep_secs: 2,
        max_fault_gap: Duration::from_secs(3),
        deadline: Duration::from_secs(300),
        // One round: every kind of fault once, then the runs settle.
        max_faults: Some(11),
    };
    let report = soak(&config).await?;
    eprintln!("{report}");
    assert_eq!(report.submitted, 12);
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.disagreeing, 0, "{report}");
    assert_eq!(report.duplicated_pushes, 0, "{report}");
    assert_eq!(report.duplicated_prs, 0, "{report}");
    assert_eq!(report.final_twice, 0, "{report}");
    assert_eq!(report.succeeded + report.failed, 12, "{report}");
    // One round of every fault on twelve runs: a killed job container fails its run, and a
    // run whose message (or a duplicate of it) used up its three deliveries is given up;
    // nothing else may fail a run, and at least half succeed (observed: 7 to 10 of 12
    // before a delivery finding the run held waited for its holder; 9, 9 (seed 7) and
    // 8 (seed 23) of 12 after).
    let allowed = ["retries_exhausted", "container_crashed", "docker_error"];
    assert!(
        report
            .failure_codes
            .keys()
            .all(|code| allowed.contains(&code.as_str())),
        "{report}"
    );
    assert!(report.succeeded * 2 >= report.submitted, "{report}");
    assert!(
        report.faults.values().sum::<usize>() > 0,
        "no fault was injected"
    );
    Ok(())
}
