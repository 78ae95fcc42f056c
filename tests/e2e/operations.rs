//! Operating the server: health while loading and on failure, metrics, per-camera admission, and
//! graceful shutdown of the real binary on SIGTERM.

use std::time::Duration;

use crate::common::{ServerProcess, TestServer, http_get, jpeg_request, test_config, vtest_jpeg};
use linesight::api::proto::InspectRequest;
use linesight::api::proto::inspection_client::InspectionClient;
use linesight::config::MetricsConfig;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect")
}

fn status_of(response: HealthCheckResponse) -> ServingStatus {
    ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_models_load_then_serving() {
    let _machine = crate::common::machine_shared();
    let server = TestServer::start_loading(test_config()).await;
    let channel = channel(server.addr).await;
    let mut health = HealthClient::new(channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest { service: "linesight.v1.Inspection".into() })
        .await
        .expect("watch")
        .into_inner();
    // Loading two models and warming them up takes far longer than connecting.
    let first = watch.message().await.expect("watch").expect("first status");
    assert_eq!(status_of(first), ServingStatus::NotServing);
    let mut inspection = InspectionClient::new(channel.clone());
    // Sent as soon as the server says NOT_SERVING, seconds before its models are warm.
    let early = inspection.inspect(jpeg_request("cam-early", 0, vtest_jpeg(250))).await;
    let status = early.expect_err("a frame sent while the models load is refused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("loading"), "{status:?}");
    let next = tokio::time::timeout(Duration::from_secs(120), watch.message()).await.expect("loaded in time");
    assert_eq!(status_of(next.expect("watch").expect("second status")), ServingStatus::Serving);
    let overall = health.check(HealthCheckRequest { service: String::new() }).await.expect("check");
    assert_eq!(status_of(overall.into_inner()), ServingStatus::Serving);
    let served = inspection.inspect(jpeg_request("cam-late", 0, vtest_jpeg(250))).await.expect("served once loaded");
    assert!(crate::common::persons(served.get_ref()) >= 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_to_load_ends_serve_with_the_reason() {
    let _machine = crate::common::machine_shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config();
    config.model_dir = Some(dir.path().to_owned());
    let server = TestServer::start_loading(config).await;
    let error = server.ended(Duration::from_secs(60)).await.expect_err("no models to load");
    assert!(error.to_string().contains("loading models"), "{error}");
}

/// One metric line's value, e.g. `linesight_frames_total{pipeline="detect",outcome="within_budget"}`.
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_stages_batches_outcomes_cameras_and_model_states() {
    let _machine = crate::common::machine_shared();
    let mut config = test_config();
    config.server.metrics = Some(MetricsConfig { listen: "127.0.0.1:0".parse().expect("addr") });
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    for sequence in 0..3 {
        client.inspect(jpeg_request("cam-1", sequence, vtest_jpeg(250))).await.expect("detect");
        let mut track = jpeg_request("cam-2", sequence, vtest_jpeg(250));
        track.pipeline = "track".into();
        client.inspect(track).await.expect("track");
    }
    let mut bad = jpeg_request("cam-3", 0, b"not an image".to_vec());
    bad.pipeline = "no-such-pipeline".into();
    client.inspect(bad).await.expect_err("unknown pipeline");
    // A lone frame on a budget it cannot meet: served, and counted over budget.
    let late = InspectRequest { budget_ms: 1, ..jpeg_request("cam-4", 0, vtest_jpeg(250)) };
    client.inspect(late).await.expect("a lone frame is served");

    // A frame's hold (its place in flight) is released as its last owner lets go, which can be
    // just after its answer reached the client: read the metrics once the server has settled.
    let settled = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let (status, body) = http_get(server.metrics_addr.expect("metrics"), "/metrics", None).await;
        assert_eq!(status, 200);
        if metric(&body, "linesight_frames_in_flight") == Some(0.0) || std::time::Instant::now() > settled {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let get = |series: &str| metric(&body, series).unwrap_or_else(|| panic!("{series} missing from\n{body}"));
    let stage = |pipeline: &str, model: &str, stage: &str| {
        get(&format!(
            r#"linesight_stage_duration_seconds_count{{pipeline="{pipeline}",model="{model}",stage="{stage}"}}"#
        ))
    };
    assert_eq!(stage("detect", "nanodet-g", "inference"), 4.0);
    assert_eq!(stage("detect", "nanodet-g", "decode"), 4.0);
    assert_eq!(stage("track", "mobilenetv2-reid", "embed"), 3.0);
    assert_eq!(stage("track", "mobilenetv2-reid", "track"), 3.0);
    assert_eq!(get(r#"linesight_frame_batch_size_count{pipeline="detect",model="nanodet-g"}"#), 4.0);
    assert_eq!(get(r#"linesight_frames_total{pipeline="detect",outcome="within_budget"}"#), 3.0);
    assert_eq!(get(r#"linesight_frames_total{pipeline="(unknown)",outcome="error"}"#), 1.0);
    assert_eq!(get(r#"linesight_frames_over_budget_total{pipeline="detect"}"#), 1.0, "{body}");
    assert_eq!(metric(&body, r#"linesight_frames_shed_total{pipeline="detect",reason="budget"}"#).unwrap_or(0.0), 0.0);
    assert_eq!(get(r#"linesight_active_cameras{pipeline="track"}"#), 1.0);
    assert!(get(r#"linesight_active_tracks{pipeline="track"}"#) >= 3.0);
    assert_eq!(get(r#"linesight_queue_depth{pipeline="detect"}"#), 0.0);
    assert_eq!(get(r#"linesight_model_state{model="nanodet-g",state="ready"}"#), 1.0);
    assert_eq!(get(r#"linesight_model_state{model="nanodet-g",state="failing"}"#), 0.0);
    assert_eq!(get(r#"linesight_model_state{model="mobilenetv2-reid",state="ready"}"#), 1.0);
    assert_eq!(get("linesight_frames_in_flight"), 0.0);
    assert_eq!(get("linesight_connections_open"), 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_past_its_in_flight_cap_is_refused_while_others_are_served() {
    let _machine = crate::common::machine_shared();
    let mut config = test_config();
    config.server.max_in_flight_per_camera = 2;
    let server = TestServer::start(config).await;
    let client = server.client().await;
    let frame = vtest_jpeg(250);
    let calls: Vec<_> = (0..8)
        .map(|sequence| {
            let mut client = client.clone();
            let request = jpeg_request("cam-busy", sequence, frame.clone());
            tokio::spawn(async move { client.inspect(request).await })
        })
        .collect();
    let mut other = client.clone();
    let other_camera = other.inspect(jpeg_request("cam-calm", 0, frame.clone())).await;
    let (mut served, mut refused) = (0, 0);
    for call in calls {
        match call.await.expect("task") {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("server.max_in_flight_per_camera"), "{status:?}");
                refused += 1;
            }
        }
    }
    assert!(served >= 2 && refused >= 1, "served {served}, refused {refused}");
    assert!(other_camera.is_ok(), "another camera was refused: {other_camera:?}");
    server.stop().await;
}

/// SIGTERM: the stream's frames already read are answered, the stream ends with UNAVAILABLE,
/// the port closes and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_frames_ends_streams_with_unavailable_and_exits_zero() {
    let _machine = crate::common::machine_shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = "[server]\ndefault_budget_ms = 30000\nshutdown_grace_ms = 20000\nstream_window = 4\n";
    let mut server = ServerProcess::start(config, dir.path()).await;
    let addr = server.addr;
    let mut client = InspectionClient::new(channel(addr).await);
    let (tx, rx) = tokio::sync::mpsc::channel::<InspectRequest>(16);
    let frame = vtest_jpeg(250);
    for sequence in 0..8 {
        tx.send(jpeg_request("cam-1", sequence, frame.clone())).await.expect("queue frame");
    }
    let mut responses =
        client.inspect_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("stream").into_inner();
    let first = responses.message().await.expect("first answer").expect("first answer");
    assert_eq!(first.sequence, 0);
    // The stream stays open (tx is held) while the server is told to stop.
    server.terminate();

    let mut answered = vec![first.sequence];
    let ending = loop {
        match responses.message().await {
            Ok(Some(response)) => {
                assert!(response.error.is_none(), "frame {} failed: {:?}", response.sequence, response.error);
                answered.push(response.sequence);
            }
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ending.code(), tonic::Code::Unavailable, "{ending:?}");
    assert!(ending.message().contains("shutting down"), "{ending:?}");
    let expected: Vec<u64> = (0..answered.len() as u64).collect();
    assert_eq!(answered, expected, "answers in order, none skipped");
    // With a window of 4, frames 0..=3 were read before the first answer left: all are answered.
    assert!(answered.len() >= 4, "only {answered:?} answered");
    eprintln!("answered {answered:?}, then: {}", ending.message());
    drop(tx);

    let exit =
        tokio::time::timeout(Duration::from_secs(30), server.child.wait()).await.expect("exits in time").expect("wait");
    assert_eq!(exit.code(), Some(0), "exit status");
    let lines = server.log.await.expect("log");
    assert!(lines.iter().any(|l| l.contains("Shutting down.")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("Stopped.")), "{lines:?}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the port still accepts connections");
}
