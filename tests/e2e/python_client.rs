//! A Python grpcio client that uses only server reflection (no .proto) finds the API, checks health
//! and gets the people in a vtest frame. Needs the venv made by `scripts/setup`.

use std::path::PathBuf;

use crate::common::{TestServer, fixture, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reflection_client_gets_people_in_vtest_frame() {
    let _machine = crate::common::machine_shared();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(python.is_file(), "{} missing: run scripts/setup", python.display());
    let server = TestServer::start(test_config()).await;
    let address = server.addr.to_string();
    let image = fixture("vtest/frame_0250.jpg");
    let script = root.join("tests/python/reflection_client.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&address)
        .arg(&image)
        .output()
        .await
        .expect("run python client");
    assert!(output.status.success(), "python client failed: {}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json summary");
    let services: Vec<&str> =
        summary["services"].as_array().expect("services").iter().filter_map(|s| s.as_str()).collect();
    assert!(services.contains(&"linesight.v1.Inspection"), "{services:?}");
    assert!(services.contains(&"grpc.health.v1.Health"), "{services:?}");
    assert_eq!(summary["health"], 1, "health SERVING");
    assert_eq!(summary["camera_id"], "python-reflection");
    assert_eq!(summary["sequence"], 250);
    let people =
        summary["detections"].as_array().expect("detections").iter().filter(|d| d["class_name"] == "person").count();
    assert!(people >= 6, "people in frame 250: {people}; {summary}");
    server.stop().await;
}
