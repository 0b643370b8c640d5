//! The plan of a project as it stands on disk, for both loops (Docker and a cluster): its
//! requirements file read, the spec planned, and a notebook run put in place of the training
//! command when one is asked for. The plan itself stays free of files and of notebooks.

use std::path::PathBuf;

use crate::plan::{self, Plan};
use crate::spec::Project;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The spec has no section for the workload a command runs.
    #[error("{} has no `{section}` section\n  hint: {hint}", file.display())]
    MissingSection {
        file: PathBuf,
        section: &'static str,
        hint: &'static str,
    },
    #[error(
        "train reads {input}, which step `{step}` writes and which is not there yet\n  hint: `ferry run train` runs `{step}` first (cached when nothing changed), then training"
    )]
    InputNotMade { input: String, step: String },
    #[error("cannot read {}: {source}", path.display())]
    Requirements {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The plan of a project as it is on disk (its requirements file read).
pub fn make_plan(project: &Project) -> Result<Plan, PlanError> {
    make_plan_with(project, None)
}

/// The plan, with the training workload running `notebook` in place of `train.command` when
/// one is given (and the environment made able to run it).
pub fn make_plan_with(
    project: &Project,
    notebook: Option<&crate::notebook::Request>,
) -> Result<Plan, PlanError> {
    let reqs = match &project.spec.environment.requirements {
        Some(r) => {
            let path = project.path(r);
            std::fs::read_to_string(&path)
                .map_err(|source| PlanError::Requirements { path, source })?
        }
        None => String::new(),
    };
    let mut plan = plan::plan(project, &reqs);
    if project.spec.pipeline.values().any(|s| s.notebook.is_some()) {
        plan::add_notebook_executor(&mut plan.env_image, &reqs);
    }
    if let Some(req) = notebook {
        plan::add_notebook_executor(&mut plan.env_image, &reqs);
        plan.train = plan
            .train
            .as_ref()
            .map(|t| crate::notebook::workload(t, req));
    }
    Ok(plan)
}

/// Refuses a training whose inputs another step makes and has not made yet: the container
/// would otherwise fail on a mount with no source.
pub fn check_train_inputs(project: &Project) -> Result<(), PlanError> {
    let Some(t) = &project.spec.train else {
        return Ok(());
    };
    for input in &t.inputs {
        if project.path(input).exists() {
            continue;
        }
        if let Some((step, _)) = project
            .spec
            .pipeline
            .iter()
            .find(|(_, s)| s.outputs.iter().any(|o| crate::spec::overlaps(input, o)))
        {
            return Err(PlanError::InputNotMade {
                input: input.to_string(),
                step: step.clone(),
            });
        }
    }
    Ok(())
}
