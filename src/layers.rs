//! Who may depend on whom (docs/architecture.md): a test reads every module's `crate::` paths and
//! checks them against the table, so a forbidden `use` fails `cargo test`.

/// Each library module and the modules it may use. `fuzzing` is the fuzz targets' entry point and
/// may reach anything the server's input path does.
const MAY_USE: &[(&str, &[&str])] = &[
    ("api", &["pipeline", "config", "model", "telemetry", "imaging", "detect", "segment", "track", "engine"]),
    ("config", &["pipeline", "model", "batching", "engine", "track", "imaging"]),
    ("pipeline", &["model", "imaging", "batching", "engine", "cuda", "detect", "segment", "track", "telemetry"]),
    ("track", &["detect"]),
    ("model", &["detect", "segment"]),
    ("detect", &["imaging"]),
    ("segment", &["detect", "imaging", "cuda"]),
    ("imaging", &["cuda"]),
    ("batching", &[]),
    ("engine", &["cuda"]),
    ("cuda", &[]),
    ("telemetry", &[]),
    ("fuzzing", &["api", "imaging", "pipeline"]),
];

/// The library modules a file's code names through `crate::…`, one per mention.
fn crate_paths(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let after = after.trim_start_matches('{');
            // `crate::{a, b::c}` names several.
            let names: Vec<&str> = if rest[at + "crate::".len()..].starts_with('{') {
                after.split('}').next().unwrap_or("").split(',').collect()
            } else {
                vec![after]
            };
            for name in names {
                let module: String =
                    name.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !module.is_empty() {
                    found.push(module);
                }
            }
            rest = &rest[at + "crate::".len()..];
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{MAY_USE, crate_paths};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Every `crate::` use across the library, by the module that makes it.
    fn violations(src: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        let mut files = Vec::new();
        rust_files(src, &mut files);
        for file in files {
            let relative = file.strip_prefix(src).unwrap_or(&file);
            let first = relative.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or("");
            let module = first.trim_end_matches(".rs");
            if matches!(module, "bin" | "lib" | "layers") {
                continue; // the binary may use everything; lib.rs only declares modules
            }
            let Some((_, allowed)) = MAY_USE.iter().find(|(m, _)| *m == module) else {
                problems.push(format!("{}: module `{module}` is not in the table", relative.display()));
                continue;
            };
            let source = std::fs::read_to_string(&file).unwrap_or_default();
            for used in crate_paths(&source) {
                if used != module && !allowed.contains(&used.as_str()) {
                    problems.push(format!("{}: `{module}` must not use `crate::{used}`", relative.display()));
                }
            }
        }
        problems.sort();
        problems.dedup();
        problems
    }

    #[test]
    fn every_module_uses_only_the_layers_below_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let problems = violations(&src);
        assert!(problems.is_empty(), "layering violations:\n  {}", problems.join("\n  "));
    }

    #[test]
    fn a_forbidden_use_is_found() {
        let dir = tempfile_dir();
        std::fs::create_dir_all(dir.join("detect")).expect("dir");
        std::fs::write(dir.join("detect/mod.rs"), "use crate::config::Config;\nuse crate::{imaging, track::X};\n")
            .expect("write");
        let problems = violations(&dir);
        assert_eq!(
            problems,
            vec![
                "detect/mod.rs: `detect` must not use `crate::config`".to_owned(),
                "detect/mod.rs: `detect` must not use `crate::track`".to_owned(),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_table_has_no_cycle() {
        // Depth-first over the allowed uses: a module reached again on its own path is a cycle.
        fn visit<'a>(module: &'a str, path: &mut Vec<&'a str>) -> Option<Vec<&'a str>> {
            if let Some(at) = path.iter().position(|m| *m == module) {
                let mut cycle = path[at..].to_vec();
                cycle.push(module);
                return Some(cycle);
            }
            path.push(module);
            let uses = MAY_USE.iter().find(|(m, _)| *m == module).map_or(&[][..], |(_, u)| u);
            for used in uses {
                if let Some(cycle) = visit(used, path) {
                    return Some(cycle);
                }
            }
            path.pop();
            None
        }
        for (module, _) in MAY_USE {
            let cycle = visit(module, &mut Vec::new());
            assert!(cycle.is_none(), "cycle: {}", cycle.unwrap_or_default().join(" → "));
        }
    }

    fn tempfile_dir() -> PathBuf {
        let unique = format!("linesight-layers-{}-{:?}", std::process::id(), std::thread::current().id());
        std::env::temp_dir().join(unique.replace(['(', ')'], ""))
    }
}
