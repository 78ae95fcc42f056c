//! Execution providers on a machine without a GPU, with the real CPU-only ONNX Runtime from
//! `scripts/setup`: a GPU provider that cannot load stops start-up with a message that says why
//! and what to do, unless fallback is allowed; then the service runs on the CPU and says so.

use crate::common::{TestServer, jpeg_request, persons, test_config, vtest_jpeg};
use linesight::api::proto;
use linesight::config::Config;
use linesight::engine::Provider;
use linesight::pipeline::Pipelines;

fn start_error(config: &Config) -> String {
    match Pipelines::start(&config.service_settings()) {
        Ok(_) => panic!("start-up must fail for provider {}", config.engine.provider),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_provider_that_cannot_load_stops_start_up_with_the_reason() {
    let _machine = crate::common::machine_shared();
    for provider in [Provider::Cuda, Provider::Tensorrt] {
        let mut config = test_config();
        config.engine.provider = provider;
        config.engine.tensorrt.engine_cache_dir = Some(tempfile::tempdir().expect("tempdir").keep());
        let message = start_error(&config);
        assert!(message.contains(&format!("execution provider `{provider}`")), "{message}");
        assert!(message.contains("nanodet-g"), "names the model: {message}");
        assert!(message.contains("CPU-only build") && message.contains("onnxruntime-gpu"), "{message}");
        assert!(message.contains("engine.allow_fallback = true"), "says how to fall back: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fallback_allowed_the_service_runs_on_the_cpu_and_reports_it() {
    let _machine = crate::common::machine_shared();
    let mut config = test_config();
    config.engine.provider = Provider::Tensorrt;
    config.engine.allow_fallback = true;
    config.engine.tensorrt.engine_cache_dir = Some(tempfile::tempdir().expect("tempdir").keep());
    let server = TestServer::start(config).await;
    let mut client = server.client().await;

    let listed = client.list_pipelines(proto::ListPipelinesRequest {}).await.expect("list").into_inner();
    assert!(!listed.pipelines.is_empty());
    for p in &listed.pipelines {
        assert_eq!(p.execution_provider, "cpu", "pipeline {} fell back to the CPU", p.name);
        assert!(!p.gpu_preprocess);
        assert_eq!(p.device_memory_bytes, 0);
    }
    // And it serves: the fallback is a working CPU pipeline, not a half-started one.
    let response = client.inspect(jpeg_request("cam-fallback", 1, vtest_jpeg(100))).await.expect("inspect");
    assert!(persons(&response.into_inner()) >= 3);
    server.stop().await;
}

#[test]
fn provider_settings_parse_and_unknown_providers_are_named() {
    let _machine = crate::common::machine_shared();
    let config = Config::from_toml(
        r#"
        [engine]
        provider = "tensorrt"
        allow_fallback = true
        device_id = 1
        gpu_memory_budget_mb = 6000
        gpu_preprocess = false
        [engine.tensorrt]
        fp16 = false
        engine_cache_dir = "/var/cache/linesight/trt"
        workspace_mb = 512
        "#,
    )
    .expect("valid config");
    let choice = config.engine.provider_choice();
    assert_eq!(choice.provider, Provider::Tensorrt);
    assert!(choice.allow_fallback);
    assert_eq!(choice.device_id, 1);
    assert!(!choice.tensorrt.fp16);
    assert_eq!(choice.tensorrt.engine_cache_dir, std::path::PathBuf::from("/var/cache/linesight/trt"));
    assert_eq!(choice.tensorrt.workspace_bytes, 512 << 20);
    assert_eq!(config.engine.gpu_memory_budget_mib, Some(6000));

    let err = Config::from_toml("[engine]\nprovider = \"rocm\"\n").expect_err("unknown provider");
    let text = err.to_string();
    assert!(text.contains("rocm") && text.contains("cuda") && text.contains("tensorrt"), "{text}");
    let err = Config::from_toml("[engine]\ngpu_memory_budget_mb = 0\n").expect_err("zero budget");
    assert!(err.to_string().contains("engine.gpu_memory_budget_mib"), "{err}");
}

/// Without the `cuda` feature nothing can measure device memory, so a budget cannot be enforced:
/// start-up says so rather than ignoring it.
#[cfg(not(feature = "cuda"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_budget_without_the_cuda_feature_is_refused() {
    let _machine = crate::common::machine_shared();
    let mut config = test_config();
    config.engine.provider = Provider::Cuda;
    config.engine.allow_fallback = true;
    config.engine.gpu_memory_budget_mib = Some(4096);
    let message = start_error(&config);
    assert!(message.contains("gpu_memory_budget_mib") && message.contains("`cuda` feature"), "{message}");
}
