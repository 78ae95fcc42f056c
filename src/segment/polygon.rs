//! Outline polygons of a pasted mask: the outer border of each 8-connected region (Suzuki–Abe
//! border following, as OpenCV's `findContours`), simplified by Douglas–Peucker.

use image::GrayImage;
use imageproc::contours::{BorderType, find_contours};
use imageproc::geometry::approximate_polygon_dp;
use imageproc::point::Point;

use super::PastedMask;

/// A closed outline, vertices in image pixels (pixel indices of border pixels, x then y).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Polygon {
    pub points: Vec<[u32; 2]>,
}

/// The outer outline of every region of `mask`, largest region first. `epsilon` is the largest
/// distance, in pixels, a dropped border pixel may lie from the simplified outline; 0 keeps every
/// border pixel. Holes are not outlined (the mask has them).
pub fn outline_polygons(mask: &PastedMask, epsilon: f64) -> Vec<Polygon> {
    if mask.width == 0 || mask.height == 0 || mask.pixels.len() != (mask.width * mask.height) as usize {
        return Vec::new();
    }
    // A one-pixel background frame: the border following starts an outer border only right of a
    // background pixel, so a region touching the left edge would otherwise be missed.
    let mut image = GrayImage::new(mask.width + 2, mask.height + 2);
    for (i, &p) in mask.pixels.iter().enumerate() {
        let (x, y) = (i as u32 % mask.width, i as u32 / mask.width);
        image.put_pixel(x + 1, y + 1, image::Luma([p]));
    }
    let mut outlines: Vec<Vec<Point<u32>>> = find_contours::<u32>(&image)
        .into_iter()
        .filter(|c| c.border_type == BorderType::Outer && !c.points.is_empty())
        .map(|c| c.points)
        .collect();
    outlines.sort_by_key(|points| std::cmp::Reverse(points.len()));
    outlines
        .into_iter()
        .map(|points| {
            let kept =
                if epsilon > 0.0 && points.len() > 2 { approximate_polygon_dp(&points, epsilon, true) } else { points };
            Polygon { points: kept.into_iter().map(|p| [p.x - 1 + mask.left, p.y - 1 + mask.top]).collect() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(left: u32, top: u32, width: u32, rows: &[&str]) -> PastedMask {
        let pixels: Vec<u8> = rows.iter().flat_map(|r| r.bytes().map(|b| u8::from(b == b'#'))).collect();
        PastedMask { left, top, width, height: rows.len() as u32, pixels }
    }

    #[test]
    fn a_rectangle_simplifies_to_its_four_corners_in_image_pixels() {
        let m = mask(10, 20, 6, &["......", ".####.", ".####.", ".####.", "......"]);
        let polygons = outline_polygons(&m, 0.5);
        assert_eq!(polygons.len(), 1);
        let mut corners = polygons[0].points.clone();
        corners.sort();
        assert_eq!(corners, vec![[11, 21], [11, 23], [14, 21], [14, 23]]);
    }

    #[test]
    fn two_regions_give_two_outlines_largest_first_and_holes_are_not_outlined() {
        let m = mask(0, 0, 8, &["#.......", "....####", "....#..#", "....####"]);
        let polygons = outline_polygons(&m, 0.0);
        assert_eq!(polygons.len(), 2);
        assert_eq!(polygons[0].points.len(), 10, "the ring's outer border: {:?}", polygons[0].points);
        assert_eq!(polygons[1].points, vec![[0, 0]]);
        assert!(outline_polygons(&mask(0, 0, 0, &[]), 1.0).is_empty());
    }
}
