//! specify: initialises Spec Kit when the repository lacks it, runs the agent's specify
//! command, then finds the feature directory, names the branch, and looks for open
//! questions.

use super::clone::list_specs;
use super::command::{require_success, run_agent, run_command, Command};
use super::output::{clarification_stop, output_missing, read_output};
use super::{blocking, Cloned, Failure, Prepared, Specified, Step, StepResult};
use crate::engine::failure;
use crate::engine::run::Run;
use specrun_core::branch::BranchName;
use specrun_core::feature::FeatureDir;
use specrun_core::state::{PhaseOutcome, RunError};
use specrun_core::{ErrorCode, Phase, RunStatus};
use specrun_publish::{changes, git};
use specrun_sandbox::Workspace;
use std::collections::BTreeMap;

const PHASE: Phase = Phase::Specify;

/// Spec Kit's init for the integration in `$1`: the job image's `specrun-speckit-init`
/// copies the scaffolding `specify init` wrote when the image was built (no Python start:
/// most of this phase's time otherwise); an image without it runs `specify init`.
const SPECKIT_INIT: &str = r#"if command -v specrun-speckit-init >/dev/null 2>&1; then exec specrun-speckit-init "$1"; fi
exec specify init --here --force --integration "$1" --script sh --non-interactive --ignore-agent-tools"#;

pub(crate) async fn run(
    run: &mut Run,
    prepared: &Prepared<'_>,
    cloned: &Cloned,
) -> StepResult<Specified> {
    let workspace = prepared.job.workspace();
    let mut artifacts = Vec::new();
    let mut notes = Vec::new();
    let mut init_files = Vec::new();
    if !specrun_sandbox::safe_fs::is_dir(&workspace.repo, ".specify") {
        let integration = &prepared.agent.profile.integration;
        let argv = [
            "sh",
            "-c",
            SPECKIT_INIT,
            "specrun-speckit-init",
            integration,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let command = Command {
            phase: PHASE,
            stem: "speckit-init",
            argv,
            env: prepared.agent.env.clone(),
            limit: run.config.phase_timeout,
        };
        let done = run_command(run, prepared.job, command).await?;
        artifacts.extend(require_success(
            run,
            PHASE,
            done,
            ErrorCode::SpeckitInitFailed,
        )?);
        init_files = files_created_by_init(run, workspace)
            .await
            .map_err(|error| Failure {
                error,
                artifacts: artifacts.clone(),
            })?;
        notes.push(format!(
            "initialised Spec Kit ({integration} integration, {} file(s))",
            init_files.len()
        ));
    }
    let (agent_artifacts, headline) = run_agent(run, prepared, PHASE, BTreeMap::new())
        .await
        .map_err(|mut f| {
            f.artifacts.splice(0..0, artifacts.clone());
            f
        })?;
    artifacts.extend(agent_artifacts);
    notes.extend(headline);

    let found = {
        let (workspace, specs_before) = (workspace.clone(), cloned.specs_before.clone());
        blocking(PHASE, move || find_feature(&workspace, &specs_before))
            .await
            .and_then(|found| found)
    };
    let feature = match found {
        Ok(Some(feature)) => feature,
        Ok(None) => {
            return Ok(Step::Stop {
                outcome: PhaseOutcome { artifacts, message: Some("the agent wrote no specification".to_owned()), ..Default::default() },
                status: RunStatus::NoChanges,
                reason: "the specify phase wrote no specification (no .specify/feature.json and no new directory under specs/), so there is nothing to publish".to_owned(),
            })
        }
        Err(error) => return Err(Failure { error, artifacts }),
    };
    let spec_path = feature.file("spec.md");
    let Some(spec) = read_output(workspace, PHASE, &spec_path, &mut artifacts).await? else {
        return Err(output_missing(PHASE, &spec_path, artifacts));
    };
    let branch = match branch_for(run, &feature, cloned) {
        Ok(branch) => branch,
        Err(error) => return Err(Failure { error, artifacts }),
    };
    run.record.branch_name = Some(branch.to_string());
    if let Some(stop) = clarification_stop(run, PHASE, &spec_path, &spec, &mut artifacts).await? {
        return Ok(stop);
    }
    notes.push(format!("wrote {spec_path}"));
    Ok(Step::Continue(
        PhaseOutcome {
            artifacts,
            message: Some(notes.join("; ")),
            ..Default::default()
        },
        Specified {
            feature,
            branch,
            init_files,
        },
    ))
}

/// The branch the run publishes on: the request's, or the feature's name; never the
/// repository's base or default branch.
fn branch_for(run: &Run, feature: &FeatureDir, cloned: &Cloned) -> Result<BranchName, RunError> {
    let branch = match &run.request.branch_name {
        Some(branch) => branch.clone(),
        None => feature.branch_name().map_err(|e| {
            failure::error(
                PHASE,
                ErrorCode::InvalidBranchName,
                e.to_string(),
                "Give a branch_name (--branch-name) in the request.",
            )
        })?,
    };
    let protected = [
        run.record.base_branch.as_deref(),
        cloned.default_branch.as_deref(),
    ];
    match protected.into_iter().flatten().find(|b| *b == branch.as_str()) {
        Some(protected) => Err(failure::error(
            PHASE,
            ErrorCode::InvalidBranchName,
            format!("the run would publish to {protected:?}, the repository's base or default branch; a run only ever pushes a feature branch of its own"),
            "Give a branch_name (--branch-name) other than the base and default branch.",
        )),
        None => Ok(branch),
    }
}

/// The files `specify init` wrote (the integration's commands and skills, `.specify/`),
/// read while the container is frozen: they may be committed with the feature.
async fn files_created_by_init(run: &Run, workspace: &Workspace) -> Result<Vec<String>, RunError> {
    let workspace = workspace.clone();
    let repository = run.record.repository.clone();
    blocking(PHASE, move || {
        let repo = git::open(&workspace.git, &workspace.repo)
            .map_err(|e| failure::git(PHASE, &e, &repository))?;
        changes::created_files(&repo, &workspace.repo)
            .map_err(|e| failure::changes(PHASE, &e, &repository))
    })
    .await?
}

/// The feature directory from `.specify/feature.json`, or else the one new directory
/// under `specs/`. It must be new in this run and a real directory. Blocking.
fn find_feature(
    workspace: &Workspace,
    specs_before: &[String],
) -> Result<Option<FeatureDir>, RunError> {
    let invalid = |reason: String| {
        failure::error(
            PHASE,
            ErrorCode::InvalidFeatureDirectory,
            reason,
            "Read the specify phase's logs; the agent wrote an unusable .specify/feature.json.",
        )
    };
    let made_in_this_run = |feature: FeatureDir| {
        feature
            .require_spec_kit_layout()
            .map_err(|e| invalid(e.to_string()))?;
        if specs_before.iter().any(|d| d == feature.name()) {
            return Err(invalid(format!(
                "{} existed before this run; the specify phase must create its own feature directory",
                feature.as_str()
            )));
        }
        if !specrun_sandbox::safe_fs::is_dir(&workspace.repo, feature.as_str()) {
            return Err(invalid(format!(
                "{} is not a directory the agent created",
                feature.as_str()
            )));
        }
        Ok(Some(feature))
    };
    match workspace.read_repo_file(".specify/feature.json", 64 * 1024) {
        Ok(Some(bytes)) => {
            return FeatureDir::from_feature_json(&bytes)
                .map_err(|e| invalid(e.to_string()))
                .and_then(made_in_this_run)
        }
        Ok(None) => {}
        Err(e) => return Err(invalid(e.to_string())),
    }
    let new: Vec<String> = list_specs(workspace)
        .into_iter()
        .filter(|d| !specs_before.contains(d))
        .collect();
    match new.as_slice() {
        [] => Ok(None),
        [one] => FeatureDir::parse(&format!("specs/{one}"))
            .map_err(|e| invalid(e.to_string()))
            .and_then(made_in_this_run),
        many => Err(invalid(format!(
            "the agent created several feature directories ({}) and no .specify/feature.json",
            many.join(", ")
        ))),
    }
}
