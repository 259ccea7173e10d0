//! `specrun-soak`: the fault-injection soak benchmark (see `specrun_tests::soak`). Prints
//! the faults, runs submitted, succeeded and failed, and the runs lost, disagreeing with
//! what was pushed, pushed or given a pull request twice, or finished twice; exits 1 when
//! any of those is not 0. Run it through `scripts/soak.sh`, which sets up Docker,
//! the job image and the emulator first.

use specrun_tests::soak::{soak, SoakConfig};
use std::time::Duration;

const USAGE: &str = "usage: specrun-soak [--runs N] [--runners N] [--seed N] [--agent-sleep SECS] [--max-fault-gap SECS] [--deadline SECS]";

fn parse() -> anyhow::Result<SoakConfig> {
    let mut config = SoakConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value: u64 = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n{USAGE}"))?
            .parse()
            .map_err(|e| anyhow::anyhow!("{flag}: {e}\n{USAGE}"))?;
        match flag.as_str() {
            "--runs" => config.runs = value as usize,
            "--runners" => config.runners = value.max(1) as usize,
            "--seed" => config.seed = value,
            "--agent-sleep" => config.agent_sleep_secs = value as u32,
            "--max-fault-gap" => config.max_fault_gap = Duration::from_secs(value.max(1)),
            "--deadline" => config.deadline = Duration::from_secs(value),
            _ => anyhow::bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = parse()?;
    eprintln!(
        "specrun-soak: {} runs, {} runners, seed {}, a fault every {:?} at most",
        config.runs, config.runners, config.seed, config.max_fault_gap
    );
    let report = soak(&config).await?;
    println!("{report}");
    if report.violations() > 0 {
        eprintln!("specrun-soak: FAILED: runs were lost, disagree with what was pushed, were published twice or finished twice");
        std::process::exit(1);
    }
    Ok(())
}
