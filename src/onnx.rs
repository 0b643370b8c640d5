//! ONNX Runtime: finding and loading its shared library, opening models, describing their
//! inputs and outputs.
//!
//! Ferry links ONNX Runtime dynamically (`ort`'s `load-dynamic`), so one binary works on any host
//! that has the library: `install.sh` puts it in `<prefix>/lib/ferry/`, the serving image puts it
//! next to the binary, and `ORT_DYLIB_PATH` overrides both.
//!
//! Everything that touches ONNX Runtime in this process must go through [`environment`] (or
//! [`open_session`]): ONNX Runtime allows one environment per process, and any `ort` call made
//! before the library is loaded here would make `ort` load a library of its own choosing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use serde::Serialize;

/// The environment variable that names the ONNX Runtime library (a file or a directory).
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

#[derive(Debug, Clone, thiserror::Error)]
pub enum OnnxError {
    #[error(
        "ONNX Runtime library not found; searched:\n{}\nInstall the `onnxruntime` Python package into the environment ferry was installed into (`pip install onnxruntime`; `pip install ferry-ml` brings it), run ./install.sh, or set {DYLIB_ENV} to the path of {}",
        list_paths(searched),
        library_name()
    )]
    RuntimeNotFound { searched: Vec<PathBuf> },

    #[error("ONNX Runtime library {} failed to load: {message}", path.display())]
    RuntimeLoad { path: PathBuf, message: String },

    #[error("model not found: {}", path.display())]
    ModelNotFound { path: PathBuf },

    #[error("model {} failed to load in ONNX Runtime: {message}", path.display())]
    ModelLoad { path: PathBuf, message: String },

    #[error("ONNX Runtime could not start its {provider} for model {}: {message}", path.display())]
    Provider {
        provider: &'static str,
        path: PathBuf,
        message: String,
    },
}

/// One input or output of a model, in Open Inference Protocol terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorInfo {
    pub name: String,
    /// `FP32`, `INT64`, `BOOL`, `BYTES`, ... for tensors; for other values (sequences, maps,
    /// optionals) an ONNX-style type such as `seq(map(int64,float))`.
    pub datatype: String,
    /// `-1` marks a dynamic dimension; empty for values that are not tensors.
    pub shape: Vec<i64>,
    /// Set for values that are not tensors (e.g. the `seq(map(int64,float))` probabilities of a
    /// scikit-learn classifier converted with ZipMap), which the inference protocol cannot carry.
    #[serde(skip_serializing_if = "is_false")]
    pub not_tensor: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelSummary {
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

/// Finds the ONNX Runtime shared library.
///
/// Search order: `$ORT_DYLIB_PATH` (a file or a directory; when set, nothing else is searched, so
/// a wrong value is reported instead of silently ignored); the `onnxruntime` package of the
/// Python environment ferry was installed into (`<exe dir>/../lib/python3.*/site-packages/
/// onnxruntime/capi/`, see [`python_env_dirs`]); `<exe dir>/../lib/ferry/`;
/// `<exe dir>/`; `$HOME/.local/lib/ferry/`. In a directory, `libonnxruntime.so` is preferred,
/// then the newest versioned `libonnxruntime.so.1.*`.
pub fn runtime_library() -> Result<PathBuf, OnnxError> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    find_library(
        std::env::var_os(DYLIB_ENV),
        exe_dir.as_deref(),
        dirs::home_dir().as_deref(),
    )
}

/// Loads ONNX Runtime and creates the process's environment. Only the first call does the work;
/// later calls return its outcome, the same error included.
pub fn init() -> Result<(), OnnxError> {
    environment().map(|_| ())
}

/// The process-wide ONNX Runtime environment, created on first use; sessions are built from it.
pub fn environment() -> Result<&'static Environment, OnnxError> {
    static ENVIRONMENT: OnceLock<Result<Environment, OnnxError>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(create_environment)
        .as_ref()
        .map_err(Clone::clone)
}

/// The name ONNX Runtime gives its CUDA execution provider.
pub const CUDA_PROVIDER: &str = "CUDAExecutionProvider";

/// The execution providers the loaded library was built with, in its order of preference, e.g.
/// `CUDAExecutionProvider, CPUExecutionProvider` for a GPU build.
pub fn available_providers() -> Result<Vec<String>, OnnxError> {
    use std::ffi::{CStr, c_char, c_int};
    environment()?;
    let api = ort::api();
    let message_of = |status: *mut ort::sys::OrtStatus| {
        // SAFETY: `status` is a non-null status ONNX Runtime just returned; its message is read
        // before the status is released, and never after.
        unsafe {
            let text = CStr::from_ptr((api.GetErrorMessage)(status))
                .to_string_lossy()
                .into_owned();
            (api.ReleaseStatus)(status);
            text
        }
    };
    let mut list: *mut *mut c_char = std::ptr::null_mut();
    let mut count: c_int = 0;
    // SAFETY: the function table is ONNX Runtime's own, loaded by `environment`; both out
    // pointers are valid for writes.
    let status = unsafe { (api.GetAvailableProviders)(&mut list, &mut count) };
    if !status.0.is_null() {
        return Err(OnnxError::RuntimeLoad {
            path: runtime_library().unwrap_or_default(),
            message: format!(
                "cannot list its execution providers: {}",
                message_of(status.0)
            ),
        });
    }
    let mut names = Vec::new();
    if list.is_null() {
        return Ok(names);
    }
    for i in 0..usize::try_from(count).unwrap_or(0) {
        // SAFETY: ONNX Runtime gave `count` C strings at `list`, valid until released below.
        let name = unsafe { *list.add(i) };
        if !name.is_null() {
            names.push(
                unsafe { CStr::from_ptr(name) }
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    // SAFETY: the list and count are exactly what GetAvailableProviders gave; not used after.
    let status = unsafe { (api.ReleaseAvailableProviders)(list, count) };
    if !status.0.is_null() {
        message_of(status.0);
    }
    Ok(names)
}

/// Opens a model in a new session with default options.
pub fn open_session(path: &Path) -> Result<Session, OnnxError> {
    if !path.exists() {
        return Err(OnnxError::ModelNotFound {
            path: path.to_path_buf(),
        });
    }
    if path.is_dir() {
        return Err(OnnxError::ModelLoad {
            path: path.to_path_buf(),
            message: "is a directory, not an ONNX model file".to_string(),
        });
    }
    let env = environment()?;
    let model_error = |e: ort::Error| OnnxError::ModelLoad {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    Session::builder(env)
        .map_err(model_error)?
        .commit_from_file(path)
        .map_err(model_error)
}

/// Loads the model in ONNX Runtime (so anything it would reject at serving time is rejected
/// here) and describes its inputs and outputs.
pub fn check_model(path: &Path) -> Result<ModelSummary, OnnxError> {
    let session = open_session(path)?;
    let describe = |outlets: &[ort::value::Outlet]| {
        outlets
            .iter()
            .map(|o| describe_value(o.name(), o.dtype()))
            .collect()
    };
    Ok(ModelSummary {
        inputs: describe(session.inputs()),
        outputs: describe(session.outputs()),
    })
}

fn create_environment() -> Result<Environment, OnnxError> {
    let path = runtime_library()?;
    let load_error = |message: String| OnnxError::RuntimeLoad {
        path: path.clone(),
        message,
    };
    ort::init_from(&path)
        .map_err(|e| {
            // libloading keeps dlopen's own explanation (missing dependency, wrong architecture,
            // not a shared object) in its source error, which ort's message leaves out.
            let detail = match &e {
                ort::LoadDynamicError::Dlopen { error, .. } => error_chain(error),
                _ => String::new(),
            };
            load_error(format!("{e}{detail}"))
        })?
        .with_name("ferry")
        .build()
        .map_err(|e| load_error(e.to_string()))
}

fn library_name() -> String {
    format!(
        "{}onnxruntime{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

fn find_library(
    env_value: Option<OsString>,
    exe_dir: Option<&Path>,
    home: Option<&Path>,
) -> Result<PathBuf, OnnxError> {
    if let Some(value) = env_value.filter(|v| !v.is_empty()) {
        let given = PathBuf::from(value);
        // ort would resolve a relative path against the executable's directory; the user means
        // the current directory.
        let given = std::path::absolute(&given).unwrap_or(given);
        let found = if given.is_dir() {
            library_in(&given)
        } else {
            given.is_file().then(|| given.clone())
        };
        return found.ok_or(OnnxError::RuntimeNotFound {
            searched: vec![given],
        });
    }

    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(prefix) = exe_dir.and_then(Path::parent) {
        dirs.extend(python_env_dirs(prefix));
    }
    if let Some(exe_dir) = exe_dir {
        if let Some(prefix) = exe_dir.parent() {
            dirs.push(prefix.join("lib").join("ferry"));
        }
        dirs.push(exe_dir.to_path_buf());
    }
    if let Some(home) = home {
        dirs.push(home.join(".local").join("lib").join("ferry"));
    }
    let mut searched = Vec::new();
    for dir in dirs {
        if searched.contains(&dir) {
            continue;
        }
        if let Some(lib) = library_in(&dir) {
            return Ok(lib);
        }
        searched.push(dir);
    }
    Err(OnnxError::RuntimeNotFound { searched })
}

/// Where the `onnxruntime` Python package keeps the library in the Python environment whose
/// prefix is `prefix` (a virtualenv, pipx's or `uv tool`'s environment, `~/.local` for `pip
/// install --user`): `<prefix>/lib/python3.X/site-packages/onnxruntime/capi/`, the newest
/// Python first, and the same under `lib64` where a distribution keeps it there. The wheel of
/// `ferry-ml` puts `ferry` in `<prefix>/bin` and depends on `onnxruntime`, so this is where an
/// installed wheel finds it.
pub fn python_env_dirs(prefix: &Path) -> Vec<PathBuf> {
    let mut found: Vec<((u32, u32), PathBuf)> = Vec::new();
    for lib in ["lib", "lib64"] {
        let Ok(entries) = std::fs::read_dir(prefix.join(lib)) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(version) = name
                .to_str()
                .and_then(|n| n.strip_prefix("python"))
                .and_then(|v| v.split_once('.'))
                .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)))
            else {
                continue;
            };
            // Listed where the environment has site-packages even without onnxruntime, so the
            // error names where it was looked for.
            if !entry.path().join("site-packages").is_dir() {
                continue;
            }
            let capi = entry.path().join("site-packages/onnxruntime/capi");
            if !found.iter().any(|(_, p)| *p == capi) {
                found.push((version, capi));
            }
        }
    }
    // Newest Python first; `lib` before `lib64` for the same version (stable sort).
    found.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
    found.into_iter().map(|(_, p)| p).collect()
}

/// The library in `dir`: the unversioned name, else the newest versioned file.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join(library_name());
    if plain.is_file() {
        return Some(plain);
    }
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = library_version(name.to_str()?)?;
            let path = entry.path();
            path.is_file().then_some((version, path))
        })
        .max()
        .map(|(_, path)| path)
}

/// The version in a versioned library name: `libonnxruntime.so.1.32.0` on Linux,
/// `libonnxruntime.1.32.0.dylib` on macOS.
fn library_version(file_name: &str) -> Option<Vec<u32>> {
    let stem = format!("{}onnxruntime", std::env::consts::DLL_PREFIX);
    let suffix = std::env::consts::DLL_SUFFIX;
    let rest = file_name.strip_prefix(&stem)?;
    let version = match rest.strip_prefix(suffix) {
        Some(after) => after.strip_prefix('.')?,
        None => rest.strip_prefix('.')?.strip_suffix(suffix)?,
    };
    let parts = version
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<Vec<u32>>>()?;
    (parts.first() == Some(&1)).then_some(parts)
}

fn describe_value(name: &str, dtype: &ValueType) -> TensorInfo {
    match dtype {
        ValueType::Tensor { ty, shape, .. } => TensorInfo {
            name: name.to_string(),
            datatype: protocol_datatype(*ty),
            shape: shape.to_vec(),
            not_tensor: false,
        },
        other => TensorInfo {
            name: name.to_string(),
            datatype: onnx_type_name(other),
            shape: Vec::new(),
            not_tensor: true,
        },
    }
}

/// Open Inference Protocol datatype names; types it does not define get their ONNX name.
fn protocol_datatype(ty: TensorElementType) -> String {
    let name = match ty {
        TensorElementType::Bool => "BOOL",
        TensorElementType::Uint8 => "UINT8",
        TensorElementType::Uint16 => "UINT16",
        TensorElementType::Uint32 => "UINT32",
        TensorElementType::Uint64 => "UINT64",
        TensorElementType::Int8 => "INT8",
        TensorElementType::Int16 => "INT16",
        TensorElementType::Int32 => "INT32",
        TensorElementType::Int64 => "INT64",
        TensorElementType::Float16 => "FP16",
        TensorElementType::Float32 => "FP32",
        TensorElementType::Float64 => "FP64",
        TensorElementType::String => "BYTES",
        TensorElementType::Bfloat16 => "BF16",
        other => return onnx_element_name(other).to_ascii_uppercase(),
    };
    name.to_string()
}

/// Element type names as ONNX writes them in type strings such as `tensor(float)`.
fn onnx_element_name(ty: TensorElementType) -> &'static str {
    match ty {
        TensorElementType::Bool => "bool",
        TensorElementType::Uint8 => "uint8",
        TensorElementType::Uint16 => "uint16",
        TensorElementType::Uint32 => "uint32",
        TensorElementType::Uint64 => "uint64",
        TensorElementType::Int8 => "int8",
        TensorElementType::Int16 => "int16",
        TensorElementType::Int32 => "int32",
        TensorElementType::Int64 => "int64",
        TensorElementType::Float16 => "float16",
        TensorElementType::Float32 => "float",
        TensorElementType::Float64 => "double",
        TensorElementType::String => "string",
        TensorElementType::Bfloat16 => "bfloat16",
        TensorElementType::Complex64 => "complex64",
        TensorElementType::Complex128 => "complex128",
        TensorElementType::Float8E4M3FN => "float8e4m3fn",
        TensorElementType::Float8E4M3FNUZ => "float8e4m3fnuz",
        TensorElementType::Float8E5M2 => "float8e5m2",
        TensorElementType::Float8E5M2FNUZ => "float8e5m2fnuz",
        TensorElementType::Float8E8M0 => "float8e8m0",
        TensorElementType::Float4E2M1 => "float4e2m1",
        TensorElementType::Uint4 => "uint4",
        TensorElementType::Int4 => "int4",
        TensorElementType::Uint2 => "uint2",
        TensorElementType::Int2 => "int2",
        _ => "undefined",
    }
}

fn onnx_type_name(dtype: &ValueType) -> String {
    match dtype {
        ValueType::Tensor { ty, .. } => format!("tensor({})", onnx_element_name(*ty)),
        // Map values are always scalars per key, so the element type alone says it all.
        ValueType::Map { key, value } => {
            format!(
                "map({},{})",
                onnx_element_name(*key),
                onnx_element_name(*value)
            )
        }
        ValueType::Sequence(inner) => format!("seq({})", onnx_type_name(inner)),
        ValueType::Optional(inner) => format!("optional({})", onnx_type_name(inner)),
    }
}

fn list_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "  (nowhere: neither the executable's directory nor the home directory is known)"
            .to_string();
    }
    paths
        .iter()
        .map(|p| format!("  {}", p.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `: cause: cause...` for the sources below `error`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

fn is_false(value: &bool) -> bool {
    !value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("fixtures")
            .join(name)
    }

    /// Tests that load models need the real library; CI installs it, so its absence is a failure.
    fn require_runtime() {
        if let Err(e) = runtime_library() {
            panic!("these tests need ONNX Runtime (run ./install.sh or set {DYLIB_ENV}): {e}");
        }
    }

    fn touch(path: &Path) {
        std::fs::write(path, b"").expect("write test file");
    }

    fn tensor(name: &str, datatype: &str, shape: &[i64]) -> TensorInfo {
        TensorInfo {
            name: name.to_string(),
            datatype: datatype.to_string(),
            shape: shape.to_vec(),
            not_tensor: false,
        }
    }

    #[test]
    fn missing_model_is_reported_as_not_found() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nope.onnx");
        let err = check_model(&path).expect_err("missing model must fail");
        assert!(matches!(&err, OnnxError::ModelNotFound { path: p } if *p == path));
        assert!(err.to_string().contains("nope.onnx"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_onnx_gives_runtime_message() {
        require_runtime();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hello.onnx");
        std::fs::write(&path, "hello").expect("write test file");
        let err = check_model(&path).expect_err("garbage must not load");
        let OnnxError::ModelLoad { path: p, message } = &err else {
            panic!("expected a model-load error, got: {err}");
        };
        assert_eq!(p, &path);
        assert!(!message.is_empty());
        let text = err.to_string();
        assert!(text.contains("hello.onnx"), "{text}");
        assert!(text.contains(message.as_str()), "{text}");
    }

    #[test]
    fn tiny_model_reports_inputs_and_outputs() {
        require_runtime();
        let summary = check_model(&fixture("tiny.onnx")).expect("tiny.onnx loads");
        assert_eq!(summary.inputs, vec![tensor("X", "FP32", &[-1, 3])]);
        assert_eq!(summary.outputs, vec![tensor("Y", "FP32", &[-1, 3])]);
        let json = serde_json::to_value(&summary).expect("serializes");
        assert_eq!(
            json["inputs"][0],
            serde_json::json!({"name": "X", "datatype": "FP32", "shape": [-1, 3]})
        );
    }

    #[test]
    fn zipmap_output_is_described_as_not_a_tensor() {
        require_runtime();
        let summary = check_model(&fixture("zipmap.onnx")).expect("zipmap.onnx loads");
        assert_eq!(summary.inputs, vec![tensor("X", "FP32", &[-1, 2])]);
        assert_eq!(summary.outputs.len(), 2);
        assert_eq!(summary.outputs[0], tensor("label", "INT64", &[-1]));
        let probabilities = &summary.outputs[1];
        assert_eq!(probabilities.name, "probabilities");
        assert_eq!(probabilities.datatype, "seq(map(int64,float))");
        assert!(probabilities.not_tensor);
        let json = serde_json::to_value(probabilities).expect("serializes");
        assert_eq!(json["not_tensor"], serde_json::json!(true));
    }

    /// Loading is not enough: the pinned runtime must also compute (tiny.onnx is Y = X * 2).
    #[test]
    fn opened_session_runs_the_tiny_model() {
        require_runtime();
        let mut session = open_session(&fixture("tiny.onnx")).expect("tiny.onnx opens");
        let x =
            ort::value::Tensor::from_array(([2usize, 3], vec![1.0f32, 2.0, 3.0, -1.0, 0.5, 0.0]))
                .expect("input tensor");
        let outputs = session.run(ort::inputs!["X" => x]).expect("inference");
        let (shape, y) = outputs["Y"]
            .try_extract_tensor::<f32>()
            .expect("float output");
        assert_eq!(shape.to_vec(), vec![2, 3]);
        assert_eq!(y, &[2.0, 4.0, 6.0, -2.0, 1.0, 0.0]);
    }

    #[test]
    fn init_is_idempotent() {
        require_runtime();
        init().expect("first init");
        init().expect("second init");
        assert!(std::ptr::eq(
            environment().expect("environment"),
            environment().expect("environment")
        ));
    }

    #[test]
    fn the_cpu_provider_is_always_listed() {
        require_runtime();
        let providers = available_providers().expect("providers");
        assert!(
            providers.iter().any(|p| p == "CPUExecutionProvider"),
            "{providers:?}"
        );
        assert!(providers.iter().all(|p| p.ends_with("ExecutionProvider")));
    }

    #[test]
    fn env_var_file_wins_and_is_not_second_guessed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let lib = dir.path().join("custom-ort.so");
        touch(&lib);
        let found = find_library(Some(lib.clone().into()), None, None).expect("found");
        assert_eq!(found, lib);

        let missing = dir.path().join("missing.so");
        let err = find_library(Some(missing.clone().into()), Some(dir.path()), None)
            .expect_err("a wrong ORT_DYLIB_PATH is an error");
        assert!(
            matches!(&err, OnnxError::RuntimeNotFound { searched } if *searched == vec![missing])
        );
    }

    #[test]
    fn env_var_directory_accepts_a_versioned_library() {
        let dir = tempfile::tempdir().expect("temp dir");
        touch(&dir.path().join("libonnxruntime.so.1.9.0"));
        touch(&dir.path().join("libonnxruntime.so.1.32.0"));
        touch(&dir.path().join("libonnxruntime_providers_shared.so"));
        let found = find_library(Some(dir.path().as_os_str().to_owned()), None, None);
        if cfg!(target_os = "linux") {
            assert_eq!(
                found.expect("found"),
                dir.path().join("libonnxruntime.so.1.32.0")
            );
        }
    }

    #[test]
    fn search_order_prefers_the_install_prefix() {
        let root = tempfile::tempdir().expect("temp dir");
        let bin = root.path().join("bin");
        let lib = root.path().join("lib").join("ferry");
        let home = root.path().join("home");
        let home_lib = home.join(".local").join("lib").join("ferry");
        for d in [&bin, &lib, &home_lib] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let name = library_name();

        touch(&home_lib.join(&name));
        let found = find_library(None, Some(&bin), Some(&home)).expect("home copy");
        assert_eq!(found, home_lib.join(&name));

        touch(&bin.join(&name));
        let found = find_library(None, Some(&bin), Some(&home)).expect("exe dir copy");
        assert_eq!(found, bin.join(&name));

        touch(&lib.join(&name));
        let found = find_library(None, Some(&bin), Some(&home)).expect("prefix copy");
        assert_eq!(found, lib.join(&name));
    }

    #[test]
    fn the_python_environment_ferry_is_installed_in_comes_first() {
        let root = tempfile::tempdir().expect("temp dir");
        let bin = root.path().join("bin");
        let lib = root.path().join("lib").join("ferry");
        let capi = |py: &str| {
            root.path()
                .join("lib")
                .join(py)
                .join("site-packages/onnxruntime/capi")
        };
        for d in [&bin, &lib, &capi("python3.9"), &capi("python3.12")] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        // An environment without onnxruntime is still named in the error.
        std::fs::create_dir_all(root.path().join("lib/python3.13/site-packages")).expect("mkdir");
        let name = library_name();
        touch(&lib.join(&name));
        // The wheel's library is versioned; the newest Python's wins over an older one's and
        // over install.sh's place.
        touch(&capi("python3.9").join(format!("{name}.1.20.0")));
        touch(&capi("python3.12").join(format!("{name}.1.23.2")));
        let found = find_library(None, Some(&bin), None).expect("found");
        assert_eq!(found, capi("python3.12").join(format!("{name}.1.23.2")));
        assert_eq!(
            python_env_dirs(root.path()),
            vec![capi("python3.13"), capi("python3.12"), capi("python3.9")]
        );
        // ORT_DYLIB_PATH still wins over everything.
        let other = root.path().join("other.so");
        touch(&other);
        let found = find_library(Some(other.clone().into()), Some(&bin), None).expect("env");
        assert_eq!(found, other);

        let empty = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(empty.path().join("lib/python3.11/site-packages")).expect("mkdir");
        let err = find_library(None, Some(&empty.path().join("bin")), None).expect_err("none");
        let text = err.to_string();
        assert!(
            text.contains("python3.11/site-packages/onnxruntime/capi")
                && text.contains("pip install onnxruntime"),
            "{text}"
        );
    }

    #[test]
    fn not_found_lists_every_place_searched_and_the_fix() {
        let root = tempfile::tempdir().expect("temp dir");
        let bin = root.path().join("bin");
        let home = root.path().join("home");
        let err = find_library(None, Some(&bin), Some(&home)).expect_err("nothing there");
        let OnnxError::RuntimeNotFound { searched } = &err else {
            panic!("unexpected error: {err}");
        };
        assert_eq!(
            searched,
            &vec![
                root.path().join("lib").join("ferry"),
                bin.clone(),
                home.join(".local").join("lib").join("ferry"),
            ]
        );
        let text = err.to_string();
        for dir in searched {
            assert!(text.contains(&dir.display().to_string()), "{text}");
        }
        assert!(text.contains("./install.sh"), "{text}");
        assert!(text.contains(DYLIB_ENV), "{text}");
    }

    #[test]
    fn versioned_names_are_recognised() {
        if cfg!(target_os = "linux") {
            assert_eq!(
                library_version("libonnxruntime.so.1.32.0"),
                Some(vec![1, 32, 0])
            );
            assert_eq!(library_version("libonnxruntime.so.1"), Some(vec![1]));
            assert_eq!(library_version("libonnxruntime.so"), None);
            assert_eq!(library_version("libonnxruntime.so.1.x"), None);
            assert_eq!(library_version("libonnxruntime_providers_shared.so"), None);
        }
    }
}
