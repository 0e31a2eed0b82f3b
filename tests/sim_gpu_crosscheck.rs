//! The simulator against the hardware: the self-test kernels of
//! `kernels/sim/selftest.cu`, compiled by NVRTC, run on a GPU and on the
//! simulator with the same inputs, and their outputs compared (bit for bit
//! where CUDA defines the result, closely for tensor-core sums whose internal
//! rounding order the hardware does not document).
//!
//! One test per kernel family, so that each reports on its own. All are
//! `#[ignore]`d (they need libnvrtc, and a GPU): run them with
//! `--include-ignored` where those exist (scripts/gpu_check.sh does); there,
//! a missing library or device is a failure.
#![cfg(feature = "cuda")]

mod sim_common;

use std::sync::Arc;

use adaface::sim::{self, SimEntry, SimLaunch, SELFTEST_CUDA_SOURCE};
use cudarc::driver::{
    CudaContext, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use half::{bf16, f16};
use sim_common::*;

unsafe impl DeviceRepr for BlockSumParams {}
unsafe impl DeviceRepr for DynSmemParams {}
unsafe impl DeviceRepr for WarpParams {}
unsafe impl DeviceRepr for AtomicsParams {}
unsafe impl DeviceRepr for GridParams {}
unsafe impl DeviceRepr for MmaParams {}
unsafe impl DeviceRepr for WgmmaParams {}
unsafe impl DeviceRepr for ConvertParams {}
unsafe impl DeviceRepr for BarrierLoopParams {}

fn nvrtc_present() -> bool {
    adaface::cuda::probe_nvrtc().is_ok()
}

fn compile(arch: &'static str) -> cudarc::nvrtc::Ptx {
    let opts = CompileOptions {
        arch: Some(arch),
        options: vec!["-std=c++17".into()],
        ..Default::default()
    };
    compile_ptx_with_opts(SELFTEST_CUDA_SOURCE, opts)
        .unwrap_or_else(|e| panic!("NVRTC failed for {arch}: {e:?}"))
}

#[test]
#[ignore = "needs libnvrtc: scripts/gpu_check.sh runs it with --include-ignored"]
fn selftest_kernels_compile_with_nvrtc() {
    assert!(nvrtc_present(), "libnvrtc not found");
    for arch in ["sm_80", "sm_90a"] {
        let ptx = compile(arch).to_src();
        assert!(ptx.contains("mma.sync.aligned.m16n8k16"), "{arch}");
        assert!(ptx.contains("ldmatrix.sync.aligned"), "{arch}");
        assert!(ptx.contains("cp.async"), "{arch}");
        // wgmma only where the architecture-specific features are on.
        for shape in ["m64n64k16", "m64n256k16"] {
            assert_eq!(
                ptx.contains(&format!(
                    "wgmma.mma_async.sync.aligned.{shape}.f32.bf16.bf16"
                )),
                arch == "sm_90a",
                "{arch} {shape}"
            );
        }
    }
}

struct Gpu {
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    /// Compute capability 9.0: the module is built for sm_90a (wgmma).
    wgmma: bool,
}

fn gpu() -> Option<Gpu> {
    if adaface::cuda::probe().is_err() {
        panic!("no CUDA driver or NVRTC on this machine");
    }
    let ctx = match CudaContext::new(0) {
        Ok(ctx) => ctx,
        Err(e) => {
            panic!("no usable GPU ({e:?})");
        }
    };
    let (major, minor) = ctx.compute_capability().expect("compute capability");
    // PTX for sm_80 / sm_90 is JIT-compiled by the driver for newer GPUs.
    let arch = match (major, minor) {
        (9, 0) => "sm_90a",
        (9.., _) => "sm_90",
        (8, _) => "sm_80",
        _ => {
            eprintln!("skipped: the self-tests need sm_80 or newer, found sm_{major}{minor}");
            return None;
        }
    };
    let module = ctx
        .load_module(compile(arch))
        .expect("load the self-test module");
    Some(Gpu {
        stream: ctx.default_stream(),
        module,
        wgmma: arch == "sm_90a",
    })
}

/// Buffers as 64-bit words (so every element type is aligned), by value.
type Buffers = Vec<Vec<u64>>;

fn words<T: Copy>(v: &[T]) -> Vec<u64> {
    let bytes = std::mem::size_of_val(v);
    let mut out = vec![0u64; bytes.div_ceil(8)];
    // SAFETY: copies the bytes of `v` into a buffer at least as large.
    unsafe {
        std::ptr::copy_nonoverlapping(v.as_ptr() as *const u8, out.as_mut_ptr() as *mut u8, bytes)
    };
    out
}

fn typed<T: Copy + Default>(w: &[u64], n: usize) -> Vec<T> {
    assert!(n * std::mem::size_of::<T>() <= w.len() * 8);
    let mut out = vec![T::default(); n];
    // SAFETY: reads n elements of T from a buffer that holds at least that many bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            w.as_ptr() as *const u8,
            out.as_mut_ptr() as *mut u8,
            n * std::mem::size_of::<T>(),
        )
    };
    out
}

fn run_sim<P>(
    entry: SimEntry<P>,
    launch: SimLaunch,
    bufs: &Buffers,
    make: impl Fn(&[u64]) -> P,
) -> Buffers {
    let mut host = bufs.clone();
    let ptrs: Vec<u64> = host.iter_mut().map(|b| b.as_mut_ptr() as u64).collect();
    let params = make(&ptrs);
    // SAFETY: every address points into `host`, sized by the caller for the launch.
    unsafe { sim::launch(entry, &launch, &params) }.expect("simulated launch");
    host
}

fn run_gpu<P: DeviceRepr>(
    gpu: &Gpu,
    name: &str,
    launch: SimLaunch,
    bufs: &Buffers,
    make: impl Fn(&[u64]) -> P,
) -> Buffers {
    let f = gpu.module.load_function(name).expect("kernel in module");
    let dev: Vec<CudaSlice<u64>> = bufs
        .iter()
        .map(|b| gpu.stream.clone_htod(b.as_slice()).expect("htod"))
        .collect();
    {
        let guarded: Vec<_> = dev.iter().map(|d| d.device_ptr(&gpu.stream)).collect();
        let ptrs: Vec<u64> = guarded.iter().map(|(p, _)| *p).collect();
        let params = make(&ptrs);
        let cfg = LaunchConfig {
            grid_dim: (launch.grid[0], launch.grid[1], launch.grid[2]),
            block_dim: (launch.block[0], launch.block[1], launch.block[2]),
            shared_mem_bytes: launch.shared_bytes,
        };
        // SAFETY: the parameter struct matches the kernel; every address is
        // a live device buffer sized by the caller for the launch.
        unsafe { gpu.stream.launch_builder(&f).arg(&params).launch(cfg) }.expect("launch");
    }
    gpu.stream.synchronize().expect("kernel ran");
    dev.iter()
        .map(|d| gpu.stream.clone_dtoh(d).expect("dtoh"))
        .collect()
}

// Shuffles and votes: bit-exact.
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn warp_collectives_are_bit_exact() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::from_state(77);
    {
        let (blocks, threads) = (3usize, 80usize);
        let n = blocks * threads;
        let input: Vec<i32> = (0..n)
            .map(|_| (rng.next_u64() % 2001) as i32 - 1000)
            .collect();
        let bufs = vec![words(&input), vec![0; n * WARP_RESULTS / 2], vec![0; 2 * n]];
        let make = |p: &[u64]| WarpParams {
            input: p[0],
            out: p[1],
            out64: p[2],
        };
        let launch = SimLaunch::linear(blocks as u32, threads as u32, 0);
        let s = run_sim(selftest_warp_i32_sim, launch, &bufs, make);
        let g = run_gpu(&gpu, "selftest_warp_i32", launch, &bufs, make);
        assert_eq!(s, g, "warp collectives");
    }
}

// Grid coordinates: bit-exact.
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn grid_coordinates_are_bit_exact() {
    let Some(gpu) = gpu() else { return };
    {
        let (grid, block) = ((3, 2, 2), (4, 3, 2));
        let n = 12 * 24 * 8;
        let bufs = vec![vec![0; n / 2]];
        let make = |p: &[u64]| GridParams { out: p[0] };
        let launch = SimLaunch::new(grid, block, 0);
        let s = run_sim(selftest_grid_u32_sim, launch, &bufs, make);
        let g = run_gpu(&gpu, "selftest_grid_u32", launch, &bufs, make);
        assert_eq!(s, g, "grid coordinates");
    }
}

// Conversions: bit-exact.
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn conversions_are_bit_exact() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::from_state(79);
    {
        let n = 65536usize;
        let floats: Vec<f32> = (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    f32::from_bits(rng.next_u64() as u32)
                } else {
                    rng.uniform_f32(-7e4, 7e4)
                }
            })
            .collect();
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        let bufs = vec![
            words(&floats),
            vec![0; n / 4],
            vec![0; n / 4],
            words(&bits),
            vec![0; n / 2],
            vec![0; n / 2],
        ];
        let make = |p: &[u64]| ConvertParams {
            floats: p[0],
            bf16_bits: p[1],
            f16_bits: p[2],
            bits: p[3],
            bf16_value: p[4],
            f16_value: p[5],
            n: n as u32,
            pad: 0,
        };
        let launch = SimLaunch::linear(256, 256, 0);
        let s = run_sim(selftest_convert_all_sim, launch, &bufs, make);
        let g = run_gpu(&gpu, "selftest_convert_all", launch, &bufs, make);
        assert_eq!(s, g, "conversions");
    }
}

// Barriers, static and dynamic shared memory, reducing barriers.
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn barriers_and_shared_memory_match() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::from_state(80);
    {
        let (blocks, threads) = (4usize, 100usize);
        let bufs = vec![vec![0; blocks * threads / 2]];
        let make = |p: &[u64]| BarrierLoopParams {
            out: p[0],
            iters: 30,
            pad: 0,
        };
        let launch = SimLaunch::linear(blocks as u32, threads as u32, 0);
        let s = run_sim(selftest_barrier_loop_u32_sim, launch, &bufs, make);
        let g = run_gpu(&gpu, "selftest_barrier_loop_u32", launch, &bufs, make);
        assert_eq!(s, g, "barrier loop");

        let (blocks, threads, n) = (5usize, 96usize, 1000usize);
        let input: Vec<f32> = (0..blocks * n)
            .map(|_| rng.uniform_f32(-0.5, 1.5))
            .collect();
        let bufs = vec![words(&input), vec![0; blocks], vec![0; 2 * blocks]];
        let make = |p: &[u64]| BlockSumParams {
            input: p[0],
            sums: p[1],
            counts: p[2],
            n: n as u32,
            pad: 0,
        };
        let launch = SimLaunch::linear(blocks as u32, threads as u32, 0);
        let s = run_sim(selftest_block_sum_f32_sim, launch, &bufs, make);
        let g = run_gpu(&gpu, "selftest_block_sum_f32", launch, &bufs, make);
        assert_eq!(
            typed::<i32>(&s[2], 3 * blocks),
            typed::<i32>(&g[2], 3 * blocks),
            "reducing barriers"
        );
        let (ss, gs) = (typed::<f32>(&s[1], blocks), typed::<f32>(&g[1], blocks));
        for (a, b) in ss.iter().zip(&gs) {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                "block sums {ss:?} vs {gs:?}"
            );
        }

        let (blocks, threads) = (4usize, 64usize);
        let input: Vec<f32> = (0..blocks * threads)
            .map(|_| rng.uniform_f32(-3.0, 3.0))
            .collect();
        let bufs = vec![
            words(&input),
            vec![0; blocks * threads / 2],
            vec![0; blocks * 2],
            vec![0; blocks / 2],
        ];
        let make = |p: &[u64]| DynSmemParams {
            input: p[0],
            output: p[1],
            zfill: p[2],
            align: p[3],
        };
        let launch = SimLaunch::linear(blocks as u32, threads as u32, (threads * 4) as u32);
        let s = run_sim(selftest_dyn_smem_f32_sim, launch, &bufs, make);
        let g = run_gpu(&gpu, "selftest_dyn_smem_f32", launch, &bufs, make);
        assert_eq!(s, g, "dynamic shared memory");
    }
}

// Atomics: every order-independent result bit-exact.
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn atomics_match() {
    let Some(gpu) = gpu() else { return };
    {
        let (blocks, threads) = (37u32, 64u32);
        let bufs = vec![
            words(&[0i32, 0, 1000, i32::MIN, i32::MAX, 4, -1, 0]),
            words(&[0u32, u32::MAX]),
            words(&[0u64, 0, 10]),
            vec![0],
            vec![0; blocks as usize / 2 + 1],
            vec![0],
            vec![0],
        ];
        let make = |p: &[u64]| AtomicsParams {
            ints: p[0],
            uints: p[1],
            ull: p[2],
            floats: p[3],
            partials: p[4],
            ticket: p[5],
            total: p[6],
        };
        let launch = SimLaunch::linear(blocks, threads, 0);
        let s = run_sim(selftest_atomics_mixed_sim, launch, &bufs, make);
        let g = run_gpu(&gpu, "selftest_atomics_mixed", launch, &bufs, make);
        let (si, gi) = (typed::<i32>(&s[0], 8), typed::<i32>(&g[0], 8));
        assert_eq!((&si[..6], si[7]), (&gi[..6], gi[7]), "int atomics");
        for i in 1..6 {
            assert_eq!(s[i], g[i], "atomics buffer {i}");
        }
        assert_eq!(
            typed::<f32>(&s[6], 1),
            typed::<f32>(&g[6], 1),
            "last-block total"
        );
    }
}

// Tensor cores: close (the hardware's accumulation order is its own).
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn mma_sums_are_close() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::from_state(82);
    for is_bf16 in [true, false] {
        let (m, n, k) = (32usize, 24usize, 48usize);
        let enc = |x: f32| {
            if is_bf16 {
                bf16::from_f32(x).to_bits()
            } else {
                f16::from_f32(x).to_bits()
            }
        };
        let a: Vec<u16> = (0..m * k)
            .map(|_| enc(rng.uniform_f32(-2.0, 2.0)))
            .collect();
        let b_nk: Vec<u16> = (0..n * k)
            .map(|_| enc(rng.uniform_f32(-2.0, 2.0)))
            .collect();
        let b_kn: Vec<u16> = (0..k * n).map(|i| b_nk[(i % n) * k + i / n]).collect();
        let c: Vec<f32> = (0..m * n).map(|_| rng.uniform_f32(-1.0, 1.0)).collect();
        let (entry, name): (SimEntry<MmaParams>, &str) = if is_bf16 {
            (selftest_mma_bf16_sim, "selftest_mma_bf16")
        } else {
            (selftest_mma_f16_sim, "selftest_mma_f16")
        };
        for mode in 0..3u32 {
            let bufs = vec![
                words(&a),
                words(&b_nk),
                words(&b_kn),
                words(&c),
                vec![0; m * n / 2],
            ];
            let make = |p: &[u64]| MmaParams {
                a: p[0],
                b_nk: p[1],
                b_kn: p[2],
                c: p[3],
                d: p[4],
                m: m as u32,
                n: n as u32,
                k: k as u32,
                mode,
            };
            let launch = SimLaunch::linear(3, 64, 2 * 384 * 2);
            let s = typed::<f32>(&run_sim(entry, launch, &bufs, make)[4], m * n);
            let g = typed::<f32>(&run_gpu(&gpu, name, launch, &bufs, make)[4], m * n);
            let want: Vec<f64> = g.iter().map(|&x| x as f64).collect();
            let err = rel_err(&s, &want);
            assert!(
                err < 1e-5,
                "mma bf16={is_bf16} mode {mode}: simulator vs GPU relative error {err}"
            );
        }
    }
}

// wgmma from 128-byte-swizzled shared memory, B K-major and MN-major in
// m64n64 chunks and MN-major in one m64n256: the simulator's model of the
// descriptors (the leading byte offset included), the swizzle and the
// accumulator layout against the hardware.
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn wgmma_sums_are_close() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::from_state(83);
    if !gpu.wgmma {
        eprintln!("skipped wgmma: not compute capability 9.0");
        return;
    }
    let a: Vec<u16> = (0..64 * 64)
        .map(|_| bf16::from_f32(rng.uniform_f32(-2.0, 2.0)).to_bits())
        .collect();
    let b: Vec<u16> = (0..256 * 64)
        .map(|_| bf16::from_f32(rng.uniform_f32(-2.0, 2.0)).to_bits())
        .collect();
    for mode in 0..3u32 {
        let bufs = vec![words(&a), words(&b), vec![0; 64 * 256 / 2]];
        let make = |p: &[u64]| WgmmaParams {
            a: p[0],
            b_nk: p[1],
            d: p[2],
            mode,
            pad: 0,
        };
        let launch = SimLaunch::linear(1, 128, WGMMA_SELFTEST_SHARED);
        let s = typed::<f32>(
            &run_sim(selftest_wgmma_bf16_sim, launch, &bufs, make)[2],
            64 * 256,
        );
        let g = typed::<f32>(
            &run_gpu(&gpu, "selftest_wgmma_bf16", launch, &bufs, make)[2],
            64 * 256,
        );
        let want: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        let err = rel_err(&s, &want);
        assert!(
            err < 1e-5,
            "wgmma mode {mode}: simulator vs GPU relative error {err}"
        );
    }
}
