//! Test harness: a real linesight server on 127.0.0.1:0 with the real bundled model, and a real client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use linesight::api::proto::inspection_client::InspectionClient;
use linesight::api::proto::{self, Image, InspectRequest};
use linesight::api::{Listeners, Models};
use linesight::config::Config;
use linesight::pipeline::Pipelines;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub struct TestServer {
    pub addr: SocketAddr,
    /// `GET /metrics`, when the config turns metrics on.
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), linesight::api::ServeError>>>,
}

impl TestServer {
    /// A server whose models are loaded before it listens.
    pub async fn start(config: Config) -> Self {
        let pipelines =
            Arc::new(Pipelines::start(&config.service_settings()).expect("pipelines start (run scripts/setup first)"));
        Self::launch(Models::Loaded(pipelines), config, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// A server on `addr` (e.g. where a stopped one listened), models loaded first.
    #[cfg_attr(not(feature = "camera"), allow(dead_code))]
    pub async fn start_at(config: Config, addr: SocketAddr) -> Self {
        let pipelines =
            Arc::new(Pipelines::start(&config.service_settings()).expect("pipelines start (run scripts/setup first)"));
        Self::launch(Models::Loaded(pipelines), config, addr).await
    }

    /// A server that listens first and loads its models meanwhile (as `linesight serve`).
    pub async fn start_loading(config: Config) -> Self {
        Self::launch(Models::Load(Box::new(config.clone())), config, "127.0.0.1:0".parse().expect("addr")).await
    }

    async fn launch(models: Models, config: Config, addr: SocketAddr) -> Self {
        let grpc = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = grpc.local_addr().expect("addr");
        let metrics = match &config.server.metrics {
            Some(m) => Some(tokio::net::TcpListener::bind(m.listen).await.expect("bind metrics")),
            None => None,
        };
        let metrics_addr = metrics.as_ref().map(|m| m.local_addr().expect("metrics addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let server_config = config.server.clone();
        let task = tokio::spawn(async move {
            linesight::api::serve_with(models, &server_config, Listeners { grpc, metrics }, async {
                let _ = stopped.await;
            })
            .await
        });
        Self { addr, metrics_addr, stop: Some(stop), task: Some(task) }
    }

    pub async fn client(&self) -> InspectionClient<Channel> {
        let channel =
            Channel::from_shared(format!("http://{}", self.addr)).expect("uri").connect().await.expect("connect");
        InspectionClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
    }

    /// Stops the server; what `serve_with` returned.
    pub async fn stop_result(mut self) -> Result<(), linesight::api::ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }

    /// What `serve_with` returned when it ended by itself (within `within`).
    pub async fn ended(mut self, within: std::time::Duration) -> Result<(), linesight::api::ServeError> {
        let task = self.task.take().expect("server task");
        tokio::time::timeout(within, task).await.expect("server ended in time").expect("server task")
    }

    pub async fn stop(self) {
        self.stop_result().await.expect("serve");
    }
}

/// `GET path` over plain HTTP/1.1; the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("HTTP status");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Default config with a generous budget: correctness tests must not depend on machine speed.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.default_budget = std::time::Duration::from_millis(30_000);
    config.engine.intra_threads = 2;
    config
}

pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

pub fn vtest_jpeg(frame: u32) -> Vec<u8> {
    std::fs::read(fixture(&format!("vtest/frame_{frame:04}.jpg"))).expect("fixture frame")
}

pub fn jpeg_request(camera: &str, sequence: u64, data: Vec<u8>) -> InspectRequest {
    InspectRequest {
        camera_id: camera.into(),
        sequence,
        pipeline: String::new(),
        image: Some(Image { data: data.into(), encoding: proto::image::Encoding::Jpeg as i32, width: 0, height: 0 }),
        budget_ms: 0,
        annotate: false,
    }
}

pub fn persons(response: &proto::InspectResponse) -> usize {
    response.detections.iter().filter(|d| d.class_name == "person").count()
}

/// A `linesight serve` process on 127.0.0.1:0, with its log collected.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub log: tokio::task::JoinHandle<Vec<String>>,
}

impl ServerProcess {
    /// Starts `linesight serve` with `config_toml` and waits until health says SERVING.
    pub async fn start(config_toml: &str, dir: &std::path::Path) -> Self {
        use tokio::io::AsyncBufReadExt;
        let config_path = dir.join("linesight.toml");
        std::fs::write(&config_path, config_toml).expect("config");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_linesight"))
            .args(["serve", "--threads", "2", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn linesight serve");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut addr = None;
        while addr.is_none() {
            let line = lines.next_line().await.expect("log").expect("server exited before serving");
            addr = line.split("address=").nth(1).and_then(|rest| rest.split_whitespace().next()).map(str::to_owned);
        }
        let addr: SocketAddr = addr.expect("address").parse().expect("address");
        let log = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                kept.push(line);
            }
            kept
        });
        let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
        let until_serving = async {
            loop {
                let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
                if health.check(request).await.expect("health").into_inner().status == serving {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        // Models load in seconds; a server that never says SERVING fails the test, not hangs it.
        tokio::time::timeout(std::time::Duration::from_secs(300), until_serving)
            .await
            .expect("the server said SERVING within 300 s");
        Self { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Resident memory of the server process, in MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.pid()).expect("VmRSS of the server")
    }

    pub fn terminate(&self) {
        let killed = std::process::Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        assert!(killed.expect("kill").success());
    }
}

/// Resident memory of process `pid`, in MiB (`None` once it has gone).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Threads of process `pid` (`None` once it has gone).
pub fn threads(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:"))?.trim().parse().ok()
}

/// The machine all tests run on: tests that measure it (capacity, goodput) take it alone; the
/// rest share it, so a measurement never sees another test's load.
static MACHINE: RwLock<()> = RwLock::new(());

pub fn machine_alone() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn machine_shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}
