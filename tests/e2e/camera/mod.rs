//! `linesight camera` against real video servers on 127.0.0.1: GStreamer's RTSP server (through
//! `tests/tools/rtsp_server.py`), video files made with ffmpeg from the vtest fixture frames, and a
//! real linesight server. The bridge runs as its own process, as it would next to a camera.
//! Needs (Debian): ffmpeg, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-good, python3-gi.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::common::{self, TestServer};

mod faults;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn unix_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// The 30 fixture frames (vtest 100–129) as an MJPEG AVI at `fps`.
fn vtest_clip(dir: &Path, fps: u32) -> PathBuf {
    let clip = dir.join(format!("vtest-{fps}fps.avi"));
    let frames = common::fixture("vtest-clip/frame_%04d.jpg");
    let made = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-framerate", &fps.to_string(), "-start_number", "100", "-i"])
        .arg(&frames)
        .args(["-c:v", "mjpeg", "-q:v", "3"])
        .arg(&clip)
        .status()
        .expect("ffmpeg (apt-get install ffmpeg)");
    assert!(made.success(), "ffmpeg could not make the clip");
    clip
}

/// GStreamer's RTSP server playing the fixture frames in a loop at `fps`, as an IP camera.
struct RtspCamera {
    child: tokio::process::Child,
    url: String,
}

impl RtspCamera {
    async fn start(port: u16, fps: u32) -> Self {
        let frames = common::fixture("vtest-clip").display().to_string();
        let args = ["--port", &port.to_string(), "--start", "100", "--fps", &fps.to_string(), "--frames", &frames];
        Self::spawn("rtsp_server.py", &args).await
    }

    /// One of the RTSP servers in `tests/tools`, once it has printed `ready <url>`.
    async fn spawn(script: &str, args: &[&str]) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools").join(script);
        let mut child = tokio::process::Command::new("/usr/bin/python3")
            .arg(script)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with gi (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0)");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        let line = ready.expect("RTSP server ready in time").unwrap().expect("RTSP server exited before it was ready");
        let url = line.strip_prefix("ready ").expect("ready line").to_owned();
        Self { child, url }
    }

    /// As a camera that loses power: no goodbye to its clients.
    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// A `linesight camera` process, its answers (JSON lines) and log collected.
struct Bridge {
    child: tokio::process::Child,
    answers: PathBuf,
    summary: PathBuf,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Bridge {
    async fn start(dir: &Path, args: &[&str]) -> Self {
        let answers = dir.join("answers.jsonl");
        let summary = dir.join("summary.json");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_linesight"))
            .arg("camera")
            .args(args)
            .arg("--output")
            .arg(&answers)
            .arg("--summary")
            .arg(&summary)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn linesight camera");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        tokio::spawn({
            let log = log.clone();
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().unwrap().push(line);
                }
            }
        });
        Self { child, answers, summary, log }
    }

    /// The bridge with `cameras_toml` as its cameras file.
    async fn with_cameras(dir: &Path, cameras_toml: &str) -> Self {
        let path = dir.join("cameras.toml");
        std::fs::write(&path, cameras_toml).unwrap();
        Self::start(dir, &["--config", path.to_str().unwrap()]).await
    }

    fn answers(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.answers).unwrap_or_default();
        // The last line may be half written while the bridge runs.
        text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// Waits until `done` holds for the answers so far.
    async fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let answers = self.answers();
            if done(&answers) {
                return answers;
            }
            assert!(start.elapsed() < within, "{what}: not within {within:?} ({} answers so far)", answers.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the log has a line with all of `parts`.
    async fn wait_for_log(&self, parts: &[&str], within: Duration) {
        let start = Instant::now();
        while !self.log.lock().unwrap().iter().any(|line| parts.iter().all(|p| line.contains(p))) {
            assert!(start.elapsed() < within, "no log line with {parts:?} within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The bridge's resident memory with its capture processes'.
    fn rss_mib(&self) -> f64 {
        let pid = self.child.id().unwrap();
        let captures: f64 = capture_processes(pid).iter().filter_map(|(child, _)| common::rss_mib(*child)).sum();
        common::rss_mib(pid).unwrap() + captures
    }

    /// SIGTERM, then the per-camera totals it wrote, the answers and the log.
    async fn stop(self) -> (Vec<Value>, Vec<Value>, Vec<String>) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.finish().await
    }

    /// Waits for the bridge to exit by itself.
    async fn finish(mut self) -> (Vec<Value>, Vec<Value>, Vec<String>) {
        let status =
            tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("bridge exits").unwrap();
        // The log reader sees the end of stderr a moment after the exit.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = self.log.lock().unwrap().clone();
        assert!(status.success(), "bridge failed: {status}\n{}", log.join("\n"));
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(&self.summary).unwrap()).unwrap();
        let cameras = summary["cameras"].as_array().unwrap().clone();
        (cameras, self.answers(), log)
    }
}

/// The capture processes of the bridge `pid`: their pids and command lines.
fn capture_processes(pid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // pid (comm) state ppid …: the command name may hold spaces, so read after its ')'.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if parent == Some(pid) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("camera-capture") {
                found.push((child, cmdline));
            }
        }
    }
    found
}

fn camera<'a>(summary: &'a [Value], id: &str) -> &'a Value {
    summary.iter().find(|c| c["camera_id"] == id).unwrap_or_else(|| panic!("no camera {id} in {summary:?}"))
}

fn n(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or_else(|| panic!("{key} in {value}"))
}

/// Every frame captured is skipped by the rate cap, dropped as too old or for a newer one, or sent;
/// every frame sent is answered or lost with its connection; every answer has one verdict.
fn assert_counts_add_up(camera: &Value) {
    let left = ["rate_capped", "stale", "dropped", "sent"].iter().map(|k| n(camera, k)).sum::<u64>();
    assert_eq!(n(camera, "captured"), left, "{camera}");
    assert_eq!(n(camera, "sent"), n(camera, "answered") + n(camera, "lost"), "{camera}");
    let verdicts = ["within_budget", "over_budget", "shed", "failed"].iter().map(|k| n(camera, k)).sum::<u64>();
    assert_eq!(n(camera, "answered"), verdicts, "{camera}");
}

fn sequences(answers: &[Value], id: &str) -> Vec<u64> {
    answers.iter().filter(|a| a["camera_id"] == id).map(|a| a["sequence"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_answered_frame_by_frame_while_a_dead_camera_beside_it_keeps_retrying() {
    let _machine = common::machine_shared();
    let dir = tempfile::tempdir().unwrap();
    let clip = vtest_clip(dir.path(), 30);
    let server = TestServer::start(common::test_config()).await;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dead = format!("rtsp://127.0.0.1:{}/live", free_port());
    let bridge = Bridge::with_cameras(
        dir.path(),
        &format!(
            r#"
            [bridge]
            server = "http://{}"
            window = 2
            metrics_listen = "{metrics}"
            annotate_every = 5
            annotate_dir = "{annotated}"
            [[cameras]]
            id = "file"
            source = "{}"
            pipeline = "detect"
            [[cameras]]
            id = "dead"
            source = "{dead}"
            "#,
            server.addr,
            clip.display(),
            annotated = dir.path().join("annotated").display(),
        ),
    )
    .await;
    let answers = bridge.wait_for("first answers", Duration::from_secs(60), |a| a.len() >= 5).await;
    assert!(answers.iter().all(|a| a["camera_id"] == "file"));
    let (status, text) = common::http_get(metrics, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(text.contains(r#"linesight_camera_frames_total{camera_id="file",outcome="sent"}"#), "{text}");
    assert!(text.contains(r#"linesight_camera_up{camera_id="dead",link="source"} 0"#), "{text}");
    // The file has 30 frames; the bridge keeps running for the dead camera, so it is stopped once
    // the file has ended (the frames still in flight are answered before it exits).
    bridge.wait_for_log(&["Source ended.", "camera_id=file"], Duration::from_secs(60)).await;
    let (summary, answers, log) = bridge.stop().await;

    let file = camera(&summary, "file");
    assert_counts_add_up(file);
    assert_eq!(n(file, "captured"), 30, "every frame of the clip read once: {file}");
    assert_eq!(n(file, "lost"), 0, "{file}");
    let sent = sequences(&answers, "file");
    assert_eq!(sent.len() as u64, n(file, "answered"), "one JSON line per answer");
    assert!(sent.windows(2).all(|w| w[1] == w[0] + 1), "sequences go up by one per frame sent: {sent:?}");
    assert_eq!(sent.first().copied(), Some(n(file, "first_sequence")));
    let with_people =
        answers.iter().filter(|a| a["detections"].as_array().unwrap().iter().any(|d| d["class"] == "person")).count();
    assert!(with_people * 10 >= answers.len() * 9, "{with_people} of {} answers found the people", answers.len());
    assert!(answers.iter().all(|a| a["width"] == 768 && a["height"] == 576 && a["pipeline"] == "detect"));
    let annotated: Vec<&Value> = answers.iter().filter(|a| a.get("annotated").is_some()).collect();
    assert_eq!(annotated.len(), sent.iter().filter(|s| *s % 5 == 0).count(), "every 5th frame annotated");
    for answer in annotated {
        let path = PathBuf::from(answer["annotated"].as_str().unwrap());
        assert!(path.starts_with(dir.path().join("annotated").join("file")), "{}", path.display());
        let image = image::open(&path).unwrap();
        assert_eq!((image.width(), image.height()), (768, 576));
    }

    let dead = camera(&summary, "dead");
    assert_eq!((n(dead, "captured"), n(dead, "sent")), (0, 0), "{dead}");
    let attempts = log.iter().filter(|l| l.contains("Source failed to open.") && l.contains("camera_id=dead")).count();
    assert!(attempts >= 2, "the dead camera is retried with backoff ({attempts} attempts)");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtsp_camera_that_restarts_is_reopened_and_its_sequence_carries_on() {
    let _machine = common::machine_shared();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rtsp = RtspCamera::start(port, 10).await;
    let url = rtsp.url.clone();
    let server = TestServer::start(common::test_config()).await;
    let bridge = Bridge::with_cameras(
        dir.path(),
        &format!(
            r#"
            [bridge]
            server = "http://{}"
            read_timeout_ms = 2000
            reconnect_max_ms = 1000
            [[cameras]]
            id = "rtsp"
            source = "{url}"
            pipeline = "detect"
            "#,
            server.addr
        ),
    )
    .await;
    bridge.wait_for("answers before the restart", Duration::from_secs(60), |a| a.len() >= 10).await;
    rtsp.kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rtsp = RtspCamera::start(port, 10).await;
    let restarted_ms = unix_ms();
    let after = |a: &[Value]| a.iter().filter(|a| a["captured_unix_ms"].as_u64().unwrap() > restarted_ms).count();
    let answers = bridge.wait_for("answers after the restart", Duration::from_secs(60), |a| after(a) >= 10).await;
    let first_after =
        answers.iter().map(|a| a["captured_unix_ms"].as_u64().unwrap()).find(|ms| *ms > restarted_ms).unwrap();
    eprintln!(
        "RTSP camera back: first frame captured {} ms after the RTSP server restarted",
        first_after - restarted_ms
    );
    let (summary, answers, _) = bridge.stop().await;
    rtsp.kill().await;

    let camera = camera(&summary, "rtsp");
    assert_counts_add_up(camera);
    assert!(n(camera, "source_reconnects") >= 1, "{camera}");
    assert!(n(camera, "last_outage_ms") >= 1000, "the outage spans the second without a camera: {camera}");
    assert_eq!(n(camera, "server_reconnects"), 0, "{camera}");
    let sent = sequences(&answers, "rtsp");
    assert_eq!(n(camera, "lost"), 0, "{camera}");
    assert!(sent.windows(2).all(|w| w[1] == w[0] + 1), "one unbroken sequence across the restart: {sent:?}");
    assert_eq!(n(camera, "last_sequence") - n(camera, "first_sequence") + 1, n(camera, "sent"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_fps_camera_on_a_slower_pipeline_drops_frames_without_growing_lag_or_memory() {
    // Measures lag against itself over the run: the machine is taken alone so that other tests'
    // load does not come and go in the middle of it.
    let _machine = common::machine_alone();
    let dir = tempfile::tempdir().unwrap();
    let rtsp = RtspCamera::start(free_port(), 30).await;
    let server = TestServer::start(common::test_config()).await;
    let args = ["--source", &rtsp.url, "--camera-id", "fast", "--pipeline", "track", "--window", "1"];
    let server_arg = format!("http://{}", server.addr);
    let bridge = Bridge::start(dir.path(), &[&args[..], &["--server", &server_arg]].concat()).await;
    bridge.wait_for("warm-up", Duration::from_secs(60), |a| a.len() >= 10).await;
    let started = Instant::now();
    let rss_start = bridge.rss_mib();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let rss_end = bridge.rss_mib();
    let measured = started.elapsed().as_secs_f64();
    let (summary, answers, _) = bridge.stop().await;
    rtsp.kill().await;

    let camera = camera(&summary, "fast");
    assert_counts_add_up(camera);
    let captured_fps = n(camera, "captured") as f64 / (measured + 2.0);
    let answered_fps = n(camera, "answered") as f64 / (measured + 2.0);
    eprintln!(
        "captured {captured_fps:.1} fps, answered {answered_fps:.1} fps, {camera}; RSS {rss_start:.1} -> {rss_end:.1} MiB"
    );
    // The premise, checked rather than assumed: `track` on this class of machine (2 cores) answers
    // well under 30 fps. On a machine fast enough to keep up the test says so instead of passing.
    assert!(
        answered_fps < 0.8 * captured_fps,
        "premise: the pipeline answers {answered_fps:.1} fps, not slower than the camera's {captured_fps:.1}"
    );
    assert!(n(camera, "dropped") > 0, "a server slower than the camera costs dropped frames: {camera}");
    // Lag: capture-to-answer latency of the last third of the answers against the first third.
    let latencies: Vec<f64> = answers.iter().skip(10).map(|a| a["latency_ms"].as_f64().unwrap()).collect();
    assert!(latencies.len() >= 30, "{} answers", latencies.len());
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let third = latencies.len() / 3;
    let (early, late) = (median(&latencies[..third]), median(&latencies[latencies.len() - third..]));
    eprintln!("latency median: first third {early:.1} ms, last third {late:.1} ms");
    assert!(late <= early * 1.5 + 30.0, "lag grew: {early:.1} ms -> {late:.1} ms");
    // Lag is bounded by the window: a frame waits at most for the one in flight before it.
    let server_ms: Vec<f64> = answers.iter().skip(10).map(|a| a["server_ms"].as_f64().unwrap()).collect();
    let worst_server = server_ms.iter().copied().fold(0.0, f64::max);
    let worst = latencies.iter().copied().fold(0.0, f64::max);
    assert!(
        worst <= 2.0 * worst_server + 250.0,
        "worst latency {worst:.1} ms with the server's worst at {worst_server:.1} ms"
    );
    assert!(rss_end - rss_start <= 16.0, "bridge memory grew from {rss_start:.1} to {rss_end:.1} MiB");
    server.stop().await;
}

/// A TCP relay whose connections can all be cut at once, as a network outage would.
struct Relay {
    addr: SocketAddr,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
        tokio::spawn({
            let connections = connections.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let relayed = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().unwrap().push(relayed.abort_handle());
                }
            }
        });
        Self { addr, connections }
    }

    fn cut(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_reconnects_after_a_network_cut_and_a_server_restart_and_tracking_keeps_order() {
    let _machine = common::machine_shared();
    let dir = tempfile::tempdir().unwrap();
    let clip = vtest_clip(dir.path(), 10);
    let server = TestServer::start(common::test_config()).await;
    let server_addr = server.addr;
    let relay = Relay::start(server_addr).await;
    let bridge = Bridge::with_cameras(
        dir.path(),
        &format!(
            r#"
            [bridge]
            server = "http://{}"
            reconnect_max_ms = 500
            [[cameras]]
            id = "line"
            source = "{}"
            pipeline = "track"
            loop = true
            "#,
            relay.addr,
            clip.display()
        ),
    )
    .await;
    let tracked = |a: &Value| a["tracking"] == "applied" && !a["detections"].as_array().unwrap().is_empty();
    bridge
        .wait_for("tracks before the cut", Duration::from_secs(60), |a| a.iter().filter(|a| tracked(a)).count() >= 5)
        .await;

    // A network cut: the same server, so its tracker still holds this camera's tracks.
    let before_cut = bridge.answers().len();
    relay.cut();
    let answers =
        bridge.wait_for("answers after the cut", Duration::from_secs(60), |a| a.len() >= before_cut + 10).await;
    let after_cut = &answers[before_cut..];
    assert!(
        after_cut.iter().all(|a| a["tracking"] == "applied"),
        "frames after the cut are tracked in order, none late"
    );
    let ids = |answers: &[Value]| -> std::collections::BTreeSet<u64> {
        answers
            .iter()
            .flat_map(|a| a["detections"].as_array().unwrap().iter().map(|d| d["track_id"].as_u64().unwrap()))
            .collect()
    };
    let (ids_before, ids_after) = (ids(&answers[..before_cut]), ids(after_cut));
    assert!(
        !ids_before.is_disjoint(&ids_after),
        "the tracks carry on across the cut: {ids_before:?} then {ids_after:?}"
    );

    // The server restarts on the same address: a fresh tracker, the same camera sequence.
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted_ms = unix_ms();
    let server = TestServer::start_at(common::test_config(), server_addr).await;
    let after = |a: &[Value]| a.iter().filter(|a| a["captured_unix_ms"].as_u64().unwrap() > restarted_ms).count();
    bridge.wait_for("answers from the restarted server", Duration::from_secs(60), |a| after(a) >= 10).await;
    let (summary, answers, _) = bridge.stop().await;

    let camera = camera(&summary, "line");
    assert_counts_add_up(camera);
    assert!(n(camera, "server_reconnects") >= 2, "{camera}");
    assert!(n(camera, "lost") <= 4, "at most a window of frames is lost per break: {camera}");
    let sent = sequences(&answers, "line");
    assert!(sent.windows(2).all(|w| w[1] > w[0]), "sequences only go up, across both breaks: {sent:?}");
    assert_eq!(
        n(camera, "last_sequence") - n(camera, "first_sequence") + 1,
        n(camera, "sent"),
        "no number skipped or reused"
    );
    assert!(answers.iter().all(|a| a["tracking"] == "applied"), "no frame refused as late or duplicate");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_mjpeg_camera_and_a_gstreamer_pipeline_are_sources_too() {
    let _machine = common::machine_shared();
    let dir = tempfile::tempdir().unwrap();
    let clip = vtest_clip(dir.path(), 10);
    // ffmpeg as an HTTP camera in listen mode: multipart JPEG, as many industrial cameras serve.
    let port = free_port();
    let mut http_camera = tokio::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-re", "-stream_loop", "-1", "-i"])
        .arg(&clip)
        .args(["-c:v", "copy", "-f", "mpjpeg", "-listen", "1", &format!("http://127.0.0.1:{port}/cam")])
        // Its complaint when the bridge hangs up at the end is expected.
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("ffmpeg");
    let server = TestServer::start(common::test_config()).await;
    let gstreamer = "videotestsrc pattern=ball ! video/x-raw,width=320,height=240,framerate=10/1 ! videoconvert ! video/x-raw,format=BGR ! appsink";
    let bridge = Bridge::with_cameras(
        dir.path(),
        &format!(
            r#"
            [bridge]
            server = "http://{}"
            encoding = "raw"
            [[cameras]]
            id = "http"
            source = "http://127.0.0.1:{port}/cam"
            pipeline = "detect"
            [[cameras]]
            id = "gst"
            source = "{gstreamer}"
            pipeline = "detect"
            "#,
            server.addr
        ),
    )
    .await;
    let count = |a: &[Value], id: &str| a.iter().filter(|a| a["camera_id"] == id).count();
    bridge
        .wait_for("answers from both", Duration::from_secs(60), |a| count(a, "http") >= 10 && count(a, "gst") >= 10)
        .await;
    let (summary, answers, _) = bridge.stop().await;
    let _ = http_camera.kill().await;
    for id in ["http", "gst"] {
        assert_counts_add_up(camera(&summary, id));
    }
    let size = |id: &str| {
        answers.iter().find(|a| a["camera_id"] == id).map(|a| (a["width"].clone(), a["height"].clone())).unwrap()
    };
    assert_eq!(size("http"), (768.into(), 576.into()));
    assert_eq!(size("gst"), (320.into(), 240.into()));
    let people = answers
        .iter()
        .filter(|a| a["camera_id"] == "http")
        .filter(|a| a["detections"].as_array().unwrap().iter().any(|d| d["class"] == "person"))
        .count();
    assert!(
        people * 10 >= count(&answers, "http") * 9,
        "raw BGR frames from the HTTP camera are seen as they are: {people} with people"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_mutual_tls_and_tokens_is_reached_with_the_right_credentials_and_says_why_not_otherwise() {
    use crate::security::{pki, tls_config, write};
    let _machine = common::machine_shared();
    let dir = tempfile::tempdir().unwrap();
    let clip = vtest_clip(dir.path(), 10);
    let pki = pki();
    let mut config = common::test_config();
    config.server.tls = Some(tls_config(dir.path(), &pki, true));
    let tokens = write(dir.path(), "tokens", "camera-token\n");
    config.server.auth = Some(linesight::config::AuthConfig { tokens_file: Some(tokens), tokens_env: None });
    let server = TestServer::start(config).await;
    let client_cert = write(dir.path(), "client.pem", &pki.client.0);
    let client_key = write(dir.path(), "client.key", &pki.client.1);
    let https = format!("https://{}", server.addr);
    let start = |token: &'static str, out: &Path| {
        let args = [
            "--source",
            clip.to_str().unwrap(),
            "--loop",
            "--pipeline",
            "detect",
            "--server",
            &https,
            "--ca-cert",
            dir.path().join("ca.pem").to_str().unwrap(),
            "--client-cert",
            client_cert.to_str().unwrap(),
            "--client-key",
            client_key.to_str().unwrap(),
            "--tls-domain",
            "localhost",
            "--token",
            token,
        ]
        .map(str::to_owned);
        let out = out.to_owned();
        async move { Bridge::start(&out, &args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    let (good_dir, bad_dir) = (dir.path().join("good"), dir.path().join("bad"));
    std::fs::create_dir_all(&good_dir).unwrap();
    std::fs::create_dir_all(&bad_dir).unwrap();
    let good = start("camera-token", &good_dir).await;
    let bad = start("not-the-token", &bad_dir).await;
    good.wait_for("answers over mutual TLS", Duration::from_secs(60), |a| a.len() >= 5).await;
    bad.wait_for_log(&["Server unreachable; reconnecting.", "bearer token is not accepted"], Duration::from_secs(30))
        .await;
    let (_, bad_answers, _) = bad.stop().await;
    assert!(bad_answers.is_empty(), "a wrong token was let in");
    let (summary, _, _) = good.stop().await;
    assert_counts_add_up(&summary[0]);
    server.stop().await;
}
