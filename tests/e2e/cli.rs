//! The `linesight` binary as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn infer_prints_json_and_writes_annotated_png() {
    let _machine = crate::common::machine_shared();
    let out = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .current_dir(root())
        .args(["infer", "--out-dir"])
        .arg(out.path())
        .arg("tests/fixtures/vtest/frame_0250.jpg")
        .output()
        .expect("run linesight infer");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let frame = &report[0];
    assert_eq!(frame["model"], "nanodet-g");
    let people =
        frame["detections"].as_array().expect("detections").iter().filter(|d| d["class_name"] == "person").count();
    assert!(people >= 6, "{frame}");
    let png = out.path().join("frame_0250.annotated.png");
    let image = image::open(&png).expect("annotated PNG");
    assert_eq!((image.width(), image.height()), (768, 576));
}

#[test]
fn missing_onnx_runtime_is_a_clear_error_naming_where_it_looked() {
    let _machine = crate::common::machine_shared();
    let output = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .current_dir(root())
        .env("ORT_DYLIB_PATH", "/nonexistent/lib/libonnxruntime.so.1.32.0")
        .env("LINESIGHT_HOME", "/nonexistent/linesight-home")
        .env("RUST_BACKTRACE", "0")
        .args(["infer", "--no-annotate", "tests/fixtures/vtest/frame_0000.jpg"])
        .output()
        .expect("run linesight");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ONNX Runtime shared library not found"), "{stderr}");
    assert!(stderr.contains("/nonexistent/lib/libonnxruntime.so.1.32.0"), "{stderr}");
    assert!(stderr.contains("/nonexistent/linesight-home/onnxruntime"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn invalid_config_reports_every_problem_with_its_path() {
    let _machine = crate::common::machine_shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[server]\ndefault_budget_ms = 0\n[pipelines.detect]\nkind = \"detect\"\nmodel = \"\"\n")
        .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run linesight");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.default_budget_ms: must be positive"), "{stderr}");
    assert!(stderr.contains("pipelines.detect.model: must name a model folder"), "{stderr}");
}
