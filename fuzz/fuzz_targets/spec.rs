//! `ferry.yaml` text through the loader and validator: the base spec, then each environment
//! the file defines. Errors are expected; a panic, or an environment that validated with the
//! base but does not load on its own, is a finding.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use ferry::spec::Project;
use libfuzzer_sys::fuzz_target;

/// A project directory holding the files the templates and tests reference, so that
/// validation gets past "does not exist" to the checks behind it.
fn project_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("ferry-fuzz-spec");
        for file in [
            "requirements.txt",
            "train.py",
            "data/customers.csv",
            "artifacts/model.onnx",
            "artifacts/model-b.onnx",
            "artifacts/upsell.onnx",
            ".env.production",
        ] {
            let path = dir.join(file);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("creating the fuzz project directory");
            }
            std::fs::write(&path, b"x\n").expect("writing a fuzz project file");
        }
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = project_dir().join("ferry.yaml");
    let project = match Project::load_str(text, &file, None) {
        Ok(project) => project,
        Err(e) => {
            // Messages carry positions and hints computed from the input: render them too.
            let _ = e.to_string();
            return;
        }
    };
    let _ = project.hash();
    for env in &project.environments {
        match Project::load_str(text, &file, Some(env)) {
            Ok(resolved) => {
                let _ = resolved.hash();
            }
            Err(e) => panic!("environment '{env}' validated with the file but does not load: {e}"),
        }
    }
});
