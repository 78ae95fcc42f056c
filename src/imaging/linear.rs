//! Bilinear u8 resize with the arithmetic of OpenCV's `cv2.resize(..., INTER_LINEAR)`, which
//! Ultralytics' letterbox (and so every YOLO's training and validation) uses: half-pixel centres,
//! 11-bit fixed-point weights, a horizontal pass kept exact in i32, then a vertical pass that drops
//! 4 bits, multiplies keeping the high 16 bits and rounds once (OpenCV's SIMD arithmetic, which its
//! x86 builds apply to every pixel). Written here because the bytes must equal OpenCV's, and no
//! resize crate promises that; `tests` and the fixtures of `tests/fixtures/preprocess` compare
//! them with `cv2.resize` byte for byte.
//!
//! An exact 2× reduction, where OpenCV switches to INTER_AREA, gives the same bytes by this
//! arithmetic (weights ½, ½: (a + b + c + d + 2) >> 2), so it needs no path of its own.

/// `INTER_RESIZE_COEF_BITS`: weights are fractions of 2048.
const COEF_SCALE: f32 = 2048.0;

/// One axis: for each output coordinate, the two source coordinates it blends and their weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearAxis {
    pub first: Vec<u32>,
    pub second: Vec<u32>,
    pub weights: Vec<[i16; 2]>,
}

impl LinearAxis {
    /// Columns: past either edge the nearest column, alone (OpenCV clamps the coordinate).
    pub fn columns(src: u32, dst: u32) -> Self {
        Self::new(src, dst, true)
    }

    /// Rows: OpenCV keeps the fractional weight at the edges and reads the edge row twice, which
    /// rounds differently from reading it once.
    pub fn rows(src: u32, dst: u32) -> Self {
        Self::new(src, dst, false)
    }

    fn new(src: u32, dst: u32, clamp_edges: bool) -> Self {
        let mut axis = Self { first: Vec::new(), second: Vec::new(), weights: Vec::new() };
        if src == 0 || dst == 0 {
            return axis;
        }
        let scale = 1.0 / (f64::from(dst) / f64::from(src));
        let last = i64::from(src) - 1;
        for d in 0..dst {
            // OpenCV computes the coordinate in f64, keeps it as f32, and splits it in f32.
            let f = ((f64::from(d) + 0.5) * scale - 0.5) as f32;
            let mut s = i64::from(f.floor() as i32);
            let mut frac = f - s as f32;
            if clamp_edges {
                if s < 0 {
                    (s, frac) = (0, 0.0);
                }
                if s >= last {
                    (s, frac) = (last, 0.0);
                }
            }
            axis.first.push(s.clamp(0, last) as u32);
            axis.second.push((s + 1).clamp(0, last) as u32);
            axis.weights.push([weight(1.0 - frac), weight(frac)]);
        }
        axis
    }

    pub fn len(&self) -> usize {
        self.first.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }
}

/// `saturate_cast<short>(w * INTER_RESIZE_COEF_SCALE)`: rounded half to even, as `lrintf`.
fn weight(w: f32) -> i16 {
    (w * COEF_SCALE).round_ties_even() as i16
}

/// The vertical pass on two horizontal sums (each a source value × 2048): OpenCV's
/// `v_mul_hi(h >> 4, b)` per row, summed, then `(sum + 2) >> 2` saturated to u8.
#[inline]
pub fn blend_rows(h0: i32, h1: i32, b: [i16; 2]) -> u8 {
    let v = (((h0 >> 4) * i32::from(b[0])) >> 16) + (((h1 >> 4) * i32::from(b[1])) >> 16);
    ((v + 2) >> 2).clamp(0, 255) as u8
}

/// One resized RGB pixel, computed on its own: the arithmetic the GPU kernel runs per thread.
/// `src` is RGB8 rows of `src_width` pixels.
pub fn linear_pixel(src: &[u8], src_width: u32, x: &LinearAxis, y: &LinearAxis, ox: usize, oy: usize) -> [u8; 3] {
    let stride = src_width as usize * 3;
    let (x0, x1, a) = (x.first[ox] as usize * 3, x.second[ox] as usize * 3, x.weights[ox]);
    let (r0, r1, b) = (y.first[oy] as usize * stride, y.second[oy] as usize * stride, y.weights[oy]);
    let h = |row: usize, c: usize| {
        i32::from(src[row + x0 + c]) * i32::from(a[0]) + i32::from(src[row + x1 + c]) * i32::from(a[1])
    };
    std::array::from_fn(|c| blend_rows(h(r0, c), h(r1, c), b))
}

/// Scratch rows of horizontal sums, kept between frames.
#[derive(Default)]
pub struct LinearResizer {
    rows: [Vec<i32>; 2],
    cached: [Option<u32>; 2],
    columns: Vec<Column>,
}

impl LinearResizer {
    /// Resizes RGB8 `src` (`src_width`×`src_height`) to `dst_width`×`dst_height` into `out`.
    pub fn resize(
        &mut self,
        src: &[u8],
        src_width: u32,
        src_height: u32,
        dst_width: u32,
        dst_height: u32,
        out: &mut Vec<u8>,
    ) {
        let x = LinearAxis::columns(src_width, dst_width);
        let y = LinearAxis::rows(src_height, dst_height);
        // Per output column: its two source bytes' offsets in a row, and their weights.
        self.columns.clear();
        self.columns.extend((0..x.len()).map(|i| Column {
            first: x.first[i] as usize * 3,
            second: x.second[i] as usize * 3,
            weights: [i32::from(x.weights[i][0]), i32::from(x.weights[i][1])],
        }));
        let row_len = dst_width as usize * 3;
        out.clear();
        out.resize(row_len * dst_height as usize, 0);
        for slot in 0..2 {
            self.rows[slot].resize(row_len, 0);
            self.cached[slot] = None;
        }
        let stride = src_width as usize * 3;
        for (oy, line) in out.chunks_exact_mut(row_len).enumerate() {
            let (r0, r1) = (y.first[oy], y.second[oy]);
            let holding_r1 = self.cached.iter().position(|&c| c == Some(r1));
            let s0 = self.row_slot(r0, holding_r1, src, stride);
            let s1 = self.row_slot(r1, Some(s0), src, stride);
            let b = y.weights[oy];
            let (h0, h1) = (&self.rows[s0], &self.rows[s1]);
            for ((d, &a), &c) in line.iter_mut().zip(h0.iter()).zip(h1.iter()) {
                *d = blend_rows(a, c, b);
            }
        }
    }

    /// The slot holding source row `row`'s horizontal sums, computing them if needed, into a
    /// slot other than `keep` (which the same output row still reads).
    fn row_slot(&mut self, row: u32, keep: Option<usize>, src: &[u8], stride: usize) -> usize {
        if let Some(slot) = self.cached.iter().position(|&c| c == Some(row)) {
            return slot;
        }
        let slot = keep.map_or(0, |k| 1 - k);
        let line = &src[row as usize * stride..(row as usize + 1) * stride];
        for (h, column) in self.rows[slot].chunks_exact_mut(3).zip(&self.columns) {
            let (p0, p1) = (&line[column.first..column.first + 3], &line[column.second..column.second + 3]);
            let [a0, a1] = column.weights;
            h[0] = i32::from(p0[0]) * a0 + i32::from(p1[0]) * a1;
            h[1] = i32::from(p0[1]) * a0 + i32::from(p1[1]) * a1;
            h[2] = i32::from(p0[2]) * a0 + i32::from(p1[2]) * a1;
        }
        self.cached[slot] = Some(row);
        slot
    }
}

/// One output column of a resize: byte offsets of its two source pixels in a row, and weights.
#[derive(Clone, Copy)]
struct Column {
    first: usize,
    second: usize,
    weights: [i32; 2],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::resample::noise;

    #[test]
    fn rows_and_pixels_agree_up_down_and_at_two_to_one() {
        for (i, &(sw, sh, dw, dh)) in
            [(500, 333, 320, 213), (241, 599, 129, 320), (1280, 720, 640, 360), (37, 51, 233, 321), (64, 48, 640, 2)]
                .iter()
                .enumerate()
        {
            let src = noise(sw, sh, i as u64);
            let mut out = Vec::new();
            LinearResizer::default().resize(&src, sw, sh, dw, dh, &mut out);
            let (x, y) = (LinearAxis::columns(sw, dw), LinearAxis::rows(sh, dh));
            for oy in 0..dh as usize {
                for ox in 0..dw as usize {
                    let at = (oy * dw as usize + ox) * 3;
                    assert_eq!(out[at..at + 3], linear_pixel(&src, sw, &x, &y, ox, oy), "case {i} at {ox},{oy}");
                }
            }
        }
    }

    #[test]
    fn same_size_is_a_copy_and_two_to_one_is_a_rounded_box_average() {
        let src = noise(33, 17, 9);
        let mut out = Vec::new();
        LinearResizer::default().resize(&src, 33, 17, 33, 17, &mut out);
        assert_eq!(out, src);
        let src = noise(8, 6, 3);
        LinearResizer::default().resize(&src, 8, 6, 4, 3, &mut out);
        let px = |x: usize, y: usize, c: usize| u32::from(src[(y * 8 + x) * 3 + c]);
        for (oy, ox, c) in [(0, 0, 0), (2, 3, 2), (1, 2, 1)] {
            let sum = px(2 * ox, 2 * oy, c)
                + px(2 * ox + 1, 2 * oy, c)
                + px(2 * ox, 2 * oy + 1, c)
                + px(2 * ox + 1, 2 * oy + 1, c);
            assert_eq!(u32::from(out[(oy * 4 + ox) * 3 + c]), (sum + 2) >> 2);
        }
    }

    #[test]
    fn edge_rows_keep_their_fractional_weight_and_edge_columns_do_not() {
        // 4 -> 8: the first output coordinate sits at -0.25, i.e. source -1 with weight 0.75.
        let rows = LinearAxis::rows(4, 8);
        assert_eq!((rows.first[0], rows.second[0], rows.weights[0]), (0, 0, [512, 1536]));
        let columns = LinearAxis::columns(4, 8);
        assert_eq!((columns.first[0], columns.second[0], columns.weights[0]), (0, 1, [2048, 0]));
        assert_eq!((columns.first[7], columns.weights[7]), (3, [2048, 0]));
    }
}
