//! The one dispatch of a step: which kernels run, in which order, with
//! which grids and parameters. The CUDA backend and the simulator both
//! loop over these launches, so neither decides again which variant
//! (tiled, flash on `mma.sync` or `wgmma`, hi + lo or single-rounded
//! gradients) runs.

use super::{
    KernelElement, KernelId, KernelLabel, LaunchDims, Pass, StepBuffers, StepPlan, Variant,
};
use crate::config::AdaFaceConfig;
use crate::error::Result;
use crate::kernel_params::{
    AdafaceCombineParams, AdafaceDxParams, AdafaceShardParams, AdafaceStatsParams,
    AdafaceTileParams,
};

/// The kernels of one step of a plan, for one element and label type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepKernels {
    /// Norm statistics, EMA, margins.
    pub stats: KernelId,
    /// Forward tiles (with the flash family, and `gx` for a training step).
    pub forward: KernelId,
    /// Log-sum-exp, loss and EMA commit.
    pub combine: KernelId,
    /// `dW` (and the tiled family's `gx` partials).
    pub backward: KernelId,
    /// `dX` from the partials.
    pub dx_finish: KernelId,
}

/// The parameters of one launch, of whichever struct its kernel takes.
#[derive(Debug, Clone, Copy)]
pub enum LaunchParams {
    /// `stats`.
    Stats(AdafaceStatsParams),
    /// The tile kernels (and the flash `dx_finish`).
    Tile(AdafaceTileParams),
    /// `combine`.
    Combine(AdafaceCombineParams),
    /// The tiled `dx_finish`.
    Dx(AdafaceDxParams),
    /// `shard_rows` of a class-sharded step.
    Shard(AdafaceShardParams),
}

/// One kernel launch: the kernel, its geometry and its parameters.
#[derive(Debug, Clone, Copy)]
pub struct KernelLaunch {
    /// The kernel.
    pub kernel: KernelId,
    /// Grid, block and dynamic shared memory.
    pub dims: LaunchDims,
    /// The parameter struct passed by value.
    pub params: LaunchParams,
}

impl StepPlan {
    /// The kernels this plan launches for element `E` and label `L`: the
    /// one place the variant is turned into entry points.
    pub fn kernels<E: KernelElement, L: KernelLabel>(&self) -> Result<StepKernels> {
        let (e, l) = (E::SUFFIX, L::SUFFIX);
        let combine = KernelId::find("adaface_combine", &[])?;
        let stats = KernelId::find("adaface_stats", &[e, l])?;
        Ok(match self.variant {
            Variant::Tiled => StepKernels {
                stats,
                forward: KernelId::find("adaface_forward", &[e, l])?,
                combine,
                backward: KernelId::find("adaface_backward", &[e, l])?,
                dx_finish: KernelId::find("adaface_dx_finish", &[e])?,
            },
            Variant::Flash => {
                let wg = if self.wgmma { "_wg" } else { "" };
                let single = if self.split_gradients { "" } else { "_single" };
                let forward = match self.pass {
                    Pass::Forward => format!("adaface_flash{wg}_forward"),
                    Pass::ForwardBackward => format!("adaface_flash{wg}_forward_dx{single}"),
                };
                StepKernels {
                    stats,
                    forward: KernelId::find(&forward, &[e, l])?,
                    combine,
                    backward: KernelId::find(&format!("adaface_flash{wg}_dw{single}"), &[e, l])?,
                    dx_finish: KernelId::find("adaface_flash_dx_finish", &[e, l])?,
                }
            }
        })
    }

    /// Every launch of one step, in order: `stats`, the forward, `combine`
    /// (storing the EMA state when `commit_state`), and for a training step
    /// the backward and `dx_finish`.
    pub fn launches<E: KernelElement, L: KernelLabel>(
        &self,
        cfg: &AdaFaceConfig,
        buf: &StepBuffers,
        commit_state: bool,
    ) -> Result<Vec<KernelLaunch>> {
        let k = self.kernels::<E, L>()?;
        let mut out = vec![
            KernelLaunch {
                kernel: k.stats,
                dims: self.stats,
                params: LaunchParams::Stats(self.stats_params(cfg, buf)),
            },
            KernelLaunch {
                kernel: k.forward,
                dims: self.forward,
                params: LaunchParams::Tile(self.forward_params(cfg, buf)),
            },
            KernelLaunch {
                kernel: k.combine,
                dims: self.combine,
                params: LaunchParams::Combine(self.combine_params(cfg, buf, commit_state)),
            },
        ];
        if self.pass == Pass::ForwardBackward {
            let bp = self.backward_params(cfg, buf);
            out.extend(self.backward_launches(&k, bp, cfg, buf));
        }
        Ok(out)
    }

    /// The backward and `dx_finish` launches, given the backward's tile
    /// parameters `bp`: the flash `dx_finish` reads those (the forward's
    /// partials, the targets), the tiled one its own struct.
    pub(crate) fn backward_launches(
        &self,
        k: &StepKernels,
        bp: AdafaceTileParams,
        cfg: &AdaFaceConfig,
        buf: &StepBuffers,
    ) -> [KernelLaunch; 2] {
        let dx = match self.variant {
            Variant::Tiled => LaunchParams::Dx(self.dx_params(cfg, buf)),
            Variant::Flash => LaunchParams::Tile(bp),
        };
        [
            KernelLaunch {
                kernel: k.backward,
                dims: self.backward,
                params: LaunchParams::Tile(bp),
            },
            KernelLaunch {
                kernel: k.dx_finish,
                dims: self.dx_finish,
                params: dx,
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::Dtype;
    use crate::launch::PlanLimits;
    use crate::shape::Shape;

    fn plan(dtype: Dtype, dim: usize, pass: Pass, limits: PlanLimits) -> StepPlan {
        StepPlan::new(Shape::new(8, dim, 100), pass, dtype, limits).unwrap()
    }

    #[test]
    fn the_plan_names_the_kernels_of_its_variant() {
        let train = Pass::ForwardBackward;
        let k = plan(Dtype::F32, 64, train, PlanLimits::default())
            .kernels::<f32, i32>()
            .unwrap();
        let names = [k.stats, k.forward, k.combine, k.backward, k.dx_finish].map(KernelId::name);
        assert_eq!(
            names,
            [
                "adaface_stats_f32_i32",
                "adaface_forward_f32_i32",
                "adaface_combine",
                "adaface_backward_f32_i32",
                "adaface_dx_finish_f32",
            ]
        );
        let k = plan(Dtype::BF16, 64, Pass::Forward, PlanLimits::default())
            .kernels::<half::bf16, i64>()
            .unwrap();
        assert_eq!(k.forward.name(), "adaface_flash_forward_bf16_i64");
        // Single-rounded gradient products are the default.
        let single_wg = PlanLimits {
            wgmma: true,
            ..PlanLimits::default()
        };
        let k = plan(Dtype::BF16, 128, train, single_wg)
            .kernels::<half::bf16, i32>()
            .unwrap();
        assert_eq!(
            k.forward.name(),
            "adaface_flash_wg_forward_dx_single_bf16_i32"
        );
        assert_eq!(k.backward.name(), "adaface_flash_wg_dw_single_bf16_i32");
        assert_eq!(k.dx_finish.name(), "adaface_flash_dx_finish_bf16_i32");
        let exact = PlanLimits {
            split_gradients: true,
            ..PlanLimits::default()
        };
        let k = plan(Dtype::F16, 64, train, exact)
            .kernels::<half::f16, i32>()
            .unwrap();
        assert_eq!(k.forward.name(), "adaface_flash_forward_dx_f16_i32");
        assert_eq!(k.backward.name(), "adaface_flash_dw_f16_i32");
    }

    #[test]
    fn a_step_launches_its_kernels_in_order() {
        let cfg = AdaFaceConfig::default();
        let buf = StepBuffers::default();
        for (pass, n) in [(Pass::Forward, 3), (Pass::ForwardBackward, 5)] {
            for dtype in [Dtype::F32, Dtype::BF16] {
                let p = plan(dtype, 64, pass, PlanLimits::default());
                let launches = match dtype {
                    Dtype::F32 => p.launches::<f32, i32>(&cfg, &buf, true),
                    _ => p.launches::<half::bf16, i32>(&cfg, &buf, true),
                }
                .unwrap();
                assert_eq!(launches.len(), n);
                let dims: Vec<LaunchDims> = launches.iter().map(|l| l.dims).collect();
                let planned = [p.stats, p.forward, p.combine, p.backward, p.dx_finish];
                assert_eq!(dims, planned[..n]);
                if n == 5 {
                    // The flash dx_finish reads the tile parameters.
                    let tile = matches!(launches[4].params, LaunchParams::Tile(_));
                    assert_eq!(tile, p.variant == Variant::Flash);
                }
            }
        }
    }
}
