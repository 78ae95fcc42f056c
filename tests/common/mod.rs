//! Test harness: a real linesight server on 127.0.0.1:0 with the real bundled model, and a real client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use linesight::api::proto::inspection_client::InspectionClient;
use linesight::api::proto::{self, Image, InspectRequest};
use linesight::config::Config;
use linesight::pipeline::Pipelines;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let pipelines = Arc::new(Pipelines::start(&config).expect("pipelines start (run scripts/setup first)"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server_config = config.server.clone();
        let task = tokio::spawn(async move {
            linesight::api::serve(pipelines, &server_config, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        Self { addr, stop: Some(stop), task: Some(task) }
    }

    pub async fn client(&self) -> InspectionClient<Channel> {
        let channel =
            Channel::from_shared(format!("http://{}", self.addr)).expect("uri").connect().await.expect("connect");
        InspectionClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }
}

/// Default config with a generous budget: correctness tests must not depend on machine speed.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.default_budget_ms = 30_000;
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
