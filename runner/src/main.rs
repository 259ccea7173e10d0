//! `specrun`: wires the command line to the runner library and reports errors with the
//! whole chain of causes.

use clap::Parser;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPECRUN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = specrun_runner::cli::Cli::parse();
    match specrun_runner::cli::main(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("specrun: error: {e:#}");
            std::process::exit(1);
        }
    }
}
