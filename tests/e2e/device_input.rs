//! `cuda` builds: the path the GPU workers feed sessions by (an input tensor over raw memory,
//! described by its memory info, no copy), exercised on the CPU with the real ONNX Runtime and the
//! bundled detector: it must equal a plain `run`, frame after frame over reused memory.
#![cfg(feature = "cuda")]

use crate::common::vtest_jpeg;
use linesight::config::Config;
use linesight::engine::{ModelSession, OrtRuntime, SessionOptions};
use linesight::imaging::{DecodeLimits, ImageEncoding, Preprocessor, decode};
use linesight::model::ModelManifest;
use linesight::pipeline::tensor_spec;

#[test]
fn bound_input_runs_exactly_as_a_plain_run() {
    let _machine = crate::common::machine_shared();
    let config = Config::default();
    let runtime = OrtRuntime::init(None).expect("ONNX Runtime (run scripts/setup)");
    let manifest = ModelManifest::load(&config.resolved_model_dir().join("nanodet-g")).expect("manifest");
    let options = SessionOptions { intra_threads: 2, ..SessionOptions::default() };
    let mut session = ModelSession::load(runtime, "nanodet-g", &manifest.onnx_path(), &options).expect("session");
    let spec = tensor_spec(&manifest.input);
    let limits = DecodeLimits { max_pixels: 40_000_000, max_side: 16_384 };
    let mut pre = Preprocessor::new();
    let shape = [1, 3, spec.height as usize, spec.width as usize];
    for frame in [100, 400, 100] {
        let rgb = decode(&vtest_jpeg(frame), ImageEncoding::Jpeg, 0, 0, limits).expect("decode");
        let mut tensor = vec![0f32; spec.len()];
        pre.letterbox_into(&rgb, &spec, &mut tensor).expect("letterbox");
        let plain = session.run(shape, &tensor).expect("run");
        // SAFETY: `tensor` holds the whole input and outlives the call.
        let bound =
            unsafe { session.run_bound(shape, tensor.as_mut_ptr().cast(), Default::default()) }.expect("bound run");
        assert_eq!(plain.len(), bound.len());
        for (p, b) in plain.iter().zip(&bound) {
            assert_eq!(p.name, b.name);
            let (p, b) = (p.view().expect("f32"), b.view().expect("f32"));
            assert_eq!(p.shape(), b.shape());
            let max = p.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert_eq!(max, 0.0, "frame {frame}: bound output differs by {max}");
        }
    }
}
