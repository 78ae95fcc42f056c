//! Which manifest a configured model has: its folder's `model.toml`, or, with none, what its
//! ONNX file says of itself (an Ultralytics export served as it comes).

use std::path::{Path, PathBuf};

use crate::engine::{OrtRuntime, TensorFacts, inspect};
use crate::model::{ManifestError, ModelManifest, OnnxSignature, TensorSignature};

/// The manifest of `model`, a folder under `model_dir` (with a `model.toml`, or with one `.onnx`
/// file) or an `.onnx` file there. A `model.toml` wins over the file's own metadata.
pub fn resolve_manifest(runtime: &OrtRuntime, model_dir: &Path, model: &str) -> Result<ModelManifest, ManifestError> {
    let path = model_dir.join(model);
    if path.join("model.toml").is_file() || !(path.is_file() || path.is_dir()) {
        return ModelManifest::load(&path);
    }
    let onnx = if path.is_file() { path } else { single_onnx(&path)? };
    let export_err = |message: String| ManifestError::Export { path: onnx.clone(), message };
    let facts = inspect(runtime, &onnx).map_err(|e| export_err(e.to_string()))?;
    let signature = OnnxSignature {
        metadata: facts.metadata,
        inputs: facts.inputs.into_iter().map(signature_of).collect(),
        outputs: facts.outputs.into_iter().map(signature_of).collect(),
    };
    let manifest = ModelManifest::from_ultralytics(model, &onnx, &signature)?;
    tracing::info!(
        message = "Model described by its own ONNX metadata.",
        model,
        file = %onnx.display(),
        classes = manifest.classes.len(),
        width = manifest.input.width,
        height = manifest.input.height,
        batch = ?manifest.input.batch,
        decoder = ?manifest.decoder,
    );
    Ok(manifest)
}

fn signature_of(t: TensorFacts) -> TensorSignature {
    TensorSignature { name: t.name, element: t.element, shape: t.shape }
}

/// The one `.onnx` file of a folder that has no `model.toml`.
fn single_onnx(dir: &Path) -> Result<PathBuf, ManifestError> {
    let read = std::fs::read_dir(dir).map_err(|source| ManifestError::Read { path: dir.to_owned(), source })?;
    let mut found: Vec<PathBuf> =
        read.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "onnx")).collect();
    found.sort();
    match found.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(ManifestError::Export {
            path: dir.to_owned(),
            message: "the folder has neither a model.toml nor an .onnx file".into(),
        }),
        many => Err(ManifestError::Export {
            path: dir.to_owned(),
            message: format!(
                "no model.toml and {} .onnx files ({}); name one as the pipeline's model, e.g. `{}/{}`",
                many.len(),
                many.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy()).collect::<Vec<_>>().join(", "),
                dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                many[0].file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
            ),
        }),
    }
}
