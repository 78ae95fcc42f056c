//! A manifest read from an Ultralytics ONNX export itself, so that a `best.onnx` is served as it
//! comes. Ultralytics writes its export settings into the ONNX metadata as Python literals
//! (`names` = `{0: 'bolt', 1: 'nut'}`, `imgsz` = `[320, 320]`, `end2end` = `True`, `args` =
//! `{'batch': 1, 'nms': False, …}`); together with the graph's own input and output shapes they
//! say everything the service needs: preprocessing (RGB, 0..1, letterbox padded with 114, as
//! Ultralytics' `LetterBox`), layout, classes and batch. What cannot be served is refused with
//! what was found.

use std::collections::BTreeMap;
use std::path::Path;

use crate::detect::YoloVersion;

use super::{ChannelOrder, DecoderSpec, InputSpec, ManifestError, ModelManifest, PostprocessSpec, ResizeMode, Task};

/// One tensor of the graph's signature; `-1` for an open dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSignature {
    pub name: String,
    /// `f32`, `f16`, …
    pub element: String,
    pub shape: Vec<i64>,
}

/// What an ONNX file says of itself.
#[derive(Debug, Clone, Default)]
pub struct OnnxSignature {
    pub metadata: BTreeMap<String, String>,
    pub inputs: Vec<TensorSignature>,
    pub outputs: Vec<TensorSignature>,
}

/// Ultralytics' prediction defaults (`conf`, `iou`, `max_det`), so that a served export answers
/// as `YOLO("best.onnx").predict()` does.
const ULTRALYTICS_POSTPROCESS: PostprocessSpec =
    PostprocessSpec { score_threshold: 0.25, iou_threshold: 0.7, max_detections: 300, mask_threshold: 0.5 };

impl ModelManifest {
    /// The manifest of the Ultralytics export at `onnx`, named `name`, from its signature.
    pub fn from_ultralytics(name: &str, onnx: &Path, signature: &OnnxSignature) -> Result<Self, ManifestError> {
        let invalid = |message: String| ManifestError::Export { path: onnx.to_owned(), message };
        let manifest = manifest_of(name, onnx, signature).map_err(invalid)?;
        manifest.validate().map_err(|message| ManifestError::Export { path: onnx.to_owned(), message })?;
        Ok(manifest)
    }
}

fn manifest_of(name: &str, onnx: &Path, signature: &OnnxSignature) -> Result<ModelManifest, String> {
    let meta = &signature.metadata;
    let names = meta.get("names").ok_or_else(|| {
        let keys: Vec<&str> = meta.keys().map(String::as_str).collect();
        format!(
            "no model.toml beside it and no Ultralytics metadata in it (no `names`; metadata keys found: {keys:?}); \
             write a model.toml for it (docs/operations.md#models)"
        )
    })?;
    let classes = class_names(names).map_err(|e| format!("metadata `names` ({names}): {e}"))?;
    let task = meta.get("task").map_or("detect", String::as_str);
    if task != "detect" {
        return Err(format!("an Ultralytics `{task}` export; only `detect` exports are served from their metadata"));
    }
    if let Some(channels) = meta.get("channels").filter(|c| c.trim() != "3") {
        return Err(format!("a model of {channels} input channels; only 3-channel (RGB) exports are served"));
    }
    let [input] = signature.inputs.as_slice() else {
        return Err(format!("{} inputs; an Ultralytics detector has one, `images`", signature.inputs.len()));
    };
    if !matches!(input.element.as_str(), "f32" | "f16") {
        return Err(format!("input `{}` is {}; f32 and f16 exports are served", input.name, input.element));
    }
    let (height, width) = image_size(meta.get("imgsz").map(String::as_str), &input.shape)?;
    let batch = match input.shape.first() {
        Some(&n) if n > 0 => Some(n as usize),
        _ => None,
    };
    // A dynamic export: predict letterboxes each frame to a multiple of the model's stride.
    let open_size = input.shape.len() == 4 && (input.shape[2] <= 0 || input.shape[3] <= 0);
    let stride = match meta.get("stride").map(|s| s.trim().parse::<u32>()) {
        Some(Ok(s)) if s > 0 => s,
        Some(_) => return Err(format!("metadata `stride` {:?} is not a positive whole number", meta["stride"])),
        None => 32,
    };
    let args = meta.get("args").map(|a| python_literal(a)).transpose().map_err(|e| format!("metadata `args`: {e}"))?;
    let arg = |key: &str| args.as_ref().and_then(|a| a.get(key));
    let end2end = meta.get("end2end").is_some_and(|v| v.trim() == "True") || arg("nms") == Some(&Py::Bool(true));
    let version = layout(signature, classes.len(), end2end)?;
    let max_detections = match arg("max_det") {
        Some(Py::Int(n)) if *n > 0 => *n as usize,
        _ => ULTRALYTICS_POSTPROCESS.max_detections,
    };
    let mut provenance = toml::Table::new();
    provenance.insert("read_from".into(), "the ONNX file's Ultralytics metadata".into());
    for key in ["author", "version", "date", "license", "stride", "head"] {
        if let Some(value) = meta.get(key) {
            provenance.insert(key.into(), value.clone().into());
        }
    }
    let file = onnx.file_name().map(Into::into).ok_or_else(|| "the ONNX path names no file".to_owned())?;
    Ok(ModelManifest {
        name: name.to_owned(),
        task: Task::Detect,
        file,
        description: meta.get("description").cloned().unwrap_or_default(),
        classes,
        input: InputSpec {
            name: input.name.clone(),
            width,
            height,
            channel_order: ChannelOrder::Rgb,
            mean: [0.0; 3],
            std: [255.0; 3],
            resize: ResizeMode::Letterbox,
            pad_value: 114,
            batch,
            stride: open_size.then_some(stride),
        },
        decoder: DecoderSpec::Yolo { version },
        postprocess: Some(PostprocessSpec { max_detections, ..ULTRALYTICS_POSTPROCESS }),
        cell_rule: None,
        provenance: Some(provenance),
        dir: onnx.parent().map(Path::to_path_buf).unwrap_or_default(),
    })
}

/// Which YOLO layout the single output has, checked against the class count.
fn layout(signature: &OnnxSignature, nc: usize, end2end: bool) -> Result<YoloVersion, String> {
    let [output] = signature.outputs.as_slice() else {
        let found: Vec<String> = signature.outputs.iter().map(|o| format!("`{}` {:?}", o.name, o.shape)).collect();
        return Err(format!("outputs {}; a detect export has exactly one", found.join(", ")));
    };
    let shape = &output.shape;
    Ok(if end2end {
        if shape.len() != 3 || (shape[2] > 0 && shape[2] != 6) {
            return Err(format!(
                "an end-to-end export whose output `{}` is {shape:?}; expected [n, max_det, 6]",
                output.name
            ));
        }
        YoloVersion::End2end
    } else {
        if shape.len() != 3 || (shape[1] > 0 && shape[1] as usize != 4 + nc) {
            return Err(format!(
                "output `{}` is {shape:?}; with {nc} classes an Ultralytics detect export is [n, {}, anchors] \
                 (v5u, v8, v11, v12, YOLO26 without end-to-end) or, exported end-to-end, [n, max_det, 6]",
                output.name,
                4 + nc
            ));
        }
        YoloVersion::V8
    })
}

/// `{0: 'bolt', 1: 'nut'}` → names in id order; ids must run 0..n.
fn class_names(text: &str) -> Result<Vec<String>, String> {
    let Py::Dict(entries) = python_literal(text)? else {
        return Err("not a dict".into());
    };
    let mut by_id = BTreeMap::new();
    for (key, value) in entries {
        match (key, value) {
            (Py::Int(id), Py::Str(name)) if id >= 0 => {
                by_id.insert(id as usize, name);
            }
            (key, value) => return Err(format!("entry {key:?}: {value:?} is not `id: 'name'`")),
        }
    }
    if by_id.is_empty() {
        return Err("no classes".into());
    }
    if by_id.keys().enumerate().any(|(i, &id)| i != id) {
        return Err("class ids do not run 0, 1, 2, …".into());
    }
    Ok(by_id.into_values().collect())
}

/// The input's (height, width): fixed by the graph when it is, otherwise from `imgsz`.
fn image_size(imgsz: Option<&str>, input_shape: &[i64]) -> Result<(u32, u32), String> {
    if input_shape.len() != 4 || (input_shape[1] > 0 && input_shape[1] != 3) {
        return Err(format!("input shape {input_shape:?}; expected [n, 3, height, width]"));
    }
    let from_meta = match imgsz.map(python_literal).transpose()? {
        Some(Py::List(items)) => match items.as_slice() {
            [Py::Int(h), Py::Int(w)] => Some((*h, *w)),
            _ => return Err(format!("metadata `imgsz` {items:?} is not [height, width]")),
        },
        Some(Py::Int(side)) => Some((side, side)),
        Some(other) => return Err(format!("metadata `imgsz` {other:?} is not [height, width]")),
        None => None,
    };
    let (h, w) = match (input_shape[2], input_shape[3], from_meta) {
        (h, w, _) if h > 0 && w > 0 => (h, w),
        (_, _, Some(hw)) => hw,
        _ => return Err("the input size is open in the graph and the metadata has no `imgsz`".into()),
    };
    match (u32::try_from(h), u32::try_from(w)) {
        (Ok(h), Ok(w)) if h > 0 && w > 0 => Ok((h, w)),
        _ => Err(format!("input size {h}×{w}")),
    }
}

/// A Python literal as Ultralytics' `str()` writes it: dicts, lists, tuples, strings, numbers,
/// `True`, `False`, `None`. (No crate reads Python's repr; the grammar needed is this small.)
#[derive(Debug, Clone, PartialEq)]
enum Py {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    None,
    List(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

impl Py {
    fn get(&self, key: &str) -> Option<&Py> {
        match self {
            Py::Dict(entries) => entries.iter().find(|(k, _)| matches!(k, Py::Str(s) if s == key)).map(|(_, v)| v),
            _ => None,
        }
    }
}

fn python_literal(text: &str) -> Result<Py, String> {
    let mut parser = Parser { chars: text.chars().collect(), at: 0 };
    let value = parser.value()?;
    parser.skip_space();
    if parser.at != parser.chars.len() {
        return Err(format!("unexpected text at character {}", parser.at));
    }
    Ok(value)
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn skip_space(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.chars.get(self.at).copied()
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected `{c}` at character {}", self.at))
        }
    }

    fn value(&mut self) -> Result<Py, String> {
        match self.peek() {
            Some('{') => self.sequence('{', '}', true),
            Some('[') => self.sequence('[', ']', false),
            Some('(') => self.sequence('(', ')', false),
            Some(q @ ('\'' | '"')) => self.string(q).map(Py::Str),
            Some(_) => self.word(),
            None => Err("unexpected end".into()),
        }
    }

    fn sequence(&mut self, open: char, close: char, dict: bool) -> Result<Py, String> {
        self.expect(open)?;
        let (mut items, mut entries) = (Vec::new(), Vec::new());
        loop {
            if self.peek() == Some(close) {
                self.at += 1;
                break;
            }
            let first = self.value()?;
            if dict {
                self.expect(':')?;
                entries.push((first, self.value()?));
            } else {
                items.push(first);
            }
            match self.peek() {
                Some(',') => self.at += 1,
                Some(c) if c == close => {}
                _ => return Err(format!("expected `,` or `{close}` at character {}", self.at)),
            }
        }
        Ok(if dict { Py::Dict(entries) } else { Py::List(items) })
    }

    fn string(&mut self, quote: char) -> Result<String, String> {
        self.at += 1;
        let mut out = String::new();
        while let Some(&c) = self.chars.get(self.at) {
            self.at += 1;
            match c {
                '\\' => {
                    let escaped = self.chars.get(self.at).copied().ok_or("unterminated string")?;
                    self.at += 1;
                    out.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    });
                }
                c if c == quote => return Ok(out),
                c => out.push(c),
            }
        }
        Err("unterminated string".into())
    }

    fn word(&mut self) -> Result<Py, String> {
        let start = self.at;
        while self.chars.get(self.at).is_some_and(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '+' | '_')) {
            self.at += 1;
        }
        let word: String = self.chars[start..self.at].iter().collect();
        Ok(match word.as_str() {
            "True" => Py::Bool(true),
            "False" => Py::Bool(false),
            "None" => Py::None,
            _ => match word.parse::<i64>() {
                Ok(n) => Py::Int(n),
                Err(_) => Py::Float(word.parse::<f64>().map_err(|_| format!("cannot read `{word}`"))?),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(end2end: bool, output: Vec<i64>) -> OnnxSignature {
        let mut metadata = BTreeMap::new();
        for (k, v) in [
            ("names", "{0: 'bolt', 1: \"it's\", 2: 'washer'}"),
            ("imgsz", "[320, 416]"),
            ("task", "detect"),
            ("stride", "32"),
            ("end2end", if end2end { "True" } else { "False" }),
            ("args", "{'batch': 1, 'half': False, 'dynamic': True, 'nms': False, 'max_det': 50, 'conf': None}"),
        ] {
            metadata.insert(k.to_owned(), v.to_owned());
        }
        OnnxSignature {
            metadata,
            inputs: vec![TensorSignature { name: "images".into(), element: "f32".into(), shape: vec![-1, 3, -1, -1] }],
            outputs: vec![TensorSignature { name: "output0".into(), element: "f32".into(), shape: output }],
        }
    }

    #[test]
    fn an_ultralytics_export_describes_itself() {
        let m =
            ModelManifest::from_ultralytics("parts", Path::new("/m/parts/best.onnx"), &export(false, vec![-1, 7, -1]))
                .expect("manifest");
        assert_eq!(m.classes, ["bolt", "it's", "washer"]);
        assert_eq!((m.input.height, m.input.width, m.input.batch), (320, 416, None));
        assert_eq!((m.input.mean, m.input.std, m.input.pad_value), ([0.0; 3], [255.0; 3], 114));
        assert_eq!(m.input.channel_order, ChannelOrder::Rgb);
        assert!(matches!(m.decoder, DecoderSpec::Yolo { version: YoloVersion::V8 }));
        let post = m.postprocess.expect("postprocess");
        assert_eq!((post.score_threshold, post.iou_threshold, post.max_detections), (0.25, 0.7, 50));
        assert_eq!(m.onnx_path(), Path::new("/m/parts/best.onnx"));
    }

    #[test]
    fn end_to_end_and_fixed_batch_exports_are_recognised() {
        let mut e2e = export(true, vec![2, 300, 6]);
        e2e.inputs[0].shape = vec![2, 3, 320, 320];
        let m = ModelManifest::from_ultralytics("p", Path::new("best.onnx"), &e2e).expect("manifest");
        assert!(matches!(m.decoder, DecoderSpec::Yolo { version: YoloVersion::End2end }));
        assert_eq!((m.input.batch, m.input.width), (Some(2), 320));
    }

    #[test]
    fn what_cannot_be_served_is_refused_with_what_was_found() {
        let refusal = |s: &OnnxSignature| {
            ModelManifest::from_ultralytics("p", Path::new("best.onnx"), s).unwrap_err().to_string()
        };
        let err = refusal(&export(false, vec![1, 84, 2100]));
        assert!(err.contains("[1, 84, 2100]") && err.contains("[n, 7, anchors]"), "{err}");
        let err = refusal(&export(true, vec![1, 7, 2100]));
        assert!(err.contains("end-to-end") && err.contains("[n, max_det, 6]"), "{err}");
        let mut seg = export(false, vec![1, 7, 2100]);
        seg.metadata.insert("task".into(), "segment".into());
        assert!(refusal(&seg).contains("`segment` export"), "{}", refusal(&seg));
        let mut bare = export(false, vec![1, 7, 2100]);
        bare.metadata.clear();
        assert!(refusal(&bare).contains("no Ultralytics metadata"), "{}", refusal(&bare));
        let mut int8 = export(false, vec![1, 7, 2100]);
        int8.inputs[0].element = "u8".into();
        assert!(refusal(&int8).contains("is u8"), "{}", refusal(&int8));
    }

    #[test]
    fn python_literals_as_ultralytics_writes_them() {
        assert_eq!(python_literal("[640, 480]"), Ok(Py::List(vec![Py::Int(640), Py::Int(480)])));
        let args = python_literal("{'a': True, 'b': None, 'c': 0.5, 'd': 'x\\'y', 'e': (1, 2)}").expect("dict");
        assert_eq!(args.get("a"), Some(&Py::Bool(true)));
        assert_eq!(args.get("b"), Some(&Py::None));
        assert_eq!(args.get("c"), Some(&Py::Float(0.5)));
        assert_eq!(args.get("d"), Some(&Py::Str("x'y".into())));
        assert!(python_literal("{0: 'a'").is_err());
        assert_eq!(class_names("{1: 'a'}"), Err("class ids do not run 0, 1, 2, …".into()));
    }
}
