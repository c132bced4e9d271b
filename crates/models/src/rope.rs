//! Rotary position embeddings as the checkpoint's `rope_parameters` (transformers 5) or
//! `rope_scaling` + `rope_theta` (older) say: `default`, `linear`, `dynamic`, `llama3`, `yarn`
//! and `longrope`, computed as transformers' `modeling_rope_utils.py` does (inverse frequencies
//! in f32; YaRN's and LongRoPE's attention factor on the tables). Any other type is refused by
//! name, and so is `partial_rotary_factor` below 1 except for an architecture that rotates a
//! prefix of each head ([`RopeConfig::parse_partial_rotary`]).

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

/// RoPE base (`rope_theta`), transformers' default.
pub const DEFAULT_ROPE_THETA: f64 = 10000.0;

/// The `rope_type`s implemented.
pub const SUPPORTED_ROPE_TYPES: &[&str] =
    &["default", "linear", "dynamic", "llama3", "yarn", "longrope"];

/// YaRN's defaults (transformers' `_compute_yarn_parameters`).
const YARN_BETA_FAST: f64 = 32.0;
const YARN_BETA_SLOW: f64 = 1.0;
/// YaRN: the ramp's bounds must differ; transformers widens an empty one by this much.
const YARN_RAMP_EPS: f64 = 0.001;
/// YaRN's attention factor: `0.1 * mscale * ln(scale) + 1`.
const YARN_MSCALE_COEFF: f64 = 0.1;

/// How the inverse frequencies are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Frequencies divided by `factor`.
    Linear {
        factor: f64,
    },
    /// NTK-aware: the base grows with the sequence once it is longer than
    /// `max_position_embeddings` (the sequence being the largest position id + 1 of the batch).
    Dynamic {
        factor: f64,
        max_position_embeddings: i64,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// YaRN: interpolation and extrapolation blended by a linear ramp, and an attention factor.
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        truncate: bool,
        attention_factor: f64,
    },
    /// LongRoPE (Phi-3): each frequency divided by its own factor, `short_factor` while the
    /// sequence (largest position id + 1) fits in `original_max_position_embeddings`,
    /// `long_factor` beyond; the tables multiplied by an attention factor.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: f64,
        attention_factor: f64,
    },
}

/// A parsed RoPE configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    /// The rotated dimensions: the head dimension, or its first part under a partial rotary
    /// factor ([`RopeConfig::parse_partial_rotary`]).
    pub dim: i64,
    pub scaling: RopeScaling,
}

/// `1 - x`.
fn one_minus(x: &Tensor) -> Tensor {
    x.ones_like() - x
}

/// The RoPE parameters transformers 5 reads from a config that may carry both keys:
/// `rope_scaling or rope_parameters` (`convert_rope_params_to_dict`), so a non-empty
/// `rope_scaling` (the older key) replaces `rope_parameters` whole, its keys not merged in (a
/// warning names what is dropped); then the top-level `original_max_position_embeddings` put
/// in ([`with_top_level_original`]). Give the result to [`RopeConfig::parse`].
pub fn standardized(
    model_type: &str,
    rope_parameters: &Option<Value>,
    rope_scaling: &Option<Value>,
    original_max_position_embeddings: Option<i64>,
) -> Option<Value> {
    let non_empty = |v: &Option<Value>| match v {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => !m.is_empty(),
        Some(_) => true,
    };
    let chosen =
        if non_empty(rope_scaling) {
            if non_empty(rope_parameters) && rope_parameters != rope_scaling {
                tracing::warn!(
                "{model_type} config.json has both rope_scaling and rope_parameters: transformers \
                 uses rope_scaling alone ({}) and drops rope_parameters ({}), and so does \
                 loraplus; remove the one you do not mean",
                rope_scaling.as_ref().map_or(String::new(), |v| v.to_string()),
                rope_parameters.as_ref().map_or(String::new(), |v| v.to_string())
            );
            }
            rope_scaling
        } else {
            rope_parameters
        };
    with_top_level_original(chosen, original_max_position_embeddings)
}

/// A per-layer-type `rope_parameters` (transformers 5's Gemma 3 and ModernBERT:
/// `{"full_attention": {..}, "sliding_attention": {..}}`), empty when absent; another key, or a
/// value that is not an object, is refused naming it.
pub fn per_layer_type(
    model_type: &str,
    rope_parameters: &Option<Value>,
) -> Result<Map<String, Value>> {
    use crate::arch::{FULL, SLIDING};
    match rope_parameters {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => {
            if let Some(k) = m
                .keys()
                .find(|k| k.as_str() != FULL && k.as_str() != SLIDING)
            {
                bail!(
                    "{model_type} rope_parameters: expected one object per layer type \
                     ({FULL:?}, {SLIDING:?}), found the key {k:?}"
                );
            }
            Ok(m.clone())
        }
        Some(other) => {
            bail!("{model_type} rope_parameters: expected an object or null, found {other}")
        }
    }
}

/// One layer type's RoPE parameters (`{"rope_type": "default"}` when the config has none)
/// updated by the flat `rope_scaling`, its keys winning, as the per-layer-type configs of
/// transformers (Gemma 3, ModernBERT) apply the older key.
pub fn updated_by(per_type: Option<&Value>, rope_scaling: &Option<Value>) -> Result<Value> {
    let mut p = match per_type {
        None | Some(Value::Null) => {
            let mut m = Map::new();
            m.insert("rope_type".into(), "default".into());
            m
        }
        Some(Value::Object(m)) => m.clone(),
        Some(other) => bail!("a layer type's rope_parameters: expected an object, found {other}"),
    };
    match rope_scaling {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => p.extend(m.clone()),
        Some(other) => bail!("rope_scaling: expected an object or null, found {other}"),
    }
    Ok(Value::Object(p))
}

/// `rope_parameters` with a config's top-level `original_max_position_embeddings` put in, over
/// its own: transformers' `standardize_rope_params` gives the top-level field priority (for the
/// types that read it: llama3, yarn, longrope; the others ignore it).
fn with_top_level_original(
    rope_parameters: &Option<Value>,
    original_max_position_embeddings: Option<i64>,
) -> Option<Value> {
    let Some(top) = original_max_position_embeddings else {
        return rope_parameters.clone();
    };
    let mut p = match rope_parameters {
        Some(Value::Object(m)) => m.clone(),
        // Not an object: left for `RopeConfig::parse` to refuse.
        Some(other) if !other.is_null() => return Some(other.clone()),
        _ => Map::new(),
    };
    p.insert("original_max_position_embeddings".into(), top.into());
    Some(Value::Object(p))
}

fn number(p: &Map<String, Value>, key: &str) -> Option<f64> {
    p.get(key).and_then(Value::as_f64)
}

impl RopeConfig {
    /// `(cos, sin)` of `positions` (float, any shape), `[.., head_dim]` in `kind`, from the
    /// inverse frequencies and factor computed once (`inv_freq`, see [`Self::inv_freq`]), or,
    /// when they depend on the length (`dynamic`), from those of the batch's length (its
    /// largest position + 1, one host read), as transformers computes them for a model that
    /// has not seen a longer batch before.
    pub fn tables(
        &self,
        inv_freq: &Option<(Tensor, f64)>,
        positions: &Tensor,
        kind: Kind,
    ) -> (Tensor, Tensor) {
        let (inv_freq, scale) = match inv_freq {
            Some((inv, scale)) => (inv.shallow_clone(), *scale),
            None => {
                let seq_len = if positions.numel() == 0 {
                    0
                } else {
                    positions.max().double_value(&[]) as i64 + 1
                };
                self.inv_freq(seq_len, positions.device())
            }
        };
        let freqs = positions.unsqueeze(-1) * &inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let (cos, sin) = (emb.cos(), emb.sin());
        let (cos, sin) = if scale == 1.0 {
            (cos, sin)
        } else {
            (cos * scale, sin * scale)
        };
        (cos.to_kind(kind), sin.to_kind(kind))
    }

    /// From the RoPE parameters as transformers standardizes them ([`standardized`]: a
    /// config's `rope_parameters` or `rope_scaling`; [`updated_by`] for one layer type);
    /// `rope_theta` comes from them, else the top level, else [`DEFAULT_ROPE_THETA`].
    pub fn parse(
        model_type: &str,
        rope_theta: Option<f64>,
        rope_parameters: &Option<Value>,
        head_dim: i64,
        max_position_embeddings: i64,
    ) -> Result<Self> {
        Self::parse_inner(
            model_type,
            rope_theta,
            rope_parameters,
            head_dim,
            max_position_embeddings,
            false,
        )
    }

    /// [`Self::parse`] for an architecture that rotates only the first
    /// `int(head_dim * partial_rotary_factor)` dimensions of each head (Phi-3): the factor is
    /// read from the parameters (in `(0, 1]`, default 1) and [`Self::dim`] is that prefix, as
    /// transformers' `_compute_*_parameters` take it.
    pub fn parse_partial_rotary(
        model_type: &str,
        rope_theta: Option<f64>,
        rope_parameters: &Option<Value>,
        head_dim: i64,
        max_position_embeddings: i64,
    ) -> Result<Self> {
        Self::parse_inner(
            model_type,
            rope_theta,
            rope_parameters,
            head_dim,
            max_position_embeddings,
            true,
        )
    }

    fn parse_inner(
        model_type: &str,
        rope_theta: Option<f64>,
        rope_parameters: &Option<Value>,
        head_dim: i64,
        max_position_embeddings: i64,
        partial_rotary: bool,
    ) -> Result<Self> {
        let p = match rope_parameters {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => bail!(
                "{model_type} rope_parameters (or rope_scaling): expected an object or null, found {other}"
            ),
        };
        let theta = number(&p, "rope_theta")
            .or(rope_theta)
            .unwrap_or(DEFAULT_ROPE_THETA);
        let ty = p
            .get("rope_type")
            .or_else(|| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let what = |key: &str| format!("{model_type} rope_parameters (rope_type {ty:?}): {key}");
        let partial = number(&p, "partial_rotary_factor").unwrap_or(1.0);
        if partial != 1.0 && !partial_rotary {
            bail!(
                "{}: {partial} is not supported for {model_type}; supported: 1.0 (every dimension \
                 rotated)",
                what("partial_rotary_factor")
            );
        }
        if !(partial > 0.0 && partial <= 1.0) {
            bail!(
                "{}: expected a number in (0, 1], found {partial}",
                what("partial_rotary_factor")
            );
        }
        // transformers: `int(head_dim * partial_rotary_factor)`.
        let head_dim = (head_dim as f64 * partial) as i64;
        let required = |key: &str| {
            number(&p, key)
                .ok_or_else(|| anyhow!("{} is missing (a number is required)", what(key)))
        };
        let positive = |key: &str, v: f64| -> Result<f64> {
            if v > 0.0 {
                Ok(v)
            } else {
                bail!("{}: expected a positive number, found {v}", what(key))
            }
        };
        let original = number(&p, "original_max_position_embeddings")
            .unwrap_or(max_position_embeddings as f64);
        let scaling = match ty.as_str() {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: positive("factor", required("factor")?)?,
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: positive("factor", required("factor")?)?,
                max_position_embeddings,
            },
            "llama3" => {
                let low = positive("low_freq_factor", required("low_freq_factor")?)?;
                let high = positive("high_freq_factor", required("high_freq_factor")?)?;
                if high <= low {
                    bail!(
                        "{}: high_freq_factor ({high}) must exceed low_freq_factor ({low})",
                        what("high_freq_factor")
                    );
                }
                RopeScaling::Llama3 {
                    factor: positive("factor", required("factor")?)?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: positive(
                        "original_max_position_embeddings",
                        original,
                    )?,
                }
            }
            "yarn" => {
                let original = positive("original_max_position_embeddings", original)?;
                let factor =
                    number(&p, "factor").unwrap_or(max_position_embeddings as f64 / original);
                let factor = positive("factor", factor)?;
                let mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        YARN_MSCALE_COEFF * m * scale.ln() + 1.0
                    }
                };
                let attention_factor = match (
                    number(&p, "attention_factor"),
                    number(&p, "mscale").filter(|m| *m != 0.0),
                    number(&p, "mscale_all_dim").filter(|m| *m != 0.0),
                ) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(all)) => mscale(factor, m) / mscale(factor, all),
                    _ => mscale(factor, 1.0),
                };
                RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: original,
                    beta_fast: number(&p, "beta_fast")
                        .filter(|b| *b != 0.0)
                        .unwrap_or(YARN_BETA_FAST),
                    beta_slow: number(&p, "beta_slow")
                        .filter(|b| *b != 0.0)
                        .unwrap_or(YARN_BETA_SLOW),
                    truncate: p.get("truncate").and_then(Value::as_bool).unwrap_or(true),
                    attention_factor,
                }
            }
            "longrope" => {
                // transformers reads `original_max_position_embeddings` from the parameters
                // only (Phi-3 configs carry it there after `standardize_rope_params`).
                let original = positive(
                    "original_max_position_embeddings",
                    required("original_max_position_embeddings")?,
                )?;
                let factors = |key: &str| -> Result<Vec<f64>> {
                    let list = p.get(key).and_then(Value::as_array).ok_or_else(|| {
                        anyhow!("{} is missing (a list of head_dim / 2 numbers)", what(key))
                    })?;
                    let v: Vec<f64> = list.iter().filter_map(Value::as_f64).collect();
                    if v.len() != list.len() || v.len() as i64 != head_dim / 2 {
                        bail!(
                            "{}: expected {} numbers (head_dim / 2), found {} entries of which {} \
                             are numbers",
                            what(key),
                            head_dim / 2,
                            list.len(),
                            v.len()
                        );
                    }
                    if let Some(bad) = v.iter().find(|f| **f <= 0.0) {
                        bail!("{}: factors must be positive, found {bad}", what(key));
                    }
                    Ok(v)
                };
                // As `_compute_longrope_parameters`: without `factor`, the ratio of the lengths.
                let factor =
                    number(&p, "factor").unwrap_or(max_position_embeddings as f64 / original);
                let attention_factor = match number(&p, "attention_factor") {
                    Some(a) => a,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / original.ln()).sqrt(),
                };
                RopeScaling::LongRope {
                    short_factor: factors("short_factor")?,
                    long_factor: factors("long_factor")?,
                    original_max_position_embeddings: original,
                    attention_factor,
                }
            }
            other => bail!(
                "{model_type}: rope_type {other:?} is not supported; supported: {}",
                SUPPORTED_ROPE_TYPES.join(", ")
            ),
        };
        if head_dim % 2 != 0 || head_dim <= 0 {
            bail!(
                "{model_type}: the rotated dimensions ({head_dim}: head_dim times \
                 partial_rotary_factor {partial}) must be positive and even for rotary embeddings"
            );
        }
        Ok(RopeConfig {
            theta,
            dim: head_dim,
            scaling,
        })
    }

    /// `base^(2i / dim)` in f32 on the CPU, `[dim / 2]`.
    fn base_powers(&self, base: f64) -> Tensor {
        let exponents = Tensor::arange_start_step(0, self.dim, 2, (Kind::Int64, Device::Cpu))
            .to_kind(Kind::Float)
            / self.dim as f64;
        Tensor::from(base as f32).pow(&exponents)
    }

    /// `1 / base^(2i / dim)` in f32 on the CPU, `[dim / 2]`.
    fn plain_inv_freq(&self, base: f64) -> Tensor {
        self.base_powers(base).reciprocal()
    }

    /// The inverse frequencies (f32, on `device`) for a batch whose largest position is
    /// `seq_len - 1` (only `dynamic` depends on it), and the factor the tables are multiplied by.
    pub fn inv_freq(&self, seq_len: i64, device: Device) -> (Tensor, f64) {
        let (inv, scale) = match &self.scaling {
            RopeScaling::Default => (self.plain_inv_freq(self.theta), 1.0),
            RopeScaling::Linear { factor } => (self.plain_inv_freq(self.theta) / *factor, 1.0),
            RopeScaling::Dynamic {
                factor,
                max_position_embeddings,
            } => {
                let max = *max_position_embeddings as f64;
                let seq = (seq_len as f64).max(max);
                let d = self.dim as f64;
                let base = self.theta * ((factor * seq / max) - (factor - 1.0)).powf(d / (d - 2.0));
                (self.plain_inv_freq(base), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let inv = self.plain_inv_freq(self.theta);
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let wavelen = inv.reciprocal() * (2.0 * std::f64::consts::PI);
                let scaled = inv.where_self(&wavelen.le(low_wavelen), &(&inv / *factor));
                let smooth = (wavelen.reciprocal() * *old - *low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                let smoothed = one_minus(&smooth) * &scaled / *factor + &smooth * &scaled;
                let medium = wavelen
                    .ge(high_wavelen)
                    .logical_and(&wavelen.le(low_wavelen));
                (smoothed.where_self(&medium, &scaled), 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast,
                beta_slow,
                truncate,
                attention_factor,
            } => {
                let d = self.dim as f64;
                let correction = |rotations: f64| {
                    d * (original / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * self.theta.ln())
                };
                let (mut low, mut high) = (correction(*beta_fast), correction(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += YARN_RAMP_EPS;
                }
                let half = self.dim / 2;
                let ramp = ((Tensor::arange(half, (Kind::Float, Device::Cpu)) - low)
                    / (high - low))
                    .clamp(0.0, 1.0);
                let extrapolation = self.plain_inv_freq(self.theta);
                let interpolation = &extrapolation / *factor;
                let keep = one_minus(&ramp);
                let inv = &interpolation * one_minus(&keep) + &extrapolation * &keep;
                (inv, *attention_factor)
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: original,
                attention_factor,
            } => {
                let factors = if seq_len as f64 > *original {
                    long_factor
                } else {
                    short_factor
                };
                let ext: Vec<f32> = factors.iter().map(|f| *f as f32).collect();
                // `1 / (ext_factors * base^(2i / dim))`, in that order, in f32.
                let inv = (Tensor::from_slice(&ext) * self.base_powers(self.theta)).reciprocal();
                (inv, *attention_factor)
            }
        };
        (inv.to_device(device), scale)
    }

    /// Whether the frequencies depend on the batch's positions (`dynamic`, `longrope`).
    pub fn depends_on_length(&self) -> bool {
        matches!(
            self.scaling,
            RopeScaling::Dynamic { .. } | RopeScaling::LongRope { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(params: Value) -> Result<RopeConfig> {
        RopeConfig::parse("llama", None, &Some(params), 8, 64)
    }

    #[test]
    fn longrope_factor_lists_are_checked_by_name() {
        let missing = parse(serde_json::json!({"rope_type": "longrope",
            "original_max_position_embeddings": 16, "short_factor": [1.0, 1.0, 1.0, 1.0]}))
        .unwrap_err()
        .to_string();
        assert!(missing.contains("long_factor is missing"), "{missing}");
        let short = parse(serde_json::json!({"rope_type": "longrope",
            "original_max_position_embeddings": 16, "short_factor": [1.0, 1.0],
            "long_factor": [1.0, 2.0, 3.0, 4.0]}))
        .unwrap_err()
        .to_string();
        assert!(
            short.contains("short_factor: expected 4 numbers (head_dim / 2), found 2"),
            "{short}"
        );
        let ok = parse(serde_json::json!({"rope_type": "longrope",
            "original_max_position_embeddings": 16, "short_factor": [1.0, 1.0, 1.0, 1.0],
            "long_factor": [1.0, 2.0, 3.0, 4.0]}))
        .unwrap();
        // Within the original length the short factors (all 1: plain RoPE), beyond it the long.
        let (within, scale) = ok.inv_freq(16, Device::Cpu);
        let (beyond, _) = ok.inv_freq(17, Device::Cpu);
        assert_eq!(
            Vec::<f32>::try_from(&within).unwrap(),
            Vec::<f32>::try_from(&ok.plain_inv_freq(ok.theta)).unwrap()
        );
        let ratio: Vec<f32> = Vec::try_from(&(&within / &beyond)).unwrap();
        for (r, f) in ratio.iter().zip([1.0f32, 2.0, 3.0, 4.0]) {
            assert!((r - f).abs() < 1e-6, "{ratio:?}");
        }
        // factor = 64 / 16: sqrt(1 + ln 4 / ln 16) = sqrt(1.5).
        assert!((scale - 1.5f64.sqrt()).abs() < 1e-12, "{scale}");
        assert!(ok.depends_on_length());
    }

    #[test]
    fn unknown_types_and_options_are_refused_by_name() {
        let e = parse(serde_json::json!({"rope_type": "proportional", "factor": 2.0})).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("\"proportional\"")
                && msg.contains("supported: default, linear, dynamic, llama3, yarn, longrope"),
            "{msg}"
        );
        let e = parse(serde_json::json!({"rope_type": "linear"})).unwrap_err();
        assert!(format!("{e:#}").contains("factor is missing"), "{e:#}");
        let e = parse(serde_json::json!({"rope_type": "default", "partial_rotary_factor": 0.5}))
            .unwrap_err();
        assert!(format!("{e:#}").contains("partial_rotary_factor"), "{e:#}");
        // The older field name and layout.
        let c = RopeConfig::parse(
            "llama",
            Some(500000.0),
            &Some(serde_json::json!({"type": "linear", "factor": 4.0})),
            8,
            64,
        )
        .unwrap();
        assert_eq!(c.theta, 500000.0);
        assert_eq!(c.scaling, RopeScaling::Linear { factor: 4.0 });
    }

    /// Dynamic NTK leaves sequences within `max_position_embeddings` alone.
    #[test]
    fn dynamic_is_default_within_the_trained_length() {
        let d = parse(serde_json::json!({"rope_type": "dynamic", "factor": 2.0})).unwrap();
        let plain = parse(serde_json::json!({"rope_type": "default"})).unwrap();
        let (a, _) = d.inv_freq(64, Device::Cpu);
        let (b, _) = plain.inv_freq(10, Device::Cpu);
        assert!(a.equal(&b));
        let (c, _) = d.inv_freq(65, Device::Cpu);
        assert!(!c.equal(&b));
    }
}
