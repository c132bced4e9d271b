//! loraplus-core: LoRA adapters as libtorch tensors, for any model built on tch.
//!
//! A model hands each of its layers to a [`LoraBuilder`] while it is built; the builder wraps
//! the ones `target_modules` selects ([`LoraLinear`], [`LoraEmbedding`]) and `finish`es into a
//! [`LoraModel`]: the registry of trainable tensors with their [`ParamRole`], merge/unmerge,
//! and PEFT-format save/load.

pub mod config;
pub mod dropout;
pub mod io;
pub mod layers;
pub mod model;

pub use config::{BiasMode, InitLoraWeights, LayerIndices, LoraConfig, TargetModules};
pub use io::{
    read_adapter_config, read_safetensors, write_safetensors, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};
pub use layers::{FusedLinears, LayerNorm, LoraEmbedding, LoraLinear, WeightLayout};
pub use model::{LoraBuilder, LoraModel, ParamRole, ParamSummary, TrainableParam, PEFT_PREFIX};
