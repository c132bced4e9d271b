//! loraplus-models: BERT (MiniLM), RoBERTa, GPT-2 and Llama loaded straight from HuggingFace
//! safetensors checkpoints, with every layer handed to a [`loraplus_core::LoraBuilder`] under
//! HuggingFace's module name, so LoRA targets are the names users already write.
//!
//! Classification and regression heads for all four; the causal-LM head for GPT-2 and Llama,
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

pub mod attention;
pub mod backbone;
pub mod bert;
pub mod config;
pub mod generate;
pub mod gpt2;
pub mod heads;
pub mod llama;
pub mod roberta;
pub mod task;
pub mod weights;

pub use config::{
    Activation, BertConfig, Gpt2Config, LlamaConfig, ModelConfig, SUPPORTED_MODEL_TYPES,
};
pub use generate::GenerationConfig;
pub use heads::{last_token_index, loss, Head, IGNORE_INDEX};
pub use task::{
    default_model_dir, find_default_model_dir, LoadOptions, ModelInputs, StepOutput, TaskModel,
    DEFAULT_MODEL_SUBDIR, DEFAULT_SEED, MODEL_DIR_ENV,
};
pub use weights::Weights;
