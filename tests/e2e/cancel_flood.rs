//! Clients that walk away: calls with 40-megapixel frames and 50–90 ms gRPC deadlines, far more than
//! the server can decode. Each cancelled call's decode runs on, so it must keep its CPU worker,
//! its place in flight and its decoded memory until it ends; the server's memory then stays
//! within `server.max_decoded_mib` and its threads within the CPU pool, and a well-behaved client
//! is served throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use linesight::api::proto::inspection_client::InspectionClient;
use tonic::Code;

use crate::common::{ServerProcess, jpeg_request, rss_mib, threads, vtest_jpeg};

/// Room for one frame of [`largest_frame`] (plus the good client's), not two.
const BUDGET_MIB: f64 = 160.0;
const CPU_WORKERS: u32 = 2;
const DEADLINES: [Duration; 4] =
    [Duration::from_millis(50), Duration::from_millis(60), Duration::from_millis(70), Duration::from_millis(90)];

/// A 7000x5700 JPEG (40 MP, the default `max_decoded_pixels`; 120 MB decoded), smooth so that it is
/// small to send.
fn largest_frame() -> Vec<u8> {
    let image = image::RgbImage::from_fn(7000, 5700, |x, y| image::Rgb([(x / 28) as u8, (y / 23) as u8, 128]));
    let mut jpeg = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).expect("encode");
    jpeg
}

#[derive(Debug, Default)]
struct Peak {
    rss_mib: f64,
    threads: u32,
}

/// `callers` clients, each sending a large frame with a short deadline every `every`, for `lasting`.
/// Returns how the calls ended.
async fn flood(
    addr: std::net::SocketAddr,
    jpeg: Arc<Vec<u8>>,
    callers: usize,
    every: Duration,
    lasting: Duration,
) -> Vec<Code> {
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let jpeg = jpeg.clone();
        tasks.push(tokio::spawn(async move {
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connect");
            let mut client = InspectionClient::new(channel).max_encoding_message_size(64 << 20);
            let mut codes = Vec::new();
            let start = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sequence = 0;
            while start.elapsed() < lasting {
                tick.tick().await;
                let mut request =
                    tonic::Request::new(jpeg_request(&format!("flood-{caller}"), sequence, (*jpeg).clone()));
                // 50 ms as measured first, and longer: long enough to be admitted and decoded,
                // too short to be answered (a 40-megapixel frame takes ~250 ms here).
                request.set_timeout(DEADLINES[sequence as usize % DEADLINES.len()]);
                sequence += 1;
                codes.push(match client.inspect(request).await {
                    Ok(_) => Code::Ok,
                    Err(status) => status.code(),
                });
            }
            codes
        }));
    }
    let mut codes = Vec::new();
    for task in tasks {
        codes.extend(task.await.expect("caller"));
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_cancelled_calls_stays_within_the_memory_budget_and_the_cpu_pool() {
    let _machine = crate::common::machine_alone();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!("[server]\nmax_decoded_mib = {BUDGET_MIB}\ncpu_workers = {CPU_WORKERS}\n");
    let server = ServerProcess::start(&config, dir.path()).await;
    let (addr, pid) = (server.addr, server.pid());
    let jpeg = Arc::new(largest_frame());

    // The good client: one frame at a time, on its own camera, with time to spare.
    let mut good = InspectionClient::new(
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    let frame = vtest_jpeg(250);
    for sequence in 0..3 {
        good.inspect(jpeg_request("good", sequence, frame.clone())).await.expect("warm-up");
    }
    // The largest frame once, so that its decode's first allocations count in the baseline.
    let mut once = tonic::Request::new(jpeg_request("flood-once", 0, (*jpeg).clone()));
    once.set_timeout(Duration::from_secs(60));
    let _ = InspectionClient::new(
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    )
    .max_encoding_message_size(64 << 20)
    .inspect(once)
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_before, threads_before) = (rss_mib(pid).expect("rss"), threads(pid).expect("threads"));

    let flooding = Arc::new(AtomicBool::new(true));
    let watcher = {
        let flooding = flooding.clone();
        tokio::spawn(async move {
            let mut peak = Peak::default();
            while flooding.load(Ordering::Relaxed) {
                peak.rss_mib = peak.rss_mib.max(rss_mib(pid).unwrap_or(0.0));
                peak.threads = peak.threads.max(threads(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let good_client = {
        let flooding = flooding.clone();
        tokio::spawn(async move {
            // (when it was answered, whether it was served)
            let mut answers = Vec::new();
            let mut sequence = 100;
            while flooding.load(Ordering::Relaxed) {
                let mut request = jpeg_request("good", sequence, frame.clone());
                request.budget_ms = 10_000;
                let served = good.inspect(request).await;
                answers
                    .push((Instant::now(), served.map(|_| ()).map_err(|s| format!("{:?}: {}", s.code(), s.message()))));
                sequence += 1;
            }
            answers
        })
    };

    // The rate (8 callers, ~30 calls/s), then four times it.
    let started = Instant::now();
    let mut codes = flood(addr, jpeg.clone(), 8, Duration::from_millis(266), Duration::from_secs(3)).await;
    let phase_two = Instant::now();
    codes.extend(flood(addr, jpeg.clone(), 8, Duration::from_millis(66), Duration::from_secs(3)).await);
    flooding.store(false, Ordering::Relaxed);
    let flood_ended = Instant::now();
    let peak = watcher.await.expect("watcher");
    let answers = good_client.await.expect("good client");

    let count = |code: Code| codes.iter().filter(|&&c| c == code).count();
    eprintln!(
        "{} flood calls: {} served, {} deadline exceeded, {} refused (memory), {} cancelled by the client; RSS {rss_before:.0} -> peak {:.0} MiB, \
         threads {threads_before} -> peak {}; good client: {} answers",
        codes.len(),
        count(Code::Ok),
        count(Code::DeadlineExceeded),
        count(Code::ResourceExhausted),
        count(Code::Cancelled),
        peak.rss_mib,
        peak.threads,
        answers.len()
    );
    // Each call ends by its deadline (at most 90 ms) or sooner: ~350 calls at any speed.
    assert!(codes.len() >= 200, "the flood sent only {} calls", codes.len());
    // Served in time, past the deadline, refused for memory, or CANCELLED: tonic's client reporting
    // its own timer when the server's answer (sent just before the deadline) has not arrived by then.
    let unexpected: Vec<_> = codes
        .iter()
        .filter(|c| !matches!(c, Code::Ok | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled))
        .collect();
    assert!(unexpected.is_empty(), "flood calls ended otherwise: {unexpected:?}");
    assert!(
        peak.rss_mib - rss_before <= BUDGET_MIB + 64.0,
        "RSS grew {:.0} MiB, over the {BUDGET_MIB} MiB budget + 64",
        peak.rss_mib - rss_before
    );
    assert!(
        peak.threads <= threads_before + CPU_WORKERS + 4,
        "threads {threads_before} -> {} with {CPU_WORKERS} CPU workers",
        peak.threads
    );
    // Served throughout: every answer a success, and some in each phase of the flood.
    let failed: Vec<_> = answers.iter().filter_map(|(_, a)| a.as_ref().err()).collect();
    assert!(failed.is_empty(), "the good client was refused: {failed:?}");
    for (from, to) in [(started, phase_two), (phase_two, flood_ended)] {
        assert!(
            answers.iter().any(|(at, _)| (from..to).contains(at)),
            "the good client had no answer between {:?} and {:?} into the flood",
            from - started,
            to - started
        );
    }
}
