//! Flattens kernels/*.cu into OUT_DIR/adaface_kernels.cu for NVRTC (which
//! has no include path to our files at run time).
//! (Kernels-branch stand-in; the simulator branch's build.rs also builds the
//! simulated kernels and supersedes this one.)

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

fn flatten(dir: &Path, name: &str, seen: &mut HashSet<String>, out: &mut String) {
    let path = dir.join(name);
    println!("cargo:rerun-if-changed={}", path.display());
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("#include \"") {
            let inc = rest.split('"').next().unwrap_or_default().to_string();
            if seen.insert(inc.clone()) {
                flatten(dir, &inc, seen, out);
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
}

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("kernels");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cu"))
        .collect();
    files.sort();
    let mut seen = HashSet::new();
    let mut out = String::new();
    for f in &files {
        flatten(&dir, f, &mut seen, &mut out);
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    fs::write(out_dir.join("adaface_kernels.cu"), out).unwrap();
}
