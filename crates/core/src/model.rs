//! Injection and freezing: `LoraBuilder` is handed every layer of a model as the model is
//! built, wraps the ones `target_modules` selects, and `finish`es into a `LoraModel`, the
//! registry of every parameter with its role, through which adapters are merged and saved.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::error::{Error, Result, ResultExt};
use tch::{nn, Device, Kind, Tensor};

use crate::config::{BiasMode, InitLoraWeights, LoraConfig};
use crate::layers::{
    check_adapter_kind, EmbeddingAdapter, LayerNorm, LinearAdapter, LoraEmbedding, LoraLinear,
    MergeHandle, MergeKind, WeightLayout,
};
use crate::quant::{QuantScheme, QuantizedWeight};

/// What a trainable tensor is, for the optimizer: read from here, never parsed from names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamRole {
    /// `lora_A` of a linear layer.
    LoraA,
    /// `lora_B` of a linear layer.
    LoraB,
    /// `lora_embedding_A`.
    EmbeddingA,
    /// `lora_embedding_B`.
    EmbeddingB,
    /// A bias that trains (`bias = "all"` / `"lora_only"`).
    Bias,
    /// A normalisation weight that trains.
    Norm,
    /// A parameter of a module listed in `modules_to_save` (e.g. the classifier head).
    Head,
    /// Anything else a user marks trainable.
    Other,
}

/// One trainable tensor with its name and role.
#[derive(Debug)]
pub struct TrainableParam {
    /// The parameter's name in the model, without PEFT's `base_model.model.` prefix
    /// (`bert.encoder.layer.0.attention.self.query.lora_A.weight`).
    pub name: String,
    /// The tensor itself (a shallow clone: the layer's own storage).
    pub tensor: Tensor,
    /// What it is, for the optimizer's groups.
    pub role: ParamRole,
}

/// Module names for a message, compact at any depth: layer indices folded
/// (`encoder.layer.{i}.attention.self.query (6)`), then the distinct last name parts that
/// `target_modules` usually lists (`query, key, value, dense`).
fn module_summary(names: &[String]) -> String {
    let mut patterns: Vec<(String, usize)> = Vec::new();
    let mut leaves: Vec<&str> = Vec::new();
    for name in names {
        let pattern = name
            .split('.')
            .map(|part| {
                if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                    "{i}"
                } else {
                    part
                }
            })
            .collect::<Vec<_>>()
            .join(".");
        match patterns.iter_mut().find(|(p, _)| *p == pattern) {
            Some((_, n)) => *n += 1,
            None => patterns.push((pattern, 1)),
        }
        let leaf = name.rsplit('.').next().unwrap_or(name);
        if !leaves.contains(&leaf) {
            leaves.push(leaf);
        }
    }
    let listed: Vec<String> = patterns
        .iter()
        .map(|(p, n)| {
            if *n > 1 {
                format!("{p} ({n})")
            } else {
                p.clone()
            }
        })
        .collect();
    format!(
        "{}; by last name part: {}",
        listed.join(", "),
        leaves.join(", ")
    )
}

/// What kind of module a registered parameter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModuleKind {
    Linear,
    Embedding,
    Norm,
    Other,
}

#[derive(Debug)]
struct BaseParam {
    module: String,
    /// Local name in the module: `weight`, `bias`, ...
    local: String,
    tensor: Tensor,
    kind: ModuleKind,
    /// The module carries a LoRA adapter (PEFT then names its bias `base_layer.bias`).
    adapted: bool,
}

/// Builds the adapters while a model is constructed. Hand it every layer (`linear`,
/// `embedding`, `layer_norm`, `param`) under its HuggingFace module name.
#[derive(Debug)]
pub struct LoraBuilder {
    config: Option<LoraConfig>,
    adapter_kind: Kind,
    base: Vec<BaseParam>,
    adapters: Vec<AdapterEntry>,
    quant: Option<QuantScheme>,
    quantized: Vec<QuantEntry>,
    ties: Vec<SavedTie>,
    warned_rank: bool,
}

/// A module that shares the table of a trainable parameter: a tied input embedding and
/// `lm_head`, one of them in `modules_to_save`. The adapter file holds the table under both
/// names and the config lists both in `modules_to_save` with PEFT's `ensure_weight_tying`, so
/// that PEFT trains and loads one table, as this model does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedTie {
    /// The module sharing the table (`lm_head`, `model.embed_tokens`).
    pub alias: String,
    /// The trainable parameter it shares (`model.embed_tokens.weight`, `lm_head.weight`).
    pub param: String,
}

/// A linear layer whose frozen base weight is stored quantized.
#[derive(Debug)]
struct QuantEntry {
    module: String,
    /// The layer's weight handle (the stand-in until the base is dequantized).
    weight: Tensor,
    layout: WeightLayout,
    quant: QuantizedWeight,
}

/// One adapter as the registry keeps it: its A and B (in `merge`) and where it merges.
#[derive(Debug)]
struct AdapterEntry {
    module: String,
    merge: MergeHandle,
}

impl AdapterEntry {
    fn roles(&self) -> (ParamRole, ParamRole) {
        match self.merge.kind {
            MergeKind::Linear(_) => (ParamRole::LoraA, ParamRole::LoraB),
            MergeKind::Embedding => (ParamRole::EmbeddingA, ParamRole::EmbeddingB),
        }
    }
}

impl LoraBuilder {
    /// A builder that wraps the modules `config` selects.
    pub fn new(config: LoraConfig) -> Result<Self> {
        config.validate()?;
        Ok(LoraBuilder {
            config: Some(config),
            adapter_kind: Kind::Float,
            base: Vec::new(),
            adapters: Vec::new(),
            quant: None,
            quantized: Vec::new(),
            ties: Vec::new(),
            warned_rank: false,
        })
    }

    /// A builder that wraps nothing: the plain model, every parameter frozen.
    pub fn frozen() -> Self {
        LoraBuilder {
            config: None,
            adapter_kind: Kind::Float,
            base: Vec::new(),
            adapters: Vec::new(),
            quant: None,
            quantized: Vec::new(),
            ties: Vec::new(),
            warned_rank: false,
        }
    }

    /// Store every frozen linear base weight handed to [`Self::linear`] in `scheme` (targeted by
    /// LoRA or not); a module in `modules_to_save` (it trains) stays as it is, and so do
    /// embeddings and norms. See [`crate::quant`].
    pub fn with_quantization(mut self, scheme: QuantScheme) -> Self {
        self.quant = Some(scheme);
        self
    }

    /// Whether [`Self::linear`] stores the base weight of module `name` quantized. A model that
    /// runs linears as one product ([`crate::FusedLinears`]) hands such members over one by one
    /// instead.
    pub fn quantizes(&self, name: &str) -> bool {
        self.quant.is_some()
            && !self
                .config
                .as_ref()
                .is_some_and(|c| c.is_module_to_save(name))
    }

    /// The dtype of the adapter tensors (default f32, whatever the base dtype).
    pub fn with_adapter_kind(mut self, kind: Kind) -> Result<Self> {
        check_adapter_kind(kind)?;
        self.adapter_kind = kind;
        Ok(self)
    }

    /// The config, or `None` for [`Self::frozen`].
    pub fn config(&self) -> Option<&LoraConfig> {
        self.config.as_ref()
    }

    fn register(&mut self, module: &str, local: &str, t: &Tensor, kind: ModuleKind, adapted: bool) {
        self.base.push(BaseParam {
            module: module.to_string(),
            local: local.to_string(),
            tensor: t.shallow_clone(),
            kind,
            adapted,
        });
    }

    fn target(&self, name: &str) -> Option<(usize, f64, f64, &LoraConfig)> {
        let cfg = self.config.as_ref()?;
        if !cfg.is_target(name) {
            return None;
        }
        let (r, alpha) = cfg.rank_and_alpha(name);
        Some((r, alpha, cfg.scale_for(r, alpha), cfg))
    }

    /// Keep handles on a new adapter for merging, saving and the optimizer; returns the shared
    /// merged flag the layer reads.
    fn record_adapter(
        &mut self,
        name: &str,
        weight: &Tensor,
        a: &Tensor,
        b: &Tensor,
        scale: f64,
        kind: MergeKind,
    ) -> Arc<AtomicBool> {
        let merged = Arc::new(AtomicBool::new(false));
        self.adapters.push(AdapterEntry {
            module: name.to_string(),
            merge: MergeHandle {
                name: name.to_string(),
                weight: weight.shallow_clone(),
                a: a.shallow_clone(),
                b: b.shallow_clone(),
                scale,
                kind,
                merged: merged.clone(),
            },
        });
        merged
    }

    /// A linear layer named `name` (weight `[out, in]`, or `[in, out]` for `InOut`).
    /// Wrapped with an adapter when `target_modules` selects it.
    pub fn linear(
        &mut self,
        name: &str,
        weight: Tensor,
        bias: Option<Tensor>,
        layout: WeightLayout,
    ) -> Result<LoraLinear> {
        if weight.dim() != 2 {
            return Err(Error::InvalidArgument(format!(
                "{name}.weight: expected a 2-D weight, found shape {:?}",
                weight.size()
            )));
        }
        let weight = weight.set_requires_grad(false);
        let bias = bias.map(|b| b.set_requires_grad(false));
        let (weight, quant) = match self.quant {
            Some(scheme) if self.quantizes(name) => {
                scheme
                    .check_device(weight.device(), weight.kind())
                    .map_err(|e| Error::Context {
                        context: format!("quantizing {name}"),
                        source: Box::new(e),
                    })?;
                let out_in = match layout {
                    WeightLayout::OutIn => weight.shallow_clone(),
                    WeightLayout::InOut => weight.tr(),
                };
                let q = QuantizedWeight::quantize(name, &out_in, scheme)?;
                let stand_in = match layout {
                    WeightLayout::OutIn => q.placeholder(),
                    WeightLayout::InOut => q.placeholder().tr(),
                };
                self.quantized.push(QuantEntry {
                    module: name.to_string(),
                    weight: stand_in.shallow_clone(),
                    layout,
                    quant: q.handle(),
                });
                (stand_in, Some(q))
            }
            _ => (weight, None),
        };
        let mut layer = LoraLinear::plain(name, weight, bias, layout);
        layer.quant = quant;
        let target = self.target(name).map(|(r, alpha, scale, cfg)| {
            (r, alpha, scale, cfg.lora_dropout, cfg.init_lora_weights)
        });
        if let Some((r, alpha, scale, dropout, init)) = target {
            if layout == WeightLayout::OutIn
                && self.config.as_ref().is_some_and(|c| c.fan_in_fan_out)
            {
                tracing::warn!("{name}: fan_in_fan_out is set but the layer is [out, in]; ignoring it as PEFT does");
            }
            let (fin, fout) = (layer.in_features(), layer.out_features());
            if r as i64 > fin.min(fout) && !self.warned_rank {
                // PEFT allows it; the update B A cannot have a rank above the layer's width, so
                // the extra rank only costs memory (a huge r can exhaust it).
                tracing::warn!(
                    "{name}: r {r} exceeds the layer's width min({fin}, {fout}) = {}; B A cannot have a higher rank (said once)",
                    fin.min(fout)
                );
                self.warned_rank = true;
            }
            let opts = (self.adapter_kind, layer.weight.device());
            let (a, b) = init_linear(r as i64, fin, fout, init, opts).map_err(|e| {
                Error::InvalidArgument(format!(
                    "{name}: allocating the adapter (r {r}, {fin} in, {fout} out) failed: {e}"
                ))
            })?;
            let merged = self.record_adapter(
                name,
                &layer.weight,
                &a,
                &b,
                scale,
                MergeKind::Linear(layout),
            );
            layer.adapter = Some(LinearAdapter {
                a,
                b,
                r,
                alpha,
                scale,
                dropout,
                merged,
            });
        }
        let adapted = layer.adapter.is_some();
        self.register(name, "weight", &layer.weight, ModuleKind::Linear, adapted);
        if let Some(b) = &layer.bias {
            self.register(name, "bias", b, ModuleKind::Linear, adapted);
        }
        Ok(layer)
    }

    /// A linear layer whose base parameters are created in a tch `VarStore` under `path`, as
    /// `nn::linear` does (the layout follows the config's `fan_in_fan_out`). For models built on
    /// `nn::Path`; the base variables are frozen.
    pub fn linear_in(
        &mut self,
        path: &nn::Path,
        in_dim: i64,
        out_dim: i64,
        bias: bool,
    ) -> Result<LoraLinear> {
        let name = path.components().collect::<Vec<_>>().join(".");
        let fan_in_fan_out = self.config.as_ref().is_some_and(|c| c.fan_in_fan_out);
        let (shape, layout) = if fan_in_fan_out {
            ([in_dim, out_dim], WeightLayout::InOut)
        } else {
            ([out_dim, in_dim], WeightLayout::OutIn)
        };
        let bound = 1.0 / (in_dim as f64).sqrt();
        let w = path
            .f_var(
                "weight",
                &shape,
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )
            .with_context(|| format!("creating {name}.weight"))?;
        let b = if bias {
            Some(
                path.f_var(
                    "bias",
                    &[out_dim],
                    nn::Init::Uniform {
                        lo: -bound,
                        up: bound,
                    },
                )
                .with_context(|| format!("creating {name}.bias"))?,
            )
        } else {
            None
        };
        self.linear(&name, w, b, layout)
    }

    /// An embedding table `[num, dim]`, wrapped when `target_modules` selects it.
    pub fn embedding(
        &mut self,
        name: &str,
        weight: Tensor,
        padding_idx: Option<i64>,
    ) -> Result<LoraEmbedding> {
        if weight.dim() != 2 {
            return Err(Error::InvalidArgument(format!(
                "{name}.weight: expected a 2-D embedding table, found shape {:?}",
                weight.size()
            )));
        }
        let weight = weight.set_requires_grad(false);
        let mut layer = LoraEmbedding::plain(name, weight, padding_idx);
        let target = self
            .target(name)
            .map(|(r, alpha, scale, cfg)| (r, alpha, scale, cfg.init_lora_weights));
        if let Some((r, alpha, scale, init)) = target {
            let size = layer.weight.size();
            let opts = (self.adapter_kind, layer.weight.device());
            let r64 = r as i64;
            let (a, b) = match init {
                InitLoraWeights::Default | InitLoraWeights::Gaussian => (
                    Tensor::zeros([r64, size[0]], opts),
                    Tensor::randn([size[1], r64], opts),
                ),
                InitLoraWeights::Random => (
                    Tensor::randn([r64, size[0]], opts),
                    Tensor::randn([size[1], r64], opts),
                ),
            };
            let a = a.set_requires_grad(true);
            let b = b.set_requires_grad(true);
            let merged =
                self.record_adapter(name, &layer.weight, &a, &b, scale, MergeKind::Embedding);
            layer.adapter = Some(EmbeddingAdapter {
                a,
                b,
                r,
                alpha,
                scale,
                merged,
            });
        }
        let adapted = layer.adapter.is_some();
        self.register(
            name,
            "weight",
            &layer.weight,
            ModuleKind::Embedding,
            adapted,
        );
        Ok(layer)
    }

    /// A layer norm (never wrapped; its bias trains under `bias = "all"`).
    pub fn layer_norm(
        &mut self,
        name: &str,
        weight: Tensor,
        bias: Option<Tensor>,
        eps: f64,
    ) -> LayerNorm {
        let weight = weight.set_requires_grad(false);
        let bias = bias.map(|b| b.set_requires_grad(false));
        self.register(name, "weight", &weight, ModuleKind::Norm, false);
        if let Some(b) = &bias {
            self.register(name, "bias", b, ModuleKind::Norm, false);
        }
        LayerNorm {
            name: name.to_string(),
            weight,
            bias,
            eps,
        }
    }

    /// A norm weight of another kind (e.g. RMSNorm): registered so it can train when listed in
    /// `modules_to_save`.
    pub fn norm_weight(&mut self, module: &str, local: &str, t: Tensor) -> Tensor {
        let t = t.set_requires_grad(false);
        self.register(module, local, &t, ModuleKind::Norm, false);
        t
    }

    /// Any other parameter of module `module` (local name `local`, e.g. `weight`).
    pub fn param(&mut self, module: &str, local: &str, t: Tensor) -> Tensor {
        let t = t.set_requires_grad(false);
        self.register(module, local, &t, ModuleKind::Other, false);
        t
    }

    /// Names of the modules that can carry an adapter (linear and embedding layers).
    pub fn adaptable_modules(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .base
            .iter()
            .filter(|p| matches!(p.kind, ModuleKind::Linear | ModuleKind::Embedding))
            .map(|p| p.module.as_str())
            .collect();
        set.into_iter().map(String::from).collect()
    }

    /// Record that module `alias` shares the table of the trainable parameter `param` (see
    /// [`SavedTie`]); `param` must be trainable when [`Self::finish`] runs.
    pub fn tie_saved(&mut self, alias: &str, param: &str) {
        self.ties.push(SavedTie {
            alias: alias.to_string(),
            param: param.to_string(),
        });
    }

    /// Decide what trains (adapters, biases per `bias`, `modules_to_save`) and freeze the rest.
    /// A `target_modules` that selected nothing is an error listing the module names that
    /// exist; a `modules_to_save` entry that matches no module is ignored with a warning, as
    /// PEFT ignores it.
    pub fn finish(self) -> Result<LoraModel> {
        let mut trainable = Vec::new();
        if let Some(cfg) = &self.config {
            if self.adapters.is_empty() {
                let names = self.adaptable_modules();
                let saved = match &cfg.modules_to_save {
                    Some(m) if !m.is_empty() => format!(
                        " (a module inside modules_to_save {m:?} takes no adapter, as in PEFT)"
                    ),
                    _ => String::new(),
                };
                return Err(Error::NoTargetModule(format!(
                    "target_modules {} matches no module{saved}; modules that can take an adapter: {}",
                    serde_json::to_string(&cfg.target_modules).unwrap_or_default(),
                    module_summary(&names)
                )));
            }
            if let Some(list) = &cfg.modules_to_save {
                // PEFT wraps every module whose name ends with an entry and ignores entries
                // that match nothing (its SEQ_CLS task lists both `classifier` and `score`,
                // whichever the architecture has): warn, as that is most likely a typo when
                // the user wrote the entry.
                for m in list {
                    let matched = self
                        .base
                        .iter()
                        .any(|p| cfg.is_module_to_save_by(&p.module, m))
                        || self
                            .ties
                            .iter()
                            .any(|t| cfg.is_module_to_save_by(&t.alias, m));
                    if !matched {
                        let modules: BTreeSet<&str> =
                            self.base.iter().map(|p| p.module.as_str()).collect();
                        tracing::warn!(
                            "modules_to_save entry {m:?} matches no module (ignored, as PEFT does); modules: {}",
                            modules.into_iter().collect::<Vec<_>>().join(", ")
                        );
                    }
                }
            }
            for ad in &self.adapters {
                let (role_a, role_b) = ad.roles();
                let (sa, sb) = match role_a {
                    ParamRole::EmbeddingA => ("lora_embedding_A", "lora_embedding_B"),
                    _ => ("lora_A.weight", "lora_B.weight"),
                };
                trainable.push(TrainableParam {
                    name: format!("{}.{sa}", ad.module),
                    tensor: ad.merge.a.shallow_clone(),
                    role: role_a,
                });
                trainable.push(TrainableParam {
                    name: format!("{}.{sb}", ad.module),
                    tensor: ad.merge.b.shallow_clone(),
                    role: role_b,
                });
            }
            for p in &self.base {
                let role = if cfg.is_module_to_save(&p.module) {
                    Some(ParamRole::Head)
                } else if p.local == "bias" {
                    match cfg.bias {
                        BiasMode::All => Some(ParamRole::Bias),
                        BiasMode::LoraOnly if p.adapted => Some(ParamRole::Bias),
                        _ => None,
                    }
                } else {
                    None
                };
                if let Some(role) = role {
                    let _ = p.tensor.set_requires_grad(true);
                    trainable.push(TrainableParam {
                        name: format!("{}.{}", p.module, p.local),
                        tensor: p.tensor.shallow_clone(),
                        role,
                    });
                }
            }
        }
        let total_base: i64 = self.base.iter().map(|p| p.tensor.numel() as i64).sum();
        let total_adapter: i64 = self
            .adapters
            .iter()
            .map(|a| (a.merge.a.numel() + a.merge.b.numel()) as i64)
            .sum();
        let ties = self
            .ties
            .into_iter()
            .filter(|t| trainable.iter().any(|p: &TrainableParam| p.name == t.param))
            .collect();
        Ok(LoraModel {
            config: self.config,
            trainable,
            merges: self.adapters.into_iter().map(|a| a.merge).collect(),
            base: self.base,
            total_params: total_base + total_adapter,
            quant: self.quant,
            quantized: self.quantized,
            ties,
        })
    }
}

fn init_linear(
    r: i64,
    fin: i64,
    fout: i64,
    init: InitLoraWeights,
    opts: (Kind, Device),
) -> std::result::Result<(Tensor, Tensor), tch::TchError> {
    let _guard = tch::no_grad_guard();
    // kaiming_uniform_(a = sqrt(5)) on [r, in]: bound = sqrt(6 / ((1 + a^2) fan_in)) = 1/sqrt(in).
    // Fallible allocations: a size no memory holds is an error, not a panic.
    let kaiming = |rows: i64, fan_in: i64| {
        let bound = 1.0 / (fan_in as f64).sqrt();
        Tensor::f_empty([rows, fan_in], opts)?.f_uniform_(-bound, bound)
    };
    let (a, b) = match init {
        InitLoraWeights::Default => (kaiming(r, fin)?, Tensor::f_zeros([fout, r], opts)?),
        InitLoraWeights::Gaussian => (
            Tensor::f_empty([r, fin], opts)?.f_normal_(0.0, 1.0 / r as f64)?,
            Tensor::f_zeros([fout, r], opts)?,
        ),
        InitLoraWeights::Random => (kaiming(r, fin)?, kaiming(fout, r)?),
    };
    Ok((a.set_requires_grad(true), b.set_requires_grad(true)))
}

/// Trainable / all parameter counts, as PEFT's `print_trainable_parameters`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamSummary {
    /// Elements of the tensors that train.
    pub trainable: i64,
    /// Elements of every tensor, base and adapters.
    pub all: i64,
}

impl ParamSummary {
    /// `trainable` as a percentage of `all`.
    pub fn percent(&self) -> f64 {
        if self.all == 0 {
            0.0
        } else {
            100.0 * self.trainable as f64 / self.all as f64
        }
    }
}

impl std::fmt::Display for ParamSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            self.trainable,
            self.all,
            self.percent()
        )
    }
}

/// The registry of a model's parameters after injection: which train and in what role, and the
/// adapters to merge, unmerge, save and load.
#[derive(Debug)]
pub struct LoraModel {
    config: Option<LoraConfig>,
    trainable: Vec<TrainableParam>,
    merges: Vec<MergeHandle>,
    base: Vec<BaseParam>,
    total_params: i64,
    quant: Option<QuantScheme>,
    quantized: Vec<QuantEntry>,
    ties: Vec<SavedTie>,
}

/// Bytes of a model's base parameters, as loaded and as stored ([`LoraModel::base_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseBytes {
    /// Every base parameter in its dtype, as if nothing were quantized.
    pub full: i64,
    /// What the base holds: quantized linears at their quantized size, the rest as loaded.
    pub stored: i64,
    /// The linears' weights alone, in their dtype.
    pub quantizable_full: i64,
    /// The linears' weights alone, as stored (quantized values, scales and zeros).
    pub quantizable_stored: i64,
}

impl LoraModel {
    /// What each adapter merges into: its module's base weight, A, B and scale.
    pub(crate) fn merge_handles(&self) -> &[MergeHandle] {
        &self.merges
    }

    /// Whether the base of `module` is stored quantized.
    pub(crate) fn is_quantized_module(&self, module: &str) -> bool {
        self.quantized.iter().any(|q| q.module == module)
    }

    /// The config, or `None` for a model built by [`LoraBuilder::frozen`].
    pub fn config(&self) -> Option<&LoraConfig> {
        self.config.as_ref()
    }

    /// Modules sharing a trainable table, saved under both names (see [`SavedTie`]).
    pub fn saved_ties(&self) -> &[SavedTie] {
        &self.ties
    }

    /// Every trainable tensor with its name and role, in registration order.
    pub fn trainable_params(&self) -> &[TrainableParam] {
        &self.trainable
    }

    /// Names of the modules that carry an adapter.
    pub fn adapted_modules(&self) -> Vec<String> {
        self.merges.iter().map(|m| m.name.clone()).collect()
    }

    /// Trainable and total parameter counts.
    pub fn summary(&self) -> ParamSummary {
        ParamSummary {
            trainable: self.trainable.iter().map(|p| p.tensor.numel() as i64).sum(),
            all: self.total_params,
        }
    }

    /// All base parameters by full name (`module.local`), frozen or not.
    pub fn base_params(&self) -> impl Iterator<Item = (String, &Tensor)> {
        self.base
            .iter()
            .map(|p| (format!("{}.{}", p.module, p.local), &p.tensor))
    }

    /// The scheme the base linears are stored in, if the builder quantized them.
    pub fn quantization(&self) -> Option<QuantScheme> {
        self.quant
    }

    /// Whether some base weight is still quantized (not yet [`Self::dequantize_base`]d).
    pub fn is_quantized(&self) -> bool {
        self.quantized.iter().any(|e| e.quant.is_active())
    }

    /// Bytes of the base: in full precision, and as stored.
    pub fn base_bytes(&self) -> BaseBytes {
        let bytes = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        let full: i64 = self.base.iter().map(|p| bytes(&p.tensor)).sum();
        let (mut quantizable_full, mut quantizable_stored) = (0, 0);
        for p in &self.base {
            if p.kind == ModuleKind::Linear && p.local == "weight" {
                let q = self
                    .quantized
                    .iter()
                    .find(|e| e.module == p.module && e.quant.is_active());
                quantizable_full += bytes(&p.tensor);
                quantizable_stored += q.map_or(bytes(&p.tensor), |e| e.quant.nbytes());
            }
        }
        BaseBytes {
            full,
            stored: full - quantizable_full + quantizable_stored,
            quantizable_full,
            quantizable_stored,
        }
    }

    /// Replace every quantized base weight by its dequantized full-precision value (in the
    /// dtype it was loaded in) and free the quantized tensors: the layers then run as plain
    /// linears, and [`Self::merge`] and exporting the base work. What a merge of adapters
    /// trained on a quantized base starts from.
    pub fn dequantize_base(&self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for e in &self.quantized {
            if !e.quant.is_active() {
                continue;
            }
            let w = e.quant.dequantize().map_err(|err| Error::Context {
                context: format!("dequantizing {}", e.module),
                source: Box::new(err),
            })?;
            let w = match e.layout {
                WeightLayout::OutIn => w,
                WeightLayout::InOut => w.tr().contiguous(),
            };
            e.weight.shallow_clone().set_data(&w);
            e.quant.release();
        }
        Ok(())
    }

    /// Add scale * B A into every adapted base weight. With `safe`, a merge that would give
    /// NaN or Inf is refused, and the layers merged before it are unmerged again: the model is
    /// as it was. A quantized base must be [`Self::dequantize_base`]d first. In bf16/f16 a
    /// merge and unmerge round the base weights (PEFT's do too); in f32 they restore it to
    /// float error.
    pub fn merge(&self, safe: bool) -> Result<()> {
        if let Some(e) = self.quantized.iter().find(|e| e.quant.is_active()) {
            return Err(Error::InvalidArgument(format!(
                "{}: the base is stored {} and cannot take a merged adapter; call \
                 dequantize_base() first",
                e.module,
                e.quant.scheme()
            )));
        }
        for (i, m) in self.merges.iter().enumerate() {
            if let Err(e) = m.merge(safe) {
                for done in &self.merges[..i] {
                    done.unmerge()?;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Whether some adapter is merged into its base weight ([`Self::merge`]).
    pub fn is_merged(&self) -> bool {
        self.merges
            .iter()
            .any(|m| m.merged.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Subtract the merged updates again.
    pub fn unmerge(&self) -> Result<()> {
        for m in &self.merges {
            m.unmerge()?;
        }
        Ok(())
    }

    /// PEFT's key for a trainable parameter (as in `adapter_model.safetensors`).
    pub fn peft_key(&self, p: &TrainableParam) -> String {
        let name = match p.role {
            ParamRole::Bias => {
                // PEFT names the bias of a wrapped layer `<module>.base_layer.bias`.
                let module = p.name.strip_suffix(".bias").unwrap_or(&p.name);
                if self.merges.iter().any(|m| m.name == module) {
                    format!("{module}.base_layer.bias")
                } else {
                    p.name.clone()
                }
            }
            _ => p.name.clone(),
        };
        format!("{PEFT_PREFIX}{name}")
    }
}

/// The prefix PEFT puts before every key of `adapter_model.safetensors`.
pub const PEFT_PREFIX: &str = "base_model.model.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_summaries_fold_layer_indices() {
        let names: Vec<String> = [
            "bert.embeddings.word_embeddings",
            "bert.encoder.layer.0.attention.self.query",
            "bert.encoder.layer.0.output.dense",
            "bert.encoder.layer.1.attention.self.query",
            "bert.encoder.layer.1.output.dense",
            "classifier",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            module_summary(&names),
            "bert.embeddings.word_embeddings, bert.encoder.layer.{i}.attention.self.query (2), \
             bert.encoder.layer.{i}.output.dense (2), classifier; by last name part: \
             word_embeddings, query, dense, classifier"
        );
    }
}
