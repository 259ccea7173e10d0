//! What plan and tasks share: the agent's command for the phase, run for the feature,
//! must write `<feature>/<phase>.md`, and may leave open questions.

use super::command::run_agent;
use super::output::{clarification_stop, output_missing, read_output};
use super::{Prepared, Specified, Step, StepResult};
use crate::engine::run::Run;
use specrun_core::state::PhaseOutcome;
use specrun_core::Phase;
use std::collections::BTreeMap;

pub(super) async fn run(
    run: &Run,
    prepared: &Prepared<'_>,
    specified: &Specified,
    phase: Phase,
) -> StepResult<()> {
    let feature = &specified.feature;
    let env = BTreeMap::from([(
        "SPECIFY_FEATURE_DIRECTORY".to_owned(),
        feature.as_str().to_owned(),
    )]);
    let (mut artifacts, headline) = run_agent(run, prepared, phase, env).await?;
    let file = feature.file(&format!("{phase}.md"));
    let workspace = prepared.job.workspace();
    let Some(text) = read_output(workspace, phase, &file, &mut artifacts).await? else {
        return Err(output_missing(phase, &file, artifacts));
    };
    if let Some(stop) = clarification_stop(run, phase, &file, &text, &mut artifacts).await? {
        return Ok(stop);
    }
    let message = match headline {
        Some(headline) => format!("wrote {file}; {headline}"),
        None => format!("wrote {file}"),
    };
    Ok(Step::Continue(
        PhaseOutcome {
            artifacts,
            message: Some(message),
            ..Default::default()
        },
        (),
    ))
}
