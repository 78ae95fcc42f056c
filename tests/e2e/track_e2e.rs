//! The `track` pipeline end to end: real server, real gRPC client, real NanoDet-g + MobileNetV2
//! embedder, real footage (30 consecutive frames of OpenCV's vtest.avi).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::{TestServer, fixture, jpeg_request, test_config};
use linesight::api::proto::{self, InspectRequest, InspectResponse, TrackingStatsRequest};
use tokio_stream::StreamExt;

fn clip() -> Vec<Vec<u8>> {
    (100..130).map(|f| std::fs::read(fixture(&format!("vtest-clip/frame_{f:04}.jpg"))).expect("clip frame")).collect()
}

fn track_request(camera: &str, sequence: u64, jpeg: Vec<u8>) -> InspectRequest {
    InspectRequest { pipeline: "track".into(), ..jpeg_request(camera, sequence, jpeg) }
}

fn iou(a: &proto::Box, b: &proto::Box) -> f32 {
    let iw = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let ih = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let inter = iw * ih;
    inter / ((a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter)
}

/// Streams the clip for one camera and returns the responses in order.
async fn stream_clip(server: &TestServer, camera: &str) -> Vec<InspectResponse> {
    let mut client = server.client().await;
    let frames = clip();
    let camera = camera.to_owned();
    let requests = tokio_stream::iter(
        frames.into_iter().enumerate().map(move |(i, jpeg)| track_request(&camera, 100 + i as u64, jpeg)),
    );
    let mut inbound = client.inspect_stream(requests).await.expect("stream").into_inner();
    let mut responses = Vec::new();
    while let Some(r) = inbound.next().await {
        responses.push(r.expect("response"));
    }
    responses
}

/// Share of track ids kept between consecutive frames by boxes that clearly continue (IoU ≥ 0.5).
fn id_continuity(responses: &[InspectResponse]) -> (usize, usize) {
    let (mut kept, mut pairs) = (0, 0);
    for w in responses.windows(2) {
        for d in &w[1].detections {
            let b = d.r#box.as_ref().expect("box");
            let best = w[0]
                .detections
                .iter()
                .map(|p| (iou(p.r#box.as_ref().expect("box"), b), p.track_id))
                .max_by(|x, y| x.0.total_cmp(&y.0));
            if let Some((overlap, id)) = best
                && overlap >= 0.5
            {
                pairs += 1;
                kept += usize::from(id == d.track_id);
            }
        }
    }
    (kept, pairs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vtest_people_keep_their_track_ids_over_a_stream() {
    let _machine = crate::common::machine_shared();
    let mut config = test_config();
    config.pipelines.get_mut("track").and_then(|p| p.as_track_mut()).expect("track").tracker.classes =
        vec!["person".into()];
    let server = TestServer::start(config).await;
    let responses = stream_clip(&server, "hall").await;
    assert_eq!(responses.len(), 30);
    for (i, r) in responses.iter().enumerate() {
        assert!(r.error.is_none(), "frame {i}: {:?}", r.error);
        assert_eq!(r.sequence, 100 + i as u64, "responses in request order");
        assert_eq!(r.tracking, proto::Tracking::Applied as i32, "frame {i}");
        assert_eq!(r.pipeline, "track");
        assert!(r.detections.iter().all(|d| d.track_id > 0 && d.class_name == "person"));
        let t = r.timings.as_ref().expect("timings");
        assert!(t.embed_us > 0 || r.detections.is_empty() && i < 2, "frame {i} has no embed time");
    }
    // n_init = 3: nothing is confirmed before the third frame, people are tracked from then on.
    assert!(responses[0].detections.is_empty() && responses[1].detections.is_empty());
    let tracked_later = responses[2..].iter().filter(|r| r.detections.len() >= 4).count();
    assert!(tracked_later >= 25, "only {tracked_later} of 28 frames track at least 4 people");

    let (kept, pairs) = id_continuity(&responses);
    assert!(pairs >= 100, "{pairs} continuing boxes");
    assert!(kept as f64 >= 0.98 * pairs as f64, "ids kept on {kept} of {pairs} continuing boxes");
    let ids: BTreeSet<u64> = responses.iter().flat_map(|r| r.detections.iter().map(|d| d.track_id)).collect();
    let most_people = responses.iter().map(|r| r.detections.len()).max().unwrap_or(0);
    eprintln!("ids kept on {kept} of {pairs} continuing boxes; {} ids; at most {most_people} people", ids.len());
    assert!(ids.len() <= most_people + 4, "{} ids for at most {most_people} people at once: {ids:?}", ids.len());

    let mut client = server.client().await;
    let stats = client.get_tracking_stats(TrackingStatsRequest {}).await.expect("stats").into_inner();
    let track = stats.pipelines.iter().find(|p| p.pipeline == "track").expect("track stats");
    assert_eq!(track.active_cameras, 1);
    assert!(track.confirmed_tracks >= 4, "{track:?}");
    assert_eq!(track.frames_in_flight, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cameras_streaming_at_once_each_get_their_own_tracks() {
    let _machine = crate::common::machine_shared();
    let server = TestServer::start(test_config()).await;
    let (a, b, c) = tokio::join!(stream_clip(&server, "a"), stream_clip(&server, "b"), stream_clip(&server, "c"));
    // Same footage, separate trackers: identical ids and boxes per camera, ids from 1 in each.
    for other in [&b, &c] {
        for (x, y) in a.iter().zip(other.iter()) {
            let ids = |r: &InspectResponse| r.detections.iter().map(|d| d.track_id).collect::<Vec<_>>();
            assert_eq!(ids(x), ids(y), "sequence {}", x.sequence);
        }
    }
    assert_eq!(a[2].detections.iter().map(|d| d.track_id).min(), Some(1));
    let mut client = server.client().await;
    let stats = client.get_tracking_stats(TrackingStatsRequest {}).await.expect("stats").into_inner();
    assert_eq!(stats.pipelines.iter().find(|p| p.pipeline == "track").map(|p| p.active_cameras), Some(3));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_duplicate_frames_are_reported_not_applied() {
    let _machine = crate::common::machine_shared();
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let frames = clip();
    let send = |seq: u64, i: usize| track_request("gate-3", seq, frames[i].clone());
    let r = client.inspect(send(10, 0)).await.expect("frame 10").into_inner();
    assert_eq!(r.tracking, proto::Tracking::Applied as i32);
    let r = client.inspect(send(10, 1)).await.expect("frame 10 again").into_inner();
    assert_eq!(r.tracking, proto::Tracking::Duplicate as i32);
    let r = client.inspect(send(7, 2)).await.expect("frame 7").into_inner();
    assert_eq!(r.tracking, proto::Tracking::Late as i32);
    assert_eq!(r.last_applied_sequence, 10);
    // Not applied, but the client still gets the frame's (untracked) detections.
    assert!(!r.detections.is_empty() && r.detections.iter().all(|d| d.track_id == 0));
    let r = client.inspect(send(11, 3)).await.expect("frame 11").into_inner();
    assert_eq!(r.tracking, proto::Tracking::Applied as i32);
    let stats = client.get_tracking_stats(TrackingStatsRequest {}).await.expect("stats").into_inner();
    let t = stats.pipelines.iter().find(|p| p.pipeline == "track").expect("track stats");
    assert_eq!((t.frames_late, t.frames_duplicate), (1, 1));
    // The detect pipeline on the same server reports no tracking at all.
    let r = client.inspect(jpeg_request("gate-3", 12, frames[4].clone())).await.expect("detect").into_inner();
    assert_eq!(r.tracking, proto::Tracking::Unspecified as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_past_max_cameras_is_refused_with_a_clear_status_and_the_others_are_served() {
    let _machine = crate::common::machine_shared();
    let mut config = test_config();
    config.pipelines.get_mut("track").and_then(|p| p.as_track_mut()).expect("track").tracker.max_cameras = 2;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let frames = clip();
    for camera in ["line-1", "line-2"] {
        client.inspect(track_request(camera, 0, frames[0].clone())).await.expect("a camera within the cap");
    }
    let refused = client.inspect(track_request("line-3", 0, frames[0].clone())).await.expect_err("a third camera");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_cameras") && refused.message().contains("2 cameras"),
        "{}",
        refused.message()
    );
    // The cameras already held go on being tracked.
    let r = client.inspect(track_request("line-1", 1, frames[1].clone())).await.expect("a held camera").into_inner();
    assert_eq!(r.tracking, proto::Tracking::Applied as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cameras_are_evicted() {
    let _machine = crate::common::machine_shared();
    let mut config = test_config();
    config.pipelines.get_mut("track").and_then(|p| p.as_track_mut()).expect("track").tracker.camera_idle =
        std::time::Duration::from_secs(1);
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let frames = clip();
    for seq in 0..3 {
        client.inspect(track_request("brief", seq, frames[seq as usize].clone())).await.expect("frame");
    }
    let active = |s: &proto::TrackingStatsResponse| {
        s.pipelines.iter().find(|p| p.pipeline == "track").map(|p| (p.active_cameras, p.cameras_evicted))
    };
    let stats = client.get_tracking_stats(TrackingStatsRequest {}).await.expect("stats").into_inner();
    assert_eq!(active(&stats), Some((1, 0)));
    // Evicted after 1 s idle by a sweep every second: poll, don't guess.
    let mut last = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = client.get_tracking_stats(TrackingStatsRequest {}).await.expect("stats").into_inner();
        last = active(&stats);
        if last == Some((0, 1)) {
            break;
        }
    }
    assert_eq!(last, Some((0, 1)));
    // The camera starts over: sequence 0 is no longer late.
    let r = client.inspect(track_request("brief", 0, frames[0].clone())).await.expect("frame").into_inner();
    assert_eq!(r.tracking, proto::Tracking::Applied as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pipelines_describes_the_track_pipeline() {
    let _machine = crate::common::machine_shared();
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let list = client.list_pipelines(proto::ListPipelinesRequest {}).await.expect("list").into_inner();
    let by_name: BTreeMap<_, _> = list.pipelines.iter().map(|p| (p.name.as_str(), p)).collect();
    let track = by_name["track"];
    assert_eq!(track.detector, "detect");
    assert_eq!(track.model, "nanodet-g + mobilenetv2-reid");
    assert!(track.description.contains("128x256"), "{}", track.description);
    assert_eq!(by_name["detect"].detector, "");
    server.stop().await;
}
