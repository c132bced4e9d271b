//! `LoraConfig`: the adapter configuration, with PEFT's key names and defaults, read from and
//! written to PEFT's `adapter_config.json`.

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, IoResultExt, Result};

/// An [`Error::BadConfigValue`] with a formatted message.
macro_rules! bad {
    ($($arg:tt)*) => {
        Error::BadConfigValue(format!($($arg)*))
    };
}

/// Which modules get an adapter: PEFT's `target_modules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Names matched exactly or as the suffix after a dot (`query` matches
    /// `bert.encoder.layer.0.attention.self.query`).
    List(Vec<String>),
    /// One regular expression matched against the full module name (PEFT uses `re.fullmatch`).
    Regex(String),
}

/// PEFT's `init_lora_weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitLoraWeights {
    /// `true`: A kaiming-uniform (a = sqrt(5)), B zeros; embeddings: A zeros, B normal.
    Default,
    /// `"gaussian"`: A normal with std 1/r, B zeros.
    Gaussian,
    /// `false`: both random (the adapter is not a no-op); for tests.
    Random,
}

impl Serialize for InitLoraWeights {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            InitLoraWeights::Default => s.serialize_bool(true),
            InitLoraWeights::Random => s.serialize_bool(false),
            InitLoraWeights::Gaussian => s.serialize_str("gaussian"),
        }
    }
}

impl<'de> Deserialize<'de> for InitLoraWeights {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(true) => Ok(InitLoraWeights::Default),
            Value::Bool(false) => Ok(InitLoraWeights::Random),
            Value::String(s) if s == "gaussian" => Ok(InitLoraWeights::Gaussian),
            other => Err(serde::de::Error::custom(format!(
                "init_lora_weights: expected true, false or \"gaussian\", found {other}"
            ))),
        }
    }
}

/// PEFT's `bias`: which biases train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BiasMode {
    /// No bias trains (PEFT default).
    #[default]
    None,
    /// Every bias of the model trains.
    All,
    /// Only the biases of modules that carry a LoRA adapter train.
    LoraOnly,
}

/// PEFT's `layers_to_transform`: one index or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerIndices {
    /// One layer index.
    One(usize),
    /// Several layer indices.
    Many(Vec<usize>),
}

impl LayerIndices {
    /// Is layer `i` listed?
    pub fn contains(&self, i: usize) -> bool {
        match self {
            LayerIndices::One(j) => *j == i,
            LayerIndices::Many(v) => v.contains(&i),
        }
    }

    /// An empty list (which PEFT reads as no filter).
    pub fn is_empty(&self) -> bool {
        matches!(self, LayerIndices::Many(v) if v.is_empty())
    }
}

fn default_peft_type() -> String {
    "LORA".to_string()
}
// Defaults below are PEFT's `LoraConfig` defaults (peft/tuners/lora/config.py).
fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_init() -> InitLoraWeights {
    InitLoraWeights::Default
}

/// The LoRA configuration. Field names are PEFT's, so a PEFT `adapter_config.json` reads into
/// this struct and one written from it loads in PEFT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// PEFT's adapter type; only `"LORA"` is accepted.
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    /// Rank of the update.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scale numerator: scale = lora_alpha / r (or / sqrt(r) with rsLoRA).
    #[serde(default = "default_alpha", serialize_with = "ser_number")]
    pub lora_alpha: f64,
    /// Dropout probability on the adapter's input, in [0, 1) (PEFT default 0).
    #[serde(default)]
    pub lora_dropout: f64,
    /// Which modules get an adapter: names matched as a suffix after a dot, or one regex.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// Modules never targeted, even when `target_modules` selects them (same matching rules).
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    /// rsLoRA: scale by `lora_alpha / sqrt(r)` instead of `lora_alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// How A and B start (PEFT default: A kaiming-uniform, B zeros).
    #[serde(default = "default_init")]
    pub init_lora_weights: InitLoraWeights,
    /// The base weight is stored [in, out] (GPT-2's Conv1D).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Which biases train: `none`, `all` or `lora_only`.
    #[serde(default)]
    pub bias: BiasMode,
    /// Modules trained in full and saved with the adapter (e.g. the classifier head).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Per-module rank, keyed by a pattern matched as PEFT does (suffix regex).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha, keyed like `rank_pattern`.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Only adapt modules in these layer indices (found in the name per `layers_pattern`).
    #[serde(default)]
    pub layers_to_transform: Option<LayerIndices>,
    /// Name of the layer list for `layers_to_transform` (PEFT: `layers`, `h`, `block`, ...).
    #[serde(default)]
    pub layers_pattern: Option<Value>,
    /// PEFT's task type (`SEQ_CLS`, `CAUSAL_LM`, ...): kept and written, not interpreted.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model PEFT records; kept and written, not interpreted.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// PEFT's flag for a saved adapter (`save_pretrained` writes `true`).
    #[serde(default)]
    pub inference_mode: bool,
    /// Keys this crate does not interpret, kept so that a file round-trips.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn ser_number<S: serde::Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            peft_type: default_peft_type(),
            r: default_r(),
            lora_alpha: default_alpha(),
            lora_dropout: 0.0,
            target_modules: None,
            exclude_modules: None,
            use_rslora: false,
            init_lora_weights: InitLoraWeights::Default,
            fan_in_fan_out: false,
            bias: BiasMode::None,
            modules_to_save: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            layers_to_transform: None,
            layers_pattern: None,
            task_type: None,
            base_model_name_or_path: None,
            inference_mode: false,
            other: BTreeMap::new(),
        }
    }
}

/// PEFT keys that this crate reads and ignores, whatever their value.
const IGNORED_KEYS: &[&str] = &[
    "auto_mapping",
    "revision",
    "megatron_config",
    "megatron_core",
    "peft_version",
    "qalora_group_size",
];

/// PEFT keys kept in [`LoraConfig::other`] and read from there (see
/// [`LoraConfig::ties_saved_tables`]).
const READ_FROM_OTHER: &[&str] = &["ensure_weight_tying"];

/// PEFT features that this crate does not implement: accepted when unset (null, false, empty),
/// refused with an error otherwise.
const UNSUPPORTED_KEYS: &[&str] = &[
    "use_dora",
    "use_qalora",
    "use_bdlora",
    "lora_bias",
    "layer_replication",
    "loftq_config",
    "eva_config",
    "corda_config",
    "kasa_config",
    "monteclora_config",
    "velora_config",
    "lora_ga_config",
    "arrow_config",
    "alora_invocation_tokens",
    "target_parameters",
    "trainable_token_indices",
];

fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

impl LoraConfig {
    /// A config with `r`, `lora_alpha` and `target_modules` set, the rest PEFT's defaults.
    pub fn new(r: usize, lora_alpha: f64, targets: &[&str]) -> Self {
        LoraConfig {
            r,
            lora_alpha,
            target_modules: Some(TargetModules::List(
                targets.iter().map(|s| s.to_string()).collect(),
            )),
            ..Default::default()
        }
    }

    /// Read a PEFT `adapter_config.json`. Unknown keys are kept and logged, not fatal.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).io_context("reading adapter config", path)?;
        let cfg = Self::from_json_str(&text).map_err(|e| e.context(path.display().to_string()))?;
        for key in cfg.unknown_keys() {
            tracing::warn!("{}: unknown key `{key}` kept but not used", path.display());
        }
        Ok(cfg)
    }

    /// Parse and validate the JSON text of an adapter config.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: LoraConfig = serde_json::from_str(text).map_err(|source| Error::Json {
            what: "parsing adapter config JSON".into(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Write as `adapter_config.json` text.
    pub fn to_json_string(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            what: "writing adapter config JSON".into(),
            source,
        })
    }

    /// Keys present in the file that neither this struct nor the list of inert PEFT keys knows.
    pub fn unknown_keys(&self) -> Vec<String> {
        self.other
            .keys()
            .filter(|k| {
                !IGNORED_KEYS.contains(&k.as_str())
                    && !READ_FROM_OTHER.contains(&k.as_str())
                    && !UNSUPPORTED_KEYS.contains(&k.as_str())
            })
            .cloned()
            .collect()
    }

    /// Check values: rank, alpha, dropout, PEFT type and features this crate does not implement.
    pub fn validate(&self) -> Result<()> {
        if self.peft_type != "LORA" {
            return Err(bad!("peft_type is {:?}, expected \"LORA\"", self.peft_type));
        }
        if self.r == 0 {
            return Err(bad!("r must be at least 1, found 0"));
        }
        // Far above any layer's width (the update B A has rank min(in, out) at most); beyond it
        // the sizes overflow libtorch's int64 dimensions or no allocation can succeed.
        const MAX_RANK: usize = 1 << 20;
        if let Some((what, r)) = std::iter::once(("r".to_string(), self.r))
            .chain(
                self.rank_pattern
                    .iter()
                    .map(|(k, r)| (format!("rank_pattern[{k:?}]"), *r)),
            )
            .find(|(_, r)| *r > MAX_RANK)
        {
            return Err(bad!(
                "{what} is {r}, more than {MAX_RANK}: a LoRA rank is at most the layer's width"
            ));
        }
        if !self.lora_alpha.is_finite() {
            return Err(bad!("lora_alpha must be finite, found {}", self.lora_alpha));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(bad!(
                "lora_dropout must be in [0, 1), found {}",
                self.lora_dropout
            ));
        }
        for (k, r) in &self.rank_pattern {
            if *r == 0 {
                return Err(bad!("rank_pattern[{k:?}] must be at least 1, found 0"));
            }
            Regex::new(k).map_err(|e| bad!("rank_pattern key {k:?} is not a regex: {e}"))?;
        }
        for k in self.alpha_pattern.keys() {
            Regex::new(k).map_err(|e| bad!("alpha_pattern key {k:?} is not a regex: {e}"))?;
        }
        if matches!(self.target_modules, Some(TargetModules::Regex(_))) {
            for (field, set) in [
                ("layers_to_transform", self.layers_to_transform.is_some()),
                (
                    "layers_pattern",
                    self.layers_pattern.as_ref().is_some_and(|p| !is_unset(p)),
                ),
            ] {
                if set {
                    return Err(bad!(
                        "{field} cannot be used when target_modules is a regex (PEFT refuses it too): list the modules, or put the layers in the regex"
                    ));
                }
            }
        }
        for (field, modules) in [
            ("target_modules", &self.target_modules),
            ("exclude_modules", &self.exclude_modules),
        ] {
            if let Some(TargetModules::Regex(re)) = modules {
                Regex::new(re).map_err(|e| {
                    bad!("{field} regex {re:?} is invalid here (Rust's regex syntax: no look-around or backreferences): {e}")
                })?;
            }
        }
        for key in UNSUPPORTED_KEYS {
            if let Some(v) = self.other.get(*key) {
                if !is_unset(v) {
                    return Err(Error::UnsupportedPeftOption {
                        key: key.to_string(),
                        value: v.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Does PEFT's `target_modules` rule select the module `name`?
    /// A module inside a `modules_to_save` module (an entry that is `name` or a dotted
    /// ancestor of it) never takes an adapter, as in PEFT's `check_target_module_exists`.
    pub fn is_target(&self, name: &str) -> bool {
        if !modules_match(self.target_modules.as_ref(), name)
            || modules_match(self.exclude_modules.as_ref(), name)
        {
            return false;
        }
        let saved = self.modules_to_save.iter().flatten();
        if saved
            .into_iter()
            .any(|m| module_ancestors(name).any(|prefix| name_matches(prefix, m)))
        {
            return false;
        }
        // As PEFT: the layer filter applies to list entries matched as a suffix, not to a
        // module named in full nor to a regex `target_modules`; an empty list filters nothing.
        let filtered = match &self.target_modules {
            Some(TargetModules::List(list)) => !list.iter().any(|t| t == name),
            _ => false,
        };
        match &self.layers_to_transform {
            Some(indices) if filtered && !indices.is_empty() => {
                match layer_index(name, self.layers_pattern.as_ref()) {
                    Some(i) => indices.contains(i),
                    None => false,
                }
            }
            _ => true,
        }
    }

    /// Is `name` (a module) or one of its ancestors listed in `modules_to_save`? PEFT's
    /// `_set_trainable` rule: a module is wrapped (and with it everything below it) when its
    /// name ends with an entry, as plain strings: `pooler` selects `bert.pooler` and so
    /// `bert.pooler.dense`, `pooler.dense` and `dense` select `bert.pooler.dense`.
    pub fn is_module_to_save(&self, name: &str) -> bool {
        self.modules_to_save
            .iter()
            .flatten()
            .any(|m| self.is_module_to_save_by(name, m))
    }

    /// Whether a tied embedding table and `lm_head` stay one table when one of them is in
    /// `modules_to_save`, as PEFT decides: `ensure_weight_tying` is true and an entry names
    /// `embed_tokens` or `lm_head` (PEFT's `EMBEDDING_LAYER_NAMES`; GPT-2's `wte` is not one).
    /// Otherwise the listed module gets its own copy and the other keeps the base table.
    pub fn ties_saved_tables(&self) -> bool {
        let ensure = self
            .other
            .get("ensure_weight_tying")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        ensure
            && self
                .modules_to_save
                .iter()
                .flatten()
                .any(|m| matches!(m.rsplit('.').next(), Some("embed_tokens") | Some("lm_head")))
    }

    /// Does the single `modules_to_save` entry `entry` select `name` (see
    /// [`Self::is_module_to_save`])?
    pub fn is_module_to_save_by(&self, name: &str, entry: &str) -> bool {
        module_ancestors(name).any(|prefix| prefix.ends_with(entry))
    }

    /// Rank and alpha of the module `name`, after `rank_pattern` / `alpha_pattern`.
    pub fn rank_and_alpha(&self, name: &str) -> (usize, f64) {
        let r = pattern_value(&self.rank_pattern, name).unwrap_or(self.r);
        let alpha = pattern_value(&self.alpha_pattern, name).unwrap_or(self.lora_alpha);
        (r, alpha)
    }

    /// The scale applied to B A x: alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn scale_for(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }
}

fn modules_match(modules: Option<&TargetModules>, name: &str) -> bool {
    match modules {
        None => false,
        Some(TargetModules::Regex(re)) => match Regex::new(&format!("^(?:{re})$")) {
            Ok(re) => re.is_match(name),
            Err(_) => false,
        },
        Some(TargetModules::List(list)) => list.iter().any(|t| name_matches(name, t)),
    }
}

/// PEFT's rule for a list entry: the exact name, or a suffix after a dot.
pub fn name_matches(name: &str, target: &str) -> bool {
    name == target || name.ends_with(&format!(".{target}"))
}

/// `a`, `a.b`, `a.b.c` for the module `a.b.c`: the module and its ancestors.
fn module_ancestors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('.')
        .map(move |(i, _)| &name[..i])
        .chain(std::iter::once(name))
}

/// PEFT's `get_pattern_key`: the first key whose regex matches the end of the name after a dot.
fn pattern_value<T: Copy>(patterns: &BTreeMap<String, T>, name: &str) -> Option<T> {
    patterns.iter().find_map(|(k, v)| {
        let re = Regex::new(&format!(r"^(?:.*\.)?(?:{k})$")).ok()?;
        re.is_match(name).then_some(*v)
    })
}

/// The layer index in a module name, as PEFT finds it for `layers_to_transform`.
fn layer_index(name: &str, pattern: Option<&Value>) -> Option<usize> {
    let names: Vec<String> = match pattern {
        Some(Value::String(s)) => vec![regex::escape(s)],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(regex::escape))
            .collect(),
        _ => vec!["layers".into(), "h".into(), "blocks".into(), "layer".into()],
    };
    let re = Regex::new(&format!(r"(?:^|\.)(?:{})\.(\d+)(?:\.|$)", names.join("|"))).ok()?;
    re.captures(name)?.get(1)?.as_str().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_peft_defaults() {
        let c = LoraConfig::from_json_str("{}").unwrap();
        assert_eq!(c.r, 8);
        assert_eq!(c.lora_alpha, 8.0);
        assert_eq!(c.lora_dropout, 0.0);
        assert_eq!(c.init_lora_weights, InitLoraWeights::Default);
        assert_eq!(c.bias, BiasMode::None);
        assert!(!c.use_rslora);
    }

    #[test]
    fn target_matching_follows_peft() {
        let c = LoraConfig::new(8, 16.0, &["query", "value"]);
        assert!(c.is_target("bert.encoder.layer.0.attention.self.query"));
        assert!(c.is_target("query"));
        assert!(!c.is_target("bert.encoder.layer.0.attention.self.key"));
        assert!(!c.is_target("bert.encoder.layer.0.attention.self.myquery"));
        let mut c = c;
        c.target_modules = Some(TargetModules::Regex(r".*\.(query|key)".into()));
        assert!(c.is_target("a.b.query"));
        assert!(!c.is_target("a.b.query.x"));
        // A regex with a layer filter is refused, as PEFT refuses it.
        c.layers_to_transform = Some(LayerIndices::Many(vec![1]));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("layers_to_transform cannot be used"), "{e}");
        // Listed names: the filter applies to suffix matches, not to a module named in full.
        c.target_modules = Some(TargetModules::List(vec![
            "query".into(),
            "enc.layer.0.key".into(),
        ]));
        c.validate().unwrap();
        assert!(c.is_target("enc.layer.1.query"));
        assert!(!c.is_target("enc.layer.0.query"));
        assert!(c.is_target("enc.layer.0.key"));
        c.exclude_modules = Some(TargetModules::List(vec!["layer.1.query".into()]));
        assert!(!c.is_target("enc.layer.1.query"));
        // An empty list filters nothing.
        c.layers_to_transform = Some(LayerIndices::Many(vec![]));
        assert!(c.is_target("enc.layer.0.query"));
        // An exclude regex Rust cannot compile is refused, not ignored.
        c.exclude_modules = Some(TargetModules::Regex(r"^(?!.*layer\.0).*query$".into()));
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("exclude_modules regex") && e.contains("look-around"),
            "{e}"
        );
    }

    #[test]
    fn patterns_override_rank_and_alpha() {
        let mut c = LoraConfig::new(8, 16.0, &["query"]);
        c.rank_pattern
            .insert("layer.0.attention.self.query".into(), 4);
        c.alpha_pattern.insert("query".into(), 32.0);
        assert_eq!(
            c.rank_and_alpha("x.layer.0.attention.self.query"),
            (4, 32.0)
        );
        assert_eq!(
            c.rank_and_alpha("x.layer.1.attention.self.query"),
            (8, 32.0)
        );
        c.use_rslora = true;
        assert!((c.scale_for(4, 32.0) - 16.0).abs() < 1e-12);
    }

    #[test]
    fn unknown_keys_are_kept_and_bad_values_rejected() {
        let c = LoraConfig::from_json_str(r#"{"r": 4, "fancy": 1, "use_dora": false}"#).unwrap();
        assert_eq!(c.unknown_keys(), vec!["fancy".to_string()]);
        let s = c.to_json_string().unwrap();
        assert!(s.contains("\"fancy\": 1"));
        let e = LoraConfig::from_json_str(r#"{"use_dora": true}"#).unwrap_err();
        assert!(e.chain().contains("use_dora"));
        let e = LoraConfig::from_json_str(r#"{"r": 0}"#).unwrap_err();
        assert!(e.chain().contains("r must be"));
        // A rank no layer has (it wrapped to a negative dimension and panicked).
        let e = LoraConfig::from_json_str(r#"{"r": 18446744073709551615}"#).unwrap_err();
        assert!(
            e.chain().contains("r is 18446744073709551615, more than"),
            "{}",
            e.chain()
        );
        let e = LoraConfig::from_json_str(r#"{"rank_pattern": {"q": 1099511627776}}"#).unwrap_err();
        assert!(e.chain().contains("rank_pattern[\"q\"]"), "{}", e.chain());
        let e = LoraConfig::from_json_str(r#"{"init_lora_weights": "pissa"}"#).unwrap_err();
        assert!(e.chain().contains("init_lora_weights"));
    }

    #[test]
    fn modules_to_save_match_ancestors() {
        let mut c = LoraConfig::new(8, 8.0, &["query"]);
        c.modules_to_save = Some(vec!["classifier".into()]);
        assert!(c.is_module_to_save("classifier"));
        assert!(c.is_module_to_save("classifier.dense"));
        assert!(!c.is_module_to_save("bert.pooler.dense"));
        // PEFT's plain suffix rule, on the module and its ancestors.
        c.modules_to_save = Some(vec!["pooler".into()]);
        assert!(c.is_module_to_save("bert.pooler.dense"));
        c.modules_to_save = Some(vec!["pooler.dense".into()]);
        assert!(c.is_module_to_save("bert.pooler.dense"));
        assert!(!c.is_module_to_save("bert.pooler"));
        c.modules_to_save = Some(vec!["score".into(), "classifier".into()]);
        assert!(c.is_module_to_save("score"));
        assert!(!c.is_module_to_save("bert.pooler.dense"));
    }

    #[test]
    fn modules_to_save_take_no_adapter() {
        let mut c = LoraConfig::new(8, 8.0, &["dense"]);
        c.modules_to_save = Some(vec!["classifier".into()]);
        assert!(c.is_target("roberta.encoder.layer.0.output.dense"));
        assert!(!c.is_target("classifier.dense"));
    }
}
