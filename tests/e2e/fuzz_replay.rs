//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets' own code,
//! so anything the fuzzers once found stays fixed. The long runs are `cargo fuzz` (README
//! "Operations").

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    files.into_iter().map(|path| (path.clone(), std::fs::read(&path).expect("corpus file"))).collect()
}

fn replay(target: &str, run: fn(&[u8])) {
    let inputs = corpus(target);
    assert!(inputs.len() >= 7, "{target}: only {} corpus inputs", inputs.len());
    for (path, data) in &inputs {
        if std::panic::catch_unwind(|| run(data)).is_err() {
            panic!("{target}: {} panics", path.display());
        }
    }
}

#[test]
fn decode_preprocess_corpus_replays_without_a_panic() {
    let _machine = crate::common::machine_shared();
    replay("decode_preprocess", linesight::fuzzing::decode_and_preprocess);
}

#[test]
fn validate_request_corpus_replays_without_a_panic() {
    let _machine = crate::common::machine_shared();
    replay("validate_request", linesight::fuzzing::validate_request);
}

#[test]
fn undecodable_requests_in_the_corpus_map_to_invalid_argument() {
    let _machine = crate::common::machine_shared();
    use linesight::api::{WireRequest, decode_inspect_request, undecodable_status};
    let seeds = [
        "seed-camera-not-utf8",
        "seed-pipeline-not-utf8",
        "seed-random-bytes",
        "seed-truncated-varint",
        "seed-length-past-end",
        "seed-wrong-wire-type",
        "seed-image-not-a-message",
    ];
    let inputs = corpus("validate_request");
    for seed in seeds {
        let (path, data) = inputs.iter().find(|(path, _)| path.ends_with(seed)).expect("seed in the corpus");
        let WireRequest::Undecodable(error) = decode_inspect_request(data.clone().into()) else {
            panic!("{} decodes", path.display());
        };
        let status = undecodable_status(&error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{}", path.display());
        assert!(status.message().contains("could not be decoded as a linesight.v1.InspectRequest: "), "{status:?}");
    }
    let undecodable = inputs
        .iter()
        .filter(|(_, data)| matches!(decode_inspect_request(data.clone().into()), WireRequest::Undecodable(_)));
    assert!(undecodable.count() > seeds.len(), "the grown corpus has undecodable inputs too");
}
