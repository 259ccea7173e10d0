//! plan: the agent writes the feature's `plan.md` from its specification.

use super::{document, Prepared, Specified, StepResult};
use crate::engine::run::Run;
use specrun_core::Phase;

pub(crate) async fn run(
    run: &Run,
    prepared: &Prepared<'_>,
    specified: &Specified,
) -> StepResult<()> {
    document::run(run, prepared, specified, Phase::Plan).await
}
