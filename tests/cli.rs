//! The `perceptio` binary end to end: schema in sync, validate/graph output and exit codes, and `run` on a
//! dataset generated here (including a bad row and a failing node).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Fields};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_perceptio"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_checked_in_json_schema_matches_the_spec_types() {
    let out = bin().arg("schema").output().unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let checked_in = std::fs::read_to_string(repo().join("dataflows/dataflow.schema.json")).unwrap();
    assert!(
        generated == checked_in,
        "dataflows/dataflow.schema.json is stale: run `cargo run -- schema --out dataflows/dataflow.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&checked_in).unwrap();
    let kinds = schema.pointer("/definitions/NodeSpec/properties/kind/enum").unwrap().as_array().unwrap();
    assert!(kinds.iter().any(|k| k == "parquet-replay"), "registered kinds are listed");
}

fn png_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 4, 4);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(&[128u8; 48]).unwrap();
    out
}

/// A small dataset in the HF layout; row 2's image is garbage.
fn write_dataset(path: &Path) {
    let fields =
        Fields::from(vec![Field::new("bytes", DataType::Binary, true), Field::new("path", DataType::Utf8, true)]);
    let good = png_bytes();
    let bytes: Vec<&[u8]> = (0..6).map(|i| if i == 2 { &b"garbage"[..] } else { good.as_slice() }).collect();
    let image = StructArray::new(
        fields,
        vec![
            Arc::new(BinaryArray::from(bytes)) as ArrayRef,
            Arc::new(StringArray::from((0..6).map(|i| format!("{i}.png")).collect::<Vec<_>>())),
        ],
        None,
    );
    let ids = StringArray::from((0..6).map(|i| format!("s{i}")).collect::<Vec<_>>());
    let batch =
        RecordBatch::try_from_iter([("sample_id", Arc::new(ids) as ArrayRef), ("image", Arc::new(image) as ArrayRef)])
            .unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn run_replays_a_dataset_and_accounts_for_every_row() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data/train-00000-of-00001.parquet"));
    let summary_path = dir.path().join("summary.json");
    let out = bin()
        .args(["run", "--quiet", "dataflows/replay.yaml", "--summary-json"])
        .arg(&summary_path)
        .current_dir(repo())
        .env("PERCEPTIO_DATA", dir.path().join("data"))
        .env("PERCEPTIO_OUT", dir.path().join("out"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "run failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("read 6 rows, processed 5, failed 1"), "{stdout}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();
    assert_eq!(summary["read"], 6);
    assert_eq!(summary["balanced"], true);
    assert!(dir.path().join("out/decoded.parquet").exists());
    assert!(dir.path().join("out/replay-errors.parquet").exists());
}

#[test]
fn a_failing_node_makes_run_exit_non_zero_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data/x.parquet"));
    let flow = dir.path().join("fail.yaml");
    std::fs::write(
        &flow,
        format!(
            "name: fail\nnodes:\n  - id: replay\n    kind: parquet-replay\n    params: {{ paths: [\"{}/data/*.parquet\"] }}\n  - id: sink\n    kind: parquet-sink\n    params: {{ path: /proc/perceptio-cannot-write-here/x.parquet }}\n    inputs: {{ in: replay/out }}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = bin().args(["run", "--quiet"]).arg(&flow).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: node `sink` (parquet-sink) failed: creating /proc/perceptio-cannot-write-here"),
        "{stderr}"
    );
}

#[test]
fn validate_reports_problems_with_file_and_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("bad.yaml");
    std::fs::write(
        &flow,
        "nodes:\n  - id: a\n    kind: parquet-replay\n    params: { paths: [] }\n  - id: b\n    kind: nope\n",
    )
    .unwrap();
    let out = bin().arg("validate").arg(&flow).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = flow.display();
    assert!(stderr.contains(&format!("{f}:6: node `b`, field `kind`: unknown node kind `nope`")), "{stderr}");
    assert!(
        stderr.contains(&format!("{f}:4: node `a`, field `paths`: bad params: name at least one file or glob")),
        "{stderr}"
    );
}

#[test]
fn graph_prints_an_outline_and_graphviz() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data/train-00000-of-00001.parquet"));
    for (flag, needle) in [(None, "decode [image-decode] on cpu"), (Some("--dot"), "\"replay\" -> \"decode\"")] {
        let mut cmd = bin();
        cmd.args(["graph", "dataflows/replay.yaml"]).current_dir(repo()).env("PERCEPTIO_DATA", dir.path().join("data"));
        if let Some(f) = flag {
            cmd.arg(f);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.contains(needle), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn init_model_refuses_sizes_it_cannot_build() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = bin()
            .args(["init-model", "--data", "none-*.parquet", "--vqvae", "none", "--out"])
            .arg(dir.path().join("m"))
            .args(extra)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = run(&["--image-size", "100"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "`vlm.vision.image_size`: 100 px is not a positive multiple of the 14 px patch times the pixel shuffle 2"
        ),
        "{err}"
    );
    let (code, err) = run(&["--image-size", "140", "--pixel-shuffle", "0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("`vlm.shuffle`: the pixel-shuffle factor must be at least 1"), "{err}");
    let (code, err) = run(&["--rope-theta", "0.5"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("`vlm.text.rope_theta`: 0.5 is not a number above 1"), "{err}");
    let (code, err) = run(&["--vision-width", "30"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("`vlm.vision.hidden_size`: 30 is not a positive multiple of the 4 attention heads"), "{err}");
    let (code, err) = run(&["--vision-layers", "0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("`vlm.vision.num_hidden_layers`: the InternViT needs at least one layer"), "{err}");
    // sizes that build get as far as the missing data
    let (code, err) =
        run(&["--patch-size", "7", "--image-size", "140", "--vision-width", "128", "--vision-layers", "3"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("matches no file"), "{err}");
    let (code, err) = run(&["--image-size", "140", "--pixel-shuffle", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("matches no file"), "{err}");
    assert!(!dir.path().join("m").exists());
}

#[test]
fn recall_and_tied_marker_stages_train_a_point_reasoning_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = |args: &[&str]| {
        let out = bin().args(args).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{args:?}: {stdout}{stderr}");
        stdout.to_string()
    };
    let p = |name: &str| d.join(name).display().to_string();
    let train = format!("{}/data/train-*.parquet", p("world"));
    let val = format!("{}/data/validation-*.parquet", p("world"));
    ok(&["synth", "--out", &p("world"), "--scenes", "20", "--threads", "1"]);
    ok(&["train-vqvae", "--source", "parquet", "--data", &train, "--out", &p("vq"), "--steps", "2", "--val-size", "4"]);
    let init = ["init-model", "--data", &train, "--vqvae", &p("vq"), "--align-depth-grid"];
    ok(&[&init[..], &["--out", &p("plain")]].concat());
    ok(&[&init[..], &["--point-reasoning", "--out", &p("chain")]].concat());
    let bytes = |model: &str, file: &str| std::fs::read(d.join(model).join(file)).unwrap();

    // the recall stage needs the chain's words in the vocabulary
    let out = bin().args(["pretrain-recall", "--model", &p("plain"), "--steps", "2"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the recall task") && err.contains("--point-reasoning"), "{err}");

    let llm = bytes("chain", "llm.safetensors");
    let args = ["--model", &p("chain"), "--steps", "3", "--batch-size", "2", "--held-out", "8", "--every", "2"];
    let stdout = ok(&[&["pretrain-recall"][..], &args[..]].concat());
    assert!(stdout.contains("pretrained the LLM on recall for 3 steps (6 questions"), "{stdout}");
    assert!(stdout.contains("step 2: loss") && stdout.contains("held-out: levels"), "{stdout}");
    assert!(stdout.contains("(8 questions)"), "{stdout}");
    assert_ne!(llm, bytes("chain", "llm.safetensors"), "llm.safetensors is rewritten");

    let image = bytes("chain", "image.safetensors");
    let args = ["--model", &p("chain"), "--data", &train, "--val", &val, "--steps", "2", "--batch-size", "2"];
    let stdout = ok(&[&["pretrain-tied-markers"][..], &args[..], &["--label-at", "letter"][..]].concat());
    assert!(stdout.contains("pretrained the image encoder on tied markers and levels (2 steps"), "{stdout}");
    assert!(
        stdout.contains("held-out point questions: ") && stdout.contains("marked tokens name their letter"),
        "{stdout}"
    );
    assert_ne!(image, bytes("chain", "image.safetensors"), "image.safetensors is rewritten");
}
