//! What a model is: its `models/<name>/model.toml` manifest — the task it serves, the input it
//! expects, how its outputs decode, its classes and where it came from. Built on the decoder types
//! that `detect` and `segment` own; knows nothing of sessions or service configuration.

mod ultralytics;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use ultralytics::{OnnxSignature, TensorSignature};

use crate::detect::{Decoder, Layout, NanoDetDecoder, YoloVersion};

/// What a model's outputs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Boxes and classes.
    Detect,
    /// Boxes, classes and masks.
    Segment,
    /// One appearance vector per crop.
    Embed,
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::Detect => "detect",
            Task::Segment => "segment",
            Task::Embed => "embed",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    pub name: String,
    pub task: Task,
    /// ONNX file, relative to the manifest's folder.
    pub file: PathBuf,
    #[serde(default)]
    pub description: String,
    /// Class names in the model's output order (detectors).
    #[serde(default)]
    pub classes: Vec<String>,
    pub input: InputSpec,
    pub decoder: DecoderSpec,
    /// Default thresholds (detectors).
    #[serde(default)]
    pub postprocess: Option<PostprocessSpec>,
    /// Segmentation models: the cell rule this model was calibrated with; a pipeline's
    /// `cell_rule` overrides it key by key.
    #[serde(default)]
    pub cell_rule: Option<CellRuleSpec>,
    /// Free-form: source, conversion script, upstream, licence, checksums.
    #[serde(default)]
    pub provenance: Option<toml::Table>,
    /// The folder the manifest was read from (not part of the file).
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The ONNX input name.
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub channel_order: ChannelOrder,
    /// Per channel, in `channel_order`, in 0..255 pixel units.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize: ResizeMode,
    /// Fill of letterbox borders, in 0..255 pixel units before normalisation.
    #[serde(default)]
    pub pad_value: u8,
    /// The model's fixed batch size, when its graph takes only that many images per run (1 for
    /// torchvision's detection models, whose heads loop over images; n for an export with a fixed
    /// batch, whose runs are padded up to n); absent = any batch.
    #[serde(default)]
    pub batch: Option<usize>,
    /// The graph's height and width are open: each frame is letterboxed only up to a multiple of
    /// this stride within `width` × `height` (Ultralytics' `LetterBox(auto=True)`, as predict runs
    /// a dynamic export), and frames of one shape batch together. Absent: every frame fills
    /// `width` × `height`.
    #[serde(default)]
    pub stride: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Aspect kept, image centred, borders padded (Ultralytics `LetterBox`).
    Letterbox,
    /// Stretched to the input size (embedders, on object crops).
    Stretch,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DecoderSpec {
    /// NanoDet GFL head: per level `cls_s{stride}` [n, points, classes] sigmoid scores and
    /// `reg_s{stride}` [n, points, 4 * reg_bins] distance-bin logits.
    Nanodet { strides: Vec<u32>, reg_bins: usize, center_offset: f32 },
    /// Ultralytics YOLO export, one output.
    Yolo { version: YoloVersion },
    /// Appearance embedder: `output` is [n, dim], one vector per input crop.
    Embedding { output: String, dim: usize },
    /// torchvision Mask R-CNN without its in-graph mask paste, one image per run: `boxes` [n, 4]
    /// in model-input pixels, `labels` [n] 1-based classes as f32, `scores` [n], `masks`
    /// [n, 1, m, m] probabilities over each box; optionally `defect_probability`, the output of a
    /// cell head: [1] (or [1, 1]), the probability that the whole image is defective.
    Maskrcnn {
        boxes: String,
        labels: String,
        scores: String,
        masks: String,
        #[serde(default)]
        defect_probability: Option<String>,
    },
}

impl DecoderSpec {
    /// The detector decoder of this spec; `None` for a spec that is not a detector's.
    pub fn detector(&self, num_classes: usize, input_width: u32, input_height: u32) -> Option<Decoder> {
        Some(match self {
            DecoderSpec::Nanodet { strides, reg_bins, center_offset } => Decoder::NanoDet(NanoDetDecoder {
                strides: strides.clone(),
                reg_bins: *reg_bins,
                center_offset: *center_offset,
                num_classes,
                input_width,
                input_height,
            }),
            DecoderSpec::Yolo { version } => Decoder::Yolo(Layout::for_version(*version, num_classes)),
            DecoderSpec::Embedding { .. } | DecoderSpec::Maskrcnn { .. } => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostprocessSpec {
    pub score_threshold: f32,
    pub iou_threshold: f32,
    pub max_detections: usize,
    /// Segmentation: a pixel is the instance's where its mask probability is at least this.
    #[serde(default = "default_mask_threshold")]
    pub mask_threshold: f32,
}

/// A cell rule, every key optional: a segmentation model's own (`[cell_rule]` in `model.toml`) or a
/// pipeline's (`cell_rule`), which overrides the model's key by key. A cell is defective when at
/// least one instance of a counted class scores at least `min_score` and the counted instances
/// cover at least `min_area_fraction` of the image, or when the model's defect probability (its
/// cell head) is at least `min_defect_probability`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CellRuleSpec {
    pub min_score: Option<f32>,
    pub min_area_fraction: Option<f32>,
    /// Class names counted; empty = every class.
    pub classes: Option<Vec<String>>,
    /// `false`: instances are returned but only the defect probability decides.
    pub count_instances: Option<bool>,
    /// Needs the decoder's `defect_probability` output.
    pub min_defect_probability: Option<f32>,
}

fn default_mask_threshold() -> f32 {
    0.5
}

impl Default for PostprocessSpec {
    fn default() -> Self {
        Self { score_threshold: 0.25, iou_threshold: 0.45, max_detections: 100, mask_threshold: 0.5 }
    }
}

impl CellRuleSpec {
    fn check(&self, has_defect_probability: bool) -> Result<(), String> {
        let fractions = [
            ("min_score", self.min_score),
            ("min_area_fraction", self.min_area_fraction),
            ("min_defect_probability", self.min_defect_probability),
        ];
        for (key, value) in fractions {
            if value.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                return Err(format!("cell_rule.{key}: must be within 0..=1"));
            }
        }
        if self.min_defect_probability.is_some() && !has_defect_probability {
            return Err("cell_rule.min_defect_probability: the decoder names no `defect_probability` output".into());
        }
        if self.count_instances == Some(false) && self.min_defect_probability.is_none() {
            return Err("cell_rule: with count_instances = false, min_defect_probability must be set".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read model manifest {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("model manifest {path} is not valid: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("model manifest {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("model {path} cannot be served: {message}")]
    Export { path: PathBuf, message: String },
}

impl ModelManifest {
    /// Reads `<dir>/model.toml`.
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join("model.toml");
        let text =
            std::fs::read_to_string(&path).map_err(|source| ManifestError::Read { path: path.clone(), source })?;
        let mut manifest: ModelManifest =
            toml::from_str(&text).map_err(|source| ManifestError::Parse { path: path.clone(), source })?;
        manifest.dir = dir.to_owned();
        manifest.validate().map_err(|message| ManifestError::Invalid { path, message })?;
        Ok(manifest)
    }

    pub fn onnx_path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    /// The class names in output order; id → name.
    pub fn class_name(&self, id: u32) -> Option<&str> {
        self.classes.get(id as usize).map(String::as_str)
    }

    fn validate(&self) -> Result<(), String> {
        match (self.task, &self.decoder) {
            (Task::Detect, DecoderSpec::Nanodet { .. } | DecoderSpec::Yolo { .. }) => {
                if self.classes.is_empty() {
                    return Err("classes: a detector needs at least one class".into());
                }
                if self.input.resize != ResizeMode::Letterbox {
                    return Err("input.resize: detectors take `letterbox`".into());
                }
            }
            (Task::Segment, DecoderSpec::Maskrcnn { defect_probability, .. }) => {
                if self.classes.is_empty() {
                    return Err("classes: a segmentation model needs at least one class".into());
                }
                if self.input.resize != ResizeMode::Letterbox {
                    return Err("input.resize: segmentation models take `letterbox`".into());
                }
                if let Some(rule) = &self.cell_rule {
                    rule.check(defect_probability.is_some())?;
                }
            }
            (Task::Embed, DecoderSpec::Embedding { dim, .. }) => {
                if *dim == 0 {
                    return Err("decoder.dim: must be positive".into());
                }
            }
            (task, _) => return Err(format!("decoder: this kind cannot serve a `{task}` model")),
        }
        if self.cell_rule.is_some() && self.task != Task::Segment {
            return Err("cell_rule: only segmentation models judge cells".into());
        }
        if self.input.width == 0 || self.input.height == 0 {
            return Err("input: width and height must be positive".into());
        }
        if self.input.batch == Some(0) {
            return Err("input.batch: must be positive".into());
        }
        if self.input.std.iter().any(|s| *s <= 0.0) {
            return Err("input.std: every value must be positive".into());
        }
        if let DecoderSpec::Nanodet { strides, reg_bins, .. } = &self.decoder {
            if strides.is_empty() || strides.contains(&0) {
                return Err("decoder.strides: must be non-empty and positive".into());
            }
            if *reg_bins < 2 {
                return Err("decoder.reg_bins: must be at least 2".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bundled_model_manifest_parses() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let mut seen = 0;
        for entry in std::fs::read_dir(&models).expect("models/") {
            let dir = entry.expect("entry").path();
            if dir.join("model.toml").is_file() {
                let manifest = ModelManifest::load(&dir).expect("manifest parses");
                assert!(manifest.onnx_path().is_file(), "{} has no ONNX file", dir.display());
                seen += 1;
            }
        }
        assert!(seen >= 1, "no model manifests found under {}", models.display());
    }

    fn segmenter(decoder_extra: &str, cell_rule: &str) -> Result<ModelManifest, String> {
        let text = format!(
            r#"
name = "s"
task = "segment"
file = "model.onnx"
classes = ["crack"]
[input]
name = "images"
width = 300
height = 300
channel_order = "rgb"
mean = [128.0, 128.0, 128.0]
std = [64.0, 64.0, 64.0]
resize = "letterbox"
[decoder]
kind = "maskrcnn"
boxes = "boxes"
labels = "labels"
scores = "scores"
masks = "masks"
{decoder_extra}
{cell_rule}
"#
        );
        let manifest: ModelManifest = toml::from_str(&text).map_err(|e| e.to_string())?;
        manifest.validate()?;
        Ok(manifest)
    }

    #[test]
    fn a_segmenter_cell_rule_needs_what_it_names() {
        let with_head = r#"defect_probability = "cell_defect""#;
        let by_probability = "[cell_rule]\nmin_defect_probability = 0.4\ncount_instances = false";
        let manifest = segmenter(with_head, by_probability).expect("valid");
        assert_eq!(manifest.cell_rule.and_then(|v| v.min_defect_probability), Some(0.4));
        let err = segmenter("", by_probability).unwrap_err();
        assert!(err.contains("names no `defect_probability` output"), "{err}");
        let err = segmenter(with_head, "[cell_rule]\ncount_instances = false").unwrap_err();
        assert!(err.contains("min_defect_probability must be set"), "{err}");
        let err = segmenter(with_head, "[cell_rule]\nmin_score = 1.5").unwrap_err();
        assert!(err.contains("cell_rule.min_score"), "{err}");
        assert!(segmenter("", "").is_ok(), "both sections are optional");
    }
}
