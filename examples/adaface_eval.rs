//! Runs a case file through a backend and writes its outputs as JSON.
//!
//! ```text
//! cargo run --release --example adaface_eval -- \
//!     --input CASE.json --output OUT.json --device reference|cpu|sim|cuda [--dtype f64|f32|bf16|f16]
//! ```
//!
//! On any error: one line on stderr, a non-zero exit, and no output file.

use std::process::ExitCode;

use adaface::eval::{run_case, Device};
use adaface::golden::{parse_case, write_eval_output};
use adaface::Dtype;

struct Args {
    input: String,
    output: String,
    device: Device,
    dtype: Option<Dtype>,
}

fn parse_args() -> Result<Args, String> {
    let mut input = None;
    let mut output = None;
    let mut device = None;
    let mut dtype = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--input" => input = Some(value()?),
            "--output" => output = Some(value()?),
            "--device" => {
                let v = value()?;
                device = Some(Device::parse(&v).ok_or_else(|| format!("unknown device {v:?}"))?);
            }
            "--dtype" => {
                let v = value()?;
                dtype = Some(Dtype::parse(&v).ok_or_else(|| format!("unknown dtype {v:?}"))?);
            }
            "-h" | "--help" => {
                return Err("usage: adaface_eval --input CASE.json --output OUT.json \
                            --device reference|cpu|sim|cuda [--dtype f64|f32|bf16|f16]"
                    .into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        input: input.ok_or("--input is required")?,
        output: output.ok_or("--output is required")?,
        device: device.unwrap_or(Device::Reference),
        dtype,
    })
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let text = std::fs::read_to_string(&args.input)
        .map_err(|e| format!("cannot read {}: {e}", args.input))?;
    let case = parse_case(&text).map_err(|e| e.to_string())?;
    let dtype = args.dtype.unwrap_or(args.device.default_dtype());
    let steps = run_case(&case, args.device, dtype).map_err(|e| e.to_string())?;
    let doc = write_eval_output(args.device.name(), dtype, &steps);
    // Write to a temporary name first so a failure leaves no output file.
    let tmp = format!("{}.partial", args.output);
    std::fs::write(&tmp, doc).map_err(|e| format!("cannot write {}: {e}", args.output))?;
    std::fs::rename(&tmp, &args.output).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", args.output)
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("adaface_eval: {e}");
            ExitCode::FAILURE
        }
    }
}
