//! Greedy non-maximum suppression (as torchvision's `nms` over class-offset boxes, which Ultralytics
//! uses): best score first; a box is dropped when it overlaps an already kept box of its class (or,
//! class-agnostic, of any class) by IoU > threshold.

use super::{BBox, Detection};

pub fn iou(a: &BBox, b: &BBox) -> f32 {
    let iw = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let ih = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let inter = iw * ih;
    let union = a.area() + b.area() - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// Keeps at most `max_detections`, best first. Cost O(n log n + n · kept).
pub fn nms_class_aware(candidates: Vec<Detection>, iou_threshold: f32, max_detections: usize) -> Vec<Detection> {
    nms(candidates, iou_threshold, max_detections, false)
}

/// As [`nms_class_aware`]; with `any_class`, a box is also dropped for overlapping a better box of
/// another class (Ultralytics' `agnostic_nms`), so one object gets one box.
pub fn nms(
    mut candidates: Vec<Detection>,
    iou_threshold: f32,
    max_detections: usize,
    any_class: bool,
) -> Vec<Detection> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for c in candidates {
        if kept.len() >= max_detections {
            break;
        }
        let overlaps =
            kept.iter().any(|k| (any_class || k.class_id == c.class_id) && iou(&k.bbox, &c.bbox) > iou_threshold);
        if !overlaps {
            kept.push(c);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x1: f32, y1: f32, x2: f32, y2: f32, class_id: u32, score: f32) -> Detection {
        Detection { bbox: BBox { x1, y1, x2, y2 }, class_id, score }
    }

    #[test]
    fn iou_of_half_overlapping_squares() {
        let a = BBox { x1: 0.0, y1: 0.0, x2: 2.0, y2: 2.0 };
        let b = BBox { x1: 1.0, y1: 0.0, x2: 3.0, y2: 2.0 };
        assert!((iou(&a, &b) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(iou(&a, &BBox { x1: 5.0, y1: 5.0, x2: 6.0, y2: 6.0 }), 0.0);
    }

    #[test]
    fn class_agnostic_suppression_drops_an_overlapping_box_of_another_class() {
        let boxes = vec![
            det(0.0, 0.0, 10.0, 10.0, 1, 0.9),
            det(0.5, 0.0, 10.5, 10.0, 2, 0.6),
            det(20.0, 0.0, 30.0, 10.0, 2, 0.5),
        ];
        assert_eq!(nms(boxes.clone(), 0.5, 10, false).len(), 3);
        let kept = nms(boxes, 0.5, 10, true);
        assert_eq!(kept.iter().map(|d| (d.class_id, d.score)).collect::<Vec<_>>(), [(1, 0.9), (2, 0.5)]);
    }

    #[test]
    fn overlapping_same_class_is_suppressed_other_class_kept() {
        let kept = nms_class_aware(
            vec![
                det(0.0, 0.0, 10.0, 10.0, 0, 0.5),
                det(1.0, 1.0, 11.0, 11.0, 0, 0.9),
                det(1.0, 1.0, 11.0, 11.0, 1, 0.4),
                det(50.0, 50.0, 60.0, 60.0, 0, 0.3),
            ],
            0.5,
            100,
        );
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.4, 0.3]);
    }

    #[test]
    fn iou_equal_to_threshold_is_kept() {
        // IoU exactly 1/3: suppressed only when strictly above the threshold.
        let a = det(0.0, 0.0, 2.0, 2.0, 0, 0.9);
        let b = det(1.0, 0.0, 3.0, 2.0, 0, 0.8);
        assert_eq!(nms_class_aware(vec![a.clone(), b.clone()], 1.0 / 3.0, 10).len(), 2);
        assert_eq!(nms_class_aware(vec![a, b], 0.3, 10).len(), 1);
    }

    #[test]
    fn max_detections_keeps_the_best() {
        let many: Vec<_> =
            (0..20).map(|i| det(i as f32 * 20.0, 0.0, i as f32 * 20.0 + 10.0, 10.0, 0, i as f32)).collect();
        let kept = nms_class_aware(many, 0.5, 3);
        assert_eq!(kept.iter().map(|d| d.score).collect::<Vec<_>>(), vec![19.0, 18.0, 17.0]);
    }
}
