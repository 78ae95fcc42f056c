//! End to end over gRPC on 127.0.0.1: real server, real client, real NanoDet-g on real frames.

use std::time::Duration;

use crate::common::{TestServer, jpeg_request, persons, test_config, vtest_jpeg};
use linesight::api::proto::{self, Image, InspectRequest, ListPipelinesRequest};
use tonic::Code;

fn raw_request(
    camera: &str,
    encoding: proto::image::Encoding,
    data: Vec<u8>,
    width: u32,
    height: u32,
) -> InspectRequest {
    InspectRequest {
        camera_id: camera.into(),
        sequence: 1,
        pipeline: String::new(),
        image: Some(Image { data: data.into(), encoding: encoding as i32, width, height }),
        budget_ms: 0,
        annotate: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vtest_frame_250_yields_people_with_timings() {
    let _machine = crate::common::machine_shared();
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let mut request = jpeg_request("cam-1", 250, vtest_jpeg(250));
    request.annotate = true;
    let response = client.inspect(request).await.expect("inspect").into_inner();
    assert_eq!(response.camera_id, "cam-1");
    assert_eq!(response.sequence, 250);
    assert_eq!((response.image_width, response.image_height), (768, 576));
    assert!(persons(&response) >= 6, "expected the walkers of frame 250, got {:?}", response.detections);
    for d in &response.detections {
        let b = d.r#box.expect("box");
        assert!(0.0 <= b.x1 && b.x1 < b.x2 && b.x2 <= 768.0 && 0.0 <= b.y1 && b.y1 < b.y2 && b.y2 <= 576.0, "{b:?}");
        assert!(d.score > 0.35 && d.track_id == 0);
    }
    let t = response.timings.expect("timings");
    assert!(t.decode_us > 0 && t.preprocess_us > 0 && t.inference_us > 0 && t.postprocess_us > 0);
    assert!(t.total_us >= t.decode_us + t.preprocess_us + t.inference_us + t.postprocess_us);
    assert_eq!(response.verdict, proto::Verdict::WithinBudget as i32);
    assert!(response.batch_size >= 1);
    let annotated = image::load_from_memory(&response.annotated_jpeg).expect("annotated JPEG decodes");
    assert_eq!((annotated.width(), annotated.height()), (768, 576));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_encoding_of_the_same_pixels_gives_the_same_detections() {
    let _machine = crate::common::machine_shared();
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let jpeg = vtest_jpeg(100);
    // The pixels the service decodes the JPEG to (libjpeg-turbo's), sent again in every other encoding.
    let limits = linesight::imaging::DecodeLimits { max_pixels: 40_000_000, max_side: 16_384 };
    let rgb = linesight::imaging::decode(&jpeg, linesight::imaging::ImageEncoding::Jpeg, 0, 0, limits).expect("decode");
    let (w, h) = rgb.dimensions();
    let bgr: Vec<u8> = rgb.as_raw().chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
    let mut png = Vec::new();
    rgb.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");

    let from_jpeg = client.inspect(jpeg_request("c", 1, jpeg.clone())).await.expect("jpeg").into_inner();
    let mut sniffed = jpeg_request("c", 1, jpeg);
    if let Some(image) = sniffed.image.as_mut() {
        image.encoding = proto::image::Encoding::Unspecified as i32;
    }
    let requests = [
        sniffed,
        raw_request("c", proto::image::Encoding::Png, png, 0, 0),
        raw_request("c", proto::image::Encoding::RawRgb8, rgb.as_raw().clone(), w, h),
        raw_request("c", proto::image::Encoding::RawBgr8, bgr, w, h),
    ];
    assert!(persons(&from_jpeg) >= 4);
    for request in requests {
        let encoding = request.image.as_ref().map(|i| i.encoding);
        let response = client.inspect(request).await.expect("inspect").into_inner();
        assert_eq!(response.detections, from_jpeg.detections, "encoding {encoding:?}");
    }
    let gray = image::DynamicImage::ImageRgb8(rgb).into_luma8();
    let response = client
        .inspect(raw_request("c", proto::image::Encoding::RawGray8, gray.into_raw(), w, h))
        .await
        .expect("gray")
        .into_inner();
    assert!(persons(&response) >= 3, "grey frame still shows people: {:?}", response.detections);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_pipelines_reports_model_classes_and_batching() {
    let _machine = crate::common::machine_shared();
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let response = client.list_pipelines(ListPipelinesRequest {}).await.expect("list").into_inner();
    assert_eq!(response.default_pipeline, "detect");
    let detect = &response.pipelines[0];
    assert_eq!((detect.name.as_str(), detect.model.as_str()), ("detect", "nanodet-g"));
    assert_eq!(detect.classes.len(), 80);
    assert_eq!(detect.classes[0], "person");
    assert_eq!((detect.input_width, detect.input_height, detect.max_batch), (416, 416, 8));
    assert_eq!(detect.budget_ms, 30_000);
    server.stop().await;
}

/// Each bad input gets its own status naming the problem, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inputs_get_precise_statuses_and_server_keeps_serving() {
    let _machine = crate::common::machine_shared();
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let jpeg = vtest_jpeg(0);

    let mut corrupt = jpeg[..200].to_vec();
    corrupt.extend(std::iter::repeat_n(0x5a, 5000));
    let truncated = jpeg[..jpeg.len() / 3].to_vec();
    let mut bomb = Vec::new();
    image::RgbImage::new(1, 1).write_to(&mut std::io::Cursor::new(&mut bomb), image::ImageFormat::Png).expect("png");
    bomb[16..20].copy_from_slice(&10_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&10_000u32.to_be_bytes());
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());

    use proto::image::Encoding as E;
    let mut unknown_pipeline = jpeg_request("c", 1, jpeg.clone());
    unknown_pipeline.pipeline = "segment-everything".into();
    let mut no_image = jpeg_request("c", 1, jpeg.clone());
    no_image.image = None;
    let mut bad_encoding = jpeg_request("c", 1, jpeg.clone());
    if let Some(i) = bad_encoding.image.as_mut() {
        i.encoding = 42;
    }
    let cases: Vec<(&str, InspectRequest, Code, &str)> = vec![
        ("corrupt JPEG", jpeg_request("c", 1, corrupt), Code::InvalidArgument, "not a valid JPEG"),
        ("truncated JPEG", jpeg_request("c", 1, truncated), Code::InvalidArgument, "not a valid JPEG"),
        (
            "PNG bytes declared JPEG",
            raw_request("c", E::Jpeg, bomb.clone(), 0, 0),
            Code::InvalidArgument,
            "not a valid JPEG",
        ),
        (
            "decompression bomb",
            raw_request("c", E::Png, bomb, 0, 0),
            Code::InvalidArgument,
            "100000000 pixels, over the limit of 40000000 pixels",
        ),
        ("empty data", raw_request("c", E::Unspecified, vec![], 0, 0), Code::InvalidArgument, "image.data is empty"),
        (
            "not an image",
            raw_request("c", E::Unspecified, b"GIF89a....".to_vec(), 0, 0),
            Code::InvalidArgument,
            "neither JPEG nor PNG",
        ),
        (
            "raw length mismatch",
            raw_request("c", E::RawRgb8, vec![0; 100], 10, 10),
            Code::InvalidArgument,
            "holds 100 bytes but 10x10 RAW_RGB8 needs 300",
        ),
        (
            "raw zero width",
            raw_request("c", E::RawGray8, vec![0; 10], 0, 10),
            Code::InvalidArgument,
            "must be positive",
        ),
        (
            "raw absurd size",
            raw_request("c", E::RawGray8, vec![0; 10], 100_000, 100_000),
            Code::InvalidArgument,
            "exceeds the limit",
        ),
        ("unknown encoding", bad_encoding, Code::InvalidArgument, "image.encoding 42"),
        ("missing image", no_image, Code::InvalidArgument, "image is missing"),
        ("empty camera id", jpeg_request("", 1, jpeg.clone()), Code::InvalidArgument, "camera_id is empty"),
        (
            "unknown pipeline",
            unknown_pipeline,
            Code::NotFound,
            "pipeline `segment-everything` does not exist; available: detect",
        ),
    ];
    for (what, request, code, message) in cases {
        let status = client.inspect(request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(message), "{what}: {:?} lacks {message:?}", status.message());
    }
    let fine = client.inspect(jpeg_request("c", 2, jpeg)).await.expect("server still serves").into_inner();
    assert!(persons(&fine) >= 3);
    server.stop().await;
}

/// `max_message_bytes` is enforced exactly: a request of exactly the limit is served, one byte more
/// is RESOURCE_EXHAUSTED, on Inspect and on InspectStream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_size_limit_holds_at_the_byte() {
    let _machine = crate::common::machine_shared();
    use prost::Message;
    let limit = 1 << 20;
    let mut config = test_config();
    config.server.max_message_bytes = limit;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;

    // A valid grey frame whose encoded request is exactly `total` bytes: pick a width x height just
    // under the total, then fill the rest with camera_id bytes.
    let sized = |total: usize| -> InspectRequest {
        let (width, rows) = (900..1100)
            .map(|w| (w, (total - 100) / w))
            .find(|&(w, r)| total - 100 - w * r < 40)
            .expect("a fitting frame size");
        let mut request =
            raw_request("c", proto::image::Encoding::RawGray8, vec![128; width * rows], width as u32, rows as u32);
        let base = request.encoded_len();
        assert!(total > base && total - base < 120, "base {base}");
        // One camera_id byte adds one encoded byte while its length prefix stays one byte (< 128).
        request.camera_id = "c".repeat(1 + total - base);
        assert_eq!(request.encoded_len(), total);
        request
    };
    let at_limit = client.inspect(sized(limit)).await.expect("exactly at the limit is served").into_inner();
    assert!(at_limit.image_width >= 900 && at_limit.image_height > 900, "{at_limit:?}");
    let status = client.inspect(sized(limit + 1)).await.expect_err("one byte over");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&format!("{} bytes, over the server limit of {limit} bytes", limit + 1)),
        "{}",
        status.message()
    );

    let frames = vec![sized(limit), sized(limit + 1)];
    let mut responses = client.inspect_stream(tokio_stream::iter(frames)).await.expect("stream").into_inner();
    let first = responses.message().await.expect("first frame answered").expect("first");
    assert!(first.error.is_none(), "{:?}", first.error);
    let status = responses.message().await.expect_err("oversized frame ends the stream");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    server.stop().await;
}

/// Responses come back in request order, bad frames are answered in-band, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_answers_in_order_with_in_band_errors() {
    let _machine = crate::common::machine_shared();
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let frames = [0, 100, 250, 400, 600];
    let mut requests = Vec::new();
    for sequence in 0..15u64 {
        let request = if sequence % 5 == 3 {
            jpeg_request("cam-s", sequence, b"\xff\xd8\xff garbage".to_vec())
        } else {
            jpeg_request("cam-s", sequence, vtest_jpeg(frames[sequence as usize % frames.len()]))
        };
        requests.push(request);
    }
    let mut responses = client.inspect_stream(tokio_stream::iter(requests)).await.expect("stream").into_inner();
    let mut seen = Vec::new();
    while let Some(response) = responses.message().await.expect("no stream error") {
        if response.sequence % 5 == 3 {
            let error = response.error.as_ref().expect("bad frame answered with an error");
            assert_eq!(error.code, Code::InvalidArgument as i32);
            assert!(error.message.contains("not a valid JPEG"), "{}", error.message);
        } else {
            assert!(response.error.is_none(), "{:?}", response.error);
            assert!(persons(&response) >= 1);
        }
        seen.push(response.sequence);
    }
    assert_eq!(seen, (0..15).collect::<Vec<_>>());
    server.stop().await;
}

/// Under concurrent load from many cameras the batcher forms batches larger than one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cameras_are_batched_together() {
    let _machine = crate::common::machine_shared();
    let mut config = test_config();
    if let Some(p) = config.pipelines.get_mut("detect") {
        p.batching_mut().max_batch = 4;
        p.batching_mut().max_queue_delay = std::time::Duration::from_micros(50_000);
    }
    let server = TestServer::start(config).await;
    let client = server.client().await;
    let jpeg = vtest_jpeg(400);
    let mut tasks = Vec::new();
    for camera in 0..12 {
        let mut client = client.clone();
        let request = jpeg_request(&format!("cam-{camera}"), camera, jpeg.clone());
        tasks.push(tokio::spawn(async move { client.inspect(request).await.map(|r| r.into_inner()) }));
    }
    let mut sizes = Vec::new();
    let mut reference: Option<Vec<proto::Detection>> = None;
    for task in tasks {
        let response = task.await.expect("join").expect("inspect");
        sizes.push(response.batch_size);
        // Batching must not change any frame's answer.
        match &reference {
            None => reference = Some(response.detections.clone()),
            Some(first) => assert_eq!(&response.detections, first),
        }
    }
    assert!(sizes.iter().any(|&s| s > 1), "no batch formed: {sizes:?}");
    assert!(sizes.iter().all(|&s| s <= 4), "batch over max_batch: {sizes:?}");
    server.stop().await;
}

/// A frame that cannot make its budget, or the client's gRPC deadline, is shed before inference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_frame_on_an_impossible_budget_is_served_late_and_a_passed_grpc_deadline_is_not_served() {
    let _machine = crate::common::machine_shared();
    let mut config = test_config();
    config.server.metrics = Some(linesight::config::MetricsConfig { listen: "127.0.0.1:0".parse().expect("addr") });
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    // Measure the service time first, so that every admission decision below has an estimate.
    client.inspect(jpeg_request("c", 0, vtest_jpeg(0))).await.expect("warm");

    // Nothing competes with it: it runs, and is answered over budget rather than refused.
    let mut tight = jpeg_request("c", 1, vtest_jpeg(0));
    tight.budget_ms = 1;
    let late = client.inspect(tight).await.expect("a lone frame is served").into_inner();
    assert_eq!(late.verdict, proto::Verdict::OverBudget as i32);
    assert!(!late.detections.is_empty(), "served in full: {late:?}");

    // The client's own deadline is another matter: past it nobody waits for the answer.
    let mut deadline = tonic::Request::new(jpeg_request("c", 2, vtest_jpeg(0)));
    deadline.set_timeout(Duration::from_millis(8));
    let status = client.inspect(deadline).await.expect_err("8 ms deadline");
    // The server answers DEADLINE_EXCEEDED just before the deadline and counts the frame as shed
    // for it; tonic's client reports its own timer, should it fire before that answer arrives, as
    // CANCELLED, so the server's count is the check.
    match status.code() {
        Code::DeadlineExceeded => assert!(status.message().contains("before the client's gRPC deadline"), "{status:?}"),
        Code::Cancelled => assert_eq!(status.message(), "Timeout expired", "the client's own timer: {status:?}"),
        _ => panic!("{status:?}"),
    }
    let metrics = server.metrics_addr.expect("metrics listen");
    let shed = r#"linesight_frames_shed_total{pipeline="detect",reason="client_deadline"} 1"#;
    let counted = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (_, body) = crate::common::http_get(metrics, "/metrics", None).await;
            if body.lines().any(|l| l == shed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(counted.await.is_ok(), "`{shed}` never appeared in /metrics");

    // In a stream a frame that cannot make its budget is answered in band (late, or shed if the
    // other frame competed with it) and the stream goes on.
    let mut hopeless = jpeg_request("c", 3, vtest_jpeg(0));
    hopeless.budget_ms = 1;
    let frames = vec![hopeless, jpeg_request("c", 4, vtest_jpeg(0))];
    let mut responses = client.inspect_stream(tokio_stream::iter(frames)).await.expect("stream").into_inner();
    let first = responses.message().await.expect("ok").expect("first");
    match proto::Verdict::try_from(first.verdict) {
        Ok(proto::Verdict::OverBudget) => assert!(first.error.is_none(), "{first:?}"),
        Ok(proto::Verdict::Shed) => {
            assert_eq!(first.error.as_ref().map(|e| e.code), Some(Code::DeadlineExceeded as i32), "{first:?}");
        }
        other => panic!("a 1 ms frame answered {other:?}: {first:?}"),
    }
    let second = responses.message().await.expect("ok").expect("second");
    assert_eq!(second.verdict, proto::Verdict::WithinBudget as i32);
    server.stop().await;
}

/// A full queue answers RESOURCE_EXHAUSTED at once; every request still gets exactly one answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_queue_answers_resource_exhausted() {
    let _machine = crate::common::machine_shared();
    let mut config = test_config();
    if let Some(p) = config.pipelines.get_mut("detect") {
        p.batching_mut().max_batch = 1;
        p.batching_mut().max_queue_size = 1;
        p.batching_mut().max_queue_delay = std::time::Duration::ZERO;
    }
    let server = TestServer::start(config).await;
    let client = server.client().await;
    let jpeg = vtest_jpeg(600);
    let mut tasks = Vec::new();
    for camera in 0..16 {
        let mut client = client.clone();
        let request = jpeg_request(&format!("cam-{camera}"), 0, jpeg.clone());
        tasks.push(tokio::spawn(async move { client.inspect(request).await }));
    }
    let (mut served, mut refused) = (0, 0);
    for task in tasks {
        match task.await.expect("join") {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("queue is full"), "{}", status.message());
                refused += 1;
            }
        }
    }
    assert_eq!(served + refused, 16);
    assert!(served >= 1 && refused >= 1, "served {served}, refused {refused}");
    server.stop().await;
}

/// The client's deadline counts as the frame's deadline when it is sooner than the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_deadline_sooner_than_budget_sheds_in_library() {
    let _machine = crate::common::machine_shared();
    use linesight::pipeline::{FrameRequest, ImageInput, InspectError, Pipelines};
    let pipelines = Pipelines::start(&test_config().service_settings()).expect("pipelines");
    let received = tokio::time::Instant::now();
    let frame = |client_deadline| FrameRequest {
        camera_id: "c".into(),
        sequence: 0,
        pipeline: String::new(),
        image: Some(ImageInput {
            data: vtest_jpeg(0).into(),
            encoding: linesight::imaging::ImageEncoding::Jpeg,
            width: 0,
            height: 0,
        }),
        budget: None,
        annotate: false,
        received,
        client_deadline,
    };
    // Budget 30 s, but the client's deadline is already due: shed before inference.
    let err = pipelines.inspect(frame(Some(received))).await.expect_err("shed");
    assert!(matches!(err, InspectError::Shed { .. }), "{err}");
    assert!(err.to_string().contains("before the client's gRPC deadline"), "{err}");
    // A generous client deadline changes nothing.
    let ok = pipelines.inspect(frame(Some(received + Duration::from_secs(30)))).await.expect("served");
    assert!(!ok.detections.is_empty());
    pipelines.shutdown().await;
}

/// Sends request bodies as given bytes: how a client with a broken encoder looks to the server.
#[derive(Clone, Copy, Default)]
struct RawBytesCodec;

struct RawBytesEncoder;

impl tonic::codec::Encoder for RawBytesEncoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Self::Error> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Codec for RawBytesCodec {
    type Encode = bytes::Bytes;
    type Decode = proto::InspectResponse;
    type Encoder = RawBytesEncoder;
    type Decoder = tonic_prost::ProstDecoder<proto::InspectResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        RawBytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

async fn raw_grpc(server: &TestServer) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc
}

/// camera_id (field 1) holding bytes that are not UTF-8, then sequence 9.
const CAMERA_NOT_UTF8: &[u8] = &[0x0a, 0x02, 0xff, 0xfe, 0x10, 0x09];

/// Bytes that are not an InspectRequest are the client's error: INVALID_ARGUMENT naming the
/// decode failure (tonic's own codec would say INTERNAL), and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_requests_are_invalid_argument_on_inspect() {
    let _machine = crate::common::machine_shared();
    let server = TestServer::start(test_config()).await;
    let mut grpc = raw_grpc(&server).await;
    let path = http::uri::PathAndQuery::from_static("/linesight.v1.Inspection/Inspect");
    let cases: [(&str, &[u8], &str); 2] = [
        ("invalid UTF-8 in camera_id", CAMERA_NOT_UTF8, "InspectRequest.camera_id: invalid string value"),
        ("random bytes", &[0xff; 16], "failed to decode Protobuf message"),
    ];
    for (what, body, decoder_says) in cases {
        let request = tonic::Request::new(bytes::Bytes::from_static(body));
        let status = grpc.unary(request, path.clone(), RawBytesCodec).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().starts_with("the request message could not be decoded as a linesight.v1.InspectRequest")
                && status.message().contains(decoder_says),
            "{what}: {:?}",
            status.message()
        );
        grpc.ready().await.expect("ready");
    }
    let mut client = server.client().await;
    let fine = client.inspect(jpeg_request("c", 2, vtest_jpeg(250))).await.expect("server still serves");
    assert!(persons(fine.get_ref()) >= 3);
    server.stop().await;
}

/// One undecodable message inside a stream is answered in its place, in-band, and the stream
/// goes on to the next frame and ends OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undecodable_message_in_a_stream_is_answered_in_band() {
    let _machine = crate::common::machine_shared();
    use prost::Message;
    let server = TestServer::start(test_config()).await;
    let mut grpc = raw_grpc(&server).await;
    let path = http::uri::PathAndQuery::from_static("/linesight.v1.Inspection/InspectStream");
    let frame = |sequence: u64| bytes::Bytes::from(jpeg_request("cam-b", sequence, vtest_jpeg(250)).encode_to_vec());
    let messages = vec![frame(1), bytes::Bytes::from_static(CAMERA_NOT_UTF8), frame(3)];
    let mut responses = grpc
        .streaming(tonic::Request::new(tokio_stream::iter(messages)), path, RawBytesCodec)
        .await
        .expect("stream")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(response) = responses.message().await.expect("the stream ends OK") {
        seen.push(response);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (response, sequence) in [(&seen[0], 1), (&seen[2], 3)] {
        assert_eq!((response.camera_id.as_str(), response.sequence), ("cam-b", sequence));
        assert!(response.error.is_none() && persons(response) >= 3, "{response:?}");
    }
    let bad = &seen[1];
    let error = bad.error.as_ref().expect("the undecodable message is answered with an error");
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert!(
        error.message.contains("could not be decoded") && error.message.contains("camera_id: invalid string value"),
        "{}",
        error.message
    );
    assert_eq!((bad.camera_id.as_str(), bad.sequence, bad.detections.len()), ("", 0, 0));
    server.stop().await;
}
