#![no_main]
//! Image decode (JPEG, PNG, raw RGB/BGR/gray) and preprocessing (letterbox, crop) of client bytes.

libfuzzer_sys::fuzz_target!(|data: &[u8]| linesight::fuzzing::decode_and_preprocess(data));
