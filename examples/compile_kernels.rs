//! Compiles every kernel with the crate's own NVRTC path and writes the PTX:
//! the compile check of scripts/check_kernels.sh (needs libnvrtc, no GPU).
//!
//! ```text
//! cargo run --example compile_kernels -- --arch sm_90 --out DIR
//! ```
//!
//! Writes `DIR/adaface_<arch>.ptx` and checks that every entry point the
//! launch code uses is in it.

use std::process::ExitCode;

use adaface::launch::KernelId;

fn run() -> Result<(), String> {
    let mut arch = None;
    let mut out = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--arch" => arch = Some(value()?),
            "--out" => out = Some(value()?),
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: --arch sm_90 --out DIR)"
                ))
            }
        }
    }
    let arch = arch.ok_or("--arch is required")?;
    let out = out.ok_or("--out is required")?;
    let ptx = adaface::cuda::compile_ptx(&arch).map_err(|e| e.to_string())?;
    for name in KernelId::all().map(KernelId::name) {
        if !ptx.contains(&format!(".entry {name}(")) {
            return Err(format!("entry point {name} missing from the PTX"));
        }
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {out}: {e}"))?;
    let path = format!("{out}/adaface_{arch}.ptx");
    std::fs::write(&path, ptx).map_err(|e| format!("cannot write {path}: {e}"))?;
    println!("{path}");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compile_kernels: {e}");
            ExitCode::FAILURE
        }
    }
}
