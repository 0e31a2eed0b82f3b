//! Build script: the kernels in `kernels/` serve two builds.
//!
//! 1. The CPU simulator (feature `sim` only): every `.cu` file under
//!    `kernels/` (sub-folders included, the self-test kernels of
//!    `kernels/sim/` too) is compiled by the host C++ compiler as C++20 with
//!    `-DADAFACE_SIM`, together with the simulator runtime in
//!    `kernels/sim/*.cpp`, into one static library. Each `ADAFACE_KERNEL`
//!    becomes an `extern "C"` `<name>_sim` entry. Only g++ (or clang++) is
//!    needed; no CUDA.
//! 2. NVRTC: the kernel sources flattened into single translation units
//!    (`#include "..."` of files in `kernels/` inlined once each, looked up
//!    next to the including file, then from `kernels/`; the simulator-only
//!    `sim/` includes dropped) written to `OUT_DIR`:
//!    * `adaface_kernels.cu`: every `.cu` file under `kernels/` outside
//!      `kernels/sim/`;
//!    * `adaface_sim_selftest.cu`: the simulator's self-test kernels
//!      (`kernels/sim/*.cu`) alone.
//!
//! `ADAFACE_SIM_WERROR=1` turns warnings of the simulator build into errors (CI).

use std::collections::HashSet;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo"));
    let kernels = root.join("kernels");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));

    println!("cargo:rerun-if-changed=build.rs");
    // A directory: cargo rescans every file below it, sub-folders included.
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=ADAFACE_SIM_WERROR");

    let kernel_files = list_files_recursive(&kernels, "cu");
    let runtime_files = list_files(&kernels.join("sim"), "cpp");

    #[cfg(feature = "sim")]
    build_simulator(&kernels, &kernel_files, &runtime_files);
    #[cfg(not(feature = "sim"))]
    let _ = &runtime_files;

    let (selftest, production): (Vec<PathBuf>, Vec<PathBuf>) = kernel_files
        .iter()
        .cloned()
        .partition(|p| is_selftest(&kernels, p));
    write_flattened(&kernels, &production, &out_dir.join("adaface_kernels.cu"));
    write_flattened(
        &kernels,
        &selftest,
        &out_dir.join("adaface_sim_selftest.cu"),
    );
}

/// Files directly in `dir` with the given extension, sorted (deterministic builds).
fn list_files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == extension))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Files under `dir`, in every sub-folder, with the given extension, sorted
/// by path (deterministic builds).
fn list_files_recursive(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files = list_files(dir, extension);
    let mut dirs: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect(),
        Err(_) => Vec::new(),
    };
    dirs.sort();
    for sub in dirs {
        files.extend(list_files_recursive(&sub, extension));
    }
    files.sort();
    files
}

/// The simulator's self-test kernels: the `.cu` files of `kernels/sim/`.
fn is_selftest(kernels: &Path, path: &Path) -> bool {
    path.strip_prefix(kernels)
        .is_ok_and(|rel| rel.starts_with("sim"))
}

#[cfg(feature = "sim")]
fn build_simulator(kernels: &Path, kernel_files: &[PathBuf], runtime_files: &[PathBuf]) {
    let werror = env::var("ADAFACE_SIM_WERROR").is_ok_and(|v| v == "1");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        // The simulated kernels run many times slower than on a GPU already:
        // optimise them even in debug builds.
        .opt_level(2)
        .define("ADAFACE_SIM", None)
        .include(kernels)
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(werror)
        // CUDA's `#pragma unroll` means nothing to the host compiler.
        .flag("-Wno-unknown-pragmas")
        // Kernels pun types freely (vector loads, 64-bit atomics on
        // `uint64_t` fields through `unsigned long long*`), which nvcc
        // accepts; the host compiler must not optimise on type-based aliasing.
        .flag("-fno-strict-aliasing")
        // Round every operation as written (explicit fmaf stays fused), so
        // results do not depend on which CPU clone runs (see cuda_sim.h).
        .flag("-ffp-contract=off")
        // `.cu` files are C++ for the host compiler.
        .flag("-x")
        .flag("c++")
        .files(kernel_files)
        .files(runtime_files);
    build.compile("adaface_sim_kernels");
}

/// Writes `files` as one translation unit for NVRTC.
fn write_flattened(kernels: &Path, files: &[PathBuf], out: &Path) {
    let mut text = String::from(
        "// Generated by build.rs from kernels/: one translation unit for NVRTC.\n\
         // Do not edit; edit the files in kernels/ instead.\n",
    );
    let mut seen = HashSet::new();
    for file in files {
        flatten(kernels, file, &mut seen, &mut text);
    }
    // Only write when changed, so that dependents are not rebuilt needlessly.
    if fs::read_to_string(out).ok().as_deref() != Some(text.as_str()) {
        fs::write(out, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
    }
}

fn flatten(kernels: &Path, file: &Path, seen: &mut HashSet<PathBuf>, out: &mut String) {
    let canonical = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    if !seen.insert(canonical) {
        return;
    }
    let source =
        fs::read_to_string(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let name = file
        .strip_prefix(kernels)
        .unwrap_or(file)
        .display()
        .to_string();
    out.push_str(&format!("#line 1 \"{name}\"\n"));
    for (index, line) in source.lines().enumerate() {
        match quoted_include(line) {
            Some(include) if include.starts_with("sim/") => {
                out.push_str(&format!(
                    "// (simulator-only include \"{include}\" left out)\n"
                ));
            }
            Some(include) => {
                let dir = file.parent().unwrap_or(kernels);
                let target = [dir.join(include), kernels.join(include)]
                    .into_iter()
                    .find(|p| p.is_file())
                    .unwrap_or_else(|| {
                        panic!(
                            "{}:{}: include \"{include}\" not found in kernels/",
                            file.display(),
                            index + 1
                        )
                    });
                flatten(kernels, &target, seen, out);
                out.push_str(&format!("#line {} \"{name}\"\n", index + 2));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
}

/// The file name of a `#include "name"` line.
fn quoted_include(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix("include")?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(&rest[..end])
}
