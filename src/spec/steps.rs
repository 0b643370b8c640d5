//! Pipeline steps (`pipeline:`): their types, the order their inputs and outputs imply, and the
//! bars a step's JSON outputs must clear (`checks:`). `train:` is a pipeline of one step named
//! `train`. Knows nothing of containers or caches: only what the spec says.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::{Command, RelPath, Resources, Train};

/// The name `train:` has as a step.
pub const TRAIN_STEP: &str = "train";

/// One step of `pipeline:`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What the step runs (a shell line or an argument vector); or `notebook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    /// A notebook executed headless in place of a command, as `ferry train --notebook` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notebook: Option<RelPath>,
    /// Values for the notebook's cell tagged `parameters`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub params: IndexMap<String, String>,
    /// Project paths or other steps' outputs, mounted read-only; their bytes are in the step's
    /// cache key, and reading another step's output is what orders the steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<RelPath>,
    /// What the step writes: the only writable paths, kept in the cache, placed in the project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<RelPath>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Bars on the step's JSON outputs: `artifacts/metrics.json: { auc: ">= 0.80" }`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub checks: IndexMap<String, IndexMap<String, String>>,
}

impl Step {
    /// `train:` as a step.
    pub fn from_train(t: &Train) -> Step {
        Step {
            command: Some(t.command.clone()),
            inputs: t.inputs.clone(),
            outputs: t.outputs.clone(),
            resources: t.resources.clone(),
            env: t.env.clone(),
            ..Step::default()
        }
    }

    /// The checks, parsed (validation has refused a spec whose bars do not parse).
    pub fn parsed_checks(&self) -> Vec<Check> {
        let mut out = Vec::new();
        for (file, bars) in &self.checks {
            let Ok(file) = RelPath::parse(file) else {
                continue;
            };
            for (metric, bar) in bars {
                if let Ok(bar) = bar.parse() {
                    out.push(Check {
                        file: file.clone(),
                        metric: metric.clone(),
                        bar,
                    });
                }
            }
        }
        out
    }
}

/// True when one path is the other or lies inside it: a step reading `data/` reads
/// `data/features.csv`, and one reading `data/features.csv` reads a step's output `data/`.
pub fn overlaps(a: &RelPath, b: &RelPath) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The steps and who reads whose outputs.
#[derive(Clone, Debug)]
pub struct Graph {
    pub names: Vec<String>,
    /// `deps[i]`: the steps whose outputs step `i` reads.
    pub deps: Vec<BTreeSet<usize>>,
}

impl Graph {
    pub fn new(steps: &IndexMap<String, Step>) -> Graph {
        let list: Vec<&Step> = steps.values().collect();
        let deps = list
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (0..list.len())
                    .filter(|&j| j != i)
                    .filter(|&j| {
                        s.inputs
                            .iter()
                            .any(|inp| list[j].outputs.iter().any(|o| overlaps(inp, o)))
                    })
                    .collect()
            })
            .collect();
        Graph {
            names: steps.keys().cloned().collect(),
            deps,
        }
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// A loop of steps reading each other's outputs, as names with the first repeated at the
    /// end (`a → b → a`); `None` when the steps can be ordered.
    pub fn cycle(&self) -> Option<Vec<String>> {
        // 0: not seen, 1: on the current path, 2: done.
        let mut state = vec![0u8; self.names.len()];
        let mut path = Vec::new();
        for start in 0..self.names.len() {
            if let Some(c) = self.visit(start, &mut state, &mut path) {
                return Some(c.into_iter().map(|i| self.names[i].clone()).collect());
            }
        }
        None
    }

    fn visit(&self, i: usize, state: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
        match state[i] {
            2 => return None,
            1 => {
                let from = path.iter().position(|&p| p == i).unwrap_or(0);
                let mut c = path[from..].to_vec();
                c.push(i);
                // Written in the order data flows: producer first.
                c.reverse();
                return Some(c);
            }
            _ => {}
        }
        state[i] = 1;
        path.push(i);
        for &d in &self.deps[i] {
            if let Some(c) = self.visit(d, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state[i] = 2;
        None
    }

    /// Every step in an order where each comes after the steps it reads from; among steps
    /// free to go, the file's order. Steps caught in a loop are left out (validation refuses
    /// such a spec before this is asked).
    pub fn order(&self) -> Vec<usize> {
        let mut done = vec![false; self.names.len()];
        let mut out = Vec::new();
        loop {
            let next =
                (0..self.names.len()).find(|&i| !done[i] && self.deps[i].iter().all(|&d| done[d]));
            match next {
                Some(i) => {
                    done[i] = true;
                    out.push(i);
                }
                None => return out,
            }
        }
    }

    /// `targets` and every step they need, transitively.
    pub fn needed(&self, targets: &[usize]) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<usize> = targets.to_vec();
        while let Some(i) = todo.pop() {
            if out.insert(i) {
                todo.extend(self.deps[i].iter().copied());
            }
        }
        out
    }

    /// Every step that reads, directly or not, from `i`.
    pub fn downstream(&self, i: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut todo = vec![i];
        while let Some(s) = todo.pop() {
            for (j, d) in self.deps.iter().enumerate() {
                if d.contains(&s) && out.insert(j) {
                    todo.push(j);
                }
            }
        }
        out
    }
}

/// A comparison a metric must pass: `>= 0.80`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bar {
    pub op: Op,
    pub value: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
    Ne,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Lt => "<",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
}

impl Bar {
    pub fn passes(&self, v: f64) -> bool {
        match self.op {
            Op::Ge => v >= self.value,
            Op::Gt => v > self.value,
            Op::Le => v <= self.value,
            Op::Lt => v < self.value,
            Op::Eq => v == self.value,
            Op::Ne => v != self.value,
        }
    }
}

impl FromStr for Bar {
    type Err = String;

    fn from_str(s: &str) -> Result<Bar, String> {
        let t = s.trim();
        let ops = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            (">", Op::Gt),
            ("<", Op::Lt),
        ];
        let Some((rest, op)) = ops
            .iter()
            .find_map(|(p, op)| t.strip_prefix(p).map(|r| (r, *op)))
        else {
            return Err(format!(
                "{s:?} has no comparison; write one of >=, >, <=, <, ==, != and a number"
            ));
        };
        let value: f64 = rest
            .trim()
            .parse()
            .map_err(|_| format!("{:?} in {s:?} is not a number", rest.trim()))?;
        if !value.is_finite() {
            return Err(format!("{s:?} compares with a value that is not finite"));
        }
        Ok(Bar { op, value })
    }
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.as_str(), self.value)
    }
}

/// One metric of one JSON output and its bar.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub file: RelPath,
    /// A key, or a dotted path into nested objects (`test.auc`).
    pub metric: String,
    pub bar: Bar,
}

/// The number at `metric` (a key, or `a.b.c` into nested objects; a key holding dots is
/// found whole first). `Err` says what is there instead.
pub fn metric_value(doc: &serde_json::Value, metric: &str) -> Result<f64, String> {
    if let Some(v) = doc.get(metric) {
        return number(v, metric);
    }
    let mut at = doc;
    for part in metric.split('.') {
        at = at.get(part).ok_or_else(|| {
            let keys: Vec<String> = at
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            if keys.is_empty() {
                format!("no `{metric}` in it")
            } else {
                format!("no `{metric}` in it (it has: {})", keys.join(", "))
            }
        })?;
    }
    number(at, metric)
}

fn number(v: &serde_json::Value, metric: &str) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("`{metric}` is {v}, not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(inputs: &[&str], outputs: &[&str]) -> Step {
        Step {
            command: Some(Command::Shell("true".into())),
            inputs: inputs.iter().map(|p| RelPath::parse(p).unwrap()).collect(),
            outputs: outputs.iter().map(|p| RelPath::parse(p).unwrap()).collect(),
            ..Step::default()
        }
    }

    fn steps(list: &[(&str, Step)]) -> IndexMap<String, Step> {
        list.iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect()
    }

    #[test]
    fn order_follows_the_data_not_the_file() {
        let s = steps(&[
            (
                "evaluate",
                step(&["artifacts/model.onnx", "data/test/"], &["reports/m.json"]),
            ),
            (
                "train",
                step(&["data/features/train.csv"], &["artifacts/model.onnx"]),
            ),
            (
                "prepare",
                step(&["data/raw.csv"], &["data/features/", "data/test/"]),
            ),
            ("lint", step(&["src/"], &["reports/lint.txt"])),
        ]);
        let g = Graph::new(&s);
        assert_eq!(g.cycle(), None);
        let names: Vec<&str> = g.order().iter().map(|&i| g.names[i].as_str()).collect();
        assert_eq!(names, ["prepare", "train", "evaluate", "lint"]);
        let needed: Vec<usize> = g.needed(&[g.index("train").unwrap()]).into_iter().collect();
        assert_eq!(needed, [1, 2]);
        let down: Vec<usize> = g.downstream(2).into_iter().collect();
        assert_eq!(down, [0, 1]);
    }

    #[test]
    fn a_loop_is_named_in_the_order_data_flows() {
        let s = steps(&[
            ("a", step(&["out/c.txt"], &["out/a.txt"])),
            ("b", step(&["out/a.txt"], &["out/b.txt"])),
            ("c", step(&["out/b.txt"], &["out/c.txt"])),
            ("d", step(&["data/"], &["out/d.txt"])),
        ]);
        let c = Graph::new(&s).cycle().unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c.first(), c.last());
        // Each step in the loop reads the one before it.
        for w in c.windows(2) {
            let reader = &s[&w[1]];
            let writer = &s[&w[0]];
            assert!(
                reader
                    .inputs
                    .iter()
                    .any(|i| writer.outputs.iter().any(|o| overlaps(i, o))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn bars_parse_compare_and_print() {
        let b: Bar = ">= 0.80".parse().unwrap();
        assert!(b.passes(0.8) && b.passes(0.9) && !b.passes(0.79));
        assert_eq!(b.to_string(), ">= 0.8");
        assert!(!"<1".parse::<Bar>().unwrap().passes(1.0));
        assert!("!= 3".parse::<Bar>().unwrap().passes(2.0));
        assert!("0.8".parse::<Bar>().unwrap_err().contains("no comparison"));
        assert!(
            ">= high"
                .parse::<Bar>()
                .unwrap_err()
                .contains("not a number")
        );
        assert!(">= inf".parse::<Bar>().is_err());
    }

    #[test]
    fn metrics_are_found_by_key_or_dotted_path() {
        let doc = serde_json::json!({"auc": 0.91, "test": {"recall@10": 0.3}, "a.b": 1, "s": "x"});
        assert_eq!(metric_value(&doc, "auc").unwrap(), 0.91);
        assert_eq!(metric_value(&doc, "test.recall@10").unwrap(), 0.3);
        assert_eq!(metric_value(&doc, "a.b").unwrap(), 1.0);
        assert!(
            metric_value(&doc, "s")
                .unwrap_err()
                .contains("not a number")
        );
        let e = metric_value(&doc, "acc").unwrap_err();
        assert!(e.contains("no `acc`") && e.contains("auc"), "{e}");
    }
}
