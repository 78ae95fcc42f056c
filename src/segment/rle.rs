//! The wire encoding of a pasted mask: run lengths over the mask's box, row-major, alternating
//! background and object runs and starting with background (a mask whose first pixel is object
//! starts with a 0 run). The runs add up to width × height. Row-major, unlike COCO's column-major
//! RLE, because clients index images by row.

/// Run lengths of `pixels` (0 = background, anything else = object).
pub fn encode_runs(pixels: &[u8]) -> Vec<u32> {
    let mut runs = Vec::new();
    let mut current = false;
    let mut length = 0u32;
    for &p in pixels {
        let object = p != 0;
        if object != current {
            runs.push(length);
            current = object;
            length = 0;
        }
        length += 1;
    }
    if length > 0 || runs.is_empty() {
        runs.push(length);
    }
    runs
}

/// The pixels (0 or 1) of `runs`; `None` unless the runs cover exactly `len` pixels.
pub fn decode_runs(runs: &[u32], len: usize) -> Option<Vec<u8>> {
    let mut pixels = Vec::with_capacity(len);
    for (i, &run) in runs.iter().enumerate() {
        let value = u8::from(i % 2 == 1);
        let end = pixels.len().checked_add(run as usize)?;
        if end > len {
            return None;
        }
        pixels.resize(end, value);
    }
    (pixels.len() == len).then_some(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_start_with_background_and_round_trip() {
        let cases: [&[u8]; 5] = [&[], &[0, 0, 1, 1, 1, 0], &[1, 1, 0], &[0, 0, 0], &[1, 0, 1, 0, 1]];
        let expected: [&[u32]; 5] = [&[0], &[2, 3, 1], &[0, 2, 1], &[3], &[0, 1, 1, 1, 1, 1]];
        for (pixels, runs) in cases.iter().zip(expected) {
            assert_eq!(encode_runs(pixels), runs, "{pixels:?}");
            assert_eq!(decode_runs(runs, pixels.len()).as_deref(), Some(*pixels));
        }
        assert_eq!(decode_runs(&[2, 3], 4), None, "runs past the mask");
        assert_eq!(decode_runs(&[2], 4), None, "runs short of the mask");
    }
}
