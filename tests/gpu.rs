//! GPUs on a machine without one, which is where the errors are: a Docker engine without the
//! NVIDIA Container Toolkit refuses `resources.gpu` before anything is built (and, asked anyway,
//! at start, with the same message); a server told `serve.device: cuda` with a CPU build of ONNX
//! Runtime refuses to start; a serving image for `cuda` carries the CUDA provider's libraries
//! (stand-ins from `tests/fixtures/gpu`) and is refused without them. Also the `pytorch-gpu`
//! template as a cluster runs it: `nvidia.com/gpu` on the training Job and the Deployment.
//!
//! Needs a running Docker engine and ONNX Runtime (`./install.sh`). Where the engine or the
//! library does have GPU support, the tests that need its absence say "skipped".

use std::path::{Path, PathBuf};
use std::process::Output;

use ferry::docker::{ContainerSpec, DockerError, LABEL_ROLE};
use ferry::images::serving::{ServingImageRequest, ServingModel, serving_context};
use ferry::server::config::{Device, ServingConfig};
use serde_json::Value;

mod common;

use common::{fixture, free_port};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn engine_has_nvidia() -> bool {
    let runtimes = common::docker(&["info", "--format", "{{json .Runtimes}}"]);
    let has = runtimes.contains("nvidia");
    if has {
        eprintln!("skipped: this Docker engine has an nvidia runtime");
    }
    has
}

fn library_has_cuda() -> bool {
    let providers = ferry::onnx::available_providers()
        .unwrap_or_else(|e| panic!("these tests need ONNX Runtime (run ./install.sh): {e}"));
    let has = providers.iter().any(|p| p == "CUDAExecutionProvider");
    if has {
        eprintln!("skipped: this ONNX Runtime library has the CUDA execution provider");
    }
    has
}

/// A project whose training, and serving on CUDA, each ask for a GPU.
fn gpu_project(dir: &Path, name: &str) {
    std::fs::write(
        dir.join("ferry.yaml"),
        format!(
            "name: {name}\nenvironment: {{ bootstrap: bookworm }}\ntrain:\n  command: python train.py\n  outputs: [artifacts/weights.bin]\n  resources: {{ gpu: 1 }}\nserve:\n  model: artifacts/model.onnx\n  device: cuda\n  resources: {{ gpu: 1 }}\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("artifacts")).unwrap();
    std::fs::copy(fixture("tiny.onnx"), dir.join("artifacts/model.onnx")).unwrap();
}

/// Names of containers and images that carry this project's name.
fn leftovers(name: &str) -> String {
    let containers = common::docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("name=ferry-{name}-"),
        "--format",
        "{{.Names}}",
    ]);
    let images = common::docker(&[
        "images",
        "--filter",
        &format!("reference=ferry/{name}*"),
        "--format",
        "{{.Repository}}",
    ]);
    format!("{containers}{images}")
}

#[test]
fn train_and_serve_with_a_gpu_stop_before_building_on_an_engine_without_one() {
    if engine_has_nvidia() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = format!("gputrain{}", std::process::id());
    gpu_project(dir.path(), &name);

    let started = std::time::Instant::now();
    let out = common::ferry(dir.path(), &["train"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("this Docker engine cannot give containers a GPU: it has no nvidia runtime (its runtimes: "),
        "{t}"
    );
    assert!(
        t.contains("nvidia-container-runtime-hook is not installed"),
        "{t}"
    );
    assert!(t.contains("install the NVIDIA Container Toolkit"), "{t}");
    assert!(t.contains("remove train.resources.gpu"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    // Early: no base bootstrap, no image, no container, no run record.
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
    assert_eq!(leftovers(&name), "");
    assert!(!dir.path().join(".ferry/runs").exists());

    let out = common::ferry(dir.path(), &["serve", "--port", &free_port().to_string()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("this Docker engine cannot give containers a GPU"),
        "{t}"
    );
    assert!(t.contains("remove serve.resources.gpu"), "{t}");
    assert_eq!(leftovers(&name), "");
}

/// Removes an image when the test ends.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        common::docker(&["rmi", "-f", &self.0]);
    }
}

#[test]
fn an_engine_refusing_the_device_request_at_start_is_named_and_keeps_no_container() {
    if engine_has_nvidia() {
        return;
    }
    // An empty image is enough: the engine refuses the device request before it runs anything.
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("empty.tar");
    tar::Builder::new(std::fs::File::create(&tar).unwrap())
        .finish()
        .unwrap();
    let tag = format!("ferry-gputest:{}", std::process::id());
    let image = Image(tag.clone());
    let out = std::process::Command::new("docker")
        .args(["import", tar.to_str().unwrap(), &tag])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let name = format!("ferry-gputest-{}-train", std::process::id());
    let spec = ContainerSpec {
        name: name.clone(),
        image: image.0.clone(),
        argv: vec!["/train".into()],
        workdir: "/".into(),
        gpus: Some(1),
        labels: [(LABEL_ROLE.to_string(), "train".to_string())].into(),
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let docker = rt
        .block_on(ferry::docker::connect())
        .expect("docker engine");
    let err = rt
        .block_on(ferry::docker::run_spec(&docker, &spec))
        .expect_err("no GPU here");
    assert!(matches!(err, DockerError::NoGpu { .. }), "{err:?}");
    let t = err.to_string();
    assert!(
        t.starts_with(
            "this Docker engine cannot give containers a GPU: could not select device driver \"nvidia\" with capabilities: [[gpu]]"
        ),
        "{t}"
    );
    assert!(t.contains("remove train.resources.gpu"), "{t}");
    let names = common::docker(&["ps", "-a", "--filter", &format!("name={name}"), "-q"]);
    assert_eq!(names, "", "the container was kept");
}

fn cuda_config(model: &Path, port: u16) -> ServingConfig {
    serde_json::from_value(serde_json::json!({
        "host": "127.0.0.1",
        "port": port,
        "device": "cuda",
        "models": [{
            "name": "tiny",
            "variants": [{"name": "default", "path": model, "weight": 1}]
        }]
    }))
    .unwrap()
}

fn assert_no_cuda_provider(t: &str) {
    assert!(
        t.contains("serve.device is cuda, but the ONNX Runtime library at "),
        "{t}"
    );
    assert!(
        t.contains("has no CUDA execution provider (available: "),
        "{t}"
    );
    assert!(t.contains("CPUExecutionProvider"), "{t}");
    assert!(t.contains("ORT_DYLIB_PATH"), "{t}");
    assert!(t.contains("or set serve.device: cpu"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn serve_model_on_cuda_refuses_to_start_without_the_provider() {
    if library_has_cuda() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serving.json");
    let port = free_port();
    std::fs::write(
        &config,
        serde_json::to_vec(&cuda_config(&fixture("tiny.onnx"), port)).unwrap(),
    )
    .unwrap();
    let out = common::ferry(
        dir.path(),
        &["serve-model", "--config", config.to_str().unwrap()],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert_no_cuda_provider(&t);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something still listens on {port}"
    );
    // The same config with the CPU loads: the refusal is the device's, not the model's.
    let server = ferry::server::load(&ServingConfig {
        device: Device::Cpu,
        ..cuda_config(&fixture("tiny.onnx"), port)
    });
    assert!(server.is_ok());
}

#[test]
fn serve_native_on_cuda_shows_why_it_cannot() {
    if library_has_cuda() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    gpu_project(dir.path(), "nativegpu");
    let port = free_port().to_string();
    let out = common::ferry(dir.path(), &["serve", "--native", "--port", &port]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert_no_cuda_provider(&t);
    assert!(!dir.path().join(".ferry/serve.json").exists());
}

/// The real ONNX Runtime library, linked into `dir` under its usual name, with `extra` fixtures
/// from `tests/fixtures/gpu` beside it.
fn runtime_dir(dir: &Path, extra: &[&str]) -> PathBuf {
    let real = ferry::onnx::runtime_library()
        .unwrap_or_else(|e| panic!("these tests need ONNX Runtime (run ./install.sh): {e}"));
    let lib = dir.join("libonnxruntime.so");
    std::os::unix::fs::symlink(real.canonicalize().unwrap(), &lib).unwrap();
    for name in extra {
        std::fs::copy(fixture(&format!("gpu/{name}")), dir.join(name)).unwrap();
    }
    lib
}

fn context(
    runtime: &Path,
    device: Device,
) -> Result<ferry::images::serving::ServingContext, String> {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ferry"));
    let model = "/models/tiny/default/model.onnx";
    let models = vec![ServingModel {
        host_path: fixture("tiny.onnx"),
        image_path: model.into(),
    }];
    let config = ServingConfig {
        host: "0.0.0.0".into(),
        port: 8080,
        ..cuda_config(Path::new(model), 8080)
    };
    let config = ServingConfig { device, ..config };
    serving_context(&ServingImageRequest {
        project: "gpuimage",
        binary: &binary,
        runtime,
        models: &models,
        config: &config,
    })
    .map_err(|e| e.to_string())
}

/// Paths in the runtime layer of an image context.
fn runtime_layer_paths(ctx: &ferry::images::serving::ServingContext) -> Vec<String> {
    let mut archive = Vec::new();
    ctx.write_archive(&mut archive).unwrap();
    let runtime_tar = format!(
        "{}/layer.tar",
        ctx.layers[0].diff_id.trim_start_matches("sha256:")
    );
    let mut outer = tar::Archive::new(archive.as_slice());
    for e in outer.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == runtime_tar {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            return tar::Archive::new(bytes.as_slice())
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
                .collect();
        }
    }
    panic!("no {runtime_tar} in the archive");
}

#[test]
fn a_cuda_serving_image_carries_the_provider_and_what_it_needs_but_never_the_driver() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime_dir(
        dir.path(),
        &[
            "libonnxruntime_providers_shared.so",
            "libonnxruntime_providers_cuda.so",
            "libcudart.so.12",
            "libcuda.so.1",
        ],
    );
    let ctx = context(&runtime, Device::Cuda).unwrap();
    let paths = runtime_layer_paths(&ctx);
    for wanted in [
        "usr/lib/ferry/libonnxruntime.so",
        "usr/lib/ferry/libonnxruntime_providers_shared.so",
        "usr/lib/ferry/libonnxruntime_providers_cuda.so",
        // Found beside the runtime, as the image's LD_LIBRARY_PATH will find it there.
        "usr/lib/ferry/libcudart.so.12",
    ] {
        assert!(
            paths.iter().any(|p| p == wanted),
            "{wanted} not in {paths:?}"
        );
    }
    assert!(
        !paths.iter().any(|p| p.contains("libcuda.so")),
        "the driver's library went in: {paths:?}"
    );
    let left = ctx.left_out.join("\n");
    assert!(
        left.contains("libcuda.so.1 (the GPU driver's, needed by "),
        "{left}"
    );
    assert!(
        left.contains("libcublas.so.12 (not found, needed by "),
        "{left}"
    );
    assert!(left.contains("libonnxruntime_providers_cuda.so"), "{left}");

    let config: Value = serde_json::from_slice(&ctx.config).unwrap();
    let env = config["config"]["Env"].to_string();
    assert!(env.contains("/usr/lib/ferry"), "{env}");
    assert!(env.contains("/usr/lib64"), "{env}");

    // On the CPU the provider libraries beside the runtime change nothing: the image is the
    // one the plain library makes.
    let beside = context(&runtime, Device::Cpu).unwrap();
    let plain = context(&ferry::onnx::runtime_library().unwrap(), Device::Cpu).unwrap();
    assert_eq!(beside.id, plain.id);
    assert!(beside.left_out.is_empty());
    assert!(
        !runtime_layer_paths(&beside)
            .iter()
            .any(|p| p.contains("providers"))
    );
    assert_ne!(ctx.id, plain.id);
}

#[test]
fn a_cuda_serving_image_without_the_provider_beside_the_runtime_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime_dir(dir.path(), &[]);
    let err = context(&runtime, Device::Cuda).err().expect("refused");
    assert!(
        err.contains("serve.device is cuda, but libonnxruntime_providers_shared.so and libonnxruntime_providers_cuda.so are not beside this ONNX Runtime library"),
        "{err}"
    );
    assert!(err.contains(&runtime.display().to_string()), "{err}");
    assert!(err.contains("ORT_DYLIB_PATH"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime_dir(dir.path(), &["libonnxruntime_providers_shared.so"]);
    let err = context(&runtime, Device::Cuda).err().expect("refused");
    assert!(
        err.contains("but libonnxruntime_providers_cuda.so is not beside"),
        "{err}"
    );
}

#[test]
fn the_pytorch_gpu_template_asks_a_cluster_for_gpus() {
    use ferry::kube::workloads::{Placement, training_job};
    use ferry::kube::{Object, Release, render};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("vision");
    ferry::templates::init(&root, "pytorch-gpu", None, true, false).unwrap();
    // Uncomment the template's cluster environment, as its README says to.
    let spec = std::fs::read_to_string(root.join("ferry.yaml")).unwrap();
    let (head, tail) = spec
        .split_once("  # gpu-cluster:")
        .expect("a commented cluster env");
    let tail = format!("  # gpu-cluster:{tail}").replace("  # ", "  ");
    std::fs::write(root.join("ferry.yaml"), format!("{head}{tail}")).unwrap();
    std::fs::create_dir_all(root.join("artifacts")).unwrap();
    std::fs::copy(fixture("tiny.onnx"), root.join("artifacts/model.onnx")).unwrap();

    let p = ferry::spec::Project::load_dir(&root, Some("gpu-cluster")).unwrap();
    let serve = p.spec.serve.as_ref().unwrap();
    assert_eq!((serve.device, serve.resources.gpu), (Device::Cuda, Some(1)));

    const DIGEST: &str = "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let serving = ferry::serving_image::serving_plan(&p).unwrap();
    assert_eq!(serving.config.device, Device::Cuda);
    let hash = p.hash().unwrap().as_str().to_string();
    let release = Release::new(
        &p,
        serving,
        format!("registry.example.com/ml/vision-serve{DIGEST}"),
        hash,
        None,
    )
    .unwrap();
    let objects: Vec<Value> = render(&release)
        .objects
        .iter()
        .map(Object::to_value)
        .collect();
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        "1"
    );
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
    // The config the server reads says cuda.
    let config_map = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    assert!(
        config_map["data"]
            .to_string()
            .contains(r#"\"device\": \"cuda\""#),
        "{config_map}"
    );

    let plan = ferry::plan::plan(&p, "");
    let placement = Placement {
        project: p.spec.name.clone(),
        env: "gpu-cluster".into(),
        namespace: p.spec.namespace.clone().unwrap(),
        cluster: p.spec.cluster.clone().unwrap(),
        image: format!("registry.example.com/ml/vision{DIGEST}"),
        secret: None,
        run_on: Vec::new(),
    };
    let job = serde_json::to_value(training_job(
        &placement,
        plan.train.as_ref().unwrap(),
        "20261123-114502-123-3f9a",
    ))
    .unwrap();
    let train = &job["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(train["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(train["resources"]["limits"]["memory"], "8Gi");

    let files: Vec<PathBuf> = [deployment, &job]
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let f = dir.path().join(format!("obj-{i}.yaml"));
            std::fs::write(&f, serde_yaml_ng::to_string(o).unwrap()).unwrap();
            f
        })
        .collect();
    if common::have_manifest_validator() {
        common::validate_manifests(&files);
    }
}
