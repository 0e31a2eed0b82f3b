//! The embedding model, written by hand so that the example needs no ML
//! framework: a one-hidden-layer ReLU MLP ending, like the official AdaFace
//! backbones, in a batch norm without affine parameters. Its output is the
//! raw feature: each dimension is standardised over the batch, but each
//! sample keeps its own norm, which is what AdaFace reads. Trained with SGD
//! with momentum and weight decay, as face-recognition training is.

use crate::data::Rng;

/// `input -> hidden (ReLU) -> dim`, row-major weights.
#[derive(Clone)]
pub struct Mlp {
    pub input: usize,
    pub hidden: usize,
    pub dim: usize,
    /// `input x hidden`, `hidden`, `hidden x dim`, `dim`, in one buffer.
    pub params: Vec<f32>,
    /// Batch-norm statistics for evaluation (momentum 0.1, as PyTorch).
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

/// What the backward pass needs from the forward.
pub struct Activations {
    pub hidden: Vec<f32>,
    /// The features: the batch-normed output of the second layer.
    pub out: Vec<f32>,
    /// `1 / sqrt(var + eps)` per output dimension, of this batch.
    inv_std: Vec<f32>,
}

/// Batch-norm epsilon, as PyTorch's.
const BN_EPS: f32 = 1e-5;

impl Mlp {
    /// He-initialised weights, zero biases.
    pub fn new(input: usize, hidden: usize, dim: usize, rng: &mut Rng) -> Mlp {
        let mut params = vec![0f32; input * hidden + hidden + hidden * dim + dim];
        let (w1, rest) = params.split_at_mut(input * hidden);
        let (_, rest) = rest.split_at_mut(hidden);
        let (w2, _) = rest.split_at_mut(hidden * dim);
        let s1 = (2.0 / input as f64).sqrt();
        w1.iter_mut().for_each(|v| *v = (s1 * rng.normal()) as f32);
        let s2 = (1.0 / hidden as f64).sqrt();
        w2.iter_mut().for_each(|v| *v = (s2 * rng.normal()) as f32);
        Mlp {
            input,
            hidden,
            dim,
            params,
            running_mean: vec![0.0; dim],
            running_var: vec![1.0; dim],
        }
    }

    fn split(&self) -> (&[f32], &[f32], &[f32], &[f32]) {
        let (w1, rest) = self.params.split_at(self.input * self.hidden);
        let (b1, rest) = rest.split_at(self.hidden);
        let (w2, b2) = rest.split_at(self.hidden * self.dim);
        (w1, b1, w2, b2)
    }

    /// Training forward of `n` rows of `x`: batch statistics in the batch
    /// norm, which also updates the running ones.
    pub fn forward_train(&mut self, x: &[f32], n: usize) -> Activations {
        let (hidden, mut out) = self.layers(x, n);
        let d = self.dim;
        let mut inv_std = vec![0f32; d];
        for k in 0..d {
            let mean = (0..n).map(|i| out[i * d + k]).sum::<f32>() / n as f32;
            let var = (0..n).map(|i| (out[i * d + k] - mean).powi(2)).sum::<f32>() / n as f32;
            inv_std[k] = 1.0 / (var + BN_EPS).sqrt();
            (0..n).for_each(|i| out[i * d + k] = (out[i * d + k] - mean) * inv_std[k]);
            let unbiased = var * n as f32 / (n as f32 - 1.0).max(1.0);
            self.running_mean[k] = 0.9 * self.running_mean[k] + 0.1 * mean;
            self.running_var[k] = 0.9 * self.running_var[k] + 0.1 * unbiased;
        }
        Activations {
            hidden,
            out,
            inv_std,
        }
    }

    /// Evaluation forward: the features of `n` rows of `x`, with the
    /// running batch-norm statistics.
    pub fn embed(&self, x: &[f32], n: usize) -> Vec<f32> {
        let (_, mut out) = self.layers(x, n);
        for row in out.chunks_mut(self.dim) {
            for (k, v) in row.iter_mut().enumerate() {
                *v = (*v - self.running_mean[k]) / (self.running_var[k] + BN_EPS).sqrt();
            }
        }
        out
    }

    /// The hidden activations and the second layer's output, before the norm.
    fn layers(&self, x: &[f32], n: usize) -> (Vec<f32>, Vec<f32>) {
        let (w1, b1, w2, b2) = self.split();
        let mut hidden = matmul_bias(x, w1, b1, n, self.input, self.hidden);
        hidden.iter_mut().for_each(|v| *v = v.max(0.0));
        let out = matmul_bias(&hidden, w2, b2, n, self.hidden, self.dim);
        (hidden, out)
    }

    /// `d loss / d params` from `d loss / d out`, laid out like `params`.
    pub fn backward(
        &self,
        x: &[f32],
        act: &Activations,
        grad_features: &[f32],
        n: usize,
    ) -> Vec<f32> {
        let (h, d, p) = (self.hidden, self.dim, self.input);
        let (_, _, w2, _) = self.split();
        // Through the batch norm: (g - mean(g) - xhat mean(g xhat)) / std.
        let mut grad_out = vec![0f32; n * d];
        for k in 0..d {
            let g = |i: usize| grad_features[i * d + k];
            let xh = |i: usize| act.out[i * d + k];
            let mean_g = (0..n).map(g).sum::<f32>() / n as f32;
            let mean_gx = (0..n).map(|i| g(i) * xh(i)).sum::<f32>() / n as f32;
            for i in 0..n {
                grad_out[i * d + k] = act.inv_std[k] * (g(i) - mean_g - xh(i) * mean_gx);
            }
        }
        let grad_out = &grad_out[..];
        let mut grad = vec![0f32; self.params.len()];
        let (gw1, rest) = grad.split_at_mut(p * h);
        let (gb1, rest) = rest.split_at_mut(h);
        let (gw2, gb2) = rest.split_at_mut(h * d);
        accumulate_tn(&act.hidden, grad_out, gw2, n, h, d);
        for row in grad_out.chunks(d) {
            gb2.iter_mut().zip(row).for_each(|(g, v)| *g += v);
        }
        // Through the second layer and the ReLU.
        let mut gh = vec![0f32; n * h];
        for i in 0..n {
            let go = &grad_out[i * d..(i + 1) * d];
            for k in 0..h {
                if act.hidden[i * h + k] > 0.0 {
                    gh[i * h + k] = dot(go, &w2[k * d..(k + 1) * d]);
                }
            }
        }
        accumulate_tn(x, &gh, gw1, n, p, h);
        for row in gh.chunks(h) {
            gb1.iter_mut().zip(row).for_each(|(g, v)| *g += v);
        }
        grad
    }
}

/// `a (n x k) * b (k x m) + bias`.
fn matmul_bias(a: &[f32], b: &[f32], bias: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * m);
    for i in 0..n {
        let mut row = bias.to_vec();
        for (p, &av) in a[i * k..(i + 1) * k].iter().enumerate() {
            if av != 0.0 {
                row.iter_mut()
                    .zip(&b[p * m..(p + 1) * m])
                    .for_each(|(o, bv)| *o += av * bv);
            }
        }
        out.extend_from_slice(&row);
    }
    out
}

/// `out (k x m) += a^T g` for `a` stored `n x k` and `g` stored `n x m`.
fn accumulate_tn(a: &[f32], g: &[f32], out: &mut [f32], n: usize, k: usize, m: usize) {
    for i in 0..n {
        let gi = &g[i * m..(i + 1) * m];
        for (p, &av) in a[i * k..(i + 1) * k].iter().enumerate() {
            if av != 0.0 {
                out[p * m..(p + 1) * m]
                    .iter_mut()
                    .zip(gi)
                    .for_each(|(o, gv)| *o += av * gv);
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// SGD with momentum and decoupled-from-nothing (classic L2) weight decay:
/// `v <- mu v + (g + wd p)`, `p <- p - lr v`.
pub struct Sgd {
    pub momentum: f32,
    pub weight_decay: f32,
    velocity: Vec<f32>,
}

impl Sgd {
    pub fn new(len: usize, momentum: f32, weight_decay: f32) -> Sgd {
        Sgd {
            momentum,
            weight_decay,
            velocity: vec![0.0; len],
        }
    }

    pub fn step(&mut self, params: &mut [f32], grad: &[f32], lr: f32) {
        for ((p, g), v) in params.iter_mut().zip(grad).zip(self.velocity.iter_mut()) {
            *v = self.momentum * *v + g + self.weight_decay * *p;
            *p -= lr * *v;
        }
    }
}

/// Learning rate at `step` of `total`: linear warm-up over the first 5 %,
/// then cosine decay to 1 % of the peak.
pub fn learning_rate(peak: f32, step: usize, total: usize) -> f32 {
    let warm = (total / 20).max(1);
    if step < warm {
        return peak * (step + 1) as f32 / warm as f32;
    }
    let t = (step - warm) as f32 / (total - warm).max(1) as f32;
    peak * (0.01 + 0.99 * 0.5 * (1.0 + (std::f32::consts::PI * t).cos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finite differences of `sum(out * r)` against the backward pass.
    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(1);
        let (n, p, h, d) = (3, 5, 7, 4);
        let mut mlp = Mlp::new(p, h, d, &mut rng);
        mlp.params
            .iter_mut()
            .for_each(|v| *v += 0.05 * rng.normal() as f32);
        let x: Vec<f32> = (0..n * p).map(|_| rng.normal() as f32).collect();
        let r: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let objective = |m: &Mlp| -> f64 {
            let a = m.clone().forward_train(&x, n);
            a.out
                .iter()
                .zip(&r)
                .map(|(o, w)| *o as f64 * *w as f64)
                .sum()
        };
        let act = mlp.clone().forward_train(&x, n);
        let grad = mlp.backward(&x, &act, &r, n);
        let eps = 1e-2f32;
        let mut worst = 0.0f64;
        for (k, &analytic) in grad.iter().enumerate() {
            let mut up = mlp.clone();
            up.params[k] += eps;
            let mut down = mlp.clone();
            down.params[k] -= eps;
            let fd = (objective(&up) - objective(&down)) / (2.0 * eps as f64);
            worst = worst.max((fd - analytic as f64).abs() / (1.0 + fd.abs()));
        }
        assert!(worst < 2e-3, "worst relative error {worst}");
    }

    #[test]
    fn batch_norm_standardises_and_evaluation_uses_running_statistics() {
        let mut rng = Rng::new(2);
        let (n, p) = (16, 6);
        let mut mlp = Mlp::new(p, 8, 3, &mut rng);
        let x: Vec<f32> = (0..n * p).map(|_| rng.normal() as f32).collect();
        let act = mlp.forward_train(&x, n);
        for k in 0..3 {
            let col: Vec<f32> = (0..n).map(|i| act.out[i * 3 + k]).collect();
            let mean = col.iter().sum::<f32>() / n as f32;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n as f32;
            assert!(
                mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
                "{mean} {var}"
            );
        }
        // After many identical batches the running statistics are the
        // batch's, so evaluation matches training up to the n/(n-1) factor.
        for _ in 0..200 {
            mlp.forward_train(&x, n);
        }
        let eval = mlp.embed(&x, n);
        let scale = ((n - 1) as f32 / n as f32).sqrt();
        for (e, t) in eval.iter().zip(&act.out) {
            assert!((e - t * scale).abs() < 1e-3, "{e} vs {t}");
        }
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let lr: Vec<f32> = (0..100).map(|s| learning_rate(0.1, s, 100)).collect();
        assert!(lr[0] < lr[4]);
        assert!((lr[5] - 0.1).abs() < 1e-6);
        assert!(lr.windows(2).skip(5).all(|w| w[1] <= w[0]));
        assert!(lr[99] < 0.01);
    }
}
