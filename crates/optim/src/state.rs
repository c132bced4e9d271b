//! Optimizer state for resuming: `optimizer.safetensors` (moments, master weights) and
//! `optimizer.json` (step, hyper-parameters, schedule, and the layout the tensors belong to).
//!
//! Resume is exact: N steps, save, load into a fresh optimizer over a model holding the saved
//! weights, M steps gives bitwise the parameters of N + M straight steps. Loading checks the
//! layout (group, dtype, name and shape of every tensor, in order) before touching anything,
//! so a state file from another model is refused with the first difference named.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::error::Error;
use anyhow::{bail, Context, Result};
use loraplus_core::io::{tensor_from_view, write_atomic, write_safetensors};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::adamw::LoraPlusAdamW;
use crate::config::LoraPlusConfig;
use crate::flat::{compute_kind, kind_from_name, kind_name};
use crate::groups::ParamGroup;
use crate::schedule::Schedule;

/// File of the state tensors inside a checkpoint directory.
pub const STATE_TENSORS_FILE: &str = "optimizer.safetensors";
/// File of the state metadata inside a checkpoint directory.
pub const STATE_META_FILE: &str = "optimizer.json";

const FORMAT: &str = "loraplus-optim";
const VERSION: u32 = 1;
/// safetensors header key holding the step, to catch a JSON and a tensor file of different
/// saves.
const STEP_KEY: &str = "loraplus_step";

/// One trained tensor as the state file records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamMeta {
    /// The parameter's name.
    pub name: String,
    /// Its role (`ParamRole` as text).
    pub role: String,
    /// Its shape.
    pub shape: Vec<i64>,
}

/// One (group, dtype) flat buffer of the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketMeta {
    /// The group's name.
    pub group: String,
    /// The parameters' dtype.
    pub dtype: String,
    /// Elements in the buffer.
    pub numel: i64,
    /// The group's learning rate before the schedule.
    pub lr: f64,
    /// The group's weight decay.
    pub weight_decay: f64,
    /// The parameters in the buffer, in order.
    pub params: Vec<ParamMeta>,
}

/// `optimizer.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateMeta {
    /// The file format's name.
    pub format: String,
    /// The file format's version.
    pub version: u32,
    /// Completed optimizer steps.
    pub step: u64,
    /// The optimizer's hyper-parameters.
    pub config: LoraPlusConfig,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// One entry per (group, dtype) buffer.
    pub buckets: Vec<BucketMeta>,
}

/// The optimizer's state: metadata plus CPU copies of the state tensors, keyed
/// `<group>.<dtype>.<exp_avg | exp_avg_sq | max_exp_avg_sq | master>`.
#[derive(Debug)]
pub struct OptimizerState {
    /// What `optimizer.json` holds.
    pub meta: StateMeta,
    /// The state tensors, as `optimizer.safetensors` holds them.
    pub tensors: Vec<(String, Tensor)>,
}

fn key(group: ParamGroup, kind: Kind, what: &str) -> String {
    format!("{}.{}.{what}", group.name(), kind_name(kind))
}

impl OptimizerState {
    /// Write `dir/optimizer.safetensors` then `dir/optimizer.json`, each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let metadata = BTreeMap::from([
            ("format".to_string(), "pt".to_string()),
            (STEP_KEY.to_string(), self.meta.step.to_string()),
        ]);
        write_safetensors(&dir.join(STATE_TENSORS_FILE), &self.tensors, &metadata)?;
        let json = serde_json::to_string_pretty(&self.meta)?;
        Ok(write_atomic(&dir.join(STATE_META_FILE), json.as_bytes())?)
    }

    /// Read what [`Self::save`] wrote.
    pub fn load(dir: &Path) -> Result<Self> {
        let meta_path = dir.join(STATE_META_FILE);
        let text = std::fs::read_to_string(&meta_path)
            .with_context(|| format!("reading {}", meta_path.display()))?;
        let meta: StateMeta = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a loraplus optimizer state", meta_path.display()))?;
        if meta.format != FORMAT || meta.version != VERSION {
            bail!(Error::BadState(format!(
                "{}: format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                meta_path.display(),
                meta.format,
                meta.version
            )));
        }
        let path = dir.join(STATE_TENSORS_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            Error::BadState(format!(
                "{}: not a valid safetensors file: {e}",
                path.display()
            ))
        })?;
        let saved_step = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(STEP_KEY).cloned());
        if saved_step.as_deref() != Some(meta.step.to_string().as_str()) {
            bail!(Error::BadState(format!(
                "{} is from step {}, {} from step {}: the two files come from different saves",
                path.display(),
                saved_step.as_deref().unwrap_or("?"),
                STATE_META_FILE,
                meta.step
            )));
        }
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::BadState(format!(
                "{}: not a valid safetensors file: {e}",
                path.display()
            ))
        })?;
        let mut tensors = Vec::new();
        for (name, view) in st.tensors() {
            let t = tensor_from_view(&view)
                .with_context(|| format!("{}: tensor {name}", path.display()))?;
            tensors.push((name, t));
        }
        Ok(OptimizerState { meta, tensors })
    }
}

/// One tensor of a layout, flattened for comparison.
#[derive(PartialEq)]
struct LayoutEntry<'a> {
    group: &'a str,
    dtype: &'a str,
    name: &'a str,
    shape: &'a [i64],
}

impl std::fmt::Display for LayoutEntry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} ({}, {})",
            self.name, self.shape, self.group, self.dtype
        )
    }
}

fn flatten(buckets: &[BucketMeta]) -> Vec<LayoutEntry<'_>> {
    buckets
        .iter()
        .flat_map(|b| {
            b.params.iter().map(move |p| LayoutEntry {
                group: &b.group,
                dtype: &b.dtype,
                name: &p.name,
                shape: &p.shape,
            })
        })
        .collect()
}

impl LoraPlusAdamW {
    fn layout(&self) -> Vec<BucketMeta> {
        self.buckets
            .iter()
            .enumerate()
            .map(|(bi, b)| BucketMeta {
                group: b.group.name().to_string(),
                dtype: kind_name(b.kind).to_string(),
                numel: b.numel,
                lr: b.base_lr,
                weight_decay: b.weight_decay,
                params: self
                    .slots
                    .iter()
                    .filter(|s| s.bucket == bi)
                    .map(|s| ParamMeta {
                        name: s.name.clone(),
                        role: format!("{:?}", s.role),
                        shape: s.shape.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// The state to resume from: step, hyper-parameters, schedule, layout, and CPU copies of
    /// the moments (and of the f32 master weights of f16/bf16 parameters). The parameters
    /// themselves are the model's to save (`LoraModel::save_pretrained`).
    pub fn state_dict(&self) -> Result<OptimizerState> {
        let _guard = tch::no_grad_guard();
        let mut tensors = Vec::new();
        let cpu =
            |t: &Tensor| -> Result<Tensor> { Ok(t.f_detach_copy()?.f_to_device(Device::Cpu)?) };
        for b in &self.buckets {
            tensors.push((key(b.group, b.kind, "exp_avg"), cpu(&b.exp_avg)?));
            tensors.push((key(b.group, b.kind, "exp_avg_sq"), cpu(&b.exp_avg_sq)?));
            if let Some(t) = &b.max_exp_avg_sq {
                tensors.push((key(b.group, b.kind, "max_exp_avg_sq"), cpu(t)?));
            }
            if let Some(t) = &b.master {
                tensors.push((key(b.group, b.kind, "master"), cpu(t)?));
            }
        }
        Ok(OptimizerState {
            meta: StateMeta {
                format: FORMAT.to_string(),
                version: VERSION,
                step: self.step,
                config: self.config,
                schedule: self.schedule,
                buckets: self.layout(),
            },
            tensors,
        })
    }

    /// Restore a state: moments, master weights, step, and, as PyTorch's `load_state_dict`
    /// does, the saved hyper-parameters and schedule (a difference from this optimizer's is
    /// logged). Everything is checked before anything changes.
    pub fn load_state_dict(&mut self, state: &OptimizerState) -> Result<()> {
        let meta = &state.meta;
        if meta.format != FORMAT || meta.version != VERSION {
            bail!(Error::BadState(format!(
                "optimizer state has format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                meta.format, meta.version
            )));
        }
        meta.config
            .validate()
            .context("optimizer state: saved config")?;
        meta.schedule
            .validate()
            .context("optimizer state: saved schedule")?;
        self.check_layout(meta)?;
        let tensors: HashMap<&str, &Tensor> =
            state.tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        // Gather and check every tensor first.
        let mut plan: Vec<(usize, &'static str, &Tensor)> = Vec::new();
        for (bi, b) in self.buckets.iter().enumerate() {
            let ck = compute_kind(b.kind);
            let mut want = vec!["exp_avg", "exp_avg_sq"];
            if meta.config.amsgrad {
                want.push("max_exp_avg_sq");
            }
            if b.master.is_some() {
                want.push("master");
            }
            for what in want {
                let k = key(b.group, b.kind, what);
                let t = tensors.get(k.as_str()).ok_or_else(|| {
                    Error::BadState(format!("optimizer state: tensor {k} is missing"))
                })?;
                if t.size() != [b.numel] || t.kind() != ck {
                    bail!(Error::BadState(format!(
                        "optimizer state: tensor {k} is {:?} {:?}, expected [{}] {}",
                        t.size(),
                        t.kind(),
                        b.numel,
                        kind_name(ck)
                    )));
                }
                plan.push((bi, what, t));
            }
        }
        // The saved hyper-parameters and schedule replace the current ones, as PyTorch's
        // `load_state_dict` does; `set_hyper_params` afterwards keeps the caller's instead.
        if meta.config != self.config {
            tracing::debug!(
                "optimizer state: the saved hyper-parameters {:?} replace {:?}",
                meta.config,
                self.config
            );
        }
        if meta.schedule != self.schedule {
            tracing::debug!(
                "optimizer state: the saved schedule {:?} replaces {:?}",
                meta.schedule,
                self.schedule
            );
        }
        let _guard = tch::no_grad_guard();
        let device = self.device;
        for b in &mut self.buckets {
            match (meta.config.amsgrad, &b.max_exp_avg_sq) {
                (true, None) => {
                    b.max_exp_avg_sq =
                        Some(Tensor::f_zeros([b.numel], (compute_kind(b.kind), device))?)
                }
                (false, Some(_)) => b.max_exp_avg_sq = None,
                _ => {}
            }
        }
        for (bi, what, src) in plan {
            let b = &mut self.buckets[bi];
            let dst = match what {
                "exp_avg" => &b.exp_avg,
                "exp_avg_sq" => &b.exp_avg_sq,
                "max_exp_avg_sq" => b.max_exp_avg_sq.as_ref().expect("allocated above"),
                _ => b.master.as_ref().expect("checked above"),
            };
            dst.shallow_clone()
                .f_copy_(src)
                .with_context(|| format!("restoring {what}"))?;
            if what == "master" {
                // The parameters are the rounding of the master copy.
                b.params.shallow_clone().f_copy_(src)?;
            }
        }
        self.config = meta.config;
        self.schedule = meta.schedule;
        self.step = meta.step;
        for b in &mut self.buckets {
            let (lr, wd) = b.group.hyper_params(&meta.config);
            b.base_lr = lr;
            b.weight_decay = wd;
        }
        self.reset_accumulation();
        Ok(())
    }

    fn check_layout(&self, meta: &StateMeta) -> Result<()> {
        let ours = self.layout();
        let a = flatten(&meta.buckets);
        let b = flatten(&ours);
        let hint = if meta.config.head_lr.is_some() != self.config.head_lr.is_some() {
            format!(
                " (the state was saved with head_lr = {:?}, this optimizer has head_lr = {:?}, which groups the head differently)",
                meta.config.head_lr, self.config.head_lr
            )
        } else {
            " (was it saved from a different model or adapter config?)".to_string()
        };
        if let Some(i) = (0..a.len().min(b.len())).find(|&i| a[i] != b[i]) {
            bail!(Error::BadState(format!(
                "optimizer state does not match this model: trained tensor {i} is {} in the state but {} here{hint}",
                a[i],
                b[i]
            )));
        }
        if a.len() != b.len() {
            let extra = if a.len() > b.len() {
                format!("the state also has {}", a[b.len()])
            } else {
                format!("this model also has {}", b[a.len()])
            };
            bail!(Error::BadState(format!(
                "optimizer state does not match this model: {} trained tensors in the state, {} here; {extra}{hint}",
                a.len(),
                b.len()
            )));
        }
        for bm in &meta.buckets {
            if ParamGroup::from_name(&bm.group).is_none() || kind_from_name(&bm.dtype).is_none() {
                bail!(Error::BadState(format!(
                    "optimizer state: unknown group {:?} or dtype {:?}",
                    bm.group, bm.dtype
                )));
            }
        }
        Ok(())
    }

    /// Save the state to `dir/optimizer.safetensors` and `dir/optimizer.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.state_dict()?
            .save(dir)
            .with_context(|| format!("saving the optimizer state to {}", dir.display()))
    }

    /// Load the state [`Self::save`] wrote into `dir`.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let state = OptimizerState::load(dir)?;
        self.load_state_dict(&state)
            .with_context(|| format!("loading the optimizer state from {}", dir.display()))
    }
}
