//! Splits a class-weight file into K shard files, or merges shard files into
//! one: the checkpoint story of the sharded step (each rank saves its shard
//! `[offset, offset + C_k)` of `W`; this tool turns one into the other).
//!
//! Files are raw little-endian `f32`, row-major `C x D` (what
//! `numpy.ndarray.tofile` or `torch.Tensor.numpy().tofile` writes).
//!
//! ```sh
//! # W.f32 (C x 512) into 4 shards as even as possible (or --sizes 5,7,..)
//! cargo run --release --example shard_weights -- split --dim 512 --shards 4 W.f32 W
//! #   -> W.shard0.f32 .. W.shard3.f32, and prints each shard's offset and size
//! # and back, in rank order
//! cargo run --release --example shard_weights -- merge --dim 512 W.merged.f32 W.shard0.f32 W.shard1.f32 ..
//! ```

use std::fs;
use std::process::ExitCode;

use adaface::shard::ShardSpec;

fn usage() -> ExitCode {
    eprintln!(
        "usage: shard_weights split --dim D (--shards K | --sizes C0,C1,..) INPUT PREFIX\n       \
         shard_weights merge --dim D OUTPUT SHARD0 SHARD1 .."
    );
    ExitCode::from(2)
}

fn rows_of(path: &str, dim: usize) -> Result<(Vec<u8>, usize), String> {
    let bytes = fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let row = dim * 4;
    if bytes.is_empty() || bytes.len() % row != 0 {
        return Err(format!(
            "{path}: {} bytes is not a whole number of {dim}-float rows",
            bytes.len()
        ));
    }
    let n = bytes.len() / row;
    Ok((bytes, n))
}

fn run(args: &[String]) -> Result<(), String> {
    let mut dim = None;
    let mut shards = None;
    let mut sizes: Option<Vec<usize>> = None;
    let mut rest = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--dim" => {
                dim = Some(
                    value("--dim")?
                        .parse::<usize>()
                        .map_err(|e| e.to_string())?,
                )
            }
            "--shards" => {
                shards = Some(
                    value("--shards")?
                        .parse::<usize>()
                        .map_err(|e| e.to_string())?,
                )
            }
            "--sizes" => {
                sizes = Some(
                    value("--sizes")?
                        .split(',')
                        .map(|s| s.trim().parse::<usize>().map_err(|e| e.to_string()))
                        .collect::<Result<_, _>>()?,
                )
            }
            _ => rest.push(a.clone()),
        }
    }
    let dim = dim.filter(|&d| d > 0).ok_or("--dim D (>= 1) is required")?;
    match args.first().map(String::as_str) {
        Some("split") => {
            let [input, prefix] = rest.as_slice() else {
                return Err("split takes INPUT PREFIX".into());
            };
            let (bytes, classes) = rows_of(input, dim)?;
            let specs = match (shards, sizes) {
                (Some(k), None) => ShardSpec::even(classes, k),
                (None, Some(s)) => ShardSpec::split(&s),
                _ => return Err("give exactly one of --shards and --sizes".into()),
            }
            .map_err(|e| e.to_string())?;
            let total = specs.last().map_or(0, |s| s.offset + s.classes);
            if total != classes {
                return Err(format!(
                    "the sizes sum to {total}, the file has {classes} rows"
                ));
            }
            for (k, s) in specs.iter().enumerate() {
                let path = format!("{prefix}.shard{k}.f32");
                let range = s.offset * dim * 4..(s.offset + s.classes) * dim * 4;
                fs::write(&path, &bytes[range]).map_err(|e| format!("{path}: {e}"))?;
                println!("{path}: classes {}..{}", s.offset, s.offset + s.classes);
            }
            Ok(())
        }
        Some("merge") => {
            let [output, inputs @ ..] = rest.as_slice() else {
                return Err("merge takes OUTPUT SHARD..".into());
            };
            if inputs.is_empty() {
                return Err("merge needs at least one shard".into());
            }
            let mut all = Vec::new();
            let mut offset = 0;
            for path in inputs {
                let (bytes, n) = rows_of(path, dim)?;
                println!("{path}: classes {offset}..{}", offset + n);
                offset += n;
                all.extend_from_slice(&bytes);
            }
            fs::write(output, &all).map_err(|e| format!("{output}: {e}"))?;
            println!("{output}: {offset} classes x {dim}");
            Ok(())
        }
        _ => Err("the first argument is split or merge".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        return usage();
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shard_weights: {e}");
            ExitCode::FAILURE
        }
    }
}
