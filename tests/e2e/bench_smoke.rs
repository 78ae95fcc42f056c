//! A short run of the load harness (`linesight bench`) end to end, so it cannot rot: the real binary
//! starts its own server with the real model, cameras stream real vtest frames, and the JSON report
//! and SVG plot come out with the figures docs/performance.md quotes. Budgets are generous: these runs check
//! the harness, not the machine's speed.

use std::path::PathBuf;
use std::process::Command;

fn bench(args: &[&str]) -> (std::process::Output, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let output = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .arg("bench")
        .args(["--threads", "2", "--quiet"])
        .args(["--out", dir.join("report.json").to_str().expect("path")])
        .args(["--plot", dir.join("plot.svg").to_str().expect("path")])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run linesight bench");
    (output, dir)
}

fn report(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("report is JSON")
}

/// A bench that must succeed, without warm-up and with a generous budget: its stdout, its report
/// and the folder holding them.
fn bench_ok(args: &[&str]) -> (String, serde_json::Value, PathBuf) {
    let mut all = vec!["--warmup-s", "0", "--budget-ms", "20000"];
    all.extend_from_slice(args);
    let (output, dir) = bench(&all);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "bench failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    (stdout, report(&dir), dir)
}

#[test]
fn a_streamed_load_with_batching_compared_reports_every_frame_and_plots_it() {
    let _machine = crate::common::machine_shared();
    let (stdout, report, dir) =
        bench_ok(&["--cameras", "2", "--fps", "5", "--duration-s", "2", "--compare-batching", "--bare-runs", "3"]);
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "batching on and off");
    assert_eq!(runs[0]["label"], "batching on");
    assert_eq!(runs[1]["label"], "batching off");
    for run in runs {
        // 2 cameras x 5 fps x 2 s, no warm-up: every frame measured and served within budget.
        assert_eq!(run["frames"], 20, "{run}");
        assert_eq!(run["within_budget"], 20, "{run}");
        assert_eq!(run["spec"]["mode"], "stream");
        assert_eq!((run["spec"]["duration_s"].as_f64(), run["spec"]["warmup_s"].as_f64()), (Some(2.0), Some(0.0)));
        let latency = &run["latency_ms"];
        let (p50, p99, max) = (
            latency["p50"].as_f64().expect("p50"),
            latency["p99"].as_f64().expect("p99"),
            latency["max"].as_f64().expect("max"),
        );
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{latency}");
        // The server's own stage times came back with the answers.
        assert!(run["stages_ms"]["inference"]["p50"].as_f64().expect("inference") > 0.0);
        assert!(run["stages_ms"]["decode"]["p50"].as_f64().expect("decode") > 0.0);
        assert!(run["fairness"]["worst_camera_p99_ms"].as_f64().expect("fairness") >= p50);
        let batched: u64 =
            run["batch_sizes"].as_array().expect("batch sizes").iter().map(|b| b[1].as_u64().expect("count")).sum();
        assert_eq!(batched, 20);
    }
    // Batching off means batches of one, whatever the load.
    assert_eq!(runs[1]["batch_sizes"], serde_json::json!([[1, 20]]));
    let bare = report["bare"].as_array().expect("bare");
    assert_eq!(bare[0]["model"], "nanodet-g");
    assert_eq!(bare[0]["batch"], 1);
    assert!(bare[0]["paced_ms"].is_null(), "first back to back");
    // 2 cameras x 5 fps leave the model idle between frames: batch 1 is timed again at that pace,
    // one run every 100 ms, and the overhead ratio compares against it.
    let paced = bare.last().expect("paced timing");
    assert_eq!((paced["batch"].as_u64(), paced["paced_ms"].as_f64()), (Some(1), Some(100.0)));
    let bare_ms = paced["median_ms"].as_f64().expect("bare median");
    let ratio = report["overhead_ratio"].as_f64().expect("overhead ratio");
    assert!((ratio - runs[0]["latency_ms"]["p50"].as_f64().expect("p50") / bare_ms).abs() < 1e-9);
    assert!(stdout.contains("batching on vs off"), "{stdout}");

    let svg = std::fs::read_to_string(dir.join("plot.svg")).expect("plot.svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("budget 20000 ms").count(), 2, "one budget legend per run's distribution");
    // One point per frame in each run's timeline.
    assert!(svg.matches("<circle").count() >= 40);
}

#[test]
fn unary_capacity_search_stops_at_its_ceiling_when_everything_fits() {
    let _machine = crate::common::machine_shared();
    let (stdout, report, _) = bench_ok(&[
        "--capacity",
        "--max-cameras",
        "2",
        "--fps",
        "4",
        "--probe-s",
        "1",
        "--mode",
        "unary",
        "--bare-runs",
        "0",
    ]);
    let capacity = &report["capacity"];
    assert_eq!(capacity["cameras"], 2);
    assert_eq!(capacity["hit_ceiling"], true);
    let probed: Vec<u64> = capacity["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .map(|p| p["cameras"].as_u64().expect("cameras"))
        .collect();
    assert_eq!(probed, vec![1, 2]);
    assert_eq!(report["runs"][1]["frames"], 8);
    assert_eq!(report["runs"][1]["spec"]["mode"], "unary");
    assert!(report["bare"].as_array().expect("bare").is_empty());
    assert!(stdout.contains("capacity: 2+ (search ceiling) cameras at 4 fps"), "{stdout}");
}

#[test]
fn a_frame_count_sends_exactly_that_many_frames_per_camera_by_unary_calls() {
    let _machine = crate::common::machine_shared();
    let (_, report, _) =
        bench_ok(&["--cameras", "3", "--fps", "8", "--count", "5", "--mode", "unary", "--bare-runs", "0"]);
    let run = &report["runs"][0];
    assert_eq!(run["frames"], 15);
    assert_eq!(run["within_budget"], 15);
    assert_eq!(run["spec"]["mode"], "unary");
    // Every camera got its share: fairness saw all three.
    assert_eq!(run["fairness"]["worst_camera_within_budget"], 1.0);
}

/// Processes running `linesight busy` (the background load).
fn busy_processes() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.len() > 1 && args[0].ends_with(b"linesight") && args[1] == b"busy"
        })
        .count()
}

#[test]
fn a_closed_loop_under_background_load_reports_goodput_against_one_clients_capacity() {
    let _machine = crate::common::machine_shared();
    let (stdout, report, _) = bench_ok(&[
        "--cameras",
        "2",
        "--mode",
        "closed",
        "--duration-s",
        "2",
        "--bare-runs",
        "0",
        "--background-load",
        "1",
    ]);
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "the load and the one-client reference");
    assert_eq!(runs[0]["spec"]["mode"], "closed");
    assert_eq!(runs[0]["spec"]["cameras"], 2);
    assert_eq!(runs[1]["label"], "one client back to back");
    assert_eq!(runs[1]["spec"]["cameras"], 1);
    let goodput = runs[0]["goodput_fps"].as_f64().expect("goodput");
    let capacity = report["one_client_capacity_fps"].as_f64().expect("capacity");
    assert!(goodput > 0.0 && capacity > 0.0, "{report}");
    // A generous budget: every frame is within it, so goodput is throughput.
    assert_eq!(runs[0]["goodput_fps"], runs[0]["throughput_fps"]);
    let ratio = report["goodput_over_capacity"].as_f64().expect("ratio");
    assert!((ratio - goodput / capacity).abs() < 1e-9);
    assert!(stdout.contains("2 clients back to back"), "{stdout}");
    assert!(stdout.contains("background load: 1 busy threads in another process"), "{stdout}");
    assert_eq!(busy_processes(), 0, "the background load outlived the bench");
}

#[test]
fn an_overload_factor_sizes_the_open_loop_from_the_measured_capacity() {
    let _machine = crate::common::machine_shared();
    let (_, report, _) =
        bench_ok(&["--overload", "2", "--fps", "5", "--mode", "unary", "--duration-s", "2", "--bare-runs", "0"]);
    let capacity = report["one_client_capacity_fps"].as_f64().expect("capacity");
    let cameras = report["runs"][0]["spec"]["cameras"].as_u64().expect("cameras") as f64;
    assert_eq!(cameras, (2.0 * capacity / 5.0).ceil().max(1.0), "{report}");
}

#[test]
fn wrong_pipeline_and_batching_comparison_on_a_remote_server_are_clear_errors() {
    let _machine = crate::common::machine_shared();
    let (output, _) = bench(&["--pipeline", "nope", "--cameras", "1", "--duration-s", "1", "--bare-runs", "0"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the server has no pipeline \"nope\" (it serves: detect, el-defect, track)"), "{stderr}");

    let (output, _) = bench(&["--server", "http://127.0.0.1:9", "--compare-batching", "--duration-s", "1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--compare-batching needs a server the bench starts itself"), "{stderr}");
}

/// Strips terminal colour codes from a log line.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn the_bench_loads_a_separately_running_server() {
    let _machine = crate::common::machine_shared();
    use std::io::BufRead;
    let mut server = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .args(["serve", "--threads", "2", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start linesight serve");
    let stderr = server.stderr.take().expect("stderr");
    // The server logs `Serving. address=127.0.0.1:PORT` once it listens.
    let address =
        std::io::BufReader::new(stderr).lines().map_while(Result::ok).map(|line| plain(&line)).find_map(|line| {
            let rest = line.split_once("Serving.")?.1;
            let address = rest.split_once("address=")?.1;
            Some(address.split_whitespace().next()?.to_owned())
        });
    let Some(address) = address else {
        let _ = server.kill();
        panic!("the server never said where it listens");
    };
    let url = format!("http://{address}");
    let result = std::panic::catch_unwind(|| {
        bench_ok(&["--server", &url, "--cameras", "2", "--fps", "5", "--count", "4", "--pipeline", "track"])
    });
    let _ = server.kill();
    let _ = server.wait();
    let (_, report, _) = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    assert_eq!(report["target"], url.as_str());
    assert_eq!(report["machine"]["execution_provider"], "cpu");
    let run = &report["runs"][0];
    assert_eq!(run["frames"], 8);
    assert_eq!(run["within_budget"], 8);
    assert_eq!(run["spec"]["pipeline"], "track");
    // The track pipeline's own stages came back: crops embedded, tracker stepped.
    assert!(run["stages_ms"]["embed"]["max"].as_f64().expect("embed") > 0.0);
    // No model at hand for a remote server: no bare timing, no ratio.
    assert!(report["bare"].as_array().expect("bare").is_empty());
    assert!(report["overhead_ratio"].is_null());
}
