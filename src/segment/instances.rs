//! Decoding a Mask R-CNN's outputs for one image into instances: class, score and box mapped back to
//! the original image through the frame's letterbox, the mask pasted there, and its outline.
//!
//! The model (one image per run) gives `boxes` [n, 4] (x1, y1, x2, y2 in model-input pixels),
//! `labels` [n] (1-based classes, 0 being the background; as f32), `scores` [n] and `masks`
//! [n, 1, m, m] probabilities over each box.

use ndarray::Ix2;

use super::{PastedMask, Polygon, outline_polygons, paste_mask};
use crate::detect::{BBox, DetectError, Detection, NamedOutput, find_output, iou};
use crate::imaging::Letterbox;

/// How a segmentation model's outputs are named, and its class count (without the background).
#[derive(Debug, Clone)]
pub struct SegmentDecoder {
    pub boxes: String,
    pub labels: String,
    pub scores: String,
    pub masks: String,
    /// The cell head's output, when the model has one.
    pub defect_probability: Option<String>,
    pub num_classes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentThresholds {
    /// An instance needs a score at least this.
    pub score: f32,
    /// A box overlapping a better box of its class by more than this IoU is dropped.
    pub iou: f32,
    /// A pixel belongs to the instance when the mask's probability there is at least this.
    pub mask: f32,
    pub max_instances: usize,
    /// Douglas–Peucker tolerance of the outline polygons, in pixels (0 = every border pixel).
    pub polygon_epsilon: f64,
}

/// An instance's shape in the original image.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceShape {
    pub mask: PastedMask,
    pub polygons: Vec<Polygon>,
    /// Object pixels in `mask`.
    pub area: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// `class_id` is 0-based (the model's label − 1).
    pub detection: Detection,
    pub shape: InstanceShape,
}

impl SegmentDecoder {
    /// The cell head's probability that the image is defective; `None` for a model without one.
    pub fn defect_probability(&self, outputs: &[NamedOutput<'_>]) -> Result<Option<f32>, DetectError> {
        let Some(name) = &self.defect_probability else {
            return Ok(None);
        };
        let output = find_output(outputs, name)?;
        match (output.len(), output.iter().next()) {
            (1, Some(&p)) if p.is_finite() => Ok(Some(p.clamp(0.0, 1.0))),
            _ => Err(DetectError::BadShape {
                name: name.clone(),
                shape: output.shape().to_vec(),
                expected: "one finite value, [1] or [1, 1]".into(),
            }),
        }
    }

    /// The instances of one image, best first, in original-image pixels.
    pub fn decode(
        &self,
        outputs: &[NamedOutput<'_>],
        thresholds: &SegmentThresholds,
        letterbox: &Letterbox,
    ) -> Result<Vec<Instance>, DetectError> {
        let find = |name: &str| find_output(outputs, name);
        let bad = |name: &str, shape: &[usize], expected: &str| DetectError::BadShape {
            name: name.to_owned(),
            shape: shape.to_vec(),
            expected: expected.to_owned(),
        };
        let boxes = find(&self.boxes)?;
        let n = boxes.shape().first().copied().unwrap_or(0);
        let boxes = boxes
            .view()
            .into_dimensionality::<Ix2>()
            .ok()
            .filter(|b| b.ncols() == 4)
            .ok_or_else(|| bad(&self.boxes, boxes.shape(), "[n, 4]"))?;
        let labels = find(&self.labels)?;
        let scores = find(&self.scores)?;
        for (name, array) in [(&self.labels, labels), (&self.scores, scores)] {
            if array.shape() != [n] {
                return Err(bad(name, array.shape(), &format!("[{n}]")));
            }
        }
        let masks = find(&self.masks)?;
        let side = match masks.shape() {
            [rows, 1, h, w] if *rows == n && h == w && *h > 0 => *h,
            shape => return Err(bad(&self.masks, shape, &format!("[{n}, 1, m, m]"))),
        };
        // Read in place; copied only when the output is not contiguous.
        let masks: std::borrow::Cow<'_, [f32]> = match masks.as_slice() {
            Some(slice) => slice.into(),
            None => masks.iter().copied().collect::<Vec<_>>().into(),
        };
        let (width, height) = (letterbox.src_width, letterbox.src_height);

        let mut order: Vec<usize> = (0..n).filter(|&i| scores[i] >= thresholds.score).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let mut instances: Vec<Instance> = Vec::new();
        for i in order {
            if instances.len() >= thresholds.max_instances {
                break;
            }
            let label = labels[i].round();
            if !(1.0..=self.num_classes as f32).contains(&label) {
                continue;
            }
            let class_id = label as u32 - 1;
            let (x1, y1) = letterbox.to_source(boxes[[i, 0]], boxes[[i, 1]]);
            let (x2, y2) = letterbox.to_source(boxes[[i, 2]], boxes[[i, 3]]);
            let bbox = BBox { x1, y1, x2, y2 };
            let overlapped = instances
                .iter()
                .any(|kept| kept.detection.class_id == class_id && iou(&kept.detection.bbox, &bbox) > thresholds.iou);
            if overlapped {
                continue;
            }
            let mask = &masks[i * side * side..(i + 1) * side * side];
            let pasted = paste_mask(mask, side, [x1, y1, x2, y2], width, height, thresholds.mask);
            let area = pasted.pixels.iter().map(|&p| u32::from(p)).sum();
            if area == 0 {
                continue;
            }
            let polygons = outline_polygons(&pasted, thresholds.polygon_epsilon);
            instances.push(Instance {
                detection: Detection { bbox, class_id, score: scores[i] },
                shape: InstanceShape { mask: pasted, polygons, area },
            });
        }
        Ok(instances)
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::*;

    fn decoder() -> SegmentDecoder {
        SegmentDecoder {
            boxes: "boxes".into(),
            labels: "labels".into(),
            scores: "scores".into(),
            masks: "masks".into(),
            defect_probability: None,
            num_classes: 3,
        }
    }

    const THRESHOLDS: SegmentThresholds =
        SegmentThresholds { score: 0.5, iou: 0.5, mask: 0.5, max_instances: 10, polygon_epsilon: 0.0 };

    #[test]
    fn instances_come_back_in_source_pixels_best_first_with_pasted_masks() {
        // Model input 300x300; the source is 600x600 (scale 0.5, no padding).
        let letterbox = Letterbox::new(600, 600, 300, 300);
        let boxes =
            ArrayD::from_shape_vec(IxDyn(&[3, 4]), vec![10., 10., 20., 30., 0., 0., 5., 5., 100., 100., 150., 120.])
                .unwrap();
        let labels = ArrayD::from_shape_vec(IxDyn(&[3]), vec![1., 2., 3.]).unwrap();
        let scores = ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.7, 0.3, 0.9]).unwrap();
        let masks = ArrayD::from_elem(IxDyn(&[3, 1, 4, 4]), 0.8f32);
        let outputs =
            [("boxes", boxes.view()), ("labels", labels.view()), ("scores", scores.view()), ("masks", masks.view())];
        let found = decoder().decode(&outputs, &THRESHOLDS, &letterbox).unwrap();
        assert_eq!(found.len(), 2, "the 0.3 instance is under the threshold");
        assert_eq!(found[0].detection.class_id, 2);
        assert_eq!(found[0].detection.bbox, BBox { x1: 200., y1: 200., x2: 300., y2: 240. });
        assert_eq!(found[0].shape.area, 100 * 40);
        assert_eq!(found[1].detection.class_id, 0);
        assert_eq!((found[1].shape.mask.width, found[1].shape.mask.height), (20, 40));
        assert_eq!(found[1].shape.polygons.len(), 1);
    }

    #[test]
    fn the_defect_probability_is_read_when_the_model_has_a_cell_head() {
        let head = SegmentDecoder { defect_probability: Some("cell_defect".into()), ..decoder() };
        let one = ArrayD::from_shape_vec(IxDyn(&[1, 1]), vec![0.75f32]).unwrap();
        assert_eq!(head.defect_probability(&[("cell_defect", one.view())]).unwrap(), Some(0.75));
        assert_eq!(decoder().defect_probability(&[("cell_defect", one.view())]).unwrap(), None);
        let err = head.defect_probability(&[]).unwrap_err();
        assert_eq!(err, DetectError::MissingOutput("cell_defect".into()));
        let two = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.1f32, 0.2]).unwrap();
        let err = head.defect_probability(&[("cell_defect", two.view())]).unwrap_err();
        assert!(matches!(err, DetectError::BadShape { ref name, .. } if name == "cell_defect"), "{err}");
        let nan = ArrayD::from_shape_vec(IxDyn(&[1]), vec![f32::NAN]).unwrap();
        assert!(head.defect_probability(&[("cell_defect", nan.view())]).is_err(), "NaN is an error, not a verdict");
    }

    #[test]
    fn mismatched_output_shapes_are_errors_not_panics() {
        let letterbox = Letterbox::new(300, 300, 300, 300);
        let boxes = ArrayD::from_shape_vec(IxDyn(&[1, 4]), vec![0., 0., 5., 5.]).unwrap();
        let one = ArrayD::from_shape_vec(IxDyn(&[1]), vec![1.]).unwrap();
        let two = ArrayD::from_shape_vec(IxDyn(&[2]), vec![1., 1.]).unwrap();
        let masks = ArrayD::from_elem(IxDyn(&[1, 1, 4, 4]), 0.8f32);
        let outputs =
            [("boxes", boxes.view()), ("labels", two.view()), ("scores", one.view()), ("masks", masks.view())];
        let err = decoder().decode(&outputs, &THRESHOLDS, &letterbox).unwrap_err();
        assert!(matches!(err, DetectError::BadShape { ref name, .. } if name == "labels"), "{err}");
        let err = decoder().decode(&outputs[..2], &THRESHOLDS, &letterbox).unwrap_err();
        assert_eq!(err, DetectError::MissingOutput("scores".into()));
    }
}
