//! loraplus-models: BERT (MiniLM), RoBERTa, DeBERTa-v2, ModernBERT, GPT-2, Llama, Qwen2, Qwen3,
//! Mistral, Gemma, Gemma 2, Gemma 3, Phi-3, OLMo 2, OLMo 3 and SmolLM3 loaded straight from
//! HuggingFace safetensors checkpoints, with every layer handed to a
//! [`loraplus_core::LoraBuilder`] under HuggingFace's module name, so LoRA targets are the
//! names users already write. One file per architecture, registered by `model_type` in the
//! `architectures!` list below ([`registry`]); RoPE scaling in [`rope`].
//!
//! Classification and regression heads for all; the causal-LM head for the decoders,
//! with packed rows (per-document position ids) in training, KV-cache generation
//! ([`TaskModel::generate`], [`GenerationConfig`]) and continuation log-likelihoods for
//! multiple choice ([`TaskModel::continuation_logprobs`]).
//!
//! ```no_run
//! use loraplus_models::{Head, LoadOptions, TaskModel};
//! # fn main() -> anyhow::Result<()> {
//! let opts = LoadOptions { task: Head::SequenceClassification { num_labels: 2 }, ..Default::default() };
//! let (model, lora) = TaskModel::load(&loraplus_models::default_model_dir(), &opts)?;
//! # Ok(()) }
//! ```

pub mod arch;
pub mod attention;
pub mod backbone;
pub mod config;
pub mod generate;
pub mod heads;
pub mod hub;
pub mod registry;
pub mod rope;
pub mod task;
pub mod weights;

/// Declares each architecture's module and registers its `parse` under its `model_type`
/// ([`registry::ARCHITECTURES`]).
macro_rules! architectures {
    ($($model_type:literal => $module:ident),* $(,)?) => {
        $(pub mod $module;)*
        pub(crate) const ARCHITECTURES: &[(&str, registry::Parse)] =
            &[$(($model_type, $module::parse)),*];
    };
}

// The architectures, one line each, in the order errors list them.
architectures! {
    "bert" => bert,
    "roberta" => roberta,
    "gpt2" => gpt2,
    "llama" => llama,
    "qwen2" => qwen2,
    "qwen3" => qwen3,
    "mistral" => mistral,
    "gemma" => gemma,
    "gemma2" => gemma2,
    "gemma3_text" => gemma3,
    "phi3" => phi3,
    "olmo2" => olmo2,
    "olmo3" => olmo3,
    "smollm3" => smollm3,
    "deberta-v2" => deberta_v2,
    "modernbert" => modernbert,
}

pub use arch::Architecture;
pub use config::{Activation, BertConfig, Gpt2Config, LlamaConfig, ModelConfig, RobertaConfig};
pub use generate::GenerationConfig;
pub use heads::{last_token_index, loss, Head, IGNORE_INDEX};
pub use registry::supported_model_types;
pub use task::{
    default_model_dir, find_default_model_dir, LoadOptions, ModelInputs, StepOutput, TaskModel,
    DEFAULT_MODEL_SUBDIR, DEFAULT_SEED, MODEL_DIR_ENV,
};
pub use weights::Weights;

/// The model folder's files are not a checkpoint this crate can load: a `config.json` that
/// does not parse, names an unsupported `model_type` or inconsistent sizes; safetensors that
/// do not parse; a tensor missing, or of the wrong shape or dtype. A fault of the files given,
/// not of the run (the `loraplus` binary exits 2). The message names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadCheckpoint(pub String);

/// The inputs of a forward pass or a loss do not fit the model: `input_ids` of another shape,
/// dtype or device, token ids outside the vocabulary, a sequence longer than the model's
/// positions, position ids out of range, labels of the wrong shape or class ids out of range.
/// A fault of the caller's tensors, not of the model; the message names the input, what was
/// found and what is expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// An [`anyhow::Error`] holding a [`BadInput`].
pub(crate) fn bad_input(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadInput(msg.into()))
}

/// An [`anyhow::Error`] holding a [`BadCheckpoint`].
pub(crate) fn bad_checkpoint(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadCheckpoint(msg.into()))
}
