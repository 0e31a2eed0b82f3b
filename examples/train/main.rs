//! Trains a small embedding model with every margin policy the loss
//! supports, over several seeds, on synthetic identities of known quality
//! whose training set holds unrecognisable low-quality samples, and
//! measures what the AdaFace paper claims: that adapting the margin to the
//! feature norm (a proxy of quality) helps on low-quality data without
//! hurting high-quality data. It also plots how each margin scales the
//! gradient of hard and easy samples.
//!
//! ```text
//! cargo run --release --example train                 # about a minute on 2 cores
//! cargo run --release --example train -- --help       # sizes, seeds, data mix, sweep
//! ```

mod data;
mod device;
mod gst;
mod model;
mod plot;
mod png;
mod progress;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use adaface::math::{margin_scaler, MarginConsts};
use adaface::state::EmaState;
use adaface::{AdaFaceConfig, MarginPolicy, Shape};

use data::{Identities, Kind, Mix, Rng, TrainSet, HIGH_Q, LOW_Q};
use device::{Device, Head};
use model::{learning_rate, Mlp, Sgd};
use plot::{Chart, PALETTE};
use progress::Progress;
use stats::{mean, min_max, std_dev};

const USAGE: &str = "\
Trains an MLP embedding with AdaFace and the other margin policies, over
several seeds, on synthetic identities of known quality whose training set
holds recognisable and unrecognisable (destroyed) low-quality samples; then
reports verification accuracy per quality level with its spread over seeds,
AdaFace's paired difference to each policy, and plots.

usage: cargo run --release --example train -- [options]

  --steps N       training steps per run                     (default 1200)
  --seeds N       seeds (data, init, batches, pairs) per policy (default 6)
  --seed N        first seed                                 (default 1)
  --low X         share of training samples of low quality   (default 0.5)
  --destroyed X   share of the low-quality training samples
                  whose identity is destroyed                (default 0.5)
  --sweep         also rerun everything for --destroyed 0, 0.25, 0.5, 0.75
                  and print low/high accuracy per share (4x as long)
  --classes N     training identities                        (default 100)
  --per-class N   training samples per identity              (default 40)
  --dim N         embedding dimension D                      (default 32)
  --batch N       batch size B                               (default 64)
  --hidden N      hidden units of the MLP                    (default 128)
  --input N       input dimension                            (default 128)
  --lr X          peak learning rate (SGD, momentum)         (default 0.1)
  --wd X          weight decay                               (default 5e-4)
  --threads N     runs trained at once           (default: available cores)
  --out DIR       folder for the plots                       (default adaface-train)
  --device D      cpu (default) or cuda: the loss step on GPU 0 with the
                  CUDA kernels (the policies they compute); the MLP stays on
                  the CPU, so each step uploads embeddings and class weights
                  and downloads the gradients. Without a usable GPU: an
                  error, exit status 1
  -h, --help      this text
";

#[derive(Debug, Clone)]
struct Args {
    steps: usize,
    seeds: usize,
    seed: u64,
    low: f64,
    destroyed: f64,
    sweep: bool,
    classes: usize,
    per_class: usize,
    dim: usize,
    batch: usize,
    hidden: usize,
    input: usize,
    lr: f32,
    wd: f32,
    threads: usize,
    out: PathBuf,
    device: Device,
}

fn parse_args() -> Result<Option<Args>, String> {
    parse_args_from(std::env::args().skip(1))
}

fn parse_args_from(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        steps: 1200,
        seeds: 6,
        seed: 1,
        low: 0.5,
        destroyed: 0.5,
        sweep: false,
        classes: 100,
        per_class: 40,
        dim: 32,
        batch: 64,
        hidden: 128,
        input: 128,
        lr: 0.1,
        wd: 5e-4,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        out: PathBuf::from("adaface-train"),
        device: Device::Cpu,
    };
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        if arg == "--sweep" {
            a.sweep = true;
            continue;
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
        let share = || -> Result<f64, String> {
            match value.parse::<f64>() {
                Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
                _ => Err(format!("{flag} {value}: expected a number in [0, 1]")),
            }
        };
        match flag.as_str() {
            "--steps" => a.steps = count(1)?,
            "--seeds" => a.seeds = count(1)?,
            "--low" => a.low = share()?,
            "--destroyed" => a.destroyed = share()?,
            "--classes" => a.classes = count(2)?,
            "--per-class" => a.per_class = count(1)?,
            "--dim" => a.dim = count(2)?,
            "--batch" => a.batch = count(2)?,
            "--hidden" => a.hidden = count(1)?,
            "--input" => a.input = count(8)?,
            "--threads" => a.threads = count(1)?,
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

/// The policies compared, with their papers' parameters; MagFace's norm
/// bounds are rescaled to this model's norms (see [`mag_face`]).
fn policies(dim: usize) -> Vec<(&'static str, MarginPolicy)> {
    vec![
        ("AdaFace", MarginPolicy::AdaFace { m: 0.4, h: 0.333 }),
        ("ArcFace", MarginPolicy::ArcFace { m: 0.5 }),
        ("CosFace", MarginPolicy::CosFace { m: 0.35 }),
        ("SphereFace", MarginPolicy::sphere_face()),
        ("CurricularFace", MarginPolicy::curricular_face()),
        ("MagFace", mag_face(dim)),
    ]
}

/// MagFace with the paper's margins (0.45 to 0.8) over norm bounds that fit
/// this model. The paper's `[l_a, u_a] = [10, 110]` span the norms of its
/// 512-d backbone; here the features end in a batch norm without affine
/// parameters, so their mean squared norm is `D` and the bounds become
/// `[sqrt(D) / 2, 2 sqrt(D)]`. `lambda_g` is scaled by `l_a / 10` so that
/// the regulariser at `l_a`, `lambda_g g(l_a) ~ lambda_g / l_a`, keeps the
/// paper's size.
fn mag_face(dim: usize) -> MarginPolicy {
    let root = (dim as f64).sqrt();
    let (l_a, u_a) = (0.5 * root, 2.0 * root);
    MarginPolicy::MagFace {
        l_a,
        u_a,
        l_m: 0.45,
        u_m: 0.8,
        lambda_g: 35.0 * l_a / 10.0,
    }
}

/// The loss config of `policy`: `s = 64`, the official EMA weight.
fn config(policy: MarginPolicy) -> Result<AdaFaceConfig, adaface::Error> {
    AdaFaceConfig::builder()
        .margin(policy)
        .s(64.0)
        .t_alpha(0.01)
        .build()
}

/// Everything one seed shares between the policies: training identities
/// and set, held-out pairs, and the seed of initialisation and batches.
struct SeedData {
    seed: u64,
    train: TrainSet,
    eval: Eval,
}

fn seed_data(a: &Args, seed: u64, mix: Mix) -> SeedData {
    let mut rng = Rng::new(seed);
    let pose_seed = seed.wrapping_add(1000);
    let train_ids = Identities::new(a.classes, a.input, &mut rng, pose_seed);
    let eval_ids = Identities::new(EVAL_IDS, a.input, &mut rng, pose_seed);
    let train = TrainSet::new(&train_ids, a.per_class, mix, &mut rng);
    let eval = make_eval(a.input, &eval_ids, seed);
    SeedData { seed, train, eval }
}

/// A trained model, its class weights and the loss state it ended with.
struct Trained {
    mlp: Mlp,
    weight: Vec<f32>,
    state: EmaState,
}

/// Trains one model with `policy` on `data`: the same initialisation and
/// batches for every policy of a seed. `tick` is called every step.
fn train(
    policy: MarginPolicy,
    a: &Args,
    data: &SeedData,
    mut tick: impl FnMut(),
) -> Result<Trained, Box<dyn std::error::Error + Send + Sync>> {
    let mut loss = Head::new(a.device, config(policy)?)?;
    let mut rng = Rng::new(data.seed.wrapping_mul(31).wrapping_add(7));
    let mut mlp = Mlp::new(a.input, a.hidden, a.dim, &mut rng);
    let mut weight: Vec<f32> = (0..a.classes * a.dim)
        .map(|_| rng.normal() as f32)
        .collect();
    let mut opt_mlp = Sgd::new(mlp.params.len(), 0.9, a.wd);
    let mut opt_w = Sgd::new(weight.len(), 0.9, a.wd);
    let shape = Shape::new(a.batch, a.dim, a.classes);
    let set = &data.train;
    let mut x = vec![0f32; a.batch * a.input];
    let mut labels = vec![0u32; a.batch];
    for step in 0..a.steps {
        for (i, row) in x.chunks_mut(a.input).enumerate() {
            let k = rng.below(set.len());
            row.copy_from_slice(&set.x[k * a.input..(k + 1) * a.input]);
            labels[i] = set.labels[k];
        }
        let act = mlp.forward_train(&x, a.batch);
        let out = loss.step(shape, &act.out, &weight, &labels)?;
        if !out.loss.is_finite() {
            return Err(format!("{} diverged at step {step}", policy.name()).into());
        }
        let grad = mlp.backward(&x, &act, &out.grad_features, a.batch);
        let lr = learning_rate(a.lr, step, a.steps);
        opt_mlp.step(&mut mlp.params, &grad, lr);
        opt_w.step(&mut weight, &out.grad_weight, lr);
        tick();
    }
    Ok(Trained {
        mlp,
        weight,
        state: loss.state()?,
    })
}

/// Held-out identities never seen in training.
const EVAL_IDS: usize = 100;
/// Pairs of each table set (high, low, mixed).
const EVAL_PAIRS: usize = 2000;
/// Pairs of each quality bin of the accuracy-by-quality plot.
const BIN_PAIRS: usize = 1000;
/// Quality bins of that plot (both samples of a pair in the same bin).
const BIN_EDGES: [f64; 6] = [0.05, 0.15, 0.3, 0.5, 0.75, 1.0];
/// Held-out samples for the norm-quality correlation.
const EVAL_SAMPLES: usize = 1000;

/// Held-out data of one seed: recognisable samples of unseen identities
/// over the quality range, and verification pairs.
struct Eval {
    x: Vec<f32>,
    quality: Vec<f64>,
    /// High, low, mixed; then one set per quality bin.
    pairs: Vec<PairSet>,
}

struct PairSet {
    /// Two samples per pair, `2 * pairs x input`.
    x: Vec<f32>,
    same: Vec<bool>,
}

fn make_eval(input: usize, ids: &Identities, seed: u64) -> Eval {
    let mut rng = Rng::new(seed.wrapping_mul(17).wrapping_add(3));
    let n = ids.count();
    let mut x = vec![0f32; EVAL_SAMPLES * input];
    let mut quality = Vec::with_capacity(EVAL_SAMPLES);
    for row in x.chunks_mut(input) {
        let q = BIN_EDGES[0] + (1.0 - BIN_EDGES[0]) * rng.uniform();
        ids.sample(rng.below(n), q, &mut rng, row);
        quality.push(q);
    }
    // Each pair: its first sample's quality drawn from `first_q`, its
    // second's from `second_q`; genuine and impostor pairs alternate.
    let pair_set = |count: usize, first_q: (f64, f64), second_q: (f64, f64), rng: &mut Rng| {
        let mut px = vec![0f32; 2 * count * input];
        let mut same = Vec::with_capacity(count);
        for (k, pair) in px.chunks_mut(2 * input).enumerate() {
            let id = rng.below(n);
            let other = if k % 2 == 0 {
                id
            } else {
                (id + 1 + rng.below(n - 1)) % n
            };
            let (first, second) = pair.split_at_mut(input);
            let q = first_q.0 + (first_q.1 - first_q.0) * rng.uniform();
            ids.sample(id, q, rng, first);
            let q = second_q.0 + (second_q.1 - second_q.0) * rng.uniform();
            ids.sample(other, q, rng, second);
            same.push(k % 2 == 0);
        }
        PairSet { x: px, same }
    };
    let mut pairs = vec![
        pair_set(EVAL_PAIRS, HIGH_Q, HIGH_Q, &mut rng),
        pair_set(EVAL_PAIRS, LOW_Q, LOW_Q, &mut rng),
        pair_set(EVAL_PAIRS, HIGH_Q, LOW_Q, &mut rng),
    ];
    for w in BIN_EDGES.windows(2) {
        pairs.push(pair_set(BIN_PAIRS, (w[0], w[1]), (w[0], w[1]), &mut rng));
    }
    Eval { x, quality, pairs }
}

/// One run's results on its seed's held-out data.
#[derive(Debug, Clone, Default)]
struct Scores {
    /// Verification accuracy of every pair set of [`Eval::pairs`].
    accuracy: Vec<f64>,
    /// Spearman correlation of the feature norm with the true quality.
    spearman: f64,
    /// Top-1 accuracy on the training set (nearest class weight by
    /// cosine) of its high, recognisable low and destroyed samples: how
    /// far the model fitted each kind; on destroyed samples anything above
    /// chance is memorisation.
    fit: [f64; 3],
}

fn evaluate(t: &Trained, data: &SeedData, dim: usize) -> Scores {
    let (mlp, eval) = (&t.mlp, &data.eval);
    let emb = mlp.embed(&eval.x, eval.quality.len());
    let norms: Vec<f64> = emb.chunks(dim).map(norm).collect();
    let accuracy = eval
        .pairs
        .iter()
        .map(|set| {
            let e = mlp.embed(&set.x, 2 * set.same.len());
            let scored: Vec<(f64, bool)> = e
                .chunks(2 * dim)
                .zip(&set.same)
                .map(|(p, &same)| (cosine(&p[..dim], &p[dim..]), same))
                .collect();
            stats::verification_accuracy(&scored, 10)
        })
        .collect();
    Scores {
        accuracy,
        spearman: stats::spearman(&norms, &eval.quality),
        fit: fit_by_kind(t, &data.train, dim),
    }
}

fn fit_by_kind(t: &Trained, set: &TrainSet, dim: usize) -> [f64; 3] {
    let emb = t.mlp.embed(&set.x, set.len());
    let (mut right, mut count) = ([0usize; 3], [0usize; 3]);
    for ((e, &y), kind) in emb.chunks(dim).zip(&set.labels).zip(&set.kind) {
        let best = t
            .weight
            .chunks(dim)
            .map(|w| cosine(e, w))
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(usize::MAX, |b| b.0);
        let k = *kind as usize;
        count[k] += 1;
        right[k] += usize::from(best == y as usize);
    }
    [0, 1, 2].map(|k| right[k] as f64 / count[k].max(1) as f64)
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    dot / (norm(a) * norm(b)).max(1e-30)
}

/// The results of every policy and seed for one training mix.
struct Experiment {
    names: Vec<&'static str>,
    classes: usize,
    /// `scores[policy][seed]`.
    scores: Vec<Vec<Scores>>,
    /// AdaFace's model on the first seed, with that seed's data (plots).
    adaface: Option<(Trained, SeedData)>,
}

/// Trains every policy on every seed (runs spread over `a.threads`
/// threads) and evaluates them.
fn experiment(
    a: &Args,
    mix: Mix,
    label: &str,
) -> Result<Experiment, Box<dyn std::error::Error + Send + Sync>> {
    let pols = policies(a.dim);
    let seeds: Vec<SeedData> = (0..a.seeds as u64)
        .map(|k| seed_data(a, a.seed.wrapping_add(k), mix))
        .collect();
    // Seed-major, so that the first seed finishes first.
    let jobs: Vec<(usize, usize)> = (0..seeds.len())
        .flat_map(|s| (0..pols.len()).map(move |p| (s, p)))
        .collect();
    let total = jobs.len() * a.steps;
    let bar = Mutex::new(Progress::new(label, total));
    let done = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    type Slot = Option<Result<(Scores, Option<Trained>), String>>;
    let results: Vec<Mutex<Slot>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    let threads = if a.device == Device::Cuda {
        1
    } else {
        a.threads
    };
    std::thread::scope(|scope| {
        for _ in 0..threads.min(jobs.len()) {
            scope.spawn(|| loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(s, p)) = jobs.get(j) else { break };
                let tick = || {
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if d % 25 == 0 || d == total {
                        if let Ok(mut b) = bar.lock() {
                            b.update(d, &format!("{} runs", jobs.len()));
                        }
                    }
                };
                let out = train(pols[p].1, a, &seeds[s], tick)
                    .map(|t| {
                        let sc = evaluate(&t, &seeds[s], a.dim);
                        let keep = s == 0 && matches!(pols[p].1, MarginPolicy::AdaFace { .. });
                        (sc, keep.then_some(t))
                    })
                    .map_err(|e| format!("{} (seed {}): {e}", pols[p].0, seeds[s].seed));
                if let Ok(mut slot) = results[j].lock() {
                    *slot = Some(out);
                }
            });
        }
    });
    if let Ok(mut b) = bar.lock() {
        b.finish(&format!("{} runs", jobs.len()));
    }
    let mut scores = vec![vec![Scores::default(); seeds.len()]; pols.len()];
    let mut kept = None;
    for (slot, &(s, p)) in results.into_iter().zip(&jobs) {
        let out = slot
            .into_inner()
            .map_err(|_| "a training thread panicked")?
            .ok_or("a training thread panicked")??;
        scores[p][s] = out.0;
        if out.1.is_some() {
            kept = out.1;
        }
    }
    let adaface = kept.map(|t| (t, seeds.into_iter().next().expect("one seed at least")));
    Ok(Experiment {
        names: pols.iter().map(|p| p.0).collect(),
        classes: a.classes,
        scores,
        adaface,
    })
}

impl Experiment {
    /// Accuracies (in %) of `policy` on pair set `set`, one per seed.
    fn acc(&self, policy: usize, set: usize) -> Vec<f64> {
        self.scores[policy]
            .iter()
            .map(|s| 100.0 * s.accuracy[set])
            .collect()
    }

    /// Prints the table: mean, std and min-max per policy and set, then
    /// AdaFace's paired differences.
    fn print(&self) {
        let n = self.scores[0].len();
        println!(
            "verification accuracy (%), mean +- std [min-max] over {n} seeds; {EVAL_PAIRS} pairs per set and seed:"
        );
        println!(
            "  {:<15} {:>24} {:>24} {:>24} {:>10}",
            "policy", "high: both q > 0.5", "low: both q < 0.3", "mixed: one of each", "rho(n,q)"
        );
        for (p, name) in self.names.iter().enumerate() {
            let mut line = format!("  {name:<15}");
            for set in 0..3 {
                let v = self.acc(p, set);
                let (lo, hi) = min_max(&v);
                line += &format!(
                    " {:>24}",
                    format!("{:.1} +-{:.1} [{:.1}-{:.1}]", mean(&v), std_dev(&v), lo, hi)
                );
            }
            let rho: Vec<f64> = self.scores[p].iter().map(|s| s.spearman).collect();
            println!("{line} {:>10.2}", mean(&rho));
        }
        println!();
        println!(
            "fit of the training set (top-1 %, nearest class weight), mean over seeds; on destroyed"
        );
        println!(
            "samples chance is {:.0}% and anything above it is memorised label noise:",
            100.0 / self.classes as f64
        );
        println!(
            "  {:<15} {:>12} {:>16} {:>12}",
            "policy", "high", "low, recogn.", "destroyed"
        );
        for (p, name) in self.names.iter().enumerate() {
            let f = |k: usize| {
                mean(
                    &self.scores[p]
                        .iter()
                        .map(|s| 100.0 * s.fit[k])
                        .collect::<Vec<_>>(),
                )
            };
            println!("  {name:<15} {:>12.1} {:>16.1} {:>12.1}", f(0), f(1), f(2));
        }
        println!();
        println!("AdaFace minus each policy, paired by seed (same data, init, batches and pairs):");
        println!("mean difference in points (wins of AdaFace / seeds)");
        println!(
            "  {:<15} {:>24} {:>24} {:>24}",
            "vs", "high", "low", "mixed"
        );
        for (p, name) in self.names.iter().enumerate().skip(1) {
            let mut line = format!("  {name:<15}");
            for set in 0..3 {
                let d: Vec<f64> = self
                    .acc(0, set)
                    .iter()
                    .zip(self.acc(p, set))
                    .map(|(x, y)| x - y)
                    .collect();
                let wins = d.iter().filter(|&&v| v > 0.0).count();
                line += &format!(" {:>24}", format!("{:+.2} ({wins}/{n})", mean(&d)));
            }
            println!("{line}");
        }
    }
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

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let start = Instant::now();
    a.device.check()?;
    // The output folder is checked before training, not after it.
    std::fs::create_dir_all(&a.out)
        .map_err(|e| format!("cannot create the output folder {}: {e}", a.out.display()))?;
    let probe = a.out.join(".adaface-train-write-check");
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot write to the output folder {}: {e}", a.out.display()))?;
    let mix = Mix {
        low: a.low,
        destroyed: a.destroyed,
    };
    println!(
        "AdaFace and other margins on synthetic identities with known image quality ({})",
        a.device.describe()
    );
    println!(
        "  {} training identities x {} samples, input {} -> hidden {} -> embedding {}, batch {}, {} steps per run",
        a.classes, a.per_class, a.input, a.hidden, a.dim, a.batch, a.steps
    );
    println!("  a sample: its identity's prototype + pose-like variation, degraded by blur,");
    println!("  occlusion and noise to a known quality q (q = 1: clean). Training set:");
    println!(
        "  {:.0}% high quality (q in {:.2}-{:.2}), {:.0}% low quality (q in {:.2}-{:.2}), of which {:.0}%",
        100.0 * (1.0 - a.low),
        HIGH_Q.0,
        HIGH_Q.1,
        100.0 * a.low,
        LOW_Q.0,
        LOW_Q.1,
        100.0 * a.destroyed
    );
    println!("  destroyed: rendered from a prototype of nobody, so their label is unrecognisable");
    println!(
        "  held-out: recognisable pairs of {EVAL_IDS} unseen identities; seeds {}..{}",
        a.seed,
        a.seed + a.seeds as u64 - 1
    );
    println!();
    let exp = experiment(a, mix, "  training")?;
    println!();
    exp.print();
    let acc_noise = |p: f64| 100.0 * 1.96 * (p * (1.0 - p) / EVAL_PAIRS as f64).sqrt();
    let low = mean(&exp.acc(0, 1)) / 100.0;
    println!(
        "  (pair sampling alone: at {:.0}% a 95% interval is +-{:.1} points per seed)",
        100.0 * low,
        acc_noise(low)
    );
    println!("  rho(n,q): Spearman correlation of feature norm and quality, held-out samples");

    let mut files = write_plots(&a.out, &exp, a)
        .map_err(|e| format!("cannot write the plots to {}: {e}", a.out.display()))?;

    if a.sweep {
        println!();
        println!("sweep over the share of destroyed low-quality training samples:");
        let shares = [0.0, 0.25, 0.5, 0.75];
        let mut rows = vec![];
        for &d in &shares {
            let e = if d == a.destroyed {
                None
            } else {
                Some(experiment(
                    a,
                    Mix {
                        low: a.low,
                        destroyed: d,
                    },
                    &format!("  destroyed {d:.2}"),
                )?)
            };
            rows.push((d, e));
        }
        println!();
        println!(
            "low-quality pairs / high-quality pairs, mean accuracy (%) over {} seeds:",
            a.seeds
        );
        let mut header = format!("  {:<10}", "destroyed");
        for name in &exp.names {
            header += &format!(" {name:>15}");
        }
        println!("{header} {:>22}", "AdaFace - best other");
        let mut sweep_rows = vec![];
        for (d, e) in &rows {
            let e = e.as_ref().unwrap_or(&exp);
            let mut line = format!("  {d:<10.2}");
            let lows: Vec<f64> = (0..e.names.len()).map(|p| mean(&e.acc(p, 1))).collect();
            let highs: Vec<f64> = (0..e.names.len()).map(|p| mean(&e.acc(p, 0))).collect();
            for (l, h) in lows.iter().zip(&highs) {
                line += &format!(" {:>15}", format!("{l:.1}/{h:.1}"));
            }
            let best_low = lows[1..].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let best_high = highs[1..].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            line += &format!(
                " {:>22}",
                format!("{:+.1}/{:+.1}", lows[0] - best_low, highs[0] - best_high)
            );
            println!("{line}");
            sweep_rows.push((*d, lows));
        }
        files.push(
            write_sweep_plot(&a.out, &exp.names, &sweep_rows)
                .map_err(|e| format!("cannot write the plots to {}: {e}", a.out.display()))?,
        );
    }

    println!();
    println!("plots in {}:", display_dir(&a.out));
    for (f, what) in files {
        println!("  {f:<34} {what}");
    }
    println!();
    println!("done in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn display_dir(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

type Files = Vec<(&'static str, &'static str)>;

fn write_plots(dir: &Path, exp: &Experiment, a: &Args) -> std::io::Result<Files> {
    let mut files = gst::write_plots(dir, a.classes, a.dim)?;

    // Accuracy by quality bin, mean over seeds, per policy.
    let bins = BIN_EDGES.len() - 1;
    let curves: Vec<Vec<(f64, f64)>> = (0..exp.names.len())
        .map(|p| {
            (0..bins)
                .map(|b| {
                    let x = 0.5 * (BIN_EDGES[b] + BIN_EDGES[b + 1]);
                    (x, mean(&exp.acc(p, 3 + b)))
                })
                .collect()
        })
        .collect();
    let lo = curves.iter().flatten().map(|p| p.1).fold(100.0, f64::min);
    let mut chart = Chart::new(
        "VERIFICATION ACCURACY BY QUALITY (MEAN OVER SEEDS)",
        "QUALITY OF BOTH SAMPLES OF A PAIR (BIN CENTRE)",
        "ACCURACY (%)",
        (0.0, 1.0),
        ((lo - 2.0).floor(), 100.0),
    );
    for (p, c) in curves.iter().enumerate() {
        chart.polyline(c, PALETTE[p % PALETTE.len()], 2.5);
        chart.points(c, PALETTE[p % PALETTE.len()], 4.5, 1.0);
        chart.add_legend(&exp.names[p].to_uppercase(), PALETTE[p % PALETTE.len()]);
    }
    chart.legend_bottom_right();
    chart.save(&dir.join("accuracy_by_quality.png"))?;
    files.push((
        "accuracy_by_quality.png",
        "verification accuracy per quality bin and policy",
    ));

    // The same, relative to the mean of all policies in each bin: the
    // differences, which the absolute plot's range hides.
    let centre: Vec<f64> = (0..bins)
        .map(|b| mean(&curves.iter().map(|c| c[b].1).collect::<Vec<_>>()))
        .collect();
    let rel: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|c| c.iter().zip(&centre).map(|(p, m)| (p.0, p.1 - m)).collect())
        .collect();
    let span = rel.iter().flatten().map(|p| p.1.abs()).fold(0.5, f64::max) * 1.15;
    let mut chart = Chart::new(
        "ACCURACY MINUS THE MEAN OF ALL POLICIES, PER BIN",
        "QUALITY OF BOTH SAMPLES OF A PAIR (BIN CENTRE)",
        "ACCURACY DIFFERENCE (POINTS)",
        (0.0, 1.0),
        (-span, span * 2.0),
    );
    for (p, c) in rel.iter().enumerate() {
        chart.polyline(c, PALETTE[p % PALETTE.len()], 2.5);
        chart.points(c, PALETTE[p % PALETTE.len()], 4.5, 1.0);
        chart.add_legend(&exp.names[p].to_uppercase(), PALETTE[p % PALETTE.len()]);
    }
    chart.save(&dir.join("accuracy_by_quality_relative.png"))?;
    files.push((
        "accuracy_by_quality_relative.png",
        "the same minus the mean of all policies per bin",
    ));

    // AdaFace's norm and margin scaler on its training set, by kind.
    if let Some((t, data)) = &exp.adaface {
        let set = &data.train;
        let emb = t.mlp.embed(&set.x, set.len());
        let norms: Vec<f64> = emb.chunks(a.dim).map(norm).collect();
        let cfg = config(policies(a.dim)[0].1).map_err(std::io::Error::other)?;
        let k = MarginConsts::<f64>::new(&cfg);
        let z: Vec<f64> = norms
            .iter()
            .map(|&n| margin_scaler(n.clamp(k.clip_min, k.clip_max), &t.state, &k))
            .collect();
        let kinds = [
            (Kind::High, "HIGH QUALITY"),
            (Kind::Low, "LOW QUALITY, RECOGNISABLE"),
            (Kind::Destroyed, "LOW QUALITY, DESTROYED"),
        ];
        let by_kind = |v: &[f64], kind: Kind| -> Vec<(f64, f64)> {
            set.quality
                .iter()
                .zip(v)
                .zip(&set.kind)
                .filter(|(_, &k)| k == kind)
                .map(|((&q, &y), _)| (q, y))
                .collect()
        };
        let mean_of =
            |v: &[f64], kind: Kind| mean(&by_kind(v, kind).iter().map(|p| p.1).collect::<Vec<_>>());
        for (values, file, title, y_label, y_range, what) in [
            (
                &z,
                "margin_scaler_vs_quality.png",
                "ADAFACE MARGIN SCALER Z OF THE TRAINING SAMPLES",
                "MARGIN SCALER Z (END OF TRAINING)",
                (-1.05, 1.8),
                "AdaFace's margin scaler z against true quality, training samples by kind",
            ),
            (
                &norms,
                "norm_vs_quality.png",
                "ADAFACE FEATURE NORM OF THE TRAINING SAMPLES",
                "FEATURE NORM",
                (0.0, norms.iter().cloned().fold(0.0, f64::max) * 1.4),
                "AdaFace's feature norm against true quality, training samples by kind",
            ),
        ] {
            let mut chart = Chart::new(title, "TRUE QUALITY Q", y_label, (0.0, 1.0), y_range);
            for (c, (kind, name)) in kinds.iter().enumerate() {
                let pts = by_kind(values, *kind);
                chart.points(&pts, PALETTE[c], 2.0, 0.35);
                chart.add_legend(
                    &format!("{name} (MEAN {:.2})", mean_of(values, *kind)),
                    PALETTE[c],
                );
            }
            chart.save(&dir.join(file))?;
            files.push((file, what));
        }
    }
    Ok(files)
}

fn write_sweep_plot(
    dir: &Path,
    names: &[&'static str],
    rows: &[(f64, Vec<f64>)],
) -> std::io::Result<(&'static str, &'static str)> {
    let lo = rows
        .iter()
        .flat_map(|r| r.1.iter())
        .cloned()
        .fold(100.0, f64::min);
    let hi = rows
        .iter()
        .flat_map(|r| r.1.iter())
        .cloned()
        .fold(0.0, f64::max);
    let mut chart = Chart::new(
        "LOW-QUALITY ACCURACY VS SHARE OF DESTROYED SAMPLES",
        "SHARE OF LOW-QUALITY TRAINING SAMPLES DESTROYED",
        "LOW-QUALITY PAIR ACCURACY (%)",
        (0.0, rows.last().map_or(1.0, |r| r.0)),
        ((lo - 1.0).floor(), (hi + 1.0).ceil()),
    );
    for (p, name) in names.iter().enumerate() {
        let c: Vec<(f64, f64)> = rows.iter().map(|r| (r.0, r.1[p])).collect();
        chart.polyline(&c, PALETTE[p % PALETTE.len()], 2.5);
        chart.points(&c, PALETTE[p % PALETTE.len()], 4.5, 1.0);
        chart.add_legend(&name.to_uppercase(), PALETTE[p % PALETTE.len()]);
    }
    chart.save(&dir.join("sweep_destroyed.png"))?;
    Ok((
        "sweep_destroyed.png",
        "low-quality accuracy per policy against the destroyed share",
    ))
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
    fn shares_must_lie_in_the_unit_interval() {
        let a = parse(&["--destroyed", "0.25", "--low=1", "--sweep"])
            .unwrap()
            .unwrap();
        assert_eq!((a.destroyed, a.low, a.sweep), (0.25, 1.0, true));
        for bad in ["1.5", "-0.1", "nan", "x"] {
            assert!(parse(&["--destroyed", bad]).is_err(), "{bad}");
            assert!(parse(&["--low", bad]).is_err(), "{bad}");
        }
        assert!(parse(&["--seeds", "0"]).is_err());
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
