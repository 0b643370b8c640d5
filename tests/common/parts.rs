//! The serving image's parts of a platform for tests: Debian unpacked by debootstrap's first
//! stage (the C library and loader) and ONNX Runtime from the platform's `onnxruntime` wheel,
//! fetched through the configured indexes the first time and cached. A test that needs them
//! is skipped, saying why, only when root and debootstrap are missing or the indexes cannot be
//! reached.

use std::path::PathBuf;

use ferry::images::runtime_parts::{self, OrtLibrary, PartsError};
use ferry::platform::Platform;
use ferry::ui::Ui;

/// Whether `e` says an index could not be reached (rather than that something is missing).
pub fn unreachable_index(e: &PartsError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    matches!(
        e,
        PartsError::Pip {
            unreachable: true,
            ..
        }
    ) || (matches!(e, PartsError::Bootstrap(_))
        && [
            "connection",
            "network is unreachable",
            "temporary failure in name resolution",
            "failed to fetch",
            "couldn't download",
            "max retries",
        ]
        .iter()
        .any(|w| text.contains(w)))
}

/// The sysroot and ONNX Runtime of `platform`, or None after saying why.
pub async fn platform_parts(platform: Platform) -> Option<(PathBuf, OrtLibrary)> {
    if ferry::images::bootstrap::foreign_requirements_met().is_err() {
        eprintln!("skipped: unpacking Debian {platform} needs root and debootstrap");
        return None;
    }
    let sysroot =
        match runtime_parts::debian_sysroot(runtime_parts::DEFAULT_SUITE, platform, &Ui::silent())
            .await
        {
            Ok(s) => s,
            Err(e) if unreachable_index(&e) => {
                eprintln!("skipped: the Debian package index cannot be reached: {e}");
                return None;
            }
            Err(e) => panic!("{e}"),
        };
    let version = runtime_parts::ort_version().unwrap();
    let ort = tokio::task::spawn_blocking(move || runtime_parts::onnxruntime(platform, &version))
        .await
        .unwrap();
    match ort {
        Ok(o) => Some((sysroot, o)),
        Err(e) if unreachable_index(&e) => {
            eprintln!("skipped: the Python package index cannot be reached: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// [`platform_parts`] for a test without a runtime of its own.
pub fn platform_parts_blocking(platform: Platform) -> Option<(PathBuf, OrtLibrary)> {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(platform_parts(platform))
}
