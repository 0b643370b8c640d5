//! The local loop against the real Docker engine, as a user runs it: init the churn template in
//! offline mode, build (base bootstrapped from Debian packages, wheels from the host), train,
//! run the notebook, and every way this can go wrong that the user must hear about.
//!
//! Needs a running Docker engine, debootstrap, root (for debootstrap), host pip with an index,
//! and ONNX Runtime (`./install.sh`). The tests share one project and its images, built once,
//! and run one at a time: on a 2-core machine parallel image builds only slow each other down.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{docker, ferry, ferry_cmd, free_port};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ok_json(dir: &Path, args: &[&str]) -> Value {
    let out = ferry(dir, args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ferry {args:?} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// The ids of containers ferry made for a project directory.
fn project_containers(root: &Path) -> Vec<String> {
    let label = format!("label=dev.ferry.root={}", root.display());
    docker(&["ps", "-aq", "--filter", &label])
        .lines()
        .map(str::to_string)
        .collect()
}

struct Fixture {
    root: PathBuf,
    build: Value,
}

/// The churn template, initialised offline and built once for the whole file.
fn churn() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let base =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("local-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let out = ferry(
            &base,
            &["init", "churn-demo", "--template", "churn", "--offline"],
        );
        assert!(out.status.success(), "{out:?}");
        let root = base.join("churn-demo");
        let build = ok_json(&root, &["build", "--json"]);
        Fixture { root, build }
    })
}

/// A spec beside the churn one, sharing its images, for the failure scenarios.
fn variant_spec(name: &str, train: &str) -> String {
    let f = churn();
    let spec = std::fs::read_to_string(f.root.join("ferry.yaml")).unwrap();
    let start = spec.find("train:\n").unwrap();
    let end = spec.find("serve:\n").unwrap();
    let out = format!("{}train:\n{train}\n{}", &spec[..start], &spec[end..]);
    std::fs::write(f.root.join(name), out).unwrap();
    name.to_string()
}

#[test]
fn build_is_tagged_by_content_and_a_second_build_is_a_no_op() {
    let _g = serial();
    let f = churn();
    let env = f.build["environment"]["tag"].as_str().unwrap();
    assert!(env.starts_with("ferry/churn-demo-env:"), "{env}");
    let first = f.build["project"]["tag"].as_str().unwrap();
    assert!(first.starts_with("ferry/churn-demo:"), "{first}");
    assert_eq!(
        docker(&["image", "inspect", "-f", "{{.Id}}", env]),
        f.build["environment"]["id"].as_str().unwrap()
    );

    // Other tests add files to the project (a new project image), never to its environment.
    let now = ok_json(&f.root, &["build", "--json"]);
    let again = ok_json(&f.root, &["build", "--json"]);
    assert_eq!(again["environment"]["built"], false);
    assert_eq!(again["project"]["built"], false);
    assert_eq!(again["environment"]["tag"], f.build["environment"]["tag"]);
    assert_eq!(again["project"]["tag"], now["project"]["tag"]);
    let proj = now["project"]["tag"].as_str().unwrap();

    // The environment image holds the requirements and the notebook server, not the wheels.
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        env,
        "python",
        "-c",
        "import sklearn, skl2onnx, onnx, jupyterlab, os; print('ok', os.path.exists('/tmp/ferry/wheels'))",
    ]);
    assert_eq!(out, "ok False");
    // The project image holds the code but not what .dockerignore excludes.
    let ls = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        proj,
        "ls",
        "-A",
        "/workspace",
    ]);
    assert!(ls.lines().any(|l| l == "train.py"), "{ls}");
    assert!(
        !ls.lines()
            .any(|l| l == "data" || l == ".ferry" || l == "ferry.lock"),
        "{ls}"
    );

    // ferry.lock records the images and the pins, and the image holds exactly the pinned
    // versions.
    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(f.root.join("ferry.lock")).unwrap()).unwrap();
    let dev = &lock["environments"]["dev"];
    assert_eq!(dev["images"]["environment"]["tag"], env);
    assert_eq!(dev["images"]["project"]["tag"], proj);
    assert!(
        dev["images"]["base"]["id"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let pins: Vec<(String, String)> = dev["python"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let sha = p["sha256"].as_str().unwrap();
            assert!(
                sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()),
                "{p}"
            );
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(pins.iter().any(|(n, _)| n == "scikit-learn"), "{pins:?}");
    let freeze = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        env,
        "pip",
        "freeze",
        "--all",
    ]);
    let normalise = |n: &str| n.to_ascii_lowercase().replace(['_', '.'], "-");
    let installed: Vec<(String, String)> = freeze
        .lines()
        .filter_map(|l| l.split_once("=="))
        .map(|(n, v)| (normalise(n), v.to_string()))
        // What `python -m venv` brings along, unless a requirement asked for it.
        .filter(|(n, _)| {
            !["pip", "setuptools", "wheel"].contains(&n.as_str())
                || pins.iter().any(|(p, _)| p == n)
        })
        .collect();
    for pin in &pins {
        assert!(installed.contains(pin), "{pin:?} not installed: {freeze}");
    }
    for i in &installed {
        assert!(pins.contains(i), "{i:?} installed but not pinned");
    }
}

#[test]
fn a_code_edit_is_a_new_project_image_written_without_a_build() {
    let _g = serial();
    let f = churn();
    // A copy of the project (with its lock, so nothing is resolved again) on the same images.
    let root = f.root.with_file_name("churn-edit");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("data")).unwrap();
    for name in [
        "ferry.yaml",
        "requirements.txt",
        "train.py",
        "prepare.py",
        "evaluate.py",
        ".dockerignore",
        "ferry.lock",
        "data/customers.csv",
    ] {
        std::fs::copy(f.root.join(name), root.join(name)).unwrap();
    }
    let env = f.build["environment"]["tag"].as_str().unwrap();
    let first = ok_json(&root, &["build", "--json"]);
    let p1 = first["project"]["tag"].as_str().unwrap().to_string();
    let p1_id = first["project"]["id"].as_str().unwrap().to_string();
    assert_eq!(first["environment"]["built"], false);

    // The image is the environment's layers plus one of code, with the environment's config
    // and the project's labels, and its ID is the one ferry computed.
    let layers = |image: &str| -> Vec<String> {
        serde_json::from_str(&docker(&[
            "image",
            "inspect",
            "-f",
            "{{json .RootFS.Layers}}",
            image,
        ]))
        .unwrap()
    };
    let (env_layers, p1_layers) = (layers(env), layers(&p1));
    assert_eq!(p1_layers.len(), env_layers.len() + 1);
    assert_eq!(p1_layers[..env_layers.len()], env_layers[..]);
    assert_eq!(docker(&["image", "inspect", "-f", "{{.Id}}", &p1]), p1_id);
    assert_eq!(
        docker(&[
            "image",
            "inspect",
            "-f",
            "{{index .Config.Labels \"dev.ferry.role\"}} {{.Config.WorkingDir}} {{json .Config.Env}}",
            &p1
        ]),
        format!(
            "project /workspace {}",
            docker(&["image", "inspect", "-f", "{{json .Config.Env}}", env])
        )
    );

    // An image another environment of the lock names is kept; this checkout's superseded ones
    // go.
    let lock_path = root.join("ferry.lock");
    let mut lock: Value =
        serde_json::from_str(&std::fs::read_to_string(&lock_path).unwrap()).unwrap();
    lock["environments"]["staging"] = lock["environments"]["dev"].clone();
    std::fs::write(&lock_path, serde_json::to_string_pretty(&lock).unwrap()).unwrap();

    // One edit: the edited code runs, in an image whose tag and ID the run record names.
    let train = std::fs::read_to_string(root.join("train.py")).unwrap();
    std::fs::write(
        root.join("train.py"),
        format!("print('edited code', flush=True)\n{train}"),
    )
    .unwrap();
    let out = ferry(&root, &["train"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("edited code"), "{stderr}");
    assert!(stderr.contains("wrote project image"), "{stderr}");
    assert!(!stderr.contains("building"), "nothing built: {stderr}");
    let runs = ok_json(&root, &["runs", "--json"]);
    let p2 = runs[0]["image"].as_str().unwrap().to_string();
    assert_ne!(p2, p1);
    assert_eq!(
        runs[0]["image_id"].as_str().unwrap(),
        docker(&["image", "inspect", "-f", "{{.Id}}", &p2])
    );
    assert_eq!(layers(&p2)[..env_layers.len()], env_layers[..]);
    let lock: Value = serde_json::from_str(&std::fs::read_to_string(&lock_path).unwrap()).unwrap();
    assert_eq!(lock["environments"]["dev"]["images"]["project"]["tag"], p2);
    // p1 is named by the staging entry: kept.
    assert_eq!(docker(&["images", "-q", &p1]).lines().count(), 1);

    // Another edit: p2 (named by no entry any more) is untagged, p1 still kept, and the same
    // code again gives the same image, byte for byte (the same ID), without writing it.
    std::fs::write(root.join("train.py"), format!("# another\n{train}")).unwrap();
    let third = ok_json(&root, &["build", "--json"]);
    let p3 = third["project"]["tag"].as_str().unwrap().to_string();
    assert_eq!(
        docker(&["images", "-q", &p2]),
        "",
        "superseded {p2} untagged"
    );
    assert_eq!(docker(&["images", "-q", &p1]).lines().count(), 1);
    let again = ok_json(&root, &["build", "--json"]);
    assert_eq!(again["project"]["tag"], p3.as_str());
    assert_eq!(again["project"]["built"], false);
    assert_eq!(again["project"]["id"], third["project"]["id"]);
    docker(&["rmi", &p3]);
    let remade = ok_json(&root, &["build", "--json"]);
    assert_eq!(remade["project"]["built"], true);
    assert_eq!(remade["project"]["id"], third["project"]["id"]);
    let _ = std::process::Command::new("docker")
        .args(["rmi", &p1, &p3])
        .output();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn train_writes_a_loadable_model_and_records_it() {
    let _g = serial();
    let f = churn();
    let built = ok_json(&f.root, &["build", "--json"]);
    let run = ok_json(&f.root, &["train", "--json"]);
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["exit_code"], 0);
    assert!(run["spec_hash"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        run["image"], built["project"]["tag"],
        "the run used the project image"
    );
    assert_eq!(run["image_id"], built["project"]["id"]);
    let outputs = run["outputs"].as_array().unwrap();
    let model = outputs
        .iter()
        .find(|o| o["path"] == "artifacts/model.onnx")
        .expect("model recorded");
    let path = f.root.join("artifacts/model.onnx");
    assert_eq!(model["sha256"].as_str().unwrap(), sha256(&path));
    assert_eq!(
        model["size"].as_u64().unwrap(),
        std::fs::metadata(&path).unwrap().len()
    );
    assert!(
        outputs
            .iter()
            .any(|o| o["path"] == "artifacts/metrics.json")
    );

    let summary = ferry::onnx::check_model(&path).expect("the model loads in ONNX Runtime");
    assert_eq!(summary.inputs.len(), 78, "one input per raw column");
    assert_eq!(summary.inputs[0].name, "plan");
    assert_eq!(summary.inputs[0].shape[0], -1, "dynamic batch axis");

    let id = run["id"].as_str().unwrap();
    let record = f.root.join(".ferry/runs").join(id).join("run.json");
    let saved: Value = serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
    assert_eq!(saved, run);
    let log = std::fs::read_to_string(f.root.join(run["log"].as_str().unwrap())).unwrap();
    assert!(
        log.contains("ROC AUC"),
        "the log keeps the run's output: {log}"
    );
    let runs = ok_json(&f.root, &["runs", "--json"]);
    assert!(runs.as_array().unwrap().iter().any(|r| r["id"] == id));
    // Outputs belong to whoever owns the project, not to the container's root.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().uid(),
        std::fs::metadata(&f.root).unwrap().uid()
    );
    assert!(
        project_containers(&f.root).is_empty(),
        "the training container is removed"
    );
}

#[test]
fn a_failing_training_passes_on_its_exit_code_and_records_no_artifact() {
    let _g = serial();
    let f = churn();
    let model = f.root.join("artifacts/model.onnx");
    let before = model.exists().then(|| sha256(&model));
    let spec = variant_spec(
        "fail.yaml",
        "  command: mkdir -p artifacts && echo half > artifacts/model.onnx && echo boom && exit 3\n  inputs: [data/]\n  outputs: [artifacts/model.onnx]",
    );
    let out = ferry(&f.root, &["train", "-f", &spec]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("training failed: exit code 3"), "{err}");
    assert!(err.contains("boom"), "logs are streamed: {err}");
    assert_eq!(
        model.exists().then(|| sha256(&model)),
        before,
        "the previous model is untouched"
    );
    let runs = ok_json(&f.root, &["runs", "--json"]);
    let last = &runs[0];
    assert_eq!(last["status"], "failed");
    assert_eq!(last["exit_code"], 3);
    assert_eq!(last["outputs"].as_array().unwrap().len(), 0);
    let log = std::fs::read_to_string(f.root.join(last["log"].as_str().unwrap())).unwrap();
    assert!(log.contains("boom"));
    assert!(project_containers(&f.root).is_empty());
}

#[test]
fn an_out_of_memory_training_is_reported_as_such() {
    let _g = serial();
    let f = churn();
    let spec = variant_spec(
        "oom.yaml",
        "  command: python -c \"x = bytearray(512 * 1024 * 1024); print(len(x))\"\n  outputs: [artifacts/model.onnx]\n  resources: { memory: 64Mi }",
    );
    let out = ferry(&f.root, &["train", "-f", &spec]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{err}");
    assert!(err.contains("out of memory (OOM)"), "{err}");
    let runs = ok_json(&f.root, &["runs", "--json"]);
    assert_eq!(runs[0]["status"], "failed");
    assert!(runs[0]["reason"].as_str().unwrap().contains("OOM"));
}

#[test]
fn a_missing_output_fails_the_run() {
    let _g = serial();
    let f = churn();
    let spec = variant_spec(
        "nooutput.yaml",
        "  command: echo did nothing\n  outputs: [artifacts/never.onnx]",
    );
    let out = ferry(&f.root, &["train", "-f", &spec]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not write the declared output artifacts/never.onnx"),
        "{err}"
    );
}

/// Waits until `pred` holds, or panics after `limit`.
/// The child's stderr, line by line, read to its end on a thread of its own (so ferry never
/// finds it closed, whatever the test stops reading).
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn wait_for(what: &str, limit: Duration, mut pred: impl FnMut() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn interrupt(child: &Child) {
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn ctrl_c_during_training_removes_the_container_and_records_no_artifact() {
    let _g = serial();
    let f = churn();
    let spec = variant_spec(
        "slow.yaml",
        "  command: sleep 300\n  outputs: [artifacts/model.onnx]",
    );
    let mut child = ferry_cmd(&f.root, &["train", "-f", &spec])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the training container", Duration::from_secs(300), || {
        !project_containers(&f.root).is_empty()
    });
    interrupt(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(project_containers(&f.root).is_empty(), "container removed");
    let runs = ok_json(&f.root, &["runs", "--json"]);
    assert_eq!(runs[0]["status"], "interrupted");
    assert_eq!(runs[0]["outputs"].as_array().unwrap().len(), 0);
    let dir = f
        .root
        .join(".ferry/runs")
        .join(runs[0]["id"].as_str().unwrap());
    assert!(!dir.join("out").exists(), "staging removed");
    assert!(!dir.join(".run.json.tmp").exists());
}

/// Image IDs of the engine's dangling images (untagged, no children).
fn dangling_images() -> std::collections::BTreeSet<String> {
    docker(&["images", "-q", "--no-trunc", "--filter", "dangling=true"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether a container of an image build (a step's container) runs `needle`.
fn build_step_running(needle: &str) -> bool {
    docker(&["ps", "-a", "--no-trunc", "--format", "{{.Command}}"])
        .lines()
        .any(|c| c.contains(needle))
}

/// Starts `ferry build` in `root`, waits until `ready` holds, interrupts it, and checks that it
/// stops with 130 and leaves no container, no dangling image and nothing labelled with the
/// project in the engine.
fn interrupt_build_when(root: &Path, what: &str, mut ready: impl FnMut(&str) -> bool) {
    let project = "churn-stop";
    let dangling_before = dangling_images();
    let containers_before: std::collections::BTreeSet<String> =
        docker(&["ps", "-aq", "--no-trunc"])
            .lines()
            .map(str::to_string)
            .collect();
    // pip installs for seconds where uv takes a fraction of one: the step to interrupt is
    // then there long enough to be caught. What is cleaned up is the same for both.
    let mut child = ferry_cmd(root, &["build"])
        .env("FERRY_INSTALLER", "pip")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let start = Instant::now();
    'wait: loop {
        while let Ok(l) = rx.try_recv() {
            let hit = ready(&l);
            seen.push(l);
            if hit {
                break 'wait;
            }
        }
        if ready("") {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before {what}:\n{}",
            seen.join("\n")
        );
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no {what} within 600 s:\n{}",
            seen.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    interrupt(&child);
    let status = child.wait().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(
        status.code(),
        Some(130),
        "interrupted {what}:\n{}\n{}",
        seen.join("\n"),
        rest.join("\n")
    );
    let left: Vec<String> = dangling_images()
        .difference(&dangling_before)
        .cloned()
        .collect();
    assert!(
        left.is_empty(),
        "interrupted {what}, the build left dangling images {left:?}; ferry said:\n{}",
        rest.join("\n")
    );
    // The build's step containers (their commands name the virtualenv or ferry's build
    // directory); other containers may come and go meanwhile.
    let containers: Vec<String> =
        docker(&["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Command}}"])
            .lines()
            .filter(|c| !containers_before.iter().any(|b| c.starts_with(b.as_str())))
            .filter(|c| c.contains("/opt/venv") || c.contains("/tmp/ferry"))
            .map(str::to_string)
            .collect();
    assert!(
        containers.is_empty(),
        "interrupted {what}, containers left: {containers:?}"
    );
    let label = format!("label=dev.ferry.project={project}");
    assert_eq!(
        docker(&["images", "-aq", "--filter", &label]),
        "",
        "interrupted {what}: an image labelled with the project is left"
    );
    assert_eq!(docker(&["ps", "-aq", "--filter", &label]), "");
}

#[test]
fn ctrl_c_at_any_point_of_a_build_leaves_no_container_and_no_image() {
    let _g = serial();
    let f = churn();
    // A project of its own with one small requirement and no notebook, on the churn project's
    // base: its environment build has every kind of step (COPY, RUN, a second stage) and is
    // short; each interruption below makes it run again from the first uncached step.
    let root = f.root.with_file_name("churn-stop");
    let _ = std::fs::remove_dir_all(&root);
    // Images of an earlier run of this test would make its builds no-ops.
    let label = "label=dev.ferry.project=churn-stop";
    for image in docker(&["images", "-q", "--filter", label]).lines() {
        docker(&["rmi", "-f", image]);
    }
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(
        root.join("ferry.yaml"),
        "name: churn-stop\n\
         environment:\n  bootstrap: bookworm\n  requirements: requirements.txt\n  system_packages: [libgomp1]\n\
         train:\n  command: python train.py\n  outputs: [artifacts/model.onnx]\n",
    )
    .unwrap();
    std::fs::write(root.join("requirements.txt"), "six==1.16.0\n").unwrap();
    std::fs::write(root.join("train.py"), "print('train')\n").unwrap();
    std::fs::write(root.join(".dockerignore"), "data/\nweights.bin\n").unwrap();

    // While the requirements are installed (a RUN step), and once the first stage is committed
    // (virtualenv and wheels: the big image an interrupted build used to leave) and the second
    // stage copies the virtualenv out of it.
    let dangling_at_start = dangling_images();
    let pip = "/opt/venv/bin/pip install";
    interrupt_build_when(&root, "during `pip install`", |_| build_step_running(pip));
    let mut installing = false;
    interrupt_build_when(&root, "after the first stage", |_| {
        let running = build_step_running(pip);
        let committed = installing && !running;
        installing |= running;
        committed
    });

    // While the project image is written: a big file makes the code layer take a while.
    std::fs::write(root.join(".dockerignore"), "data/\n").unwrap();
    // Every build of this test installs with pip, as the interrupted ones do, so they share
    // their steps as one recipe would.
    let out = ferry_cmd(&root, &["build", "--json"])
        .env("FERRY_INSTALLER", "pip")
        .output()
        .unwrap();
    // First the environment, whole: the interruption below is of the project image only.
    assert!(out.status.success(), "{out:?}");
    let big: Vec<u8> = (0..300u32 * 1024 * 1024 / 4)
        .flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes())
        .collect();
    std::fs::write(root.join("weights.bin"), big).unwrap();
    let tags_before = docker(&["images", "-q", "ferry/churn-stop"]);
    // The environment image is kept by the check below; only the project's own go.
    let env_label = "label=dev.ferry.role=environment";
    let env_images = || -> std::collections::BTreeSet<String> {
        docker(&["images", "-q", "--filter", env_label])
            .lines()
            .map(str::to_string)
            .collect()
    };
    let env_before = env_images();
    let mut child = ferry_cmd(&root, &["build"])
        .env("FERRY_INSTALLER", "pip")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut child);
    loop {
        let l = rx
            .recv_timeout(Duration::from_secs(600))
            .expect("ferry build's output");
        if l.contains("writing project image") {
            break;
        }
    }
    interrupt(&child);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_eq!(
        docker(&["images", "-q", "ferry/churn-stop"]),
        tags_before,
        "no project image tagged for the interrupted write"
    );
    assert_eq!(env_images(), env_before);
    // A step the engine committed after ferry had gone would show up by now.
    let late: Vec<String> = dangling_images()
        .difference(&dangling_at_start)
        .cloned()
        .collect();
    assert!(late.is_empty(), "dangling images appeared later: {late:?}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_notebook_answers_with_its_token_only_and_down_removes_it() {
    let _g = serial();
    let f = churn();
    let port = free_port();
    let started = ok_json(
        &f.root,
        &["dev", "--detach", "--json", "--port", &port.to_string()],
    );
    assert_eq!(started["ready"], true);
    let url = started["url"].as_str().unwrap();
    let token = url.split("token=").nth(1).unwrap();
    assert!(token.len() >= 32, "a random token");
    let status = |auth: Option<&str>| {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
        if let Some(t) = auth {
            c.args(["-H", &format!("Authorization: token {t}")]);
        }
        let out = c
            .arg(format!("http://127.0.0.1:{port}/api/contents"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(status(Some(token)), "200");
    assert_eq!(status(None), "403");
    // Published on loopback only.
    let ids = project_containers(&f.root);
    assert_eq!(ids.len(), 1);
    let ports = docker(&["port", &ids[0]]);
    assert!(ports.contains(&format!("127.0.0.1:{port}")), "{ports}");
    assert!(!ports.contains("0.0.0.0"), "{ports}");

    let down = ok_json(&f.root, &["down", "--json"]);
    assert_eq!(down["removed"].as_array().unwrap().len(), 1);
    assert!(project_containers(&f.root).is_empty());
}

#[test]
fn a_busy_port_is_reported() {
    let _g = serial();
    let f = churn();
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let out = ferry(&f.root, &["dev", "--detach", "--port", &port]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {port} on 127.0.0.1 is already in use")),
        "{err}"
    );
    assert!(project_containers(&f.root).is_empty());
}

#[test]
fn a_base_image_that_cannot_be_pulled_explains_offline_mode() {
    let _g = serial();
    let f = churn();
    let spec = std::fs::read_to_string(f.root.join("ferry.yaml"))
        .unwrap()
        .replace(
            "bootstrap: bookworm",
            "base: 127.0.0.1:9/ferry-test/missing:1",
        );
    std::fs::write(f.root.join("pull.yaml"), spec).unwrap();
    let out = ferry(&f.root, &["build", "-f", "pull.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot pull the base image 127.0.0.1:9/ferry-test/missing:1"),
        "{err}"
    );
    assert!(err.contains("bootstrap: bookworm"), "{err}");
    assert!(err.contains("Offline mode"), "{err}");
}

#[test]
fn permission_denied_on_the_socket_says_how_to_fix() {
    let _g = serial();
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !is_root || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and setpriv to run ferry as an unprivileged user");
        return;
    }
    let sock = PathBuf::from("/var/run/docker.sock");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    if mode & 0o006 != 0 {
        eprintln!("skipped: the Docker socket is open to everyone here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = ferry(
        dir.path(),
        &["init", "p", "--template", "notebook", "--offline"],
    );
    assert!(out.status.success());
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_ferry"),
            "build",
        ])
        .current_dir(dir.path().join("p"))
        .env("NO_COLOR", "1")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied on the Docker socket"),
        "{err}"
    );
    assert!(err.contains("usermod -aG docker"), "{err}");
}

#[test]
fn dev_rebuilds_and_restarts_when_requirements_change() {
    let _g = serial();
    let f = churn();
    // Its own copy of the project: the same images to start from, its own containers.
    let root = f.root.with_file_name("churn-watch");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    for name in [
        "ferry.yaml",
        "requirements.txt",
        ".dockerignore",
        "explore.ipynb",
        // What the pipeline's steps read: the spec names them.
        "data/customers.csv",
        "prepare.py",
        "train.py",
        "evaluate.py",
    ] {
        std::fs::copy(f.root.join(name), root.join(name)).unwrap();
    }
    let port = free_port();
    let mut child = ferry_cmd(&root, &["dev", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let mut wait_line = |what: &str, limit: Duration| {
        let start = Instant::now();
        loop {
            let left = limit.checked_sub(start.elapsed()).unwrap_or_else(|| {
                panic!(
                    "no `{what}` within {limit:?}; output so far:\n{}",
                    seen.join("\n")
                )
            });
            match rx.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(what);
                    seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("no `{what}`; output so far:\n{}", seen.join("\n")),
            }
        }
    };
    wait_line("Jupyter is ready", Duration::from_secs(300));
    let session = |root: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(root.join(".ferry/dev.json")).unwrap()).unwrap()
    };
    let first = session(&root);

    let mut reqs = std::fs::read_to_string(root.join("requirements.txt")).unwrap();
    reqs.push_str("six==1.16.0\n");
    std::fs::write(root.join("requirements.txt"), reqs).unwrap();
    wait_line("requirements.txt changed", Duration::from_secs(30));
    wait_line("Jupyter is ready", Duration::from_secs(1200));
    let second = session(&root);
    assert_ne!(first["image"], second["image"], "a new environment image");
    assert_ne!(first["container"], second["container"], "a new container");
    let ids = project_containers(&root);
    assert_eq!(ids.len(), 1, "the old container is gone");
    let out = docker(&[
        "exec",
        &ids[0],
        "python",
        "-c",
        "import six; print(six.__version__)",
    ]);
    assert_eq!(out, "1.16.0");
    // Same URL and token after the restart: the open browser tab keeps working.
    assert_eq!(first["url"], second["url"]);

    interrupt(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "Ctrl-C is a normal stop: {status:?}");
    assert!(
        project_containers(&root).is_empty(),
        "Ctrl-C removes the container"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// A copy of the churn project under another directory: the same images and pins (its
/// `ferry.lock`), its own containers.
fn churn_copy(name: &str) -> PathBuf {
    let f = churn();
    let root = f.root.with_file_name(name);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("data")).unwrap();
    for name in [
        "ferry.yaml",
        "ferry.lock",
        "requirements.txt",
        ".dockerignore",
        "explore.ipynb",
        "data/customers.csv",
        // What the pipeline's steps read: the spec names them.
        "prepare.py",
        "train.py",
        "evaluate.py",
    ] {
        std::fs::copy(f.root.join(name), root.join(name)).unwrap();
    }
    root
}

/// A foreground ferry's stderr, line by line, as it comes.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let rx = stderr_lines(child);
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line holding `what`; panics with the output so far after `limit`.
    fn wait(&mut self, what: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let left = limit.checked_sub(start.elapsed()).unwrap_or_default();
            match self.rx.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(what);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no `{what}` within {limit:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The lines printed from now until ferry exits.
    fn rest(&mut self) -> Vec<String> {
        let rest: Vec<String> = self.rx.iter().collect();
        self.seen.extend(rest.iter().cloned());
        rest
    }
}

#[test]
fn an_idle_dev_stays_quiet_while_files_are_read_and_one_edit_is_one_check() {
    let _g = serial();
    let root = churn_copy("churn-quiet");
    let port = free_port();
    let mut child = ferry_cmd(&root, &["dev", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::of(&mut child);
    lines.wait("for changes; Ctrl-C stops", Duration::from_secs(300));

    // For 10 s the project is read over and over (as ferry's own checks, an editor or a
    // notebook read it), ferry.yaml is written again with the same bytes and touched: none of
    // it is a change.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (root, stop) = (root.clone(), stop.clone());
        std::thread::spawn(move || {
            let spec = std::fs::read(root.join("ferry.yaml")).unwrap();
            std::fs::write(root.join("ferry.yaml"), &spec).unwrap();
            std::fs::File::options()
                .append(true)
                .open(root.join("ferry.yaml"))
                .unwrap()
                .set_modified(std::time::SystemTime::now())
                .unwrap();
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for name in [
                    "ferry.yaml",
                    "requirements.txt",
                    ".dockerignore",
                    "data/customers.csv",
                ] {
                    std::fs::read(root.join(name)).unwrap();
                    reads += 1;
                }
            }
            reads
        })
    };
    let idle = Duration::from_secs(10);
    let quiet = lines.rx.recv_timeout(idle);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(
        quiet.is_err(),
        "ferry printed while nothing changed: {quiet:?}"
    );
    assert!(reads > 100, "the project was read ({reads} reads)");

    // One edit of the requirements is one check, and one line says its outcome.
    let mut reqs = std::fs::read_to_string(root.join("requirements.txt")).unwrap();
    reqs.push_str("# a comment changes no requirement\n");
    std::fs::write(root.join("requirements.txt"), reqs).unwrap();
    lines.wait("requirements.txt changed", Duration::from_secs(30));
    let check = lines.seen.last().unwrap().clone();
    assert!(check.contains("it keeps running"), "{check}");
    interrupt(&child);
    let rest = lines.rest();
    assert!(child.wait().unwrap().success());
    let checks = rest.iter().filter(|l| l.contains(" changed")).count();
    assert_eq!(checks, 0, "one check only:\n{}", lines.seen.join("\n"));
    assert!(project_containers(&root).is_empty());
    let _ = std::fs::remove_dir_all(&root);
}

/// Whether Jupyter on `port` answers its API with `token`.
fn jupyter_answers(port: u16, token: &str) -> bool {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", &format!("Authorization: token {token}")])
        .arg(format!("http://127.0.0.1:{port}/api/status"))
        .output()
        .unwrap();
    out.stdout == b"200"
}

#[test]
fn a_running_notebook_survives_a_busy_port_a_repeat_and_other_settings() {
    let _g = serial();
    let root = churn_copy("churn-again");
    let port = free_port();
    let p = port.to_string();
    let first = ok_json(&root, &["dev", "--detach", "--json", "--port", &p]);
    assert_eq!(first["already_running"], false);
    let id = first["container"].as_str().unwrap().to_string();
    let url = first["url"].as_str().unwrap().to_string();
    let token = url.split("token=").nth(1).unwrap().to_string();
    assert!(jupyter_answers(port, &token));
    let survives = |why: &str| {
        assert_eq!(
            project_containers(&root),
            vec![id[..12].to_string()],
            "{why}"
        );
        assert!(jupyter_answers(port, &token), "{why}: the notebook answers");
    };

    // The same command again reports the running notebook: same URL, token and container.
    let again = ok_json(&root, &["dev", "--detach", "--json", "--port", &p]);
    assert_eq!(again["already_running"], true);
    assert_eq!(again["url"], first["url"]);
    assert_eq!(again["container"], first["container"]);
    survives("a repeated start");
    // In the foreground too: it says so and leaves it running in the background.
    let out = ferry(&root, &["dev", "--port", &p]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("Jupyter is already running"), "{err}");
    assert!(err.contains(&url), "{err}");
    survives("a foreground start");

    // A busy port is refused before the running notebook is touched, --restart or not.
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let busy = holder.local_addr().unwrap().port().to_string();
    for extra in [None, Some("--restart")] {
        let mut args = vec!["dev", "--detach", "--port", &busy];
        args.extend(extra);
        let out = ferry(&root, &args);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("port {busy} on 127.0.0.1 is already in use")),
            "{err}"
        );
        survives("a busy port");
    }
    drop(holder);

    // Other settings are refused, naming what differs, until --restart says to replace it.
    let other = free_port();
    let o = other.to_string();
    let out = ferry(&root, &["dev", "--detach", "--port", &o]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("port: {port} → {other}")), "{err}");
    assert!(err.contains("--restart"), "{err}");
    assert!(err.contains(&id[..12]), "{err}");
    survives("other settings without --restart");

    let replaced = ok_json(
        &root,
        &["dev", "--detach", "--json", "--port", &o, "--restart"],
    );
    assert_eq!(replaced["already_running"], false);
    let new_id = replaced["container"].as_str().unwrap();
    assert_ne!(new_id, id);
    assert_eq!(project_containers(&root), vec![new_id[..12].to_string()]);
    let new_url = replaced["url"].as_str().unwrap();
    assert!(jupyter_answers(
        other,
        new_url.split("token=").nth(1).unwrap()
    ));

    ok_json(&root, &["down", "--json"]);
    assert!(project_containers(&root).is_empty());
    let _ = std::fs::remove_dir_all(&root);
}

/// A notebook written into the churn project for one test, removed afterwards so the other
/// tests see the project (and its image) as the template makes it.
struct TempNotebook(PathBuf);

impl TempNotebook {
    fn new(root: &Path, name: &str, cells: &[&str]) -> TempNotebook {
        let cells: Vec<Value> = cells
            .iter()
            .map(|src| {
                serde_json::json!({"cell_type": "code", "metadata": {}, "execution_count": null,
                                   "outputs": [], "source": src})
            })
            .collect();
        let nb =
            serde_json::json!({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 4});
        let path = root.join(name);
        std::fs::write(&path, serde_json::to_vec(&nb).unwrap()).unwrap();
        TempNotebook(path)
    }
}

impl Drop for TempNotebook {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn train_from_a_notebook_keeps_the_executed_notebook_and_collects_the_model() {
    let _g = serial();
    let f = churn();
    let built = ok_json(&f.root, &["build", "--json"]);
    let run = ok_json(
        &f.root,
        &[
            "train",
            "--notebook",
            "train.ipynb",
            "-p",
            "seed=11",
            "--json",
        ],
    );
    assert_eq!(run["status"], "succeeded");
    // The churn environment has a notebook server, which brings the executor: the run uses
    // the very image `ferry build` made.
    assert_eq!(run["image"], built["project"]["tag"]);
    assert_eq!(run["command"][0], "python");
    assert_eq!(run["command"][3], "/workspace/train.ipynb");

    let model = f.root.join("artifacts/model.onnx");
    let recorded = run["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"] == "artifacts/model.onnx")
        .expect("the model is collected");
    assert_eq!(recorded["sha256"].as_str().unwrap(), sha256(&model));
    ferry::onnx::check_model(&model).expect("the notebook's model loads");
    let metrics: Value =
        serde_json::from_slice(&std::fs::read(f.root.join("artifacts/metrics.json")).unwrap())
            .unwrap();
    assert!(metrics["auc"].as_f64().unwrap() > 0.7, "{metrics}");
    let lock = std::fs::read_to_string(f.root.join("ferry.lock")).unwrap();
    assert!(
        lock.contains(&sha256(&model)),
        "ferry.lock takes the new model's sha256"
    );

    let id = run["id"].as_str().unwrap();
    let kept = run["notebook"]
        .as_str()
        .expect("the executed notebook is recorded");
    assert_eq!(kept, format!(".ferry/runs/{id}/train.ipynb"));
    let nb: Value = serde_json::from_slice(&std::fs::read(f.root.join(kept)).unwrap()).unwrap();
    let cells = nb["cells"].as_array().unwrap();
    let injected = cells
        .iter()
        .position(|c| c["metadata"]["tags"][0] == "injected-parameters")
        .expect("an injected parameters cell");
    assert_eq!(
        cells[injected - 1]["metadata"]["tags"][0],
        "parameters",
        "injected right after the cell tagged parameters"
    );
    assert!(cells[injected]["source"].to_string().contains("seed = 11"));
    for c in cells.iter().filter(|c| c["cell_type"] == "code") {
        assert!(c["execution_count"].is_number(), "every cell ran: {c}");
    }
    let outputs = serde_json::to_string(&nb).unwrap();
    assert!(outputs.contains("test ROC AUC"), "outputs are kept");
    let log = std::fs::read_to_string(f.root.join(run["log"].as_str().unwrap())).unwrap();
    assert!(log.contains("ferry-notebook: running cell 3 of 9"), "{log}");
    assert!(
        log.contains("test ROC AUC"),
        "cell output is streamed to the log"
    );
    assert!(
        !f.root.join(".ferry-notebook").exists(),
        "nothing lands in the project"
    );

    let out = ferry(&f.root, &["runs"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&format!("notebook {kept}")), "{listed}");
    assert!(project_containers(&f.root).is_empty());
}

#[test]
fn a_failing_notebook_cell_is_named_and_the_partial_notebook_kept() {
    let _g = serial();
    let f = churn();
    let model = f.root.join("artifacts/model.onnx");
    let before = model.exists().then(|| sha256(&model));
    let _nb = TempNotebook::new(
        &f.root,
        "broken.ipynb",
        &[
            "print('before the failure')",
            "raise ValueError('no customers in ' + 'Q3')",
            "print('never printed')",
        ],
    );
    let out = ferry(&f.root, &["train", "--notebook", "broken.ipynb"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("broken.ipynb failed at cell 2 of 3: ValueError: no customers in Q3"),
        "{err}"
    );
    assert!(err.contains("before the failure"), "streamed: {err}");
    assert_eq!(
        model.exists().then(|| sha256(&model)),
        before,
        "the previous model is untouched"
    );

    let runs = ok_json(&f.root, &["runs", "--json"]);
    let last = &runs[0];
    assert_eq!(last["status"], "failed");
    assert_eq!(last["outputs"].as_array().unwrap().len(), 0);
    let kept = last["notebook"]
        .as_str()
        .expect("the partial notebook is kept");
    assert!(err.contains(kept), "the error says where it is: {err}");
    let nb: Value = serde_json::from_slice(&std::fs::read(f.root.join(kept)).unwrap()).unwrap();
    let cells = nb["cells"].as_array().unwrap();
    assert!(
        cells[0]["outputs"][0]["text"]
            .to_string()
            .contains("before the failure"),
        "the cells before the failure kept their output"
    );
    let error = &cells[1]["outputs"][0];
    assert_eq!(error["output_type"], "error");
    assert_eq!(error["ename"], "ValueError");
    assert!(
        error["traceback"].to_string().contains("no customers in"),
        "{error}"
    );
    assert!(cells[2]["execution_count"].is_null(), "cell 3 never ran");
    assert!(project_containers(&f.root).is_empty());
}

#[test]
fn bad_notebook_paths_are_refused_before_anything_runs() {
    let _g = serial();
    let f = churn();
    let count = || {
        std::fs::read_dir(f.root.join(".ferry/runs"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = count();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), r#"{"cells": [], "nbformat": 4}"#).unwrap();
    let outside = outside.path().to_string_lossy().into_owned();
    for (args, says) in [
        (
            vec!["--notebook", "missing.ipynb"],
            "missing.ipynb does not exist",
        ),
        (
            vec!["--notebook", "train.py"],
            "train.py is not a Jupyter notebook: not JSON",
        ),
        (
            vec!["--notebook", outside.as_str()],
            "is outside the project directory",
        ),
        (
            vec!["--notebook", "train.ipynb", "-p", "seed"],
            "bad parameter \"seed\": no `=`",
        ),
        (vec!["-p", "seed=3"], "--notebook"),
    ] {
        let mut all = vec!["train"];
        all.extend(args.iter().copied());
        let out = ferry(&f.root, &all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{all:?}");
        assert!(err.contains(says), "{all:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(count(), before, "no run was started");
    assert!(project_containers(&f.root).is_empty());
}

#[test]
fn a_notebook_step_runs_in_a_pipeline_and_its_check_is_read_from_its_output() {
    let _g = serial();
    let f = churn();
    let spec = std::fs::read_to_string(f.root.join("ferry.yaml")).unwrap();
    let start = spec.find("train:\n").unwrap();
    let end = spec.find("serve:\n").unwrap();
    let pipeline = "pipeline:
  fit:
    notebook: train.ipynb
    params: { seed: \"11\" }
    inputs: [data/]
    outputs: [artifacts/model.onnx, artifacts/metrics.json]
  evaluate:
    command: python auc.py
    inputs: [auc.py, artifacts/metrics.json]
    outputs: [reports/auc.json]
    checks:
      reports/auc.json: { auc: \">= 0.7\" }
";
    std::fs::write(
        f.root.join("auc.py"),
        "import json\nm = json.load(open('artifacts/metrics.json'))\njson.dump({'auc': m['auc']}, open('reports/auc.json', 'w'))\n",
    )
    .unwrap();
    let file = "nb-pipeline.yaml";
    std::fs::write(
        f.root.join(file),
        format!("{}{pipeline}{}", &spec[..start], &spec[end..]),
    )
    .unwrap();
    let out = ferry(&f.root, &["run", "-f", file, "--json"]);
    let _ = std::fs::remove_file(f.root.join(file));
    let _ = std::fs::remove_file(f.root.join("auc.py"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps[0]["name"], "fit");
    assert_eq!(steps[0]["status"], "ran");
    let executed = f.root.join(
        steps[0]["notebook"]
            .as_str()
            .expect("executed notebook kept"),
    );
    assert!(executed.exists(), "{}", executed.display());
    let model = f.root.join("artifacts/model.onnx");
    ferry::onnx::check_model(&model).expect("the notebook's model loads");
    assert!(
        steps[0]["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["path"] == "artifacts/model.onnx" && o["sha256"] == sha256(&model).as_str())
    );
    assert_eq!(steps[1]["name"], "evaluate");
    assert_eq!(steps[1]["checks"][0]["passed"], true, "{run:#}");
    let _ = std::fs::remove_dir_all(f.root.join("reports"));
}
