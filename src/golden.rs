//! The golden-vector file format of `tests/golden/README.md`, and the eval
//! tool's output format.
//!
//! Inputs are read as `f64`; a float32 file's values are exact in `f64` and
//! are rounded to `f32` by the caller. Non-finite numbers travel as the
//! strings `"NaN"`, `"Infinity"` and `"-Infinity"`.

use serde_json::{Map, Value};

use crate::config::{AdaFaceConfig, MarginPolicy};
use crate::element::Dtype;
use crate::shape::Shape;
use crate::state::EmaState;

/// A parse failure, with the JSON path that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid case file: {}", self.0)
    }
}

impl std::error::Error for FormatError {}

type Parsed<T> = std::result::Result<T, FormatError>;

/// One case: config, weight, and the steps to run in order.
#[derive(Debug, Clone)]
pub struct Case {
    /// Case name.
    pub name: String,
    /// `float64` or `float32`, as the file says.
    pub dtype: Dtype,
    /// The validated config.
    pub config: AdaFaceConfig,
    /// `B`, `D`, `C`.
    pub shape: Shape,
    /// `W`, `C x D` row-major.
    pub weight: Vec<f64>,
    /// Steps, each with its inputs and (in golden files) expected outputs.
    pub steps: Vec<Step>,
}

/// One step's inputs and, when present, the official outputs.
#[derive(Debug, Clone)]
pub struct Step {
    /// Raw features, `B x D`.
    pub features: Vec<f64>,
    /// Labels, `B`.
    pub labels: Vec<i64>,
    /// The official results, absent in input-only files.
    pub expected: Option<Expected>,
}

/// Outputs of the official implementation for one step.
#[derive(Debug, Clone)]
pub struct Expected {
    /// EMA state before the step.
    pub state_before: EmaState,
    /// EMA state after the step.
    pub state_after: EmaState,
    /// Mean loss.
    pub loss: f64,
    /// `||x_i||`.
    pub norms: Vec<f64>,
    /// Clipped scaler per row.
    pub margin_scaler: Vec<f64>,
    /// `B x C` logits.
    pub logits: Vec<f64>,
    /// `d loss / d x`.
    pub grad_features: Vec<f64>,
    /// `d loss / d W`.
    pub grad_weight: Vec<f64>,
    /// Mean of this batch's clipped norms.
    pub norm_mean: f64,
    /// Unbiased std of this batch's clipped norms.
    pub norm_std: f64,
}

/// Parses a case file.
pub fn parse_case(text: &str) -> Parsed<Case> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| FormatError(format!("not JSON: {e}")))?;
    let root = as_object(&root, "$")?;
    let dtype_name = root
        .get("dtype")
        .and_then(Value::as_str)
        .unwrap_or("float64");
    let dtype = Dtype::parse(dtype_name)
        .ok_or_else(|| FormatError(format!("$.dtype: unknown dtype {dtype_name:?}")))?;
    let cfg = as_object(field(root, "config", "$")?, "$.config")?;
    let dim = |k: &str| -> Parsed<usize> {
        let v = number(field(cfg, k, "$.config")?, k)?;
        if v < 0.0 || v.fract() != 0.0 || v > u32::MAX as f64 {
            return Err(FormatError(format!("$.config.{k}: not a size: {v}")));
        }
        Ok(v as usize)
    };
    let shape = Shape::new(dim("B")?, dim("D")?, dim("C")?);
    let config = parse_config(cfg)?;
    let weight = numbers(field(root, "weight", "$")?, "$.weight")?;
    let steps = as_array(field(root, "steps", "$")?, "$.steps")?
        .iter()
        .enumerate()
        .map(|(k, s)| parse_step(s, &format!("$.steps[{k}]")))
        .collect::<Parsed<Vec<_>>>()?;
    check_sizes(shape, &weight, &steps)?;
    Ok(Case {
        name: root
            .get("case")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        dtype,
        config,
        shape,
        weight,
        steps,
    })
}

/// The declared sizes must match the data before anything is sized by them:
/// a case that declares `C = 3e9` with a handful of numbers is a format
/// error here, never a huge allocation in a backend.
fn check_sizes(shape: Shape, weight: &[f64], steps: &[Step]) -> Parsed<()> {
    let product = |a: usize, b: usize, what: &str| {
        a.checked_mul(b)
            .ok_or_else(|| FormatError(format!("$.config: {what} overflows")))
    };
    let want = |path: String, expected: usize, actual: usize| {
        if expected == actual {
            Ok(())
        } else {
            Err(FormatError(format!(
                "{path}: {actual} values, the declared shape needs {expected}"
            )))
        }
    };
    want(
        "$.weight".into(),
        product(shape.classes, shape.dim, "C * D")?,
        weight.len(),
    )?;
    let features_len = product(shape.batch, shape.dim, "B * D")?;
    for (k, step) in steps.iter().enumerate() {
        want(
            format!("$.steps[{k}].features"),
            features_len,
            step.features.len(),
        )?;
        want(
            format!("$.steps[{k}].labels"),
            shape.batch,
            step.labels.len(),
        )?;
    }
    Ok(())
}

fn parse_config(cfg: &Map<String, Value>) -> Parsed<AdaFaceConfig> {
    let get = |k: &str, default: f64| -> Parsed<f64> {
        cfg.get(k)
            .map(|v| number(v, &format!("$.config.{k}")))
            .unwrap_or(Ok(default))
    };
    let d = AdaFaceConfig::default();
    let name = match cfg.get("margin") {
        None => "adaface",
        Some(v) => v.as_str().ok_or_else(|| {
            FormatError(format!(
                "$.config.margin: not a policy name (a string): {v}"
            ))
        })?,
    };
    let policy = match name {
        "adaface" => MarginPolicy::AdaFace {
            m: get("m", 0.4)?,
            h: get("h", 0.333)?,
        },
        "arcface" => MarginPolicy::ArcFace { m: get("m", 0.5)? },
        "cosface" => MarginPolicy::CosFace { m: get("m", 0.35)? },
        "combined" => MarginPolicy::Combined {
            m1: get("m1", 1.0)?,
            m2: get("m2", 0.5)?,
            m3: get("m3", 0.0)?,
        },
        "sphereface" => {
            let m = get("m", 4.0)?;
            if m.fract() != 0.0 || !(0.0..=u32::MAX as f64).contains(&m) {
                return Err(FormatError(format!(
                    "$.config.m: SphereFace's m must be a non-negative integer, got {m}"
                )));
            }
            MarginPolicy::SphereFace {
                m: m as u32,
                lambda: get("lambda", 5.0)?,
            }
        }
        "curricularface" => MarginPolicy::CurricularFace { m: get("m", 0.5)? },
        "magface" => MarginPolicy::MagFace {
            l_a: get("l_a", 10.0)?,
            u_a: get("u_a", 110.0)?,
            l_m: get("l_m", 0.45)?,
            u_m: get("u_m", 0.8)?,
            lambda_g: get("lambda_g", 35.0)?,
        },
        other => {
            return Err(FormatError(format!(
                "$.config.margin: unknown policy {other:?}"
            )))
        }
    };
    AdaFaceConfig::builder()
        .margin(policy)
        .s(get("s", d.s())?)
        .t_alpha(get("t_alpha", d.t_alpha())?)
        .eps(get("eps", d.eps())?)
        .norm_clip(
            get("norm_clip_min", d.norm_clip_min())?,
            get("norm_clip_max", d.norm_clip_max())?,
        )
        .initial_state(EmaState {
            curricular_t: get("curricular_t_init", 0.0)?,
            ..EmaState::new(
                get("batch_mean_init", d.initial_state().batch_mean)?,
                get("batch_std_init", d.initial_state().batch_std)?,
            )
        })
        .build()
        .map_err(|e| FormatError(format!("$.config: {e}")))
}

fn parse_step(v: &Value, path: &str) -> Parsed<Step> {
    let s = as_object(v, path)?;
    let features = numbers(field(s, "features", path)?, &format!("{path}.features"))?;
    let labels = as_array(field(s, "labels", path)?, &format!("{path}.labels"))?
        .iter()
        .enumerate()
        .map(|(i, l)| {
            l.as_i64()
                .ok_or_else(|| FormatError(format!("{path}.labels[{i}]: not an integer")))
        })
        .collect::<Parsed<Vec<_>>>()?;
    let expected = if s.contains_key("loss") && s.contains_key("grad_features") {
        let num = |k: &str| number(field(s, k, path)?, &format!("{path}.{k}"));
        let arr = |k: &str| numbers(field(s, k, path)?, &format!("{path}.{k}"));
        Some(Expected {
            state_before: EmaState::new(num("batch_mean_before")?, num("batch_std_before")?),
            state_after: EmaState::new(num("batch_mean_after")?, num("batch_std_after")?),
            loss: num("loss")?,
            norms: arr("norms")?,
            margin_scaler: arr("margin_scaler")?,
            logits: arr("logits")?,
            grad_features: arr("grad_features")?,
            grad_weight: arr("grad_weight")?,
            norm_mean: num("norm_mean")?,
            norm_std: num("norm_std")?,
        })
    } else {
        None
    };
    Ok(Step {
        features,
        labels,
        expected,
    })
}

fn field<'a>(m: &'a Map<String, Value>, k: &str, path: &str) -> Parsed<&'a Value> {
    m.get(k)
        .ok_or_else(|| FormatError(format!("{path}: missing {k:?}")))
}

fn as_object<'a>(v: &'a Value, path: &str) -> Parsed<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| FormatError(format!("{path}: expected an object")))
}

fn as_array<'a>(v: &'a Value, path: &str) -> Parsed<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| FormatError(format!("{path}: expected an array")))
}

/// A number, or one of the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
fn number(v: &Value, path: &str) -> Parsed<f64> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| FormatError(format!("{path}: not representable"))),
        Value::String(s) if s == "NaN" => Ok(f64::NAN),
        Value::String(s) if s == "Infinity" => Ok(f64::INFINITY),
        Value::String(s) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => Err(FormatError(format!("{path}: expected a number"))),
    }
}

fn numbers(v: &Value, path: &str) -> Parsed<Vec<f64>> {
    as_array(v, path)?
        .iter()
        .enumerate()
        .map(|(i, x)| number(x, &format!("{path}[{i}]")))
        .collect()
}

/// One step of an eval tool's output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalStep {
    /// Mean loss.
    pub loss: f64,
    /// `||x_i||`.
    pub norms: Vec<f64>,
    /// Clipped scaler per row.
    pub margin_scaler: Vec<f64>,
    /// `d loss / d x`.
    pub grad_features: Vec<f64>,
    /// `d loss / d W`.
    pub grad_weight: Vec<f64>,
    /// EMA state after the step.
    pub state_after: EmaState,
    /// `B x C` logits, when the backend materialises them.
    pub logits: Option<Vec<f64>>,
}

/// Writes the eval tool's output document.
pub fn write_eval_output(device: &str, dtype: Dtype, steps: &[EvalStep]) -> String {
    let steps: Vec<Value> = steps
        .iter()
        .map(|s| {
            let mut m = Map::new();
            m.insert("loss".into(), json_number(s.loss));
            m.insert("norms".into(), json_numbers(&s.norms));
            m.insert("margin_scaler".into(), json_numbers(&s.margin_scaler));
            m.insert("grad_features".into(), json_numbers(&s.grad_features));
            m.insert("grad_weight".into(), json_numbers(&s.grad_weight));
            m.insert(
                "batch_mean_after".into(),
                json_number(s.state_after.batch_mean),
            );
            m.insert(
                "batch_std_after".into(),
                json_number(s.state_after.batch_std),
            );
            m.insert(
                "curricular_t_after".into(),
                json_number(s.state_after.curricular_t),
            );
            if let Some(l) = &s.logits {
                m.insert("logits".into(), json_numbers(l));
            }
            Value::Object(m)
        })
        .collect();
    let mut root = Map::new();
    root.insert("device".into(), Value::String(device.into()));
    root.insert("dtype".into(), Value::String(dtype.name().into()));
    root.insert("steps".into(), Value::Array(steps));
    let mut text = Value::Object(root).to_string();
    text.push('\n');
    text
}

/// Parses the eval tool's output document back (for tests and comparisons).
pub fn parse_eval_output(text: &str) -> Parsed<Vec<EvalStep>> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| FormatError(format!("not JSON: {e}")))?;
    let root = as_object(&root, "$")?;
    as_array(field(root, "steps", "$")?, "$.steps")?
        .iter()
        .enumerate()
        .map(|(k, v)| {
            let path = format!("$.steps[{k}]");
            let s = as_object(v, &path)?;
            let num = |key: &str| number(field(s, key, &path)?, &format!("{path}.{key}"));
            let arr = |key: &str| numbers(field(s, key, &path)?, &format!("{path}.{key}"));
            Ok(EvalStep {
                loss: num("loss")?,
                norms: arr("norms")?,
                margin_scaler: arr("margin_scaler")?,
                grad_features: arr("grad_features")?,
                grad_weight: arr("grad_weight")?,
                state_after: EmaState {
                    // Optional: outputs written before CurricularFace lack it.
                    curricular_t: match s.get("curricular_t_after") {
                        Some(v) => number(v, &format!("{path}.curricular_t_after"))?,
                        None => 0.0,
                    },
                    ..EmaState::new(num("batch_mean_after")?, num("batch_std_after")?)
                },
                logits: s.get("logits").map(|l| numbers(l, &path)).transpose()?,
            })
        })
        .collect()
}

fn json_number(v: f64) -> Value {
    if v.is_nan() {
        Value::String("NaN".into())
    } else if v == f64::INFINITY {
        Value::String("Infinity".into())
    } else if v == f64::NEG_INFINITY {
        Value::String("-Infinity".into())
    } else {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

fn json_numbers(v: &[f64]) -> Value {
    Value::Array(v.iter().map(|&x| json_number(x)).collect())
}
