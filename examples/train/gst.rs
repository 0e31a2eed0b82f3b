//! How each margin scales the gradient of a sample by how hard it is: the
//! AdaFace paper's "gradient scaling term". For a sample of target cosine
//! `c = cos(theta_y)`, the cross-entropy's gradient with respect to `c` is
//! `-(1 - P_y) f'(c)`, where `f` is the margin's target logit and `P_y` the
//! softmax probability of the target: hard samples (small `c`) have
//! `P_y ~ 0`, so what separates the margins there is `f'(c)`. ArcFace's
//! `f'` falls as `c` falls (hard samples de-emphasised), CosFace's is flat,
//! and AdaFace moves between an ArcFace-like shape at low feature norm
//! (`z = -1`) and the opposite, hard samples emphasised, at high norm
//! (`z = +1`).
//!
//! The curves are measured, not derived: central finite differences of the
//! library's exact reference loss (`adaface::reference::detached_loss`) on a
//! one-row batch whose target cosine is set by rotating the feature, with
//! the other `C - 1` class weights orthogonal to the rotation (negative
//! cosines 0).

use std::path::Path;

use adaface::{AdaFaceConfig, MarginPolicy, Shape};

use crate::plot::{Chart, PALETTE};

/// `|dL/dc| / s` at target cosine `c` for a row of feature norm `norm` and
/// margin scaler `z`, against `classes - 1` negatives at cosine 0.
pub fn scaling_term(
    cfg: &AdaFaceConfig,
    classes: usize,
    c: f64,
    norm: f64,
    z: f64,
) -> Result<f64, adaface::Error> {
    let loss = |c: f64| -> Result<f64, adaface::Error> {
        // D = 3: the target weight is e1, every negative e3, the feature in
        // the e1-e2 plane.
        let x = [norm * c, norm * (1.0 - c * c).max(0.0).sqrt(), 0.0];
        let mut w = vec![0.0f64; classes * 3];
        w[0] = 1.0;
        for row in w.chunks_mut(3).skip(1) {
            row[2] = 1.0;
        }
        adaface::reference::detached_loss(cfg, Shape::new(1, 3, classes), &x, &w, &[0u32], &[z])
    };
    let h = 1e-5;
    Ok((loss(c + h)? - loss(c - h)?).abs() / (2.0 * h) / cfg.s())
}

/// The target cosines the curves are drawn at (inside the cosine clamp).
fn cosines() -> Vec<f64> {
    (0..=196).map(|k| -0.98 + 0.01 * k as f64).collect()
}

fn curve(
    cfg: &AdaFaceConfig,
    classes: usize,
    norm: f64,
    z: f64,
) -> Result<Vec<(f64, f64)>, adaface::Error> {
    cosines()
        .into_iter()
        .map(|c| scaling_term(cfg, classes, c, norm, z).map(|g| (c, g)))
        .collect()
}

fn cfg(policy: MarginPolicy) -> Result<AdaFaceConfig, adaface::Error> {
    AdaFaceConfig::builder().margin(policy).s(64.0).build()
}

/// Writes `gst_adaface.png` and `gst_policies.png` for `classes` classes.
pub fn write_plots(
    dir: &Path,
    classes: usize,
    dim: usize,
) -> std::io::Result<Vec<(&'static str, &'static str)>> {
    let io = std::io::Error::other;
    let x_label = "TARGET COSINE COS(THETA_Y)   (HARD <-  -> EASY)";
    let y_label = format!("|DL/D COS(THETA_Y)| / S   (S=64, C={classes})");

    let ada = cfg(MarginPolicy::AdaFace { m: 0.4, h: 0.333 }).map_err(io)?;
    let mut chart = Chart::new(
        "ADAFACE: GRADIENT SCALING TERM PER MARGIN SCALER Z",
        x_label,
        &y_label,
        (-1.0, 1.0),
        (0.0, 2.0),
    );
    let zs = [
        (-1.0, "Z = -1 (LOW NORM): = ARCFACE M=0.4"),
        (-0.5, "Z = -0.5"),
        (0.0, "Z = 0: = COSFACE M=0.4"),
        (0.5, "Z = +0.5"),
        (1.0, "Z = +1 (HIGH NORM)"),
    ];
    for (k, (z, name)) in zs.iter().enumerate() {
        chart.polyline(
            &curve(&ada, classes, 10.0, *z).map_err(io)?,
            PALETTE[k],
            2.5,
        );
        chart.add_legend(name, PALETTE[k]);
    }
    chart.save(&dir.join("gst_adaface.png"))?;

    let mag = crate::mag_face(dim);
    let (l_a, u_a) = match mag {
        MarginPolicy::MagFace { l_a, u_a, .. } => (l_a, u_a),
        _ => (1.0, 1.0),
    };
    let mut chart = Chart::new(
        "GRADIENT SCALING TERM OF THE OTHER MARGINS",
        x_label,
        &y_label,
        (-1.0, 1.0),
        (0.0, 4.0),
    );
    let others = [
        (
            MarginPolicy::ArcFace { m: 0.5 },
            10.0,
            "ARCFACE M=0.5 (= CURRICULARFACE TARGET)".to_string(),
        ),
        (
            MarginPolicy::CosFace { m: 0.35 },
            10.0,
            "COSFACE M=0.35".into(),
        ),
        (
            MarginPolicy::sphere_face(),
            10.0,
            "SPHEREFACE M=4, LAMBDA=5".into(),
        ),
        (mag, l_a, format!("MAGFACE, NORM {l_a:.1} (MARGIN 0.45)")),
        (mag, u_a, format!("MAGFACE, NORM {u_a:.1} (MARGIN 0.8)")),
    ];
    for (k, (policy, norm, name)) in others.iter().enumerate() {
        let c = cfg(*policy).map_err(io)?;
        chart.polyline(
            &curve(&c, classes, *norm, 0.0).map_err(io)?,
            PALETTE[k],
            2.5,
        );
        chart.add_legend(name, PALETTE[k]);
    }
    chart.save(&dir.join("gst_policies.png"))?;
    Ok(vec![
        (
            "gst_adaface.png",
            "AdaFace's gradient scaling term over the target cosine, per z",
        ),
        (
            "gst_policies.png",
            "the same for ArcFace, CosFace, SphereFace, MagFace",
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use adaface::math::{row_target, MarginConsts};

    /// The measured term is `(1 - P_y) f'(c) / s` with `f` from the
    /// library's own margin formula and `P_y` against `C - 1` zero logits.
    #[test]
    fn finite_differences_match_the_closed_form() {
        let classes = 50;
        for policy in [
            MarginPolicy::ArcFace { m: 0.5 },
            MarginPolicy::AdaFace { m: 0.4, h: 0.333 },
            MarginPolicy::sphere_face(),
        ] {
            let cfg = cfg(policy).unwrap();
            let k = MarginConsts::<f64>::new(&cfg);
            for (c, z) in [(-0.5, 1.0), (0.0, -1.0), (0.3, 0.5), (0.6, 0.0)] {
                let t = row_target(&policy, c, z, 10.0, &k);
                let p = t.logit.exp() / (t.logit.exp() + (classes - 1) as f64);
                let want = (1.0 - p) * t.dlogit / cfg.s();
                let got = scaling_term(&cfg, classes, c, 10.0, z).unwrap();
                assert!(
                    (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "{policy:?} c {c} z {z}: {got} vs {want}"
                );
            }
        }
    }

    /// The paper's point: at high norm AdaFace weighs a hard sample more
    /// than an easier one, at low norm less.
    #[test]
    fn adaface_emphasises_hard_samples_only_at_high_norm() {
        let cfg = cfg(MarginPolicy::AdaFace { m: 0.4, h: 0.333 }).unwrap();
        let g = |c: f64, z: f64| scaling_term(&cfg, 100, c, 10.0, z).unwrap();
        assert!(g(-0.5, 1.0) > g(0.0, 1.0), "high norm");
        assert!(g(-0.5, -1.0) < g(0.0, -1.0), "low norm");
    }
}
