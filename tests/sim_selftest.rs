//! Self-tests of the CPU simulator: the kernels of `kernels/sim/selftest.cu`
//! run through `adaface::sim::launch` and are checked against plain Rust
//! computations of what CUDA specifies.

mod sim_common;

use adaface::sim::{self, FiberSwitch, SimEntry, SimLaunch};
use adaface::Error;
use half::{bf16, f16};
use sim_common::*;

// ---------------------------------------------------------------------------
// Shared memory, barriers and the reducing barriers.
// ---------------------------------------------------------------------------
fn check_block_sum(blocks: u32, threads: u32, n: u32, seed: u64) {
    let mut rng = Rng::from_state(seed);
    let mut input: Vec<f32> = (0..blocks * n)
        .map(|i| {
            // Block 2 (when present) is all negative: count 0, or 0.
            if i / n == 2 {
                rng.uniform_f32(-1.0, -0.01)
            } else {
                rng.uniform_f32(-0.5, 1.5)
            }
        })
        .collect();
    let mut sums = vec![f32::NAN; blocks as usize];
    let mut counts = vec![-1i32; 3 * blocks as usize];
    let p = BlockSumParams {
        input: addr(&mut input),
        sums: addr(&mut sums),
        counts: addr(&mut counts),
        n,
        pad: 0,
    };
    let entry: SimEntry<BlockSumParams> = selftest_block_sum_f32_sim;
    unsafe { sim::launch(entry, &SimLaunch::linear(blocks, threads, 0), &p) }.unwrap();
    for b in 0..blocks as usize {
        let slice = &input[b * n as usize..(b + 1) * n as usize];
        let exact: f64 = slice.iter().map(|&x| x as f64).sum();
        let scale: f64 = slice.iter().map(|&x| (x as f64).abs()).sum();
        assert!(
            (sums[b] as f64 - exact).abs() <= 1e-5 * scale,
            "block {b}: {} vs {exact}",
            sums[b]
        );
        // Per-thread partial sums in the kernel's order, exactly.
        let partials: Vec<f32> = (0..threads as usize)
            .map(|t| {
                slice
                    .iter()
                    .skip(t)
                    .step_by(threads as usize)
                    .fold(0.0f32, |a, &x| a + x)
            })
            .collect();
        let count = partials.iter().filter(|&&s| s > 0.0).count() as i32;
        let all_nonzero = partials.iter().all(|&s| s != 0.0) as i32;
        let any_big = partials.iter().any(|&s| s > 8.0) as i32;
        assert_eq!(
            &counts[3 * b..3 * b + 3],
            &[count, all_nonzero, any_big],
            "block {b}"
        );
    }
}

#[test]
fn block_reduction_with_static_shared_memory() {
    check_block_sum(5, 96, 1000, 1);
    check_block_sum(3, 1024, 3001, 2);
    check_block_sum(3, 1, 17, 3);
}

// ---------------------------------------------------------------------------
// Dynamic shared memory and cp.async zero fill.
// ---------------------------------------------------------------------------
#[test]
fn dynamic_shared_memory_and_zero_fill() {
    let (blocks, threads) = (4usize, 64usize);
    let mut rng = Rng::from_state(11);
    let mut input: Vec<f32> = (0..blocks * threads)
        .map(|_| rng.uniform_f32(-3.0, 3.0))
        .collect();
    let mut output = vec![f32::NAN; blocks * threads];
    let mut zfill = vec![0xaau8; blocks * 16];
    let mut align = vec![-1i32; blocks];
    let p = DynSmemParams {
        input: addr(&mut input),
        output: addr(&mut output),
        zfill: addr(&mut zfill),
        align: addr(&mut align),
    };
    let launch = SimLaunch::linear(blocks as u32, threads as u32, (threads * 4) as u32);
    unsafe { sim::launch(selftest_dyn_smem_f32_sim as SimEntry<_>, &launch, &p) }.unwrap();
    for b in 0..blocks {
        for t in 0..threads {
            assert_eq!(
                output[b * threads + t],
                input[b * threads + threads - 1 - t]
            );
        }
        let src: Vec<u8> = input[b * threads..b * threads + 4]
            .iter()
            .flat_map(|x| x.to_ne_bytes())
            .collect();
        assert_eq!(&zfill[b * 16..b * 16 + 10], &src[..10], "block {b}");
        assert_eq!(&zfill[b * 16 + 10..b * 16 + 16], &[0u8; 6], "block {b}");
        assert_eq!(align[b], 1);
    }
}

// ---------------------------------------------------------------------------
// Shuffles and votes, against CUDA's documented semantics.
// ---------------------------------------------------------------------------
/// Source lane of a shuffle by CUDA's rules, or the caller's lane when the
/// source is outside the caller's `width` segment.
fn shfl_idx(lane: usize, src: i64, width: usize) -> usize {
    (lane & !(width - 1)) + (src as usize & (width - 1))
}
fn shfl_up(lane: usize, delta: usize, width: usize) -> usize {
    if (lane & (width - 1)) >= delta {
        lane - delta
    } else {
        lane
    }
}
fn shfl_down(lane: usize, delta: usize, width: usize) -> usize {
    if (lane & (width - 1)) + delta < width {
        lane + delta
    } else {
        lane
    }
}
fn shfl_xor(lane: usize, lane_mask: usize, width: usize) -> usize {
    let j = lane ^ lane_mask;
    if j <= (lane | (width - 1)) {
        j
    } else {
        lane
    }
}

fn run_warp_kernel(blocks: usize, threads: usize, input: &mut [i32]) -> (Vec<i32>, Vec<i64>) {
    let total = blocks * threads;
    let mut out = vec![i32::MIN + 7; total * WARP_RESULTS];
    let mut out64 = vec![0i64; total * 2];
    let p = WarpParams {
        input: addr(input),
        out: addr(&mut out),
        out64: addr(&mut out64),
    };
    let launch = SimLaunch::linear(blocks as u32, threads as u32, 0);
    unsafe { sim::launch(selftest_warp_i32_sim as SimEntry<_>, &launch, &p) }.unwrap();
    (out, out64)
}

fn check_warp(blocks: usize, threads: usize, seed: u64) {
    let mut rng = Rng::from_state(seed);
    let total = blocks * threads;
    let mut input: Vec<i32> = (0..total)
        .map(|_| (rng.next_u64() % 2001) as i32 - 1000)
        .collect();
    let (out, out64) = run_warp_kernel(blocks, threads, &mut input);
    for b in 0..blocks {
        for warp_start in (0..threads).step_by(32) {
            let lanes = 32.min(threads - warp_start);
            let v = |lane: usize| input[b * threads + warp_start + lane];
            let mask: u32 = if lanes == 32 {
                u32::MAX
            } else {
                (1 << lanes) - 1
            };
            let ballot = (0..lanes).fold(0u32, |m, l| m | (((v(l) & 1 != 0) as u32) << l));
            let any7 = (0..lanes).any(|l| v(l) % 7 == 0) as i32;
            let all5 = (0..lanes).all(|l| v(l) % 5 != 0) as i32;
            let warp_sum: i32 = (0..lanes).map(v).sum();
            for lane in 0..lanes {
                let gid = b * threads + warp_start + lane;
                let got = &out[gid * WARP_RESULTS..(gid + 1) * WARP_RESULTS];
                let half_result = if lane < 16 {
                    v(shfl_xor(lane, 1, 32))
                } else {
                    v(shfl_down(lane, 2, 16))
                };
                let want = [
                    v(shfl_idx(lane, ((lane * 7 + 3) % lanes) as i64, 32)),
                    v(shfl_idx(lane, lane as i64 + 5, 8)),
                    v(shfl_up(lane, 3, 16)),
                    v(shfl_down(lane, 5, 16)),
                    v(shfl_xor(lane, 13, 32)),
                    v(shfl_xor(lane, 4, 8)),
                    ballot as i32,
                    any7,
                    all5,
                    1,
                    half_result,
                    warp_sum,
                ];
                assert_eq!(
                    got, &want,
                    "block {b} lane {lane} of warp at {warp_start} (mask {mask:#x})"
                );
                let d = v(shfl_xor(lane, 2, 32)) as f64 * 0.5 + 1.0e10;
                assert_eq!(
                    out64[2 * gid],
                    d.to_bits() as i64,
                    "double shuffle, lane {lane}"
                );
                let src = shfl_down(lane, 1, lanes);
                let w = ((v(src) as i64) << 32) | src as i64;
                assert_eq!(out64[2 * gid + 1], w, "int64 shuffle, lane {lane}");
            }
        }
    }
}

#[test]
fn warp_shuffles_and_votes() {
    check_warp(3, 80, 21); // a partial last warp of 16 lanes
    check_warp(2, 64, 22);
    check_warp(1, 32, 23);
}

// ---------------------------------------------------------------------------
// Atomics.
// ---------------------------------------------------------------------------
fn hash(gid: u64) -> i32 {
    ((gid * 7919) % 10007) as i32 - 5000
}

#[test]
fn atomics_across_blocks() {
    let (blocks, threads) = (37u64, 64u64);
    let total = blocks * threads;
    let mut ints = vec![0i32, 0, 1000, i32::MIN, i32::MAX, 4, -1, 0];
    let mut uints = vec![0u32, u32::MAX];
    let mut ull = vec![0u64, 0, 10];
    let mut floats = vec![0.0f32];
    let mut partials = vec![f32::NAN; blocks as usize];
    let mut ticket = vec![0u32];
    let mut total_out = vec![f32::NAN; 2];
    let p = AtomicsParams {
        ints: addr(&mut ints),
        uints: addr(&mut uints),
        ull: addr(&mut ull),
        floats: addr(&mut floats),
        partials: addr(&mut partials),
        ticket: addr(&mut ticket),
        total: addr(&mut total_out),
    };
    let launch = SimLaunch::linear(blocks as u32, threads as u32, 0);
    unsafe { sim::launch(selftest_atomics_mixed_sim as SimEntry<_>, &launch, &p) }.unwrap();
    let gids = 0..total;
    assert_eq!(ints[0], total as i32);
    assert_eq!(ints[1], gids.clone().sum::<u64>() as i32);
    assert_eq!(ints[2], 1000 - 2 * total as i32);
    assert_eq!(ints[3], gids.clone().map(hash).max().unwrap());
    assert_eq!(ints[4], gids.clone().map(hash).min().unwrap());
    assert_eq!(ints[5], 4 + 3 * total as i32);
    assert!(
        (0..total as i32).contains(&ints[6]),
        "exchange left {}",
        ints[6]
    );
    assert_eq!(ints[7], gids.clone().fold(0i32, |m, g| m | (1 << (g % 31))));
    assert_eq!(uints[0], gids.clone().map(|g| (g % 7) as u32).sum::<u32>());
    assert_eq!(uints[1], !((1u32 << 29) - 1));
    assert_eq!(ull[0], gids.clone().map(|g| g << 20).sum::<u64>());
    assert_eq!(ull[1], (total - 1) * 1_000_003);
    assert_eq!(ull[2], 10 + 5 * total);
    let float_sum: u64 = gids.clone().map(|g| g % 16).sum();
    assert_eq!(floats[0], float_sum as f32);
    // Every block's partial, and the last block summed all of them.
    for b in 0..blocks {
        let s: u64 = (b * threads..(b + 1) * threads).map(|g| g % 16).sum();
        assert_eq!(partials[b as usize], (s + threads) as f32, "block {b}");
    }
    assert_eq!(ticket[0], blocks as u32);
    assert_eq!(total_out[0], (float_sum + total) as f32);
    assert!(total_out[1] >= 0.0 && total_out[1] < blocks as f32);
}

// ---------------------------------------------------------------------------
// 2D/3D grids and blocks.
// ---------------------------------------------------------------------------
#[test]
fn three_dimensional_grid_and_block() {
    for (grid, block) in [
        ((3u32, 2u32, 2u32), (4u32, 3u32, 2u32)),
        ((2, 5, 1), (16, 4, 1)),
        ((1, 1, 3), (1, 1, 7)),
    ] {
        let blocks = (grid.0 * grid.1 * grid.2) as usize;
        let threads = (block.0 * block.1 * block.2) as usize;
        let mut out = vec![u32::MAX; blocks * threads * 8];
        let p = GridParams {
            out: addr(&mut out),
        };
        unsafe {
            sim::launch(
                selftest_grid_u32_sim as SimEntry<_>,
                &SimLaunch::new(grid, block, 0),
                &p,
            )
        }
        .unwrap();
        let mut i = 0;
        for bz in 0..grid.2 {
            for by in 0..grid.1 {
                for bx in 0..grid.0 {
                    for tz in 0..block.2 {
                        for ty in 0..block.1 {
                            for tx in 0..block.0 {
                                let want = [
                                    bx,
                                    by,
                                    bz,
                                    tx,
                                    ty,
                                    tz,
                                    block.0 * 10000 + block.1 * 100 + block.2,
                                    grid.0 * 10000 + grid.1 * 100 + grid.2 + 32_000_000,
                                ];
                                assert_eq!(
                                    &out[i * 8..i * 8 + 8],
                                    &want,
                                    "grid {grid:?} block {block:?}"
                                );
                                i += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Tensor-core mma (with direct fragments, ldmatrix and ldmatrix .trans).
// ---------------------------------------------------------------------------
fn check_mma(is_bf16: bool, m: usize, n: usize, k: usize, seed: u64) {
    let mut rng = Rng::from_state(seed);
    let encode = |x: f32| -> u16 {
        if is_bf16 {
            bf16::from_f32(x).to_bits()
        } else {
            f16::from_f32(x).to_bits()
        }
    };
    let decode = |h: u16| -> f64 {
        if is_bf16 {
            bf16::from_bits(h).to_f64()
        } else {
            f16::from_bits(h).to_f64()
        }
    };
    let mut a: Vec<u16> = (0..m * k)
        .map(|_| encode(rng.uniform_f32(-2.0, 2.0)))
        .collect();
    let mut b_nk: Vec<u16> = (0..n * k)
        .map(|_| encode(rng.uniform_f32(-2.0, 2.0)))
        .collect();
    let mut b_kn: Vec<u16> = (0..k * n).map(|i| b_nk[(i % n) * k + i / n]).collect();
    let mut c: Vec<f32> = (0..m * n).map(|_| rng.uniform_f32(-1.0, 1.0)).collect();
    let want: Vec<f64> = (0..m * n)
        .map(|idx| {
            let (i, j) = (idx / n, idx % n);
            c[idx] as f64
                + (0..k)
                    .map(|kk| decode(a[i * k + kk]) * decode(b_nk[j * k + kk]))
                    .sum::<f64>()
        })
        .collect();
    let entry: SimEntry<MmaParams> = if is_bf16 {
        selftest_mma_bf16_sim
    } else {
        selftest_mma_f16_sim
    };
    let warps_per_block = 2usize;
    let tiles = (m / 16) * (n / 8);
    let blocks = tiles.div_ceil(warps_per_block) as u32;
    let launch = SimLaunch::linear(
        blocks,
        32 * warps_per_block as u32,
        (warps_per_block * 384 * 2) as u32,
    );
    let mut results = Vec::new();
    for mode in 0..3 {
        let mut d = vec![f32::NAN; m * n];
        let p = MmaParams {
            a: addr(&mut a),
            b_nk: addr(&mut b_nk),
            b_kn: addr(&mut b_kn),
            c: addr(&mut c),
            d: addr(&mut d),
            m: m as u32,
            n: n as u32,
            k: k as u32,
            mode,
        };
        unsafe { sim::launch(entry, &launch, &p) }.unwrap();
        let err = rel_err(&d, &want);
        assert!(
            err < 1e-6,
            "bf16 {is_bf16} mode {mode}: relative error {err}"
        );
        results.push(d);
    }
    // The three ways of loading fragments must feed identical operands.
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

#[test]
fn mma_m16n8k16_matches_plain_matmul() {
    check_mma(true, 32, 24, 48, 31);
    check_mma(false, 32, 24, 48, 32);
    check_mma(true, 48, 8, 16, 33);
}

// ---------------------------------------------------------------------------
// wgmma from 128-byte-swizzled shared memory: B K-major and MN-major in
// m64n64 chunks, and MN-major in one m64n256 (the leading byte offset).
// ---------------------------------------------------------------------------
#[test]
fn wgmma_products_match_plain_matmul() {
    let mut rng = Rng::from_state(41);
    let mut a: Vec<u16> = (0..64 * 64)
        .map(|_| bf16::from_f32(rng.uniform_f32(-2.0, 2.0)).to_bits())
        .collect();
    let mut b: Vec<u16> = (0..256 * 64)
        .map(|_| bf16::from_f32(rng.uniform_f32(-2.0, 2.0)).to_bits())
        .collect();
    let v = |h: u16| bf16::from_bits(h).to_f64();
    let want: Vec<f64> = (0..64 * 256)
        .map(|idx| {
            let (i, j) = (idx / 256, idx % 256);
            (0..64).map(|k| v(a[i * 64 + k]) * v(b[j * 64 + k])).sum()
        })
        .collect();
    let mut results = Vec::new();
    for mode in 0..3 {
        let mut d = vec![f32::NAN; 64 * 256];
        let p = WgmmaParams {
            a: addr(&mut a),
            b_nk: addr(&mut b),
            d: addr(&mut d),
            mode,
            pad: 0,
        };
        let launch = SimLaunch::linear(1, 128, WGMMA_SELFTEST_SHARED);
        unsafe { sim::launch(selftest_wgmma_bf16_sim as SimEntry<_>, &launch, &p) }.unwrap();
        let err = rel_err(&d, &want);
        assert!(err < 1e-6, "mode {mode}: relative error {err}");
        results.push(d);
    }
    // K-major and MN-major B, in chunks or in one product, feed identical
    // operands.
    assert_eq!(results[0], results[1]);
    assert_eq!(results[1], results[2]);
}

// ---------------------------------------------------------------------------
// bf16 / f16 conversions against the `half` crate.
// ---------------------------------------------------------------------------
fn same_float(got: f32, want: f32) -> bool {
    if want.is_nan() {
        got.is_nan() && got.is_sign_negative() == want.is_sign_negative()
    } else {
        got.to_bits() == want.to_bits()
    }
}

#[test]
fn bf16_and_f16_conversions_round_to_nearest_even() {
    let mut rng = Rng::from_state(41);
    let mut floats: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7fa0_0001), // signalling NaN
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        65504.0,
        f32::from_bits(0x477f_efff), // just below 65520: rounds to 65504
        65520.0,                     // rounds to f16 infinity
        6.0e-8,
        2.98e-8,
        f32::from_bits(0x3300_0000), // 2^-25, half the smallest f16 subnormal: ties to zero
        f32::from_bits(0x3300_0001), // just above: rounds up to the smallest subnormal
        1.0 + 1.0 / 256.0,           // bf16 tie, rounds to even (down)
        1.0 + 3.0 / 256.0,           // bf16 tie, rounds up
        f32::from_bits(0x3f80_8000), // exactly halfway for bf16
        f32::from_bits(0x3f81_8000), // halfway, odd kept part
        f32::from_bits(0x7f7f_ffff), // bf16 rounds to infinity
        1.0 + 1.0 / 2048.0,          // f16 tie
        1.0 + 3.0 / 2048.0,
        f32::from_bits(0x3880_0000), // smallest f16 normal, 2^-14
        f32::from_bits(0x387f_ff00), // just below: rounds within the subnormals
    ];
    while floats.len() < 4096 {
        let bits = rng.next_u64() as u32;
        floats.push(f32::from_bits(bits));
        floats.push(rng.uniform_f32(-70000.0, 70000.0));
        floats.push(rng.uniform_f32(-1e-4, 1e-4));
    }
    let n = 65536usize;
    floats.resize(n, 0.5);
    let mut bits: Vec<u16> = (0..=u16::MAX).collect();
    let mut bf16_bits = vec![0u16; n];
    let mut f16_bits = vec![0u16; n];
    let mut bf16_value = vec![0f32; n];
    let mut f16_value = vec![0f32; n];
    let p = ConvertParams {
        floats: addr(&mut floats),
        bf16_bits: addr(&mut bf16_bits),
        f16_bits: addr(&mut f16_bits),
        bits: addr(&mut bits),
        bf16_value: addr(&mut bf16_value),
        f16_value: addr(&mut f16_value),
        n: n as u32,
        pad: 0,
    };
    let launch = SimLaunch::linear((n as u32).div_ceil(256), 256, 0);
    unsafe { sim::launch(selftest_convert_all_sim as SimEntry<_>, &launch, &p) }.unwrap();
    for i in 0..n {
        let x = floats[i];
        let want_b = bf16::from_f32(x);
        let want_h = f16::from_f32(x);
        if x.is_nan() {
            assert!(
                bf16::from_bits(bf16_bits[i]).is_nan(),
                "bf16 of NaN {:#x}",
                x.to_bits()
            );
            assert!(
                f16::from_bits(f16_bits[i]).is_nan(),
                "f16 of NaN {:#x}",
                x.to_bits()
            );
            assert_eq!(bf16_bits[i] & 0x8000, want_b.to_bits() & 0x8000);
            assert_eq!(f16_bits[i] & 0x8000, want_h.to_bits() & 0x8000);
        } else {
            assert_eq!(
                bf16_bits[i],
                want_b.to_bits(),
                "bf16 of {x:e} ({:#x})",
                x.to_bits()
            );
            assert_eq!(
                f16_bits[i],
                want_h.to_bits(),
                "f16 of {x:e} ({:#x})",
                x.to_bits()
            );
        }
        // Every 16-bit pattern decodes exactly as `half` decodes it.
        let h = bits[i];
        assert!(
            same_float(bf16_value[i], bf16::from_bits(h).to_f32()),
            "bf16 bits {h:#x}"
        );
        assert!(
            same_float(f16_value[i], f16::from_bits(h).to_f32()),
            "f16 bits {h:#x}"
        );
    }
    // Round trips of representable values are exact.
    for h in 0..=u16::MAX {
        let b = bf16::from_bits(h);
        if !b.is_nan() {
            assert_eq!(bf16_value[h as usize].to_bits(), b.to_f32().to_bits());
        }
    }
}

// ---------------------------------------------------------------------------
// Repeated barriers.
// ---------------------------------------------------------------------------
fn barrier_loop_expected(blocks: usize, threads: usize, iters: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(blocks * threads);
    for b in 0..blocks {
        let mut acc: Vec<u32> = (0..threads).map(|t| t as u32 + 7 * b as u32).collect();
        for _ in 0..iters {
            let s = acc.clone();
            for t in 0..threads {
                acc[t] = acc[t].wrapping_mul(31).wrapping_add(s[(t + 1) % threads]);
            }
        }
        out.extend(acc);
    }
    out
}

fn run_barrier_loop(blocks: usize, threads: usize, iters: u32) -> Vec<u32> {
    let mut out = vec![0u32; blocks * threads];
    let p = BarrierLoopParams {
        out: addr(&mut out),
        iters,
        pad: 0,
    };
    let launch = SimLaunch::linear(blocks as u32, threads as u32, 0);
    unsafe { sim::launch(selftest_barrier_loop_u32_sim as SimEntry<_>, &launch, &p) }.unwrap();
    out
}

#[test]
fn repeated_barriers_keep_threads_in_step() {
    for (blocks, threads, iters) in [(3, 100, 25), (2, 1024, 5), (5, 33, 40)] {
        assert_eq!(
            run_barrier_loop(blocks, threads, iters),
            barrier_loop_expected(blocks, threads, iters),
            "{blocks} x {threads}, {iters} iterations"
        );
    }
}

#[test]
fn launches_from_many_threads_at_once() {
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let (blocks, threads, iters) = (3 + i, 64 + 32 * i, 10 + i as u32);
                (
                    run_barrier_loop(blocks, threads, iters),
                    barrier_loop_expected(blocks, threads, iters),
                )
            })
        })
        .collect();
    for h in handles {
        let (got, want) = h.join().unwrap();
        assert_eq!(got, want);
    }
}

#[test]
fn ucontext_switch_gives_the_same_results() {
    sim::set_fiber_switch(FiberSwitch::Ucontext);
    let loop_result = run_barrier_loop(2, 96, 12);
    let mut input: Vec<i32> = (0..160).map(|i| (i * 37 % 101) - 50).collect();
    let warp_result = run_warp_kernel(2, 80, &mut input);
    sim::set_fiber_switch(FiberSwitch::Auto);
    assert_eq!(loop_result, barrier_loop_expected(2, 96, 12));
    assert_eq!(warp_result, run_warp_kernel(2, 80, &mut input));
}

// ---------------------------------------------------------------------------
// Errors: broken kernels and invalid launches fail the launch, never hang.
// ---------------------------------------------------------------------------
fn run_broken(mode: u32, threads: u32) -> Result<(), Error> {
    let mut out = vec![0i32; threads as usize];
    let p = BrokenParams {
        out: addr(&mut out),
        mode,
        pad: 0,
    };
    unsafe {
        sim::launch(
            selftest_broken_i32_sim as SimEntry<_>,
            &SimLaunch::linear(2, threads, 0),
            &p,
        )
    }
}

fn backend_message(r: Result<(), Error>) -> String {
    match r {
        Err(Error::Backend { message }) => message,
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[test]
fn broken_kernels_are_launch_errors() {
    let cases = [
        (0, "deadlock"),
        (1, "leaves out the calling lane"),
        (2, "meets lane"),
        (3, "__trap"),
        (4, "exited"),
        (5, "not a 128-byte-swizzle descriptor"),
        (6, "never waited"),
        (7, "not made of whole warpgroups"),
        (8, "not 8-byte aligned"),
    ];
    for (mode, needle) in cases {
        let threads = if mode == 5 || mode == 6 { 128 } else { 64 };
        let message = backend_message(run_broken(mode, threads));
        assert!(message.contains(needle), "mode {mode}: {message}");
        assert!(
            message.contains("selftest_broken_i32"),
            "mode {mode}: {message}"
        );
    }
    // The simulator stays usable after failures.
    assert_eq!(run_barrier_loop(2, 40, 3), barrier_loop_expected(2, 40, 3));
}

#[test]
fn invalid_launches_are_rejected() {
    let mut out = vec![0u32; 8];
    let p = GridParams {
        out: addr(&mut out),
    };
    let bad = [
        SimLaunch::new((1, 1, 1), (0, 1, 1), 0),
        SimLaunch::new((1, 1, 1), (1025, 1, 1), 0),
        SimLaunch::new((1, 1, 1), (32, 32, 2), 0),
        SimLaunch::new((1, 1, 1), (1, 1, 65), 0),
        SimLaunch::new((0, 1, 1), (1, 1, 1), 0),
        SimLaunch::new((1, 65536, 1), (1, 1, 1), 0),
        SimLaunch::new((1, 1, 1), (1, 1, 1), 232_449),
    ];
    for launch in bad {
        let message = backend_message(unsafe {
            sim::launch(selftest_grid_u32_sim as SimEntry<_>, &launch, &p)
        });
        assert!(
            message.contains("selftest_grid_u32"),
            "{launch:?}: {message}"
        );
    }
    assert_eq!(out, vec![0u32; 8], "nothing may run on a rejected launch");
}

#[test]
fn launch_struct_matches_the_c_layout() {
    assert_eq!(std::mem::size_of::<SimLaunch>(), 7 * 4);
    assert_eq!(std::mem::align_of::<SimLaunch>(), 4);
    assert!(sim::SELFTEST_CUDA_SOURCE.contains("selftest_mma_bf16"));
    assert!(!sim::SELFTEST_CUDA_SOURCE.contains("#include \"sim/"));
}

/// Not a timed test: prints what a launch costs, for the record.
/// `cargo test --release --test sim_selftest -- --ignored --nocapture`
#[test]
#[ignore]
fn report_launch_cost() {
    for switch in [FiberSwitch::Auto, FiberSwitch::Ucontext] {
        sim::set_fiber_switch(switch);
        // 64 blocks x 256 threads, 100 __syncthreads per thread.
        let start = std::time::Instant::now();
        let out = run_barrier_loop(64, 256, 50);
        let elapsed = start.elapsed();
        assert_eq!(out, barrier_loop_expected(64, 256, 50));
        println!(
            "{switch:?}: 64 blocks x 256 threads x 100 __syncthreads: {:.1} ms ({} hw threads)",
            elapsed.as_secs_f64() * 1e3,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
    sim::set_fiber_switch(FiberSwitch::Auto);
}
