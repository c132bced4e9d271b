//! The model side of a run: loading with the run's LoRA config, the optimizer with the run's
//! schedule, one training micro-step, evaluation logits, merged-model export. The training loop
//! (`trainer.rs`) and the task kinds (`task/`) call these.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use loraplus_core::{BiasMode, LoraConfig, LoraModel, QuantScheme, TargetModules};
use loraplus_data::Batch;
use loraplus_models::{Head, LoadOptions, ModelConfig, ModelInputs, TaskModel};
use loraplus_optim::{LoraPlusAdamW, LoraPlusConfig, ParamGroup, Schedule, Warmup};

use crate::config::TrainConfig;
use crate::task::TrainTask;

pub type Model = TaskModel;

/// The optimizer as the loop uses it.
pub struct Optimizer(pub LoraPlusAdamW);

/// The weights dtype named by `f32`, `bf16` or `f16`.
pub fn kind_of(dtype: &str) -> Result<Kind> {
    Ok(match dtype {
        "f32" => Kind::Float,
        "bf16" => Kind::BFloat16,
        "f16" => Kind::Half,
        other => bail!("dtype must be f32, bf16 or f16, found {other:?}"),
    })
}

/// The model as the run names it: the config's folder or Hub repository id, else
/// `$LORAPLUS_MODEL_DIR`, else `.venv/minilm`.
pub fn model_ref(cfg: &TrainConfig) -> PathBuf {
    cfg.model
        .clone()
        .unwrap_or_else(loraplus_data::paths::model_dir)
}

/// The local folder of the run's model: [`model_ref`] as a folder, or a Hub repository id at
/// `cfg.revision` fetched into the Hub cache (settings from the `HF_*` environment variables;
/// see `loraplus_models::hub`).
pub fn model_dir(cfg: &TrainConfig) -> Result<PathBuf> {
    let model = model_ref(cfg);
    let refused = if model.is_dir() {
        None
    } else if cfg.model.is_none() {
        Some(format!(
            "no model given (--model, or `model` in the config) and the default model is not there: {} (`make setup` installs it as .venv/minilm in the repository, found from the current folder {} or its parents; ${} names another folder)",
            model.display(),
            std::env::current_dir().unwrap_or_default().display(),
            loraplus_data::paths::MODEL_DIR_ENV
        ))
    } else if !loraplus_models::hub::is_repo_id(&model.to_string_lossy()) {
        let what = if model.exists() {
            "is a file, not a model folder"
        } else {
            "does not exist"
        };
        Some(format!(
            "--model {} {what} (a folder with config.json, model.safetensors and tokenizer.json, or a Hub repository id such as Qwen/Qwen2.5-0.5B)",
            model.display()
        ))
    } else {
        None
    };
    if let Some(msg) = refused {
        return Err(anyhow::Error::new(UnusableModel(msg)));
    }
    loraplus_models::hub::resolve_model(
        &model,
        cfg.revision.as_deref(),
        &loraplus_models::hub::HubOptions::from_env(),
    )
    .with_context(|| {
        format!(
            "there is no folder {} here (relative to {}), so it was taken as a Hub repository id",
            model.display(),
            std::env::current_dir().unwrap_or_default().display()
        )
    })
}

/// The run's `max_seq_len` for the model in `model_dir`: the config's, which must fit the
/// model's position table (learned positions: BERT, RoBERTa, GPT-2, DeBERTa-v2; refused up
/// front rather than at the first batch that long); unset, the task's default
/// ([`TrainConfig::max_seq_len`]), no longer than the table.
pub fn resolve_max_seq_len(cfg: &TrainConfig, model_dir: &Path) -> Result<usize> {
    let mc = ModelConfig::from_file(model_dir.join("config.json"))?;
    let limit = mc.max_positions();
    match (cfg.max_seq_len, limit) {
        (Some(n), Some(max)) if n as i64 > max => Err(anyhow::Error::new(UnusableModel(format!(
            "field `max_seq_len` (--max-seq-len) is {n}, but {} ({}) has {max} positions: use at most {max}",
            model_dir.display(),
            mc.model_type()
        )))),
        (Some(n), _) => Ok(n),
        (None, _) => {
            let default = cfg.max_seq_len();
            let n = limit.map_or(default, |l| default.min(l.max(1) as usize));
            tracing::info!(
                "max_seq_len {n} (the default for task {:?}{}; --max-seq-len sets it)",
                cfg.task,
                if n < default { ", capped by the model's positions" } else { "" }
            );
            Ok(n)
        }
    }
}

/// The run's model is not a folder here and cannot be a Hub repository id either, or it is not
/// the kind the task needs (an encoder given to a causal-LM task). The `loraplus` binary exits
/// 2: the user's input.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnusableModel(pub String);

/// The id that classification and regression batches are padded with: the model config's
/// `pad_token_id` where it names a row of the vocabulary, else the tokenizer's pad id. The
/// decoders' score head reads the rightmost token that is not `pad_token_id` (as transformers
/// does) and RoBERTa counts positions from it, so padding with any other id (a tokenizer.json
/// without padding falls back to 0) would move both.
pub fn batch_pad_id(model_dir: &Path, tokenizer_pad: u32) -> Result<u32> {
    let mc = ModelConfig::from_file(model_dir.join("config.json"))?;
    Ok(match mc.pad_token_id() {
        Some(p) if (0..mc.vocab_size()).contains(&p) => {
            if p != i64::from(tokenizer_pad) {
                tracing::debug!(
                    "padding with config.json's pad_token_id {p} (the tokenizer's is {tokenizer_pad})"
                );
            }
            p as u32
        }
        _ => tokenizer_pad,
    })
}

/// The tokenizer of a decoder for causal-LM work (training, scoring, generation): an encoder's
/// folder is refused by its `model_type` before its tokenizer is asked for an EOS token.
pub fn decoder_tokenizer(model_dir: &Path) -> Result<loraplus_data::lm::LmTokenizer> {
    let config = model_dir.join("config.json");
    let mc = ModelConfig::from_file(&config)?;
    if !mc.arch().causal_lm() {
        return Err(anyhow::Error::new(UnusableModel(format!(
            "{} is {} (an encoder): causal-LM training, multiple-choice scoring and generation need a decoder ({})",
            model_dir.display(),
            mc.model_type(),
            loraplus_models::registry::causal_lm_model_types().join(", ")
        ))));
    }
    loraplus_data::lm::LmTokenizer::from_model_dir(model_dir)
}

/// The LoRA config of a run: the architecture's recommended config (targets, heads to save,
/// GPT-2's fan_in_fan_out) with the run's `[lora]` section on top.
pub fn lora_config(cfg: &TrainConfig, recommended: LoraConfig) -> Result<LoraConfig> {
    let l = &cfg.lora;
    let bias = match l.bias.as_str() {
        "all" => BiasMode::All,
        "lora_only" => BiasMode::LoraOnly,
        _ => BiasMode::None,
    };
    let mut lc = LoraConfig {
        r: l.r,
        lora_alpha: l.lora_alpha,
        lora_dropout: l.lora_dropout,
        use_rslora: l.use_rslora,
        bias,
        // A folder as an absolute path: the adapter's base is found from any folder.
        base_model_name_or_path: Some({
            let m = model_ref(cfg);
            std::fs::canonicalize(&m).unwrap_or(m).display().to_string()
        }),
        ..recommended
    };
    if let Some(t) = &l.target_modules {
        lc.target_modules = Some(TargetModules::List(t.clone()));
    }
    if let Some(m) = &l.modules_to_save {
        lc.modules_to_save = (!m.is_empty()).then(|| m.clone());
    }
    // A tied table in modules_to_save trains as one table on both sides (PEFT's
    // ensure_weight_tying; written to the adapter only where the model ties them).
    lc.other
        .insert("ensure_weight_tying".into(), serde_json::Value::Bool(true));
    lc.validate().context("section [lora]")?;
    Ok(lc)
}

/// The prefix of transformers' class names for a `model_type` (`bert` -> `Bert`, `gpt2` ->
/// `GPT2`, `deberta-v2` -> `DebertaV2`): each `-`/`_`-separated part capitalised.
pub fn class_prefix(model_type: &str) -> String {
    match model_type {
        "gpt2" => "GPT2".into(),
        "modernbert" => "ModernBert".into(),
        "smollm3" => "SmolLM3".into(),
        other => other
            .split(['-', '_'])
            .map(|part| {
                let mut c = part.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect::<String>())
                    .unwrap_or_default()
            })
            .collect(),
    }
}

/// Keep freed CPU memory in the process instead of handing it back to the kernel after every
/// step. libtorch allocates each step's activations with glibc's `malloc`, which by default
/// serves blocks over a (dynamic) threshold with fresh `mmap`s and trims the heap top on free, so
/// every step pays page faults and zeroing again. Raising the mmap threshold to its maximum
/// (32 MiB), the trim threshold to 1 GiB and the top pad to 64 MiB keeps those pages mapped:
/// steady-state RSS is the same (the same activations), steps are 3-10% faster on the CPU.
/// Process-wide, so never called by the library on its own: the `loraplus` binary calls it
/// (through [`crate::trainer::apply_process_settings`]), as may a program of yours; a no-op
/// off glibc. Returns whether every setting was accepted.
pub fn tune_cpu_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; any value is accepted or refused.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
                && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Load the model with the run's adapter (targets default to the architecture's).
pub fn load_model(
    cfg: &TrainConfig,
    head: Head,
    dir: &Path,
    device: Device,
) -> Result<(Model, LoraModel)> {
    let mc = ModelConfig::from_file(dir.join("config.json"))?;
    let lc = lora_config(
        cfg,
        mc.recommended_lora_config(head, cfg.lora.r, cfg.lora.lora_alpha),
    )?;
    let opts = LoadOptions {
        task: head,
        dtype: kind_of(&cfg.dtype)?,
        device,
        lora: Some(lc),
        seed: cfg.seed as i64,
        checkpointing: cfg.gradient_checkpointing,
        quantize: cfg.quant_scheme()?,
        ..LoadOptions::default()
    };
    TaskModel::load(dir, &opts)
}

/// Load the model for a given adapter (eval and merge: the heads the checkpoint lacks come
/// from the adapter, whose weights the caller loads next), its base quantized when
/// `quantize` says so. `for_merge`: a tied `lm_head` gets its own table when the adapter is on
/// it or on the embeddings ([`LoadOptions::untie_adapted_head`]).
pub fn load_model_with_lora(
    dir: &Path,
    head: Head,
    lc: LoraConfig,
    device: Device,
    dtype: &str,
    quantize: Option<QuantScheme>,
    for_merge: bool,
) -> Result<(Model, LoraModel)> {
    let opts = LoadOptions {
        task: head,
        dtype: kind_of(dtype)?,
        device,
        lora: Some(lc),
        quantize,
        heads_from_adapter: true,
        untie_adapted_head: for_merge,
        ..LoadOptions::default()
    };
    TaskModel::load(dir, &opts)
}

/// One line on the base's memory when it is quantized: bytes before and after, and the
/// linears' share.
pub fn quantization_summary(lora: &LoraModel) -> Option<String> {
    let scheme = lora.quantization()?;
    let b = lora.base_bytes();
    let mib = |x: i64| x as f64 / (1 << 20) as f64;
    Some(format!(
        "base quantized {scheme}: {:.1} MiB -> {:.1} MiB ({:.2}x); linear weights {:.1} MiB -> {:.1} MiB ({:.2}x)",
        mib(b.full),
        mib(b.stored),
        b.stored as f64 / b.full.max(1) as f64,
        mib(b.quantizable_full),
        mib(b.quantizable_stored),
        b.quantizable_stored as f64 / b.quantizable_full.max(1) as f64,
    ))
}

/// The LoRA+ AdamW with the run's groups and schedule.
pub fn build_optimizer(
    cfg: &TrainConfig,
    lora: &LoraModel,
    total_steps: usize,
) -> Result<Optimizer> {
    let o = &cfg.optim;
    let oc = LoraPlusConfig {
        lr: o.lr,
        ratio: o.loraplus_ratio,
        lr_embedding: o.lr_embedding,
        weight_decay: o.weight_decay,
        betas: (o.beta1, o.beta2),
        eps: o.eps,
        amsgrad: false,
        head_lr: o.head_lr,
    };
    let warmup = match o.warmup_steps {
        Some(s) => Warmup::Steps(s as u64),
        None => Warmup::Ratio(o.warmup_ratio),
    };
    let total = total_steps as u64;
    let schedule = match o.schedule.as_str() {
        "constant" if warmup.steps(total) == 0 => Schedule::Constant,
        "constant" => Schedule::ConstantWithWarmup {
            warmup,
            total_steps: total,
        },
        "cosine" => Schedule::cosine(warmup, total),
        _ => Schedule::linear(warmup, total),
    };
    let opt =
        LoraPlusAdamW::new(lora.trainable_params(), &oc, schedule).context("section [optim]")?;
    Ok(Optimizer(opt))
}

impl Optimizer {
    /// Clip (when `max_norm > 0`), step, zero the gradients. Returns the pre-clip norm as a
    /// device tensor (no host sync).
    pub fn clip_and_step(&mut self, max_norm: f64) -> Result<Option<Tensor>> {
        let norm = if max_norm > 0.0 {
            Some(self.0.clip_grad_norm(max_norm)?)
        } else {
            None
        };
        self.0.step()?;
        self.0.zero_grad()?;
        Ok(norm)
    }

    /// Gradients accumulated and ready (the optimizer's one gradient-handling place), then
    /// unscaled by `scaler`; false when they hold Inf/NaN (the step must be skipped).
    pub fn unscale(&mut self, scaler: &mut crate::loss_scale::LossScaler) -> Result<bool> {
        self.0.sync_grads()?;
        let grads = self.0.grad_buffers();
        scaler.unscale_and_check(&grads)
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        self.0.zero_grad()
    }

    /// Learning rates of groups A and B at the current step.
    pub fn lrs(&self) -> (f64, f64) {
        let a = self.0.lr_of(ParamGroup::A).unwrap_or(f64::NAN);
        let b = self.0.lr_of(ParamGroup::B).unwrap_or(f64::NAN);
        (a, b)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        self.0.save(dir)
    }

    pub fn load(&mut self, dir: &Path) -> Result<()> {
        self.0.load(dir)
    }

    /// Restore a checkpoint's optimizer state (moments, step count) and keep this run's
    /// hyper-parameters and schedule (a resumed run may lower the lr or train longer); returns
    /// what they change from the checkpoint's, if anything.
    pub fn load_keeping_settings(&mut self, dir: &Path) -> Result<Option<String>> {
        let (config, schedule) = (*self.0.config(), *self.0.schedule());
        self.0.load(dir)?;
        let (saved, saved_schedule) = (*self.0.config(), *self.0.schedule());
        self.0
            .set_hyper_params(&config, schedule)
            .context("this run's [optim] against the checkpoint's optimizer")?;
        let mut changed = Vec::new();
        if saved != config {
            changed.push(format!("{saved:?} -> {config:?}"));
        }
        if saved_schedule != schedule {
            changed.push(format!("schedule {saved_schedule:?} -> {schedule:?}"));
        }
        Ok((!changed.is_empty()).then(|| changed.join("; ")))
    }
}

pub fn optimizer_summary(opt: &Optimizer) -> String {
    opt.0.summary().to_string()
}

/// Forward and backward of one micro-batch (gradients scaled by `scale`); the detached loss.
pub fn train_micro_step(
    model: &Model,
    batch: &Batch,
    device: Device,
    scale: f64,
) -> Result<Tensor> {
    let labels = batch
        .labels
        .as_ref()
        .context("a training batch without labels")?;
    let (ids, mask, types, positions) = batch_on(model, batch, device);
    let inputs = ModelInputs {
        input_ids: &ids,
        attention_mask: &mask,
        token_type_ids: types.as_ref(),
        position_ids: positions.as_ref(),
    };
    let out = model.forward_backward_inputs(&inputs, &labels.to_device(device), true, scale)?;
    Ok(out.loss)
}

/// Eval-mode logits of a batch.
pub fn eval_logits(model: &Model, batch: &Batch, device: Device) -> Result<Tensor> {
    let (ids, mask, types, positions) = batch_on(model, batch, device);
    let inputs = ModelInputs {
        input_ids: &ids,
        attention_mask: &mask,
        token_type_ids: types.as_ref(),
        position_ids: positions.as_ref(),
    };
    model.forward_inputs(&inputs, false)
}

/// A batch's model inputs on `device`: ids, mask, token types (encoders only, DeBERTa's
/// included: a decoder's tokenizer gives none, and GPT-2 would add `wte(token_type_ids)` to
/// every position, as transformers does when they are passed), position ids (packed rows only).
fn batch_on(
    model: &Model,
    batch: &Batch,
    device: Device,
) -> (Tensor, Tensor, Option<Tensor>, Option<Tensor>) {
    let ids = batch.input_ids.to_device(device);
    let mask = batch.attention_mask.to_device(device);
    let encoder = matches!(
        model.config().model_type(),
        "bert" | "roberta" | "deberta-v2"
    );
    let types = encoder.then(|| batch.token_type_ids.to_device(device));
    let positions = batch.position_ids.as_ref().map(|p| p.to_device(device));
    (ids, mask, types, positions)
}

/// Write the merged model: every base parameter (adapters already merged in) as
/// `model.safetensors`, the HuggingFace config with the task head's fields, and the tokenizer.
pub fn write_merged(
    model: &Model,
    lora: &LoraModel,
    src: &Path,
    task: &dyn TrainTask,
    out: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, t) in lora.base_params() {
        if seen.insert(name.clone()) {
            tensors.push((name, t.detach().to_kind(Kind::Float)));
        }
    }
    let meta = std::collections::BTreeMap::from([("format".to_string(), "pt".to_string())]);
    loraplus_core::write_safetensors(&out.join("model.safetensors"), &tensors, &meta)?;
    let cfg_path = src.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", cfg_path.display()))?;
    if let Some(obj) = cfg.as_object_mut() {
        obj.insert(
            "architectures".into(),
            serde_json::json!([task.merged_architecture(model.config().model_type())]),
        );
        obj.insert("torch_dtype".into(), "float32".into());
        if obj.contains_key("dtype") {
            // transformers 5 reads `dtype` before `torch_dtype`.
            obj.insert("dtype".into(), "float32".into());
        }
        if model.untied_head() {
            // The merged head differs from the merged embeddings: both are written.
            obj.insert("tie_word_embeddings".into(), false.into());
        }
        task.merged_config(obj);
    }
    loraplus_core::io::write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    for f in loraplus_models::hub::OPTIONAL_FILES {
        let p = src.join(f);
        if p.exists() {
            std::fs::copy(&p, out.join(f)).with_context(|| format!("copying {}", p.display()))?;
        }
    }
    Ok(())
}

/// Token ids the tokenizer gave (and the padding id) must be rows of the model's embedding: a
/// tokenizer with tokens the model lacks (added tokens without resized embeddings, another
/// model's tokenizer) is refused here, naming the id and the vocabulary size, instead of
/// failing inside the embedding lookup. So are token type ids past `type_vocab_size` (pairs
/// given to a model with one type). Refusals are [`crate::task::BadData`].
pub fn check_token_ids(
    model: &Model,
    pad_id: u32,
    sets: &[(&str, &loraplus_data::TokenizedDataset)],
) -> Result<()> {
    let vocab = model.config().vocab_size();
    let too_big = |id: u32| i64::from(id) >= vocab;
    let types = model.config().type_vocab_size();
    for (what, data) in sets {
        if let Some(id) = data.max_input_id().filter(|&id| too_big(id)) {
            return Err(crate::task::bad_data(anyhow::anyhow!(
                "the {what} holds token id {id}, outside the model's vocabulary of {vocab} (config.json vocab_size): is the tokenizer the model's own, or were tokens added without resizing the embeddings?"
            )));
        }
        if let (Some(types), Some(t)) = (types, data.max_token_type_id()) {
            if i64::from(t) >= types {
                return Err(crate::task::bad_data(anyhow::anyhow!(
                    "the {what} holds token type id {t} (the second text of a pair), but this model has type_vocab_size {types} (config.json): give it single texts, or use a model trained on pairs"
                )));
            }
        }
    }
    if too_big(pad_id) {
        return Err(crate::task::bad_data(anyhow::anyhow!(
            "the padding id {pad_id} is outside the model's vocabulary of {vocab} (config.json vocab_size): set a pad token the model has (tokenizer.json padding / pad_token)"
        )));
    }
    Ok(())
}

/// The libtorch version this binary was built against.
pub fn libtorch_version() -> &'static str {
    option_env!("LORAPLUS_LIBTORCH_VERSION").unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    #[test]
    fn class_prefixes_are_transformers_class_names() {
        for (model_type, prefix) in [
            ("bert", "Bert"),
            ("roberta", "Roberta"),
            ("gpt2", "GPT2"),
            ("llama", "Llama"),
            ("qwen2", "Qwen2"),
            ("qwen3", "Qwen3"),
            ("gemma", "Gemma"),
            ("deberta-v2", "DebertaV2"),
            ("modernbert", "ModernBert"),
            ("smollm3", "SmolLM3"),
            ("gemma3_text", "Gemma3Text"),
        ] {
            assert_eq!(super::class_prefix(model_type), prefix);
        }
    }

    /// Unset, `max_seq_len` is the task's default (64, or 1024 for a causal LM) capped by a
    /// learned position table; set, it must fit the table.
    #[test]
    fn max_seq_len_defaults_by_task_and_fits_the_position_table() {
        let dir = tempfile::tempdir().unwrap();
        let model = |name: &str, config: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("config.json"), config).unwrap();
            d
        };
        let gpt2 = model("gpt2", r#"{"model_type": "gpt2", "n_positions": 128}"#);
        let llama = model("llama", r#"{"model_type": "llama"}"#);
        let cfg = |task: &str, n: Option<usize>| crate::config::TrainConfig {
            task: task.into(),
            max_seq_len: n,
            ..Default::default()
        };
        let resolve = |task: &str, n: Option<usize>, dir: &std::path::Path| {
            super::resolve_max_seq_len(&cfg(task, n), dir)
        };
        assert_eq!(resolve("causal-lm", None, &llama).unwrap(), 1024);
        assert_eq!(resolve("causal-lm", None, &gpt2).unwrap(), 128);
        assert_eq!(resolve("multiple-choice", None, &llama).unwrap(), 1024);
        assert_eq!(resolve("sst2", None, &gpt2).unwrap(), 64);
        assert_eq!(resolve("causal-lm", Some(100), &gpt2).unwrap(), 100);
        assert_eq!(resolve("causal-lm", Some(4096), &llama).unwrap(), 4096);
        let e = resolve("causal-lm", Some(129), &gpt2).unwrap_err();
        assert!(e.downcast_ref::<super::UnusableModel>().is_some(), "{e:#}");
        assert!(
            format!("{e:#}").contains("field `max_seq_len` (--max-seq-len) is 129")
                && format!("{e:#}").contains("has 128 positions"),
            "{e:#}"
        );
    }
}
