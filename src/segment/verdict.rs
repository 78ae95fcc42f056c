//! The cell verdict of `el-defect`: defective or not, by a configurable rule over the instances
//! and, for a model with a cell head, its defect probability.

use super::{Instance, PastedMask};

/// A cell is defective when the instances say so — at least one counted instance (of a counted
/// class, with a score of at least `min_score`) and the counted instances together covering at
/// least `min_area_fraction` of the image — or when the model's defect probability is at least
/// `min_defect_probability`. Either side can be off: `count_instances` false, or no threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct CellRule {
    pub min_score: f32,
    pub min_area_fraction: f32,
    /// Counted classes (0-based ids); empty = every class.
    pub classes: Vec<u32>,
    pub count_instances: bool,
    pub min_defect_probability: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellInspection {
    pub defective: bool,
    /// Pixels covered by the counted instances (their union) over the image's pixels.
    pub defect_area_fraction: f32,
    /// Instances the rule counted.
    pub counted: u32,
    /// The model's probability that the cell is defective, when it has a cell head.
    pub defect_probability: Option<f32>,
}

pub fn judge_cell(
    instances: &[Instance],
    defect_probability: Option<f32>,
    width: u32,
    height: u32,
    rule: &CellRule,
) -> CellInspection {
    let counted: Vec<&Instance> = instances
        .iter()
        .filter(|i| i.detection.score >= rule.min_score)
        .filter(|i| rule.classes.is_empty() || rule.classes.contains(&i.detection.class_id))
        .collect();
    let pixels = u64::from(width) * u64::from(height);
    let area = union_area(counted.iter().map(|i| &i.shape.mask), width, height);
    let fraction = if pixels == 0 { 0.0 } else { (area as f64 / pixels as f64) as f32 };
    let by_instances = rule.count_instances && !counted.is_empty() && fraction >= rule.min_area_fraction;
    let by_probability = match (rule.min_defect_probability, defect_probability) {
        (Some(threshold), Some(p)) => p >= threshold,
        _ => false,
    };
    CellInspection {
        defective: by_instances || by_probability,
        defect_area_fraction: fraction,
        counted: counted.len() as u32,
        defect_probability,
    }
}

/// The union of `masks` over an image `width` × `height`, in object pixels.
fn union_area<'a>(masks: impl Iterator<Item = &'a PastedMask>, width: u32, height: u32) -> u64 {
    let mut covered = vec![false; width as usize * height as usize];
    for m in masks {
        for row in 0..m.height {
            let (y, start) = ((m.top + row) as usize, (row * m.width) as usize);
            if y >= height as usize {
                break;
            }
            for (col, &p) in m.pixels[start..start + m.width as usize].iter().enumerate() {
                let x = m.left as usize + col;
                if p != 0 && x < width as usize {
                    covered[y * width as usize + x] = true;
                }
            }
        }
    }
    covered.iter().filter(|&&c| c).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{BBox, Detection};
    use crate::segment::InstanceShape;

    fn instance(class_id: u32, score: f32, left: u32, side: u32) -> Instance {
        Instance {
            detection: Detection { bbox: BBox { x1: 0., y1: 0., x2: 1., y2: 1. }, class_id, score },
            shape: InstanceShape {
                mask: PastedMask { left, top: 0, width: side, height: side, pixels: vec![1; (side * side) as usize] },
                polygons: Vec::new(),
                area: side * side,
            },
        }
    }

    fn by_instances(min_score: f32, min_area_fraction: f32, classes: Vec<u32>) -> CellRule {
        CellRule { min_score, min_area_fraction, classes, count_instances: true, min_defect_probability: None }
    }

    #[test]
    fn the_rule_counts_classes_scores_and_area() {
        let found = [instance(0, 0.9, 0, 10), instance(2, 0.4, 50, 20)];
        let any = by_instances(0.5, 0.0, vec![]);
        let judged = judge_cell(&found, None, 100, 100, &any);
        assert!(judged.defective);
        assert_eq!(judged.counted, 1);
        assert!((judged.defect_area_fraction - 0.01).abs() < 1e-6);
        let large_only = CellRule { min_area_fraction: 0.02, ..any.clone() };
        assert!(!judge_cell(&found, None, 100, 100, &large_only).defective);
        let low_score = CellRule { min_score: 0.3, ..large_only };
        let judged = judge_cell(&found, None, 100, 100, &low_score);
        assert!(judged.defective && judged.counted == 2 && (judged.defect_area_fraction - 0.05).abs() < 1e-6);
        let cracks_of_class_1 = CellRule { classes: vec![1], ..any };
        assert!(!judge_cell(&found, None, 100, 100, &cracks_of_class_1).defective);
        assert!(!judge_cell(&[], None, 100, 100, &by_instances(0.0, 0.0, vec![])).defective);
    }

    #[test]
    fn the_defect_probability_decides_alone_or_beside_the_instances() {
        let found = [instance(0, 0.9, 0, 10)];
        let either = CellRule { min_defect_probability: Some(0.6), ..by_instances(0.5, 0.0, vec![]) };
        assert!(judge_cell(&found, Some(0.1), 100, 100, &either).defective, "an instance is enough");
        assert!(judge_cell(&[], Some(0.6), 100, 100, &either).defective, "so is the probability, at the threshold");
        assert!(!judge_cell(&[], Some(0.59), 100, 100, &either).defective);
        assert!(!judge_cell(&[], None, 100, 100, &either).defective, "no head, no probability");
        let probability_only = CellRule { count_instances: false, ..either };
        let judged = judge_cell(&found, Some(0.2), 100, 100, &probability_only);
        assert!(!judged.defective, "instances are still counted and shown, but do not decide");
        assert_eq!((judged.counted, judged.defect_probability), (1, Some(0.2)));
        assert!(judge_cell(&[], Some(0.9), 100, 100, &probability_only).defective);
    }

    #[test]
    fn the_union_counts_overlapping_pixels_once() {
        let a = PastedMask { left: 0, top: 0, width: 4, height: 2, pixels: vec![1; 8] };
        let b = PastedMask { left: 2, top: 1, width: 4, height: 2, pixels: vec![1; 8] };
        assert_eq!(union_area([&a, &b].into_iter(), 10, 10), 8 + 8 - 2);
        assert_eq!(union_area([&b].into_iter(), 5, 2), 3, "clipped to the image");
    }
}
