//! The CPU reference reproduces every output of the official implementation.

mod common;

use adaface::eval::{run_case, Device};
use adaface::golden::parse_case;
use adaface::Dtype;
use common::{golden_files, rel, rel_norm};

/// (loss tolerance, array tolerance) per precision (tests/golden/README.md).
fn tolerances(dtype: Dtype) -> (f64, f64) {
    match dtype {
        Dtype::F64 => (1e-10, 1e-10),
        _ => (1e-5, 1e-4),
    }
}

#[test]
fn reference_reproduces_every_golden_file() {
    let mut checked = 0;
    for path in golden_files() {
        let text = common::read_golden(&path);
        let case = parse_case(&text).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let (tol_loss, tol_arr) = tolerances(case.dtype);
        let steps = run_case(&case, Device::Reference, case.dtype).unwrap();
        assert_eq!(steps.len(), case.steps.len());
        let mut state_before = case.config.initial_state();
        for (k, (got, step)) in steps.iter().zip(&case.steps).enumerate() {
            let want = step.expected.as_ref().expect("golden files carry outputs");
            let at = format!("{name} step {k}");
            assert!(
                rel(state_before.batch_mean, want.state_before.batch_mean) <= tol_arr
                    && rel(state_before.batch_std, want.state_before.batch_std) <= tol_arr,
                "{at}: EMA state before the step differs"
            );
            let e = rel(got.loss, want.loss);
            assert!(e <= tol_loss, "{at}: loss rel err {e:e}");
            let arrays: [(&str, &[f64], &[f64]); 5] = [
                ("norms", &got.norms, &want.norms),
                ("margin_scaler", &got.margin_scaler, &want.margin_scaler),
                ("logits", got.logits.as_deref().unwrap(), &want.logits),
                ("grad_features", &got.grad_features, &want.grad_features),
                ("grad_weight", &got.grad_weight, &want.grad_weight),
            ];
            for (what, g, w) in arrays {
                let e = rel_norm(g, w);
                assert!(e <= tol_arr, "{at}: {what} rel-norm err {e:e}");
            }
            for (what, g, w) in [
                (
                    "batch_mean_after",
                    got.state_after.batch_mean,
                    want.state_after.batch_mean,
                ),
                (
                    "batch_std_after",
                    got.state_after.batch_std,
                    want.state_after.batch_std,
                ),
            ] {
                let e = rel(g, w);
                assert!(e <= tol_arr, "{at}: {what} rel err {e:e}");
            }
            state_before = got.state_after;
            checked += 1;
        }
    }
    assert!(checked >= 12 * 3, "only {checked} steps checked");
}

#[test]
fn batch_statistics_match_golden() {
    for path in golden_files() {
        let case = parse_case(&common::read_golden(&path)).unwrap();
        let (_, tol) = tolerances(case.dtype);
        let mut state = case.config.initial_state();
        for step in &case.steps {
            let want = step.expected.as_ref().unwrap();
            let out = adaface::reference::forward(
                &case.config,
                &state,
                case.shape,
                &step.features,
                &case.weight,
                &step.labels,
            )
            .unwrap();
            assert!(rel(out.stats.mean, want.norm_mean) <= tol, "{path:?}");
            assert!(
                rel(out.stats.std.unwrap(), want.norm_std) <= tol,
                "{path:?}"
            );
            state = out.state_after();
        }
    }
}
