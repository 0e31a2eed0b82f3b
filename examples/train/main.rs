//! Trains a small embedding model with AdaFace, ArcFace and CosFace on a
//! synthetic identity data set whose samples have a known quality, and
//! shows what AdaFace is about: the learned feature norm tracks image
//! quality, and the margin adapts to it.
//!
//! ```text
//! cargo run --release --example train                 # about a minute on 2 cores
//! cargo run --release --example train -- --help       # sizes, steps, seed, output folder
//! ```

mod data;
mod device;
mod model;
mod plot;
mod png;
mod progress;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use adaface::{AdaFaceConfig, MarginPolicy, Shape};

use data::{Identities, Rng};
use device::{Device, Head};
use model::{learning_rate, Mlp, Sgd};
use plot::{Chart, BLACK, PALETTE};
use progress::Progress;

const USAGE: &str = "\
Trains an MLP embedding with AdaFace, ArcFace and CosFace on synthetic identities
with known quality, then reports spearman(norm, quality), verification accuracy
and plots.

usage: cargo run --release --example train -- [options]

  --steps N      training steps per loss            (default 1500)
  --classes N    training identities                (default 100)
  --dim N        embedding dimension D              (default 32)
  --batch N      batch size B                       (default 64)
  --hidden N     hidden units of the MLP            (default 128)
  --input N      input dimension                    (default 128)
  --lr X         peak learning rate (SGD, momentum) (default 0.1)
  --wd X         weight decay                       (default 5e-4)
  --out DIR      folder for the plots               (default adaface-train)
  --seed N       seed of data, init and pairs       (default 1)
  --device D     cpu (default) or cuda: the loss step on GPU 0 with the
                 CUDA kernels; the MLP stays on the CPU, so each step
                 uploads embeddings and class weights and downloads the
                 gradients. Without a usable GPU: an error, exit status 1
  -h, --help     this text
";

#[derive(Debug, Clone)]
struct Args {
    steps: usize,
    classes: usize,
    dim: usize,
    batch: usize,
    hidden: usize,
    input: usize,
    lr: f32,
    wd: f32,
    out: PathBuf,
    seed: u64,
    device: Device,
}

fn parse_args() -> Result<Option<Args>, String> {
    parse_args_from(std::env::args().skip(1))
}

fn parse_args_from(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        steps: 1500,
        classes: 100,
        dim: 32,
        batch: 64,
        hidden: 128,
        input: 128,
        lr: 0.1,
        wd: 5e-4,
        out: PathBuf::from("adaface-train"),
        seed: 1,
        device: Device::Cpu,
    };
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        // `--flag value` and `--flag=value` alike.
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), value.to_string()),
            _ => {
                let value = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
                (arg, value)
            }
        };
        let count = |min: usize| -> Result<usize, String> {
            match value.parse::<usize>() {
                Ok(v) if v >= min => Ok(v),
                _ => Err(format!("{flag} {value}: expected a whole number >= {min}")),
            }
        };
        match flag.as_str() {
            "--steps" => a.steps = count(1)?,
            "--classes" => a.classes = count(2)?,
            "--dim" => a.dim = count(2)?,
            "--batch" => a.batch = count(2)?,
            "--hidden" => a.hidden = count(1)?,
            "--input" => a.input = count(8)?,
            "--seed" => {
                a.seed = value
                    .parse()
                    .map_err(|_| format!("--seed {value}: expected a number"))?
            }
            "--out" => a.out = PathBuf::from(value),
            "--lr" => {
                a.lr = match value.parse::<f32>() {
                    Ok(v) if v > 0.0 && v.is_finite() => v,
                    _ => return Err(format!("--lr {value}: expected a positive number")),
                }
            }
            "--wd" => {
                a.wd = match value.parse::<f32>() {
                    Ok(v) if v >= 0.0 && v.is_finite() => v,
                    _ => return Err(format!("--wd {value}: expected a number >= 0")),
                }
            }
            "--device" => a.device = Device::parse(&value)?,
            other => return Err(format!("unknown option {other} (see --help)")),
        }
    }
    Ok(Some(a))
}

/// The three losses compared, with the margins their papers use.
fn policies() -> [(&'static str, MarginPolicy); 3] {
    [
        ("AdaFace", MarginPolicy::AdaFace { m: 0.4, h: 0.333 }),
        ("ArcFace", MarginPolicy::ArcFace { m: 0.5 }),
        ("CosFace", MarginPolicy::CosFace { m: 0.35 }),
    ]
}

/// Bins of the margin-scaler histograms, over [-1, 1].
const Z_BINS: usize = 40;
/// Training phases whose margin scalers get a histogram each.
const PHASES: usize = 4;

/// What one training run leaves behind.
struct Run {
    name: &'static str,
    mlp: Mlp,
    losses: Vec<f64>,
    /// Histogram of the margin scaler per phase of training.
    z_hist: Vec<Vec<usize>>,
    seconds: f64,
}

/// The same initialisation, and then the same batches, for every loss.
fn initial_model(a: &Args) -> (Mlp, Rng) {
    let mut rng = Rng::new(a.seed.wrapping_mul(31).wrapping_add(7));
    (Mlp::new(a.input, a.hidden, a.dim, &mut rng), rng)
}

fn train(
    name: &'static str,
    policy: MarginPolicy,
    a: &Args,
    ids: &Identities,
) -> Result<Run, Box<dyn std::error::Error>> {
    let cfg = AdaFaceConfig::builder()
        .margin(policy)
        .s(64.0)
        .t_alpha(0.01)
        .build()?;
    let mut loss = Head::new(a.device, cfg)?;
    let (mut mlp, mut rng) = initial_model(a);
    let mut weight: Vec<f32> = (0..a.classes * a.dim)
        .map(|_| rng.normal() as f32)
        .collect();
    let mut opt_mlp = Sgd::new(mlp.params.len(), 0.9, a.wd);
    let mut opt_w = Sgd::new(weight.len(), 0.9, a.wd);
    let shape = Shape::new(a.batch, a.dim, a.classes);
    let mut x = vec![0f32; a.batch * a.input];
    let mut labels = vec![0u32; a.batch];
    let mut losses = Vec::with_capacity(a.steps);
    let mut z_hist = vec![vec![0usize; Z_BINS]; PHASES];
    let mut bar = Progress::new(&format!("  {name:<8}"), a.steps);
    let mut smooth = None;
    for step in 0..a.steps {
        for (i, row) in x.chunks_mut(a.input).enumerate() {
            let id = rng.below(a.classes);
            labels[i] = id as u32;
            let q = rng.uniform();
            ids.sample(id, q, &mut rng, row);
        }
        let act = mlp.forward_train(&x, a.batch);
        let out = loss.step(shape, &act.out, &weight, &labels)?;
        let grad = mlp.backward(&x, &act, &out.grad_features, a.batch);
        let lr = learning_rate(a.lr, step, a.steps);
        opt_mlp.step(&mut mlp.params, &grad, lr);
        opt_w.step(&mut weight, &out.grad_weight, lr);

        let l = out.loss as f64;
        losses.push(l);
        let phase = step * PHASES / a.steps;
        let z: Vec<f64> = out.margin_scaler.iter().map(|&v| v as f64).collect();
        for (h, c) in z_hist[phase]
            .iter_mut()
            .zip(stats::histogram(&z, -1.0, 1.0, Z_BINS))
        {
            *h += c;
        }
        let s = smooth.map_or(l, |p: f64| 0.95 * p + 0.05 * l);
        smooth = Some(s);
        bar.update(step + 1, &format!("loss {s:6.2}"));
    }
    let seconds = bar.finish(&format!("final loss {:.2}", smooth.unwrap_or(0.0)));
    Ok(Run {
        name,
        mlp,
        losses,
        z_hist,
        seconds,
    })
}

/// Held-out data: samples of unseen identities over the whole quality
/// range, and verification pairs at high and at low quality.
struct Eval {
    x: Vec<f32>,
    quality: Vec<f64>,
    pairs: Vec<PairSet>,
}

struct PairSet {
    name: &'static str,
    /// Two samples per pair, `2 * pairs x input`.
    x: Vec<f32>,
    same: Vec<bool>,
}

const EVAL_SAMPLES: usize = 2000;
const EVAL_PAIRS: usize = 3000;

fn make_eval(a: &Args, ids: &Identities) -> Eval {
    let mut rng = Rng::new(a.seed.wrapping_mul(17).wrapping_add(3));
    let n = ids.count();
    let mut x = vec![0f32; EVAL_SAMPLES * a.input];
    let mut quality = Vec::with_capacity(EVAL_SAMPLES);
    for row in x.chunks_mut(a.input) {
        let q = rng.uniform();
        ids.sample(rng.below(n), q, &mut rng, row);
        quality.push(q);
    }
    // Each pair: its first sample's quality drawn from `first_q`, its
    // second's from `second_q`.
    let pair_set = |name, first_q: (f64, f64), second_q: (f64, f64), rng: &mut Rng| {
        let mut px = vec![0f32; 2 * EVAL_PAIRS * a.input];
        let mut same = Vec::with_capacity(EVAL_PAIRS);
        for (k, pair) in px.chunks_mut(2 * a.input).enumerate() {
            let id = rng.below(n);
            let other = if k % 2 == 0 {
                id
            } else {
                (id + 1 + rng.below(n - 1)) % n
            };
            let (first, second) = pair.split_at_mut(a.input);
            let q = first_q.0 + (first_q.1 - first_q.0) * rng.uniform();
            ids.sample(id, q, rng, first);
            let q = second_q.0 + (second_q.1 - second_q.0) * rng.uniform();
            ids.sample(other, q, rng, second);
            same.push(k % 2 == 0);
        }
        PairSet { name, x: px, same }
    };
    let (high, low) = ((0.7, 1.0), (0.05, 0.3));
    let pairs = vec![
        pair_set("high: both q > 0.7", high, high, &mut rng),
        pair_set("low: both q < 0.3", low, low, &mut rng),
        pair_set("mixed: one of each", high, low, &mut rng),
    ];
    Eval { x, quality, pairs }
}

/// Per-loss results on the held-out data.
struct Scores {
    spearman: f64,
    accuracy: Vec<f64>,
    norms: Vec<f64>,
}

fn norm_quality_spearman(mlp: &Mlp, eval: &Eval, a: &Args) -> f64 {
    let emb = mlp.embed(&eval.x, EVAL_SAMPLES);
    let norms: Vec<f64> = emb.chunks(a.dim).map(norm).collect();
    stats::spearman(&norms, &eval.quality)
}

fn evaluate(run: &Run, eval: &Eval, a: &Args) -> Scores {
    let emb = run.mlp.embed(&eval.x, EVAL_SAMPLES);
    let norms: Vec<f64> = emb.chunks(a.dim).map(norm).collect();
    let spearman = stats::spearman(&norms, &eval.quality);
    let accuracy = eval
        .pairs
        .iter()
        .map(|set| {
            let e = run.mlp.embed(&set.x, 2 * EVAL_PAIRS);
            let scored: Vec<(f64, bool)> = e
                .chunks(2 * a.dim)
                .zip(&set.same)
                .map(|(p, &same)| (cosine(&p[..a.dim], &p[a.dim..]), same))
                .collect();
            stats::verification_accuracy(&scored, 10)
        })
        .collect();
    Scores {
        spearman,
        accuracy,
        norms,
    }
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    dot / (norm(a) * norm(b)).max(1e-30)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    a.device.check()?;
    // The output folder is checked before training, not after it.
    std::fs::create_dir_all(&a.out)
        .map_err(|e| format!("cannot create the output folder {}: {e}", a.out.display()))?;
    let probe = a.out.join(".adaface-train-write-check");
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot write to the output folder {}: {e}", a.out.display()))?;
    println!(
        "AdaFace on synthetic identities with known image quality ({})",
        a.device.describe()
    );
    println!(
        "  {} training identities, input {} -> hidden {} -> embedding {}, batch {}, {} steps per loss, seed {}",
        a.classes, a.input, a.hidden, a.dim, a.batch, a.steps, a.seed
    );
    println!("  each sample: its identity's prototype + pose-like variation, degraded by blur,");
    println!("  occlusion and noise to a known quality q in [0, 1] (q = 1: clean)");
    println!();
    println!("training the same model, data and budget with three margins:");

    let mut rng = Rng::new(a.seed);
    let pose_seed = a.seed.wrapping_add(1000);
    let train_ids = Identities::new(a.classes, a.input, &mut rng, pose_seed);
    let eval_ids = Identities::new(100, a.input, &mut rng, pose_seed);
    let eval = make_eval(a, &eval_ids);

    let mut runs = vec![];
    for (name, policy) in policies() {
        runs.push(train(name, policy, a, &train_ids)?);
    }
    let scores: Vec<Scores> = runs.iter().map(|r| evaluate(r, &eval, a)).collect();

    println!();
    println!(
        "held-out: {EVAL_SAMPLES} samples and 3 x {EVAL_PAIRS} pairs of 100 identities never seen in training"
    );
    println!();
    println!("spearman(norm, quality) = {:.3}", scores[0].spearman);
    println!("  (AdaFace: rank correlation of the learned feature norm with the true quality;");
    println!("   positive = the norm is a quality proxy, the observation AdaFace builds on)");
    let untrained = norm_quality_spearman(&initial_model(a).0, &eval, a);
    let inputs: Vec<f64> = eval.x.chunks(a.input).map(norm).collect();
    println!(
        "  for comparison: untrained model {:.3}, raw input norm {:.3}",
        untrained,
        stats::spearman(&inputs, &eval.quality)
    );
    println!();
    println!("verification accuracy ({EVAL_PAIRS} pairs per set, half genuine; 10-fold, threshold fitted on 9 folds):");
    let mut header = format!("  {:<9}", "loss");
    for p in &eval.pairs {
        header += &format!(" {:>20}", p.name);
    }
    println!("{header} {:>18}", "spearman(norm,q)");
    for (r, s) in runs.iter().zip(&scores) {
        let mut line = format!("  {:<9}", r.name);
        for acc in &s.accuracy {
            line += &format!(" {:>19.1}%", 100.0 * acc);
        }
        println!("{line} {:>18.3}", s.spearman);
    }

    let low = scores.iter().map(|s| s.accuracy[1]).sum::<f64>() / scores.len() as f64;
    println!(
        "  (sampling noise: at {:.0}%, the low-quality level, a 95% interval is about +-{:.1} points)",
        100.0 * low,
        100.0 * 1.96 * (low * (1.0 - low) / EVAL_PAIRS as f64).sqrt()
    );

    let files = std::fs::create_dir_all(&a.out)
        .and_then(|_| write_plots(&a.out, &runs, &scores, &eval))
        .map_err(|e| format!("cannot write the plots to {}: {e}", a.out.display()))?;
    println!();
    println!("plots in {}:", display_dir(&a.out));
    for (f, what) in files {
        println!("  {f:<20} {what}");
    }
    let train_s: f64 = runs.iter().map(|r| r.seconds).sum();
    println!();
    let hint = if a.steps < 6000 {
        "; --steps 6000 --classes 200 --dim 64 trains longer"
    } else {
        ""
    };
    println!(
        "done in {:.1}s ({:.1}s training{hint})",
        start.elapsed().as_secs_f64(),
        train_s
    );
    Ok(())
}

fn display_dir(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

fn write_plots(
    dir: &Path,
    runs: &[Run],
    scores: &[Scores],
    eval: &Eval,
) -> std::io::Result<Vec<(&'static str, &'static str)>> {
    // Norm against quality, AdaFace, with the mean norm per quality decile.
    let s = &scores[0];
    let max_norm = s.norms.iter().cloned().fold(0.0, f64::max);
    let mut chart = Chart::new(
        &format!(
            "ADAFACE: FEATURE NORM VS QUALITY (SPEARMAN {:.2})",
            s.spearman
        ),
        "TRUE QUALITY Q",
        "FEATURE NORM",
        (0.0, 1.0),
        (0.0, max_norm * 1.05),
    );
    let pts: Vec<(f64, f64)> = eval
        .quality
        .iter()
        .cloned()
        .zip(s.norms.iter().cloned())
        .collect();
    chart.points(&pts, PALETTE[0], 2.5, 0.45);
    let deciles: Vec<(f64, f64)> = (0..10)
        .filter_map(|k| {
            let (lo, hi) = (k as f64 / 10.0, (k + 1) as f64 / 10.0);
            let v: Vec<f64> = pts
                .iter()
                .filter(|p| p.0 >= lo && p.0 < hi)
                .map(|p| p.1)
                .collect();
            (!v.is_empty()).then(|| (lo + 0.05, v.iter().sum::<f64>() / v.len() as f64))
        })
        .collect();
    chart.polyline(&deciles, BLACK, 3.0);
    chart.points(&deciles, BLACK, 5.0, 1.0);
    chart.add_legend("HELD-OUT SAMPLE", PALETTE[0]);
    chart.add_legend("MEAN PER DECILE", BLACK);
    chart.save(&dir.join("norm_vs_quality.png"))?;

    // AdaFace's margin scaler: one histogram per quarter of training.
    let ada = &runs[0];
    let shares: Vec<Vec<f64>> = ada
        .z_hist
        .iter()
        .map(|h| {
            let total = h.iter().sum::<usize>().max(1) as f64;
            h.iter().map(|&c| 100.0 * c as f64 / total).collect()
        })
        .collect();
    let top = shares.iter().flatten().cloned().fold(0.0, f64::max);
    let mut chart = Chart::new(
        "ADAFACE MARGIN SCALER Z OVER TRAINING",
        "MARGIN SCALER Z",
        "SHARE OF SAMPLES (%)",
        (-1.0, 1.0),
        (0.0, top * 1.1),
    );
    let width = 2.0 / Z_BINS as f64;
    let names = ["STEPS 0-25%", "25-50%", "50-75%", "75-100%"];
    for (p, share) in shares.iter().enumerate() {
        // Outlined histogram: a step line across the bins.
        let mut line = vec![(-1.0, 0.0)];
        for (k, &v) in share.iter().enumerate() {
            let x0 = -1.0 + k as f64 * width;
            line.push((x0, v));
            line.push((x0 + width, v));
        }
        line.push((1.0, 0.0));
        chart.polyline(&line, PALETTE[p % PALETTE.len()], 2.5);
        chart.add_legend(names[p % names.len()], PALETTE[p % PALETTE.len()]);
    }
    chart.save(&dir.join("margin_scaler.png"))?;

    // Loss curves, smoothed over windows of 1 % of training; the y range
    // fits the curves after the first 5 % (the start is clipped at the top).
    let steps = runs[0].losses.len();
    let window = (steps / 100).max(1);
    let curves: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            r.losses
                .chunks(window)
                .enumerate()
                .map(|(i, c)| {
                    (
                        (i * window) as f64 + c.len() as f64 / 2.0,
                        c.iter().sum::<f64>() / c.len() as f64,
                    )
                })
                .collect()
        })
        .collect();
    let settled = curves
        .iter()
        .flat_map(|c| c.iter().skip(c.len() / 20).map(|p| p.1))
        .fold(0.0, f64::max);
    let top = 1.5 * settled;
    let mut chart = Chart::new(
        "TRAINING LOSS (EACH WITH ITS OWN MARGIN)",
        "STEP",
        "LOSS (MEAN OVER 1% WINDOWS)",
        (0.0, steps as f64),
        (0.0, top),
    );
    for (k, (r, curve)) in runs.iter().zip(&curves).enumerate() {
        let clipped: Vec<(f64, f64)> = curve.iter().map(|&(x, y)| (x, y.min(top))).collect();
        chart.polyline(&clipped, PALETTE[k], 2.5);
        chart.add_legend(&r.name.to_uppercase(), PALETTE[k]);
    }
    chart.save(&dir.join("loss.png"))?;

    Ok(vec![
        (
            "norm_vs_quality.png",
            "AdaFace feature norm against true quality, held-out samples",
        ),
        (
            "margin_scaler.png",
            "histogram of AdaFace's margin scaler z, per quarter of training",
        ),
        ("loss.png", "training loss of AdaFace, ArcFace and CosFace"),
    ])
}

#[cfg(test)]
mod args_tests {
    use super::parse_args_from;

    fn parse(args: &[&str]) -> Result<Option<super::Args>, String> {
        parse_args_from(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_take_their_value_after_a_space_or_an_equals_sign() {
        let spaced = parse(&["--steps", "100", "--lr", "0.05"]).unwrap().unwrap();
        let joined = parse(&["--steps=100", "--lr=0.05"]).unwrap().unwrap();
        assert_eq!((spaced.steps, spaced.lr), (100, 0.05));
        assert_eq!((joined.steps, joined.lr), (100, 0.05));
        assert!(parse(&["--steps=0"]).is_err());
        assert!(parse(&["--bogus=1"]).is_err());
    }

    #[test]
    fn an_unwritable_output_folder_fails_before_training() {
        // A regular file where the folder should be: refused at once.
        let file = std::env::temp_dir().join(format!("adaface-train-out-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let mut a = parse(&["--steps", "1"]).unwrap().unwrap();
        a.out = file.join("plots");
        let start = std::time::Instant::now();
        let err = super::run(&a).unwrap_err().to_string();
        std::fs::remove_file(&file).unwrap();
        assert!(err.contains("output folder"), "{err}");
        assert!(
            start.elapsed().as_secs_f64() < 5.0,
            "trained before failing"
        );
    }
}
