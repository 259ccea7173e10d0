//! The submit Lambda: configuration from the environment, then the handler.

use specrun_core::repo::RepoPolicy;
use specrun_store::{aws_config, s3_client, sqs_client, S3BlobStore, SqsQueue};
use specrun_submit::Submit;
use std::sync::Arc;

fn env(name: &str) -> Result<String, lambda_http::Error> {
    std::env::var(name).map_err(|_| format!("{name} is not set; the deployment must set it").into())
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let config = aws_config().await;
    let submit = Submit {
        store: Arc::new(S3BlobStore::new(s3_client(&config), env("SPECRUN_BUCKET")?)),
        queue: Arc::new(SqsQueue::new(
            sqs_client(&config),
            env("SPECRUN_QUEUE_URL")?,
        )),
        policy: RepoPolicy {
            callbacks: specrun_submit::callback_policy_from_env(),
            ..RepoPolicy::allowing(&std::env::var("SPECRUN_ALLOW_REPO_HOSTS").unwrap_or_default())
        },
        status_base: std::env::var("SPECRUN_STATUS_URL").unwrap_or_default(),
        default_agent: std::env::var("SPECRUN_DEFAULT_AGENT")
            .unwrap_or_else(|_| "codex".to_owned()),
        image: std::env::var("SPECRUN_IMAGE").unwrap_or_else(|_| "specrun-job:latest".to_owned()),
        agents: match std::env::var("SPECRUN_AGENTS_FILE") {
            Ok(_) => None,
            Err(_) => Some(specrun_core::agents_file::AgentRegistry::builtins()),
        },
        model_budget: match std::env::var("SPECRUN_MODEL_BUDGET") {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("SPECRUN_MODEL_BUDGET is not a budget: {e}"))?,
            Err(_) => Default::default(),
        },
        batch_limits: specrun_submit::batch_limits_from_env(),
    };
    let submit = Arc::new(submit);
    specrun_http::run_lambda(move |request| {
        let submit = submit.clone();
        async move { submit.handle(request).await }
    })
    .await
}
