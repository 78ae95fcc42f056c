//! NanoDet (GFL head) outputs, per level with stride s:
//! `cls_s{s}`: [n, points, classes] sigmoid class scores;
//! `reg_s{s}`: [n, points, 4 * bins] logits of the distances (left, top, right, bottom) in bins of
//! one stride. Distance = Σ softmax(logits)_k · k · s, measured from the point
//! ((x + center_offset) · s, (y + center_offset) · s), points row-major over a ⌈w/s⌉ × ⌈h/s⌉ grid.

use super::{BBox, DetectError, Detection, NamedOutput, find_output, frame_2d};

#[derive(Debug, Clone, PartialEq)]
pub struct NanoDetDecoder {
    pub strides: Vec<u32>,
    pub reg_bins: usize,
    pub center_offset: f32,
    pub num_classes: usize,
    pub input_width: u32,
    pub input_height: u32,
}

impl NanoDetDecoder {
    pub fn candidates(
        &self,
        outputs: &[NamedOutput<'_>],
        index: usize,
        score_threshold: f32,
    ) -> Result<Vec<Detection>, DetectError> {
        let mut out = Vec::new();
        let bins = self.reg_bins;
        for &stride in &self.strides {
            let grid_w = self.input_width.div_ceil(stride) as usize;
            let grid_h = self.input_height.div_ceil(stride) as usize;
            let points = grid_w * grid_h;
            let (cls_name, reg_name) = (format!("cls_s{stride}"), format!("reg_s{stride}"));
            let cls = frame_2d(
                &cls_name,
                find_output(outputs, &cls_name)?,
                index,
                (Some(points), Some(self.num_classes)),
                || format!("[n, {points}, {}]", self.num_classes),
            )?;
            let reg =
                frame_2d(&reg_name, find_output(outputs, &reg_name)?, index, (Some(points), Some(4 * bins)), || {
                    format!("[n, {points}, {}]", 4 * bins)
                })?;
            let s = stride as f32;
            // Rows are contiguous in ONNX Runtime's outputs; fall back to a copy for any other layout.
            let cls = cls.as_standard_layout();
            let reg = reg.as_standard_layout();
            let (Some(cls), Some(reg)) = (cls.as_slice(), reg.as_slice()) else {
                continue;
            };
            for (p, scores) in cls.chunks_exact(self.num_classes).enumerate() {
                // Most points score nothing: a branch-free max first, the argmax only for candidates.
                let best = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if best <= score_threshold {
                    continue;
                }
                let class_id = scores.iter().position(|&v| v == best).unwrap_or(0);
                let cx = ((p % grid_w) as f32 + self.center_offset) * s;
                let cy = ((p / grid_w) as f32 + self.center_offset) * s;
                let logits = &reg[p * 4 * bins..(p + 1) * 4 * bins];
                let mut dist = [0f32; 4];
                for (d, side) in dist.iter_mut().zip(logits.chunks_exact(bins)) {
                    let max = side.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let (mut sum, mut weighted) = (0.0, 0.0);
                    for (k, &v) in side.iter().enumerate() {
                        let e = (v - max).exp();
                        sum += e;
                        weighted += e * k as f32;
                    }
                    *d = weighted / sum * s;
                }
                out.push(Detection {
                    bbox: BBox { x1: cx - dist[0], y1: cy - dist[1], x2: cx + dist[2], y2: cy + dist[3] },
                    class_id: class_id as u32,
                    score: best,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, ArrayViewD};

    fn decoder() -> NanoDetDecoder {
        NanoDetDecoder {
            strides: vec![8],
            reg_bins: 3,
            center_offset: 0.5,
            num_classes: 2,
            input_width: 16,
            input_height: 16,
        }
    }

    #[test]
    fn one_confident_point_decodes_to_expected_box() {
        // 2x2 grid; point 3 = (x 1, y 1) → centre (12, 12).
        let mut cls = Array3::<f32>::zeros((1, 4, 2));
        cls[[0, 3, 1]] = 0.9;
        cls[[0, 0, 0]] = 0.1;
        let mut reg = Array3::<f32>::zeros((1, 4, 12));
        // left: all mass on bin 1 → 8 px; top: bin 0 → 0; right: uniform → 1 bin = 8 px; bottom: bin 2 → 16 px.
        reg[[0, 3, 1]] = 50.0;
        reg[[0, 3, 3]] = 50.0;
        reg[[0, 3, 11]] = 50.0;
        let (cls, reg) = (cls.into_dyn(), reg.into_dyn());
        let outputs: Vec<(&str, ArrayViewD<f32>)> = vec![("cls_s8", cls.view()), ("reg_s8", reg.view())];
        let found = decoder().candidates(&outputs, 0, 0.35).expect("decode");
        assert_eq!(found.len(), 1);
        let d = &found[0];
        assert_eq!((d.class_id, d.score), (1, 0.9));
        let b = d.bbox;
        for (got, want) in [(b.x1, 4.0), (b.y1, 12.0), (b.x2, 20.0), (b.y2, 28.0)] {
            assert!((got - want).abs() < 1e-3, "{b:?}");
        }
    }

    #[test]
    fn wrong_shape_is_reported_with_expectation() {
        let cls = Array3::<f32>::zeros((1, 5, 2)).into_dyn();
        let reg = Array3::<f32>::zeros((1, 4, 12)).into_dyn();
        let outputs: Vec<(&str, ArrayViewD<f32>)> = vec![("cls_s8", cls.view()), ("reg_s8", reg.view())];
        let err = decoder().candidates(&outputs, 0, 0.3).unwrap_err();
        assert_eq!(
            err,
            DetectError::BadShape { name: "cls_s8".into(), shape: vec![1, 5, 2], expected: "[n, 4, 2]".into() }
        );
    }

    #[test]
    fn missing_output_is_named() {
        let outputs: Vec<(&str, ArrayViewD<f32>)> = vec![];
        assert_eq!(decoder().candidates(&outputs, 0, 0.3).unwrap_err(), DetectError::MissingOutput("cls_s8".into()));
    }
}
