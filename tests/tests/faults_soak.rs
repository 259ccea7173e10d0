//! The fault-injection suite in CI: a short soak (see `specrun_tests::soak`) with runners
//! killed and replaced, store and queue outages, duplicated messages and killed job
//! containers at random moments. Every run must reach a final state and none may push
//! twice.

use specrun_tests::harness::require_image;
use specrun_tests::soak::{soak, SoakConfig};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn runs_survive_random_faults_without_loss_or_duplicated_effects() -> anyhow::Result<()> {
    require_image().await?;
    let config = SoakConfig {
        runs: 6,
        runners: 2,
        seed: 7,
        agent_sleep_secs: 2,
        max_fault_gap: Duration::from_secs(4),
        deadline: Duration::from_secs(300),
    };
    let report = soak(&config).await?;
    eprintln!("{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.duplicated_effects, 0, "{report}");
    assert_eq!(report.submitted, 6);
    assert_eq!(report.succeeded + report.failed, 6, "{report}");
    assert_eq!(report.completed_without_pr, 0, "{report}");
    assert!(
        report.faults.values().sum::<usize>() > 0,
        "no fault was injected"
    );
    Ok(())
}
