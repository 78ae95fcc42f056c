//! The end-to-end tests, one binary: a real server on 127.0.0.1, real clients, real models.
//! Every module was once its own test binary; tests that measure the machine take it alone
//! (`common::machine_alone`), the rest share it.

// Tests and their helpers stop at the first broken expectation, by design.
// The machine lock (`common::machine_*`) is held for a whole test on purpose; each test runs on
// its own runtime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines, clippy::await_holding_lock)]

mod bench_smoke;
#[cfg(feature = "camera")]
mod camera;
mod cancel_flood;
mod cli;
mod common;
mod connections;
mod detect_parity;
mod device_input;
mod el_defect;
mod fuzz_replay;
mod grpc_e2e;
mod line_analytics;
mod operations;
mod overload;
mod preprocess_parity;
mod providers;
mod python_client;
mod security;
mod track_e2e;
mod track_registry;
mod ultralytics_exports;
mod yolo_pipeline;
