#![no_main]
//! `InspectRequest` protobuf decode, mapping to a frame, validation, and the status of each error.

libfuzzer_sys::fuzz_target!(|data: &[u8]| linesight::fuzzing::validate_request(data));
