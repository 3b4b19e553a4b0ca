//! Golden tests of dataflow validation: each `golden/NAME.yaml` must fail with exactly the text in
//! `golden/NAME.expected`. Regenerate with `UPDATE_GOLDEN=1 cargo test -p perceptio-runtime --test validation`
//! (then read the diff: the messages are part of the user interface).

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use perceptio_runtime::Graph;

#[test]
fn every_validation_error_class_has_its_exact_message() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let registry = common::registry(&log);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 12, "golden cases are missing");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(case).unwrap();
        let got = match Graph::from_yaml(&name, &text, &registry) {
            Ok(_) => "OK\n".to_string(),
            Err(e) => format!("{e}\n"),
        };
        let expected_path = case.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!("{name}:\n  expected: {expected}  got:      {got}"));
        }
    }
    assert!(failures.is_empty(), "validation messages changed:\n{}", failures.join("\n"));
}
