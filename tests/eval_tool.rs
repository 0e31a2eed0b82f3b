//! The `adaface_eval` example end to end: output format, errors, no partial
//! output.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use adaface::golden::{parse_case, parse_eval_output};
use common::{golden_files, rel, rel_norm};

/// The example's binary, next to the test binaries. A full `cargo test`
/// builds it; a filtered run (`--test eval_tool`) may not, so build it here
/// (a no-op when it is fresh).
fn eval_binary() -> PathBuf {
    // The same features as this test binary, so the build is a no-op after
    // a full `cargo test` instead of a rebuild of the crate.
    let mut features = vec![];
    if cfg!(feature = "cuda") {
        features.push("cuda");
    }
    if cfg!(feature = "candle") {
        features.push("candle");
    }
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--profile",
            "test",
            "--example",
            "adaface_eval",
        ])
        .args(["--no-default-features", "--features", &features.join(",")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "building the adaface_eval example failed");
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("examples").join("adaface_eval");
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adaface-eval-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn writes_the_documented_format() {
    let input = golden_files()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("a_small_default_float32"))
        .unwrap();
    let out = scratch("a32.json");
    let status = Command::new(eval_binary())
        .args([
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ])
        .args(["--device", "reference", "--dtype", "f32"])
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&out).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["device"], "reference");
    assert_eq!(doc["dtype"], "f32");
    let steps = parse_eval_output(&text).unwrap();
    let case = parse_case(&std::fs::read_to_string(&input).unwrap()).unwrap();
    assert_eq!(steps.len(), 3);
    for (got, step) in steps.iter().zip(&case.steps) {
        let want = step.expected.as_ref().unwrap();
        assert!(rel(got.loss, want.loss) < 1e-5);
        assert!(rel_norm(&got.grad_weight, &want.grad_weight) < 1e-4);
        assert!(rel_norm(got.logits.as_ref().unwrap(), &want.logits) < 1e-4);
        assert!(rel(got.state_after.batch_std, want.state_after.batch_std) < 1e-5);
    }
    std::fs::remove_file(out).unwrap();
}

fn expect_failure(args: &[&str], out: &Path) {
    let res = Command::new(eval_binary()).args(args).output().unwrap();
    assert!(!res.status.success(), "{args:?} should fail");
    let err = String::from_utf8(res.stderr).unwrap();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line on stderr: {err:?}"
    );
    assert!(err.starts_with("adaface_eval: "), "{err:?}");
    assert!(!out.exists(), "no output file on error");
}

#[test]
fn errors_exit_non_zero_with_one_line_and_no_output() {
    let out = scratch("never.json");
    let o = out.to_str().unwrap();
    let good = golden_files().remove(0);
    let g = good.to_str().unwrap();
    expect_failure(&["--input", "/nonexistent.json", "--output", o], &out);
    expect_failure(&["--input", g, "--output", o, "--device", "tpu"], &out);
    expect_failure(&["--input", g, "--output", o, "--dtype", "bf16"], &out);
    expect_failure(&["--input", g], &out);

    // A case whose labels are out of range fails as a whole: no file.
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&good).unwrap()).unwrap();
    doc["steps"][2]["labels"][0] = serde_json::json!(1000);
    let bad = scratch("bad_labels.json");
    std::fs::write(&bad, doc.to_string()).unwrap();
    expect_failure(&["--input", bad.to_str().unwrap(), "--output", o], &out);

    let broken = scratch("broken.json");
    std::fs::write(&broken, "{\"config\": ").unwrap();
    expect_failure(&["--input", broken.to_str().unwrap(), "--output", o], &out);
    std::fs::remove_file(bad).unwrap();
    std::fs::remove_file(broken).unwrap();
}

#[test]
fn huge_declared_sizes_with_tiny_data_fail_cleanly_on_every_device() {
    // C = 3e9 (a 36 GB gradient if allocated first) and B = D = 2^32 - 1
    // (a capacity overflow): a format error before any allocation.
    let out = scratch("never_huge.json");
    let o = out.to_str().unwrap();
    for (k, (b, d, c)) in [(2u64, 2u64, 3_000_000_000u64), (4294967295, 4294967295, 2)]
        .into_iter()
        .enumerate()
    {
        let case = serde_json::json!({
            "config": {"B": b, "D": d, "C": c},
            "weight": [1.0, 2.0, 3.0, 4.0],
            "steps": [{"features": [1.0, 2.0, 3.0, 4.0], "labels": [0, 1]}],
        });
        let path = scratch(&format!("huge_{k}.json"));
        std::fs::write(&path, case.to_string()).unwrap();
        for device in ["reference", "cpu", "sim", "cuda"] {
            let p = path.to_str().unwrap();
            expect_failure(&["--input", p, "--output", o, "--device", device], &out);
        }
        std::fs::remove_file(path).unwrap();
    }
}
