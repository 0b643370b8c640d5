//! A step's cache key and what it is made of. Two runs of a step with the same key would read
//! the same bytes with the same program in the same environment, so the second can take the
//! first one's outputs. Kept apart from deciding and storing so each can be tested alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::runs::Output;
use crate::spec::Step;

/// Everything a step's results depend on, as recorded beside its cache entry so that the next
/// run can say which part changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyParts {
    /// The environment image's ID: the interpreter, the packages, the system libraries. The
    /// project's code is not in it; a step's own code is among its inputs.
    pub image: String,
    /// `sha256:` of what the step runs: its command (or notebook and parameters) and the
    /// outputs it declares.
    pub definition: String,
    /// The variables the step sees (the environment's and its own).
    pub env: BTreeMap<String, String>,
    /// Every input file with its sha256, sorted by path.
    pub inputs: Vec<Output>,
}

impl KeyParts {
    pub fn new(
        image: &str,
        step: &Step,
        env: &BTreeMap<String, String>,
        inputs: Vec<Output>,
    ) -> KeyParts {
        KeyParts {
            image: image.to_string(),
            definition: definition(step),
            env: env.clone(),
            inputs,
        }
    }

    /// `sha256:<hex>` over the parts.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"ferry-step-v1\n");
        h.update(format!("image {}\n", self.image).as_bytes());
        h.update(format!("definition {}\n", self.definition).as_bytes());
        for (k, v) in &self.env {
            h.update(format!("env {}\n", serde_json::json!([k, v])).as_bytes());
        }
        for i in &self.inputs {
            h.update(format!("input {} {}\n", serde_json::json!(i.path), i.sha256).as_bytes());
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }

    /// What differs from `before`, in words (`input data/raw.csv changed`), most telling first.
    pub fn changes_since(&self, before: &KeyParts) -> Vec<String> {
        let mut out = Vec::new();
        if self.definition != before.definition {
            out.push("command changed".to_string());
        }
        let old: BTreeMap<&str, &str> = before
            .inputs
            .iter()
            .map(|i| (i.path.as_str(), i.sha256.as_str()))
            .collect();
        let new: BTreeMap<&str, &str> = self
            .inputs
            .iter()
            .map(|i| (i.path.as_str(), i.sha256.as_str()))
            .collect();
        for (p, sha) in &new {
            match old.get(p) {
                None => out.push(format!("input {p} is new")),
                Some(o) if o != sha => out.push(format!("input {p} changed")),
                _ => {}
            }
        }
        for p in old.keys().filter(|p| !new.contains_key(*p)) {
            out.push(format!("input {p} is gone"));
        }
        if self.env != before.env {
            let keys: Vec<&String> = self
                .env
                .keys()
                .chain(before.env.keys())
                .filter(|k| self.env.get(*k) != before.env.get(*k))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            out.push(format!(
                "env changed ({})",
                keys.iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.image != before.image {
            out.push("environment image changed".to_string());
        }
        out
    }
}

/// `sha256:` of the step's command (or notebook and its parameters) and declared outputs.
/// Resources and checks are left out: they change neither what runs nor what it writes.
pub fn definition(step: &Step) -> String {
    let v = serde_json::json!({
        "command": step.command.as_ref().map(|c| c.argv()),
        "notebook": step.notebook.as_ref().map(|n| n.as_str()),
        "params": step.params.iter().collect::<Vec<_>>(),
        "outputs": step.outputs.iter().map(|o| o.as_str()).collect::<Vec<_>>(),
    });
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(v.to_string().as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Command, RelPath};

    fn file(path: &str, sha: &str) -> Output {
        Output {
            path: path.into(),
            sha256: sha.into(),
            size: 1,
        }
    }

    fn step(cmd: &str) -> Step {
        Step {
            command: Some(Command::Shell(cmd.into())),
            outputs: vec![RelPath::parse("out/x").unwrap()],
            ..Step::default()
        }
    }

    #[test]
    fn the_key_follows_each_part_and_says_which_changed() {
        let env = BTreeMap::from([("SEED".to_string(), "1".to_string())]);
        let base = KeyParts::new(
            "sha256:img",
            &step("python prep.py"),
            &env,
            vec![file("data/a.csv", "aa"), file("prep.py", "pp")],
        );
        assert_eq!(base.key(), base.clone().key());
        assert!(base.key().starts_with("sha256:"));

        let mut input = base.clone();
        input.inputs[0].sha256 = "ab".into();
        assert_ne!(input.key(), base.key());
        assert_eq!(input.changes_since(&base), ["input data/a.csv changed"]);

        let cmd = KeyParts::new(
            "sha256:img",
            &step("python prep.py --fast"),
            &env,
            base.inputs.clone(),
        );
        assert_ne!(cmd.key(), base.key());
        assert_eq!(cmd.changes_since(&base), ["command changed"]);

        let mut e = base.clone();
        e.env.insert("SEED".into(), "2".into());
        assert_ne!(e.key(), base.key());
        assert_eq!(e.changes_since(&base), ["env changed (SEED)"]);

        let mut img = base.clone();
        img.image = "sha256:other".into();
        assert_ne!(img.key(), base.key());
        assert_eq!(img.changes_since(&base), ["environment image changed"]);

        let mut more = base.clone();
        more.inputs.push(file("data/b.csv", "bb"));
        more.inputs.remove(0);
        assert_eq!(
            more.changes_since(&base),
            ["input data/b.csv is new", "input data/a.csv is gone"]
        );
        assert!(base.changes_since(&base).is_empty());
    }

    #[test]
    fn resources_and_checks_leave_the_key_alone() {
        let a = step("python train.py");
        let mut b = a.clone();
        b.resources.cpu = Some(crate::spec::Cpu::parse("2").unwrap());
        b.checks.insert("out/x".into(), Default::default());
        assert_eq!(definition(&a), definition(&b));
        let mut c = a.clone();
        c.outputs.push(RelPath::parse("out/y").unwrap());
        assert_ne!(definition(&a), definition(&c));
    }
}
