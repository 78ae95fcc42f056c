//! Counting lines and zones end to end: real NanoDet-g + embedder tracks of real footage
//! (vtest.avi), a line and a zone in the config, counts in every response, from `GetLineCounts`
//! and in the metrics, checked against the crossings and occupants the returned boxes themselves
//! imply; and the line demo's config on a clip of the conveyor video, against its ground truth.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::{TestServer, fixture, http_get, jpeg_request, test_config};
use linesight::api::proto::{self, InspectRequest, InspectResponse, LineCountsRequest};
use linesight::config::{Config, MetricsConfig};
use linesight::detect::{BBox, iou};
use linesight::track::analytics::{AnalyticsSettings, LineSettings, ZoneSettings};
use serde_json::Value;
use tokio_stream::StreamExt;

/// In frames 100..130 one person walks right across x = 660 and another left across it.
const LINE: ([f32; 2], [f32; 2]) = ([LINE_X, 100.0], [LINE_X, 560.0]);
const LINE_X: f32 = 660.0;
/// Two people stand or walk in the top-left corner.
const ZONE: [[f32; 2]; 4] = [[0.0, 0.0], [250.0, 0.0], [250.0, 260.0], [0.0, 260.0]];

fn clip() -> Vec<Vec<u8>> {
    (100..130).map(|f| std::fs::read(fixture(&format!("vtest-clip/frame_{f:04}.jpg"))).expect("clip frame")).collect()
}

fn config() -> Config {
    let mut config = test_config();
    config.server.metrics = Some(MetricsConfig { listen: "127.0.0.1:0".parse().expect("addr") });
    let track = config.pipelines.get_mut("track").and_then(|p| p.as_track_mut()).expect("track");
    track.tracker.classes = vec!["person".into()];
    // Handover, hysteresis and duplicate suppression off: then a crossing is exactly a change of
    // side between two of a track's reported boxes, which the test can recompute from the responses.
    track.analytics = AnalyticsSettings {
        hysteresis_px: 0.0,
        handover_frames: 0,
        duplicate_overlap: 0.0,
        lines: vec![LineSettings {
            name: "walkway".into(),
            cameras: vec!["hall".into()],
            from: LINE.0,
            to: LINE.1,
            forward: [1.0, 0.0],
            classes: vec![],
        }],
        zones: vec![ZoneSettings {
            name: "corner".into(),
            cameras: vec!["hall".into()],
            polygon: ZONE.to_vec(),
            classes: vec!["person".into()],
        }],
        ..AnalyticsSettings::default()
    };
    config
}

async fn stream(server: &TestServer, camera: &str, annotate_from: usize) -> Vec<InspectResponse> {
    let mut client = server.client().await;
    let camera = camera.to_owned();
    let requests = tokio_stream::iter(clip().into_iter().enumerate().map(move |(i, jpeg)| InspectRequest {
        pipeline: "track".into(),
        annotate: i >= annotate_from,
        ..jpeg_request(&camera, 100 + i as u64, jpeg)
    }));
    let mut inbound = client.inspect_stream(requests).await.expect("stream").into_inner();
    let mut responses = Vec::new();
    while let Some(r) = inbound.next().await {
        responses.push(r.expect("response"));
    }
    responses
}

fn center(d: &proto::Detection) -> [f32; 2] {
    let b = d.r#box.as_ref().expect("box");
    [(b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0]
}

/// (track, forward?) for every crossing the boxes imply: consecutive reported centres of one track
/// on opposite sides of x = LINE_X, the step between them meeting the segment's y range.
fn implied_crossings(responses: &[InspectResponse]) -> BTreeMap<u64, Vec<bool>> {
    let mut last: BTreeMap<u64, [f32; 2]> = BTreeMap::new();
    let mut crossings: BTreeMap<u64, Vec<bool>> = BTreeMap::new();
    for r in responses {
        for d in &r.detections {
            let p = center(d);
            if let Some(q) = last.insert(d.track_id, p)
                && (q[0] < LINE_X) != (p[0] < LINE_X)
            {
                let t = (LINE_X - q[0]) / (p[0] - q[0]);
                let y = q[1] + t * (p[1] - q[1]);
                let forward = p[0] > LINE_X;
                let seen = crossings.entry(d.track_id).or_default();
                if (LINE.0[1]..=LINE.1[1]).contains(&y) && !seen.contains(&forward) {
                    seen.push(forward);
                }
            }
        }
    }
    crossings.retain(|_, c| !c.is_empty());
    crossings
}

fn inside_zone(p: [f32; 2]) -> bool {
    p[0] < ZONE[1][0] && p[1] < ZONE[2][1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_crossing_a_line_are_counted_once_per_track_and_direction_as_their_boxes_show() {
    let _machine = crate::common::machine_shared();
    let server = TestServer::start(config()).await;
    let responses = stream(&server, "hall", 29).await;
    assert_eq!(responses.len(), 30);

    // Crossings reported frame by frame equal those the returned boxes imply.
    let implied = implied_crossings(&responses);
    let mut reported: BTreeMap<u64, Vec<bool>> = BTreeMap::new();
    let mut totals = [0u64; 2];
    for r in &responses {
        assert!(r.error.is_none(), "{:?}", r.error);
        let analytics = r.analytics.as_ref().expect("analytics on a camera with a line");
        for c in &analytics.crossings {
            assert_eq!((c.line.as_str(), c.class_name.as_str()), ("walkway", "person"));
            let forward = c.direction == proto::CrossingDirection::Forward as i32;
            assert!(r.detections.iter().any(|d| d.track_id == c.track_id), "crossing of a track not in its frame");
            reported.entry(c.track_id).or_default().push(forward);
            totals[usize::from(!forward)] += 1;
        }
        // The running totals after each frame are the crossings so far.
        let row = analytics.line_totals.iter().find(|t| t.line == "walkway");
        assert_eq!(row.map_or([0, 0], |t| [t.forward, t.backward]), totals, "sequence {}", r.sequence);
        // Zone occupants are the tracks whose centre is inside the zone.
        let inside = r.detections.iter().filter(|d| inside_zone(center(d))).count() as u32;
        let counted: u32 = analytics.zones.iter().filter(|z| z.zone == "corner").map(|z| z.objects).sum();
        assert_eq!(counted, inside, "sequence {}", r.sequence);
    }
    eprintln!("crossings: reported {reported:?}, implied {implied:?}");
    assert_eq!(reported, implied);
    assert!(totals[0] >= 1 && totals[1] >= 1, "the clip crosses the line both ways: {totals:?}");
    let occupied = responses.iter().filter(|r| r.analytics.as_ref().is_some_and(|a| !a.zones.is_empty())).count();
    assert!(occupied >= 5, "the zone holds someone in only {occupied} frames");

    // The annotated frame shows the line: yellow-ish pixels along it, away from any box.
    let last = responses.last().expect("last");
    let frame = image::load_from_memory(&last.annotated_jpeg).expect("annotated JPEG").to_rgb8();
    let on_line = (120..540)
        .step_by(20)
        .filter(|&y| {
            let [r, g, b] = frame.get_pixel(LINE_X as u32, y).0;
            r > 190 && g > 170 && b < 110
        })
        .count();
    assert!(on_line >= 10, "only {on_line} of 21 points along the line are drawn");

    // A camera the line is not drawn on has no analytics; the other camera's counts are its own.
    let other = stream(&server, "lobby", 30).await;
    assert!(other.iter().all(|r| r.analytics.is_none()));

    let mut client = server.client().await;
    let counts = client.get_line_counts(LineCountsRequest::default()).await.expect("counts").into_inner();
    assert_eq!(counts.cameras.len(), 1, "{counts:?}");
    let hall = &counts.cameras[0];
    assert_eq!((hall.pipeline.as_str(), hall.camera_id.as_str()), ("track", "hall"));
    assert_eq!(hall.lines, last.analytics.as_ref().expect("analytics").line_totals);
    let one = LineCountsRequest { pipeline: "track".into(), camera_id: "lobby".into() };
    assert!(client.get_line_counts(one).await.expect("counts").into_inner().cameras.is_empty());
    let wrong = LineCountsRequest { pipeline: "detect".into(), camera_id: String::new() };
    let status = client.get_line_counts(wrong).await.expect_err("detect has no lines");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("`detect` is not a track pipeline"), "{}", status.message());

    // Metrics: the crossings by direction, and the zone's occupants in the last frame.
    let (code, body) = http_get(server.metrics_addr.expect("metrics"), "/metrics", None).await;
    assert_eq!(code, 200);
    for (direction, count) in [("forward", totals[0]), ("backward", totals[1])] {
        let series = format!(
            r#"linesight_line_crossings_total{{pipeline="track",line="walkway",class="person",direction="{direction}"}} {count}"#
        );
        assert!(count == 0 || body.contains(&series), "missing `{series}` in\n{body}");
    }
    let occupants: u32 = last.analytics.as_ref().expect("analytics").zones.iter().map(|z| z.objects).sum();
    if occupants > 0 {
        let series = format!(r#"linesight_zone_objects{{pipeline="track",zone="corner",class="person"}} {occupants}"#);
        assert!(body.contains(&series), "missing `{series}` in\n{body}");
    }
    let seen: BTreeSet<u64> = reported.keys().copied().collect();
    eprintln!("{} tracks crossed; totals forward {} backward {}", seen.len(), totals[0], totals[1]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_naming_a_class_the_detector_lacks_stops_start_up_with_its_key() {
    let mut config = config();
    let track = config.pipelines.get_mut("track").and_then(|p| p.as_track_mut()).expect("track");
    track.analytics.lines[0].classes = vec!["forklift".into()];
    let error = linesight::pipeline::Pipelines::start(&config.service_settings()).err().expect("refused");
    let message = error.to_string();
    assert!(message.contains("analytics.lines[0].classes") && message.contains("`forklift`"), "{message}");
}

/// The line demo's own config (docs/line-demo/linesight.toml: the shipped conveyor YOLO11n, tracked,
/// a counting line across the middle of the belt) on the first 150 frames of the held-out belt
/// video (seed 9001): every part whose visible centre crosses the line is counted once, and no box
/// on no part is counted. Ground truth: the generator's per-frame boxes and identities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conveyor_parts_crossing_the_demo_line_are_each_counted_once() {
    let _machine = crate::common::machine_shared();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/line-demo/linesight.toml")).expect("demo config");
    let mut config = Config::from_toml(&text).expect("demo config parses");
    config.model_dir = Some(root.join("models"));
    // Correctness, not speed: no frame may be shed on a slow machine.
    config.server.default_budget = std::time::Duration::from_secs(30);
    config.engine.intra_threads = 2;
    let line_x = config.pipelines["track"].as_track().expect("track").analytics.lines[0].from[0];
    let server = TestServer::start(config).await;
    let responses = stream_clip(&server, "belt").await;
    assert_eq!(responses.len(), CLIP_FRAMES);

    // Truth: parts whose visible centre was left of the line and later right of it.
    let truth: Vec<Value> = std::fs::read_to_string(fixture("conveyor-clip/ground_truth.jsonl"))
        .expect("ground truth")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let mut left = BTreeSet::new();
    let mut crossed: BTreeMap<u64, String> = BTreeMap::new();
    for frame in &truth {
        for o in frame["objects"].as_array().expect("objects") {
            let b = truth_box(o);
            let id = o["id"].as_u64().expect("id");
            if (b.x1 + b.x2) / 2.0 < line_x {
                left.insert(id);
            } else if left.contains(&id) {
                crossed.insert(id, o["class"].as_str().expect("class").to_owned());
            }
        }
    }
    assert!(crossed.len() >= 5, "the clip should carry parts across the line: {crossed:?}");

    // Each reported crossing lies on a part that crossed, and no part is counted twice.
    let mut counted: BTreeMap<u64, String> = BTreeMap::new();
    for (i, r) in responses.iter().enumerate() {
        assert!(r.error.is_none(), "frame {i}: {:?}", r.error);
        let analytics = r.analytics.as_ref().expect("analytics");
        for c in &analytics.crossings {
            assert_eq!(c.direction, proto::CrossingDirection::Forward as i32, "{c:?}");
            let d = r.detections.iter().find(|d| d.track_id == c.track_id).expect("crossing track in its frame");
            let b = d.r#box.expect("box");
            let boxed = BBox { x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2 };
            let part = truth[i]["objects"]
                .as_array()
                .expect("objects")
                .iter()
                .map(|o| (iou(&boxed, &truth_box(o)), o["id"].as_u64().expect("id")))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .filter(|(overlap, _)| *overlap >= 0.3)
                .map(|(_, id)| id);
            let part = part.unwrap_or_else(|| panic!("frame {i}: track {} counted on no part", c.track_id));
            assert!(crossed.contains_key(&part), "frame {i}: part {part} counted but it never crossed");
            assert!(counted.insert(part, c.class_name.clone()).is_none(), "frame {i}: part {part} counted twice");
        }
    }
    let missed: Vec<&u64> = crossed.keys().filter(|p| !counted.contains_key(p)).collect();
    assert!(missed.is_empty(), "parts not counted: {missed:?} of {crossed:?}");
    let right = counted.iter().filter(|(p, class)| crossed[p] == **class).count();
    eprintln!(
        "{} parts crossed, {} counted, {right} in their class: {counted:?} vs {crossed:?}",
        crossed.len(),
        counted.len()
    );
    // Classes are the detector's: it calls a nut a washer now and then (models/yolo11n-conveyor).
    assert!(right * 4 >= crossed.len() * 3, "only {right} of {} parts counted in their class", crossed.len());
    server.stop().await;
}

const CLIP_FRAMES: usize = 150;

/// The clip through `InspectStream` with at most 4 frames in flight, as a paced camera would send it.
async fn stream_clip(server: &TestServer, camera: &str) -> Vec<InspectResponse> {
    let mut client = server.client().await;
    let frames: Vec<Vec<u8>> = (0..CLIP_FRAMES)
        .map(|f| std::fs::read(fixture(&format!("conveyor-clip/frame_{f:04}.jpg"))).expect("clip frame"))
        .collect();
    let request =
        |i: usize| InspectRequest { pipeline: "track".into(), ..jpeg_request(camera, i as u64 + 1, frames[i].clone()) };
    let (tx, rx) = tokio::sync::mpsc::channel(CLIP_FRAMES);
    let window = 4;
    for i in 0..window {
        tx.send(request(i)).await.expect("queue");
    }
    let mut inbound =
        client.inspect_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("stream").into_inner();
    let mut responses = Vec::new();
    let mut next = window;
    while let Some(r) = inbound.next().await {
        responses.push(r.expect("response"));
        if next < CLIP_FRAMES {
            tx.send(request(next)).await.expect("queue");
            next += 1;
        } else if responses.len() == CLIP_FRAMES {
            break;
        }
    }
    drop(tx);
    responses
}

fn truth_box(o: &Value) -> BBox {
    let b: Vec<f32> = o["box"].as_array().expect("box").iter().filter_map(Value::as_f64).map(|v| v as f32).collect();
    BBox { x1: b[0], y1: b[1], x2: b[2], y2: b[3] }
}
