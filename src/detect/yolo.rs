//! Ultralytics YOLO export layouts: one output tensor in model-input pixels, either every anchor's
//! box (cx, cy, w, h) and class scores, to be thresholded and NMS'd, or (NMS-free heads, or NMS
//! embedded at export) the chosen boxes already, as x1, y1, x2, y2, score, class.

use super::{BBox, DetectError, Detection, NamedOutput, frame_2d};

/// The Ultralytics export families, as a manifest names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum YoloVersion {
    V5,
    V8,
    V11,
    /// NMS-free end-to-end head (YOLO26 and YOLOv10 exported with `nms=False`, or any export
    /// with `nms=True`): [n, max_det, 6].
    #[serde(alias = "v10", alias = "v26")]
    End2end,
}

/// Where boxes and scores sit in the single output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub name: &'static str,
    /// Attributes on axis 1 ([n, attrs, anchors]) rather than axis 2 ([n, anchors, attrs]).
    pub attributes_first: bool,
    /// A sigmoid objectness after the box, multiplied into every class score.
    pub objectness: bool,
    /// Rows are final boxes, x1, y1, x2, y2, score, class: no NMS follows.
    pub end2end: bool,
    pub num_classes: usize,
}

impl Layout {
    /// YOLOv8: [n, 4 + nc, anchors]; sigmoid class scores, no objectness.
    pub fn yolov8(num_classes: usize) -> Self {
        Self { name: "yolov8", attributes_first: true, objectness: false, end2end: false, num_classes }
    }

    /// YOLO11: same head layout as v8, [n, 4 + nc, anchors].
    pub fn yolo11(num_classes: usize) -> Self {
        Self { name: "yolo11", ..Self::yolov8(num_classes) }
    }

    /// YOLOv5: [n, anchors, 5 + nc]; score = objectness × class score.
    pub fn yolov5(num_classes: usize) -> Self {
        Self { name: "yolov5", attributes_first: false, objectness: true, end2end: false, num_classes }
    }

    /// End-to-end: [n, max_det, 6], boxes as x1, y1, x2, y2, then score and class id.
    pub fn end2end(num_classes: usize) -> Self {
        Self { name: "end-to-end", attributes_first: false, objectness: false, end2end: true, num_classes }
    }

    pub fn for_version(version: YoloVersion, num_classes: usize) -> Self {
        match version {
            YoloVersion::V5 => Self::yolov5(num_classes),
            YoloVersion::V8 => Self::yolov8(num_classes),
            YoloVersion::V11 => Self::yolo11(num_classes),
            YoloVersion::End2end => Self::end2end(num_classes),
        }
    }

    fn attributes(&self) -> usize {
        if self.end2end { 6 } else { 4 + usize::from(self.objectness) + self.num_classes }
    }

    pub fn candidates(
        &self,
        outputs: &[NamedOutput<'_>],
        index: usize,
        score_threshold: f32,
    ) -> Result<Vec<Detection>, DetectError> {
        let (name, array) = outputs.first().ok_or_else(|| DetectError::MissingOutput("output0".into()))?;
        let attrs = self.attributes();
        let (expect, text) = if self.attributes_first {
            ((Some(attrs), None), format!("[n, {attrs}, anchors] ({} layout)", self.name))
        } else {
            ((None, Some(attrs)), format!("[n, anchors, {attrs}] ({} layout)", self.name))
        };
        let frame = frame_2d(name, array, index, expect, || text)?;
        let frame = frame.as_standard_layout();
        let Some(data) = frame.as_slice() else {
            return Ok(Vec::new());
        };
        if self.end2end {
            // Rows come best first; a class id outside the names (a mismatched manifest) is skipped.
            return Ok(data
                .chunks_exact(6)
                .filter(|r| r[4] > score_threshold && r[5] >= 0.0 && (r[5] as usize) < self.num_classes)
                .map(|r| Detection {
                    bbox: BBox { x1: r[0], y1: r[1], x2: r[2], y2: r[3] },
                    class_id: r[5] as u32,
                    score: r[4],
                })
                .collect());
        }
        let first_class = 4 + usize::from(self.objectness);
        let mut out = Vec::new();
        let mut push = |attr: &dyn Fn(usize) -> f32, best: f32, class_id: usize| {
            let (cx, cy, w, h) = (attr(0), attr(1), attr(2), attr(3));
            out.push(Detection {
                bbox: BBox { x1: cx - w / 2.0, y1: cy - h / 2.0, x2: cx + w / 2.0, y2: cy + h / 2.0 },
                class_id: class_id as u32,
                score: best,
            });
        };
        if self.attributes_first {
            // [attrs, anchors]: a running max over class rows keeps every pass contiguous.
            let anchors = data.len() / attrs;
            let mut best = vec![f32::NEG_INFINITY; anchors];
            let mut best_class = vec![0usize; anchors];
            for c in 0..self.num_classes {
                let row = &data[(first_class + c) * anchors..(first_class + c + 1) * anchors];
                for ((b, bc), &v) in best.iter_mut().zip(best_class.iter_mut()).zip(row) {
                    if v > *b {
                        *b = v;
                        *bc = c;
                    }
                }
            }
            if self.objectness {
                let objectness = &data[4 * anchors..5 * anchors];
                for (b, o) in best.iter_mut().zip(objectness) {
                    *b *= o;
                }
            }
            for (a, (&score, &class_id)) in best.iter().zip(&best_class).enumerate() {
                if score > score_threshold {
                    push(&|k| data[k * anchors + a], score, class_id);
                }
            }
        } else {
            // [anchors, attrs]: each anchor's attributes are one contiguous row.
            for row in data.chunks_exact(attrs) {
                let objectness = if self.objectness { row[4] } else { 1.0 };
                let (mut best, mut class_id) = (f32::NEG_INFINITY, 0usize);
                for (c, &v) in row[first_class..].iter().enumerate() {
                    let v = v * objectness;
                    if v > best {
                        best = v;
                        class_id = c;
                    }
                }
                if best > score_threshold {
                    push(&|k| row[k], best, class_id);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, ArrayViewD};

    #[test]
    fn v8_layout_reads_attributes_on_axis_1() {
        // 2 classes, 3 anchors; anchor 1 is a class-1 box at (50, 40) sized 20x10.
        let mut raw = Array3::<f32>::zeros((1, 6, 3));
        for (a, v) in [50.0, 40.0, 20.0, 10.0, 0.1, 0.8].iter().enumerate() {
            raw[[0, a, 1]] = *v;
        }
        let raw = raw.into_dyn();
        let outputs: Vec<(&str, ArrayViewD<f32>)> = vec![("output0", raw.view())];
        let found = Layout::yolov8(2).candidates(&outputs, 0, 0.25).expect("decode");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].class_id, 1);
        assert_eq!(found[0].bbox, BBox { x1: 40.0, y1: 35.0, x2: 60.0, y2: 45.0 });
    }

    #[test]
    fn v5_layout_multiplies_objectness() {
        let mut raw = Array3::<f32>::zeros((1, 2, 7));
        raw.slice_mut(ndarray::s![0, 0, ..]).assign(&ndarray::arr1(&[10.0, 10.0, 4.0, 4.0, 0.5, 0.9, 0.2]));
        raw.slice_mut(ndarray::s![0, 1, ..]).assign(&ndarray::arr1(&[30.0, 30.0, 4.0, 4.0, 0.2, 0.9, 0.9]));
        let raw = raw.into_dyn();
        let outputs: Vec<(&str, ArrayViewD<f32>)> = vec![("output0", raw.view())];
        let found = Layout::yolov5(2).candidates(&outputs, 0, 0.25).expect("decode");
        // Anchor 0: 0.5 × 0.9 = 0.45 passes; anchor 1: 0.2 × 0.9 = 0.18 does not.
        assert_eq!(found.len(), 1);
        assert!((found[0].score - 0.45).abs() < 1e-6);
    }

    #[test]
    fn end_to_end_rows_are_corner_boxes_with_score_and_class() {
        let mut raw = Array3::<f32>::zeros((1, 3, 6));
        raw.slice_mut(ndarray::s![0, 0, ..]).assign(&ndarray::arr1(&[10.0, 20.0, 30.0, 60.0, 0.9, 2.0]));
        raw.slice_mut(ndarray::s![0, 1, ..]).assign(&ndarray::arr1(&[1.0, 2.0, 3.0, 4.0, 0.5, 7.0]));
        raw.slice_mut(ndarray::s![0, 2, ..]).assign(&ndarray::arr1(&[5.0, 5.0, 9.0, 9.0, 0.2, 0.0]));
        let raw = raw.into_dyn();
        let outputs: Vec<(&str, ArrayViewD<f32>)> = vec![("output0", raw.view())];
        let found = Layout::end2end(3).candidates(&outputs, 0, 0.25).expect("decode");
        // Row 1 names class 7 of 3 and row 2 is under the threshold.
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].class_id, found[0].score), (2, 0.9));
        assert_eq!(found[0].bbox, BBox { x1: 10.0, y1: 20.0, x2: 30.0, y2: 60.0 });
        let wrong = Array3::<f32>::zeros((1, 9, 2100)).into_dyn();
        let outputs: Vec<(&str, ArrayViewD<f32>)> = vec![("output0", wrong.view())];
        let err = Layout::end2end(5).candidates(&outputs, 0, 0.25).unwrap_err();
        assert!(err.to_string().contains("[n, anchors, 6] (end-to-end layout)"), "{err}");
    }

    #[test]
    fn end_to_end_boxes_are_kept_as_the_model_chose_them_without_nms() {
        // Two same-class boxes overlapping at IoU 0.9: NMS would drop one; Ultralytics keeps both.
        let mut raw = Array3::<f32>::zeros((1, 2, 6));
        raw.slice_mut(ndarray::s![0, 0, ..]).assign(&ndarray::arr1(&[0.0, 0.0, 100.0, 100.0, 0.9, 1.0]));
        raw.slice_mut(ndarray::s![0, 1, ..]).assign(&ndarray::arr1(&[0.0, 0.0, 100.0, 90.0, 0.8, 1.0]));
        let raw = raw.into_dyn();
        let outputs: Vec<(&str, ArrayViewD<f32>)> = vec![("output0", raw.view())];
        let thresholds =
            crate::detect::Thresholds { score: 0.25, iou: 0.7, max_detections: 300, class_agnostic: false };
        let letterbox = crate::imaging::Letterbox::new(320, 320, 320, 320);
        let kept = crate::detect::Decoder::Yolo(Layout::end2end(2)).detect(&outputs, 0, &thresholds, &letterbox);
        assert_eq!(kept.expect("decode").len(), 2);
        let nms = crate::detect::Decoder::Yolo(Layout::yolov8(2));
        assert!(!nms.chooses_boxes());
    }

    #[test]
    fn class_count_mismatch_names_the_layout() {
        let raw = Array3::<f32>::zeros((1, 84, 10)).into_dyn();
        let outputs: Vec<(&str, ArrayViewD<f32>)> = vec![("output0", raw.view())];
        let err = Layout::yolov8(3).candidates(&outputs, 0, 0.25).unwrap_err();
        assert!(err.to_string().contains("[n, 7, anchors] (yolov8 layout)"), "{err}");
    }
}
