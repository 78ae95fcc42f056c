//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`).
//!
//! Search order: the path given in config, then `ORT_DYLIB_PATH`, then the default location
//! `$LINESIGHT_HOME/onnxruntime/` (default `~/.local/share/linesight/onnxruntime/`, where
//! `scripts/setup` copies the library from the pinned PyPI `onnxruntime` wheel), then the folder of
//! the running executable. The wheel ships only versioned file names (`libonnxruntime.so.1.32.0`),
//! so a directory is searched for `libonnxruntime.so*` / `onnxruntime.dll` / `libonnxruntime*.dylib`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::logging::LogLevel;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime shared library not found; looked in: {}. Run `scripts/setup`, or set ORT_DYLIB_PATH \
         (or engine.ort_dylib_path) to the full path of libonnxruntime.so.<version>",
        .looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { looked: Vec<PathBuf> },
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("ONNX Runtime environment: {0}")]
    Environment(String),
    /// An earlier attempt in this process failed; loading is not retried.
    #[error("{0}")]
    Failed(String),
}

/// The loaded runtime. One per process; sessions are created after it.
pub struct OrtRuntime {
    pub library: PathBuf,
    pub version: String,
    environment: Environment,
}

static RUNTIME: OnceLock<Result<OrtRuntime, String>> = OnceLock::new();

impl OrtRuntime {
    /// Loads ONNX Runtime once per process; later calls return the same runtime (or the same error).
    pub fn init(explicit: Option<&Path>) -> Result<&'static OrtRuntime, RuntimeError> {
        let loaded = RUNTIME.get_or_init(|| Self::load(explicit).map_err(|e| e.to_string()));
        loaded.as_ref().map_err(|message| RuntimeError::Failed(message.clone()))
    }

    pub fn environment(&self) -> &Environment {
        &self.environment
    }

    fn load(explicit: Option<&Path>) -> Result<OrtRuntime, RuntimeError> {
        let candidates = library_candidates(explicit);
        let library = candidates
            .iter()
            .find_map(|c| resolve_library(c))
            .ok_or_else(|| RuntimeError::NotFound { looked: candidates.clone() })?;
        let environment = ort::init_from(&library)
            .map_err(|e| RuntimeError::Load { path: library.clone(), message: e.to_string() })?
            .with_name("linesight")
            .with_telemetry(false)
            .with_logger(std::sync::Arc::new(|level, category, _id, location, message| {
                if matches!(level, LogLevel::Error | LogLevel::Fatal) {
                    tracing::error!(message = "ONNX Runtime error.", category, location, text = message);
                }
            }))
            .build()
            .map_err(|e| RuntimeError::Environment(e.to_string()))?;
        let version = library_version(&library).unwrap_or_else(|| "unknown".to_owned());
        tracing::info!(message = "ONNX Runtime loaded.", library = %library.display(), version);
        Ok(OrtRuntime { library, version, environment })
    }
}

/// `$LINESIGHT_HOME/onnxruntime`, default `~/.local/share/linesight/onnxruntime`.
pub fn default_library_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("LINESIGHT_HOME") {
        return Some(PathBuf::from(home).join("onnxruntime"));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(data.join("linesight").join("onnxruntime"))
}

/// Where the library is looked for, in order.
pub fn library_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_owned());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = default_library_dir() {
        out.push(dir);
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_owned)) {
        out.push(dir);
    }
    out
}

/// A file is taken as given; a directory is searched for the platform's library name.
fn resolve_library(candidate: &Path) -> Option<PathBuf> {
    if candidate.is_file() {
        return Some(candidate.to_owned());
    }
    if !candidate.is_dir() {
        return None;
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(candidate)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_library_name))
        .collect();
    // Prefer the longest (most specific, versioned) name: libonnxruntime.so.1.32.0 over libonnxruntime.so.
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

fn is_library_name(name: &str) -> bool {
    if cfg!(target_os = "windows") {
        name.eq_ignore_ascii_case("onnxruntime.dll")
    } else if cfg!(target_os = "macos") {
        name.starts_with("libonnxruntime") && name.ends_with(".dylib") && !name.contains("providers")
    } else {
        name.starts_with("libonnxruntime.so")
    }
}

fn library_version(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let version = name.strip_prefix("libonnxruntime.so.")?;
    Some(version.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_search_prefers_the_versioned_library() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["libonnxruntime.so", "libonnxruntime.so.1.32.0", "libonnxruntime_providers_shared.so"] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        let found = resolve_library(dir.path()).expect("found");
        if cfg!(target_os = "linux") {
            assert_eq!(found.file_name().and_then(|n| n.to_str()), Some("libonnxruntime.so.1.32.0"));
        }
    }

    #[test]
    fn missing_library_error_names_every_place_looked() {
        let missing = Path::new("/nonexistent/linesight/libonnxruntime.so.1.0.0");
        let candidates = library_candidates(Some(missing));
        assert_eq!(candidates[0], missing);
        let err = RuntimeError::NotFound { looked: candidates };
        let text = err.to_string();
        assert!(text.contains("/nonexistent/linesight/libonnxruntime.so.1.0.0"), "{text}");
        assert!(text.contains("ORT_DYLIB_PATH"), "{text}");
    }
}
