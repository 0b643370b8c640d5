//! Checks of `pipeline:` no type can express: step names, a command or a notebook, inputs that
//! exist or that a step writes, outputs no two steps share, checks on the step's own JSON
//! outputs, and no loop among the steps.

use std::path::Path;

use super::{MIN_MEMORY, check_file, did_you_mean, is_dns_label, is_env_name};
use crate::spec::{Bar, Graph, RelPath, Spec, TRAIN_STEP, overlaps, steps_of};

pub(super) fn check(spec: &Spec, root: &Path, bad: &mut impl FnMut(&str, String, Option<String>)) {
    if spec.pipeline.is_empty() {
        return;
    }
    if spec.train.is_some() && spec.pipeline.contains_key(TRAIN_STEP) {
        bad(
            &format!("pipeline.{TRAIN_STEP}"),
            "a step named `train` is defined twice: here and as `train:`".into(),
            Some("`train:` is the pipeline's step named `train`; keep one of them".into()),
        );
    }
    let all = steps_of(spec.train.as_ref(), &spec.pipeline);
    let steps: Vec<(&String, &crate::spec::Step)> = all.iter().collect();
    for (i, (name, step)) in steps.iter().enumerate() {
        let at = |f: &str| {
            if spec.train.is_some() && *name == TRAIN_STEP {
                format!("train.{f}")
            } else {
                format!("pipeline.{name}.{f}")
            }
        };
        // `train:` is checked where it is written (load.rs); here only as the others see it.
        if spec.train.is_some() && *name == TRAIN_STEP && i == 0 {
            continue;
        }
        if !is_dns_label(name) {
            bad(
                &format!("pipeline.{name}"),
                format!("{name:?} cannot name a step's containers and Jobs"),
                Some(
                    "lowercase letters, digits and '-', starting with a letter (e.g. prepare)"
                        .into(),
                ),
            );
        }
        match (&step.command, &step.notebook) {
            (None, None) => bad(
                &format!("pipeline.{name}"),
                "a step needs a `command` or a `notebook`".into(),
                Some("e.g. `command: python prepare.py`".into()),
            ),
            (Some(_), Some(_)) => bad(
                &at("notebook"),
                "`command` and `notebook` cannot both be set".into(),
                Some("a step runs a command, or executes a notebook in its place".into()),
            ),
            (Some(c), None) if c.is_empty() => bad(
                &at("command"),
                "the command is empty".into(),
                Some("e.g. `command: python prepare.py`".into()),
            ),
            (_, Some(nb)) => {
                check_file(bad, root, &at("notebook"), nb, true);
                if !nb.as_str().ends_with(".ipynb") {
                    bad(
                        &at("notebook"),
                        format!("{nb} is not a notebook (.ipynb)"),
                        None,
                    );
                }
            }
            _ => {}
        }
        if step.notebook.is_none() && !step.params.is_empty() {
            bad(
                &at("params"),
                "`params` are for a notebook's cell tagged `parameters`; this step runs a command"
                    .into(),
                Some("pass values to a command on its command line".into()),
            );
        }
        for p in step.params.keys() {
            let ident = p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ident {
                bad(
                    &at(&format!("params.{p}")),
                    format!("{p:?} is not a Python identifier"),
                    None,
                );
            }
        }
        for k in step.env.keys() {
            if !is_env_name(k) {
                bad(
                    &at("env"),
                    format!("{k:?} is not a valid environment variable name"),
                    None,
                );
            }
        }
        for (j, inp) in step.inputs.iter().enumerate() {
            let field = at(&format!("inputs[{j}]"));
            let writer = steps
                .iter()
                .find(|(n, s)| *n != *name && s.outputs.iter().any(|o| overlaps(inp, o)));
            if writer.is_some() {
                if let Err(m) = inp.check_contained(root) {
                    bad(&field, m, None);
                }
                continue;
            }
            if !inp.under(root).exists() {
                let outputs: Vec<String> = steps
                    .iter()
                    .flat_map(|(_, s)| s.outputs.iter().map(|o| o.as_str().to_string()))
                    .collect();
                let hint = match did_you_mean(inp.as_str(), outputs.iter().map(String::as_str)) {
                    Some(m) => format!("did you mean `{m}`, which a step writes?"),
                    None => "create it, or name another step's output (paths are relative to the directory of ferry.yaml)".into(),
                };
                bad(
                    &field,
                    format!("{inp} does not exist and no step writes it"),
                    Some(hint),
                );
            } else {
                check_file(bad, root, &field, inp, true);
            }
        }
        if step.outputs.is_empty() {
            bad(
                &at("outputs"),
                "no outputs are declared, so the step would leave nothing to cache or pass on"
                    .into(),
                Some("list what the step writes, e.g. `outputs: [data/features/]`".into()),
            );
        }
        for (j, o) in step.outputs.iter().enumerate() {
            let field = at(&format!("outputs[{j}]"));
            check_output(bad, root, &field, o, &step.inputs);
            if let Some(prev) = step.outputs[..j].iter().find(|p| overlaps(o, p)) {
                bad(
                    &field,
                    format!("{o} overlaps the step's output {prev}"),
                    None,
                );
            }
            // Reported once, at the later of the two steps.
            for (other, s) in &steps[..i] {
                if let Some((k, p)) = s.outputs.iter().enumerate().find(|(_, p)| overlaps(o, p)) {
                    bad(
                        &field,
                        format!(
                            "{o} is also written by step `{other}` ({p}, pipeline.{other}.outputs[{k}])"
                        ),
                        Some(
                            "each output belongs to one step; give one of them another path".into(),
                        ),
                    );
                }
            }
        }
        for (file, bars) in &step.checks {
            let field = at(&format!("checks.{file}"));
            match RelPath::parse(file) {
                Err(m) => bad(&field, m, None),
                Ok(f) => {
                    if !step.outputs.iter().any(|o| f.starts_with(o)) {
                        bad(
                            &field,
                            format!(
                                "{f} is not among the step's outputs, so nothing it writes is checked"
                            ),
                            Some(format!(
                                "checks read the step's own JSON outputs; add {f} to `outputs`"
                            )),
                        );
                    }
                    if !f.as_str().ends_with(".json") {
                        bad(&field, format!("{f} is not a JSON file (.json)"), None);
                    }
                }
            }
            if bars.is_empty() {
                bad(
                    &field,
                    "no metric is checked".into(),
                    Some("e.g. `auc: \">= 0.80\"`".into()),
                );
            }
            for (metric, bar) in bars {
                if let Err(m) = bar.parse::<Bar>() {
                    bad(
                        &format!("{field}.{metric}"),
                        m,
                        Some(format!("e.g. `{metric}: \">= 0.80\"` (quoted)")),
                    );
                }
            }
        }
        if step
            .resources
            .memory
            .as_ref()
            .is_some_and(|m| m.bytes < MIN_MEMORY)
        {
            bad(
                &at("resources.memory"),
                "Docker needs at least 6Mi of memory for a container".into(),
                None,
            );
        }
    }
    let graph = Graph::new(&all);
    if let Some(cycle) = graph.cycle() {
        let first = &cycle[0];
        bad(
            &format!("pipeline.{}.inputs", cycle[1]),
            format!(
                "the steps read each other's outputs in a loop: {}",
                cycle.join(" → ")
            ),
            Some(format!(
                "a step cannot need its own results; break the loop, e.g. let `{}` read a project file in place of `{first}`'s output",
                cycle[1]
            )),
        );
    }
}

/// Where an output of a step (or of `train:`) may be: in a directory of its own, not inside
/// ferry's or git's, not over one of the step's read-only inputs, not out of the project.
pub(super) fn check_output(
    bad: &mut impl FnMut(&str, String, Option<String>),
    root: &Path,
    field: &str,
    o: &RelPath,
    inputs: &[RelPath],
) {
    if o.parent().is_none() && !o.is_dir_syntax() {
        bad(
            field,
            format!(
                "{o} is at the top of the project; outputs go in a directory so only that directory is writable"
            ),
            Some(format!("e.g. artifacts/{o}")),
        );
    }
    if matches!(o.top(), ".ferry" | ".git") {
        bad(
            field,
            format!("{o} is inside {}, which ferry or git keeps", o.top()),
            None,
        );
    }
    if let Some(inp) = inputs.iter().find(|i| overlaps(o, i)) {
        bad(
            field,
            format!("{o} overlaps the input {inp}, which is mounted read-only"),
            Some("write outputs to their own directory, e.g. artifacts/".into()),
        );
    }
    if let Err(m) = o.check_contained(root) {
        bad(field, m, None);
    }
}
