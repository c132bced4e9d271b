//! loraplus-core: LoRA adapters as libtorch tensors, for any model built on tch.
//!
//! A model hands each of its layers to a [`LoraBuilder`] while it is built; the builder wraps
//! the ones `target_modules` selects ([`LoraLinear`], [`LoraEmbedding`]) and `finish`es into a
//! [`LoraModel`]: the registry of trainable tensors with their [`ParamRole`], merge/unmerge,
//! and PEFT-format save/load. Errors are [`Error`] variants (see [`error`]).
//!
//! # With a `tch::nn::VarStore`
//!
//! [`LoraBuilder::linear_in`] creates a layer's base weight and bias as variables of the
//! VarStore, under the `nn::Path`'s name, and freezes them; [`LoraBuilder::linear`] takes
//! tensors you already have (shallow clones share their storage). The adapters' A and B are
//! *not* VarStore variables: the [`LoraModel`] holds them, lists them for the optimizer
//! ([`LoraModel::trainable_params`]) and saves and loads them ([`LoraModel::save_pretrained`],
//! [`LoraModel::load_adapter`]); `VarStore::save` writes the base only. A and B are created on
//! the device of the base weight, so put the VarStore on its device before building:
//! `VarStore::set_device` afterwards moves the base but not the adapters. To change device,
//! build again on the new one and load the saved adapter. Layers never handed to the builder
//! are neither frozen nor saved by it. `examples/own_model.rs` in the repository does all this
//! for a small MLP and checks the saved adapter in PEFT.
#![warn(missing_docs)]

pub mod config;
pub mod dropout;
pub mod error;
pub mod io;
pub mod layers;
pub mod model;
pub mod quant;

pub use config::{BiasMode, InitLoraWeights, LayerIndices, LoraConfig, TargetModules};
pub use error::{Error, Result};
pub use io::{
    read_adapter_config, read_safetensors, write_safetensors, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};
pub use layers::{FusedLinears, LayerNorm, LoraEmbedding, LoraLinear, WeightLayout};
pub use model::{
    BaseBytes, LoraBuilder, LoraModel, ParamRole, ParamSummary, SavedTie, TrainableParam,
    PEFT_PREFIX,
};
pub use quant::{QuantScheme, QuantizedWeight};
