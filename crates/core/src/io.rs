//! Files: safetensors reading and atomic writing for tch tensors, and adapters saved and
//! loaded in PEFT's format (`adapter_model.safetensors` + `adapter_config.json`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoResultExt, Result, ResultExt};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Kind, Tensor};

use crate::config::LoraConfig;
use crate::model::{LoraModel, ParamRole, PEFT_PREFIX};

/// File names PEFT uses inside an adapter directory.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The adapter config's file name in an adapter directory.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// The tch element type of a safetensors dtype.
pub fn kind_of(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        other => {
            return Err(Error::UnsupportedDtype(format!(
                "unsupported safetensors dtype {other:?}"
            )))
        }
    })
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        other => {
            return Err(Error::UnsupportedDtype(format!(
                "cannot save tensors of kind {other:?} as safetensors"
            )))
        }
    })
}

/// A CPU tensor holding a copy of a safetensors view.
pub fn tensor_from_view(view: &TensorView<'_>) -> Result<Tensor> {
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    let kind = kind_of(view.dtype())?;
    Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?)
}

/// Read every tensor of a safetensors file onto the CPU.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).io_context("reading", path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| not_safetensors(path, e))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let t = tensor_from_view(&view)
            .with_context(|| format!("{}: tensor {name}", path.display()))?;
        out.push((name, t));
    }
    Ok(out)
}

/// Write tensors (any device, contiguous or not) as one safetensors file, atomically: a
/// temporary file in the same folder, then a rename. `metadata` goes in the header (PEFT and
/// transformers write `{"format": "pt"}`).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    struct Owned {
        dtype: Dtype,
        shape: Vec<usize>,
        data: Vec<u8>,
    }
    impl safetensors::View for &Owned {
        fn dtype(&self) -> Dtype {
            self.dtype
        }
        fn shape(&self) -> &[usize] {
            &self.shape
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            std::borrow::Cow::Borrowed(&self.data)
        }
        fn data_len(&self) -> usize {
            self.data.len()
        }
    }
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let dtype = dtype_of(t.kind()).with_context(|| format!("tensor {name}"))?;
        let n = t.numel() * t.kind().elt_size_in_bytes();
        let mut data = vec![0u8; n];
        t.f_copy_data_u8(&mut data, t.numel())
            .with_context(|| format!("copying tensor {name}"))?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), Owned { dtype, shape, data }));
    }
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let views: Vec<(&str, &Owned)> = owned.iter().map(|(n, o)| (n.as_str(), o)).collect();
    let bytes = safetensors::tensor::serialize(views, &Some(meta)).map_err(|e| Error::BadFile {
        path: path.to_path_buf(),
        message: format!("cannot serialise the tensors: {e}"),
    })?;
    write_atomic(path, &bytes)
}

/// Write `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees a half-written file. The file is flushed to disk before the rename and
/// the folder after it; a failed flush is an error (the write may not survive a crash).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).io_context("creating", dir)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{} has no file name", path.display())))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).io_context("creating", &tmp)?;
        f.write_all(bytes).io_context("writing", &tmp)?;
        f.sync_all().io_context("flushing to disk (fsync)", &tmp)?;
    }
    std::fs::rename(&tmp, path).io_context(&format!("renaming {} to", tmp.display()), path)?;
    sync_dir(dir)
}

/// Flush a directory's entries (a rename in it) to disk. On Unix a directory opens read-only
/// and `fsync`s; other platforms have no such call, and there this does nothing.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .io_context("flushing to disk (fsync) the directory", dir)?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn not_safetensors(path: &Path, e: safetensors::SafeTensorError) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        message: format!("not a valid safetensors file: {e}"),
    }
}

fn pt_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([("format".to_string(), "pt".to_string())])
}

impl LoraModel {
    /// The adapter's tensors under PEFT's keys, as `adapter_model.safetensors` holds them.
    pub fn adapter_state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .trainable_params()
            .iter()
            .map(|p| (self.peft_key(p), p.tensor.detach()))
            .collect();
        // A tied table in modules_to_save, under its other name too (see `SavedTie`).
        for tie in self.saved_ties() {
            if let Some(p) = self.trainable_params().iter().find(|p| p.name == tie.param) {
                out.push((
                    format!("{PEFT_PREFIX}{}.weight", tie.alias),
                    p.tensor.detach(),
                ));
            }
        }
        out
    }

    /// The adapter config as saved: `inference_mode`, and for a tied table in
    /// `modules_to_save` both of its modules listed, with PEFT's `ensure_weight_tying`.
    pub fn saved_config(&self) -> Option<LoraConfig> {
        let mut cfg = self.config()?.clone();
        cfg.inference_mode = true;
        if !self.saved_ties().is_empty() {
            let list = cfg.modules_to_save.get_or_insert_with(Vec::new);
            for tie in self.saved_ties() {
                let module = tie.param.strip_suffix(".weight").unwrap_or(&tie.param);
                for name in [tie.alias.as_str(), module] {
                    let last = name.rsplit('.').next().unwrap_or(name).to_string();
                    if !list.contains(&last) {
                        list.push(last);
                    }
                }
            }
            cfg.other
                .insert("ensure_weight_tying".into(), serde_json::Value::Bool(true));
        } else if cfg.other.get("ensure_weight_tying") == Some(&serde_json::Value::Bool(true)) {
            // Nothing tied here (an untied model, or no tied module listed): PEFT would warn.
            cfg.other.remove("ensure_weight_tying");
        }
        Some(cfg)
    }

    /// Save in PEFT's format: `dir/adapter_model.safetensors` and `dir/adapter_config.json`,
    /// each written atomically. `PeftModel.from_pretrained(model, dir)` loads it.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let cfg = self.saved_config().ok_or_else(|| {
            Error::InvalidArgument("this model has no LoRA adapter to save".into())
        })?;
        std::fs::create_dir_all(dir).io_context("creating", dir)?;
        write_safetensors(
            &dir.join(ADAPTER_WEIGHTS),
            &self.adapter_state_dict(),
            &pt_metadata(),
        )?;
        write_atomic(&dir.join(ADAPTER_CONFIG), cfg.to_json_string()?.as_bytes())
    }

    /// The scaling settings of `dir`'s `adapter_config.json` (when there is one) against this
    /// model's config: `lora_alpha`, `use_rslora`, `rank_pattern` and `alpha_pattern`.
    fn check_adapter_config(&self, dir: &Path) -> Result<()> {
        let (Some(model), true) = (self.config(), dir.join(ADAPTER_CONFIG).is_file()) else {
            return Ok(());
        };
        let file = LoraConfig::from_file(dir.join(ADAPTER_CONFIG))?;
        let mut fields = Vec::new();
        let mut differ = |name: &str, found: String, expected: String| {
            if found != expected {
                fields.push(format!(
                    "{name}: {found} in the file, {expected} in the model"
                ));
            }
        };
        differ(
            "lora_alpha",
            file.lora_alpha.to_string(),
            model.lora_alpha.to_string(),
        );
        differ(
            "use_rslora",
            file.use_rslora.to_string(),
            model.use_rslora.to_string(),
        );
        differ(
            "rank_pattern",
            format!("{:?}", file.rank_pattern),
            format!("{:?}", model.rank_pattern),
        );
        differ(
            "alpha_pattern",
            format!("{:?}", file.alpha_pattern),
            format!("{:?}", model.alpha_pattern),
        );
        if fields.is_empty() {
            Ok(())
        } else {
            Err(Error::AdapterConfigMismatch {
                path: dir.join(ADAPTER_CONFIG),
                fields,
            })
        }
    }

    /// Load adapter weights saved by PEFT or by [`Self::save_pretrained`] into this model's
    /// adapters. Every expected key must be present with the right shape and finite values;
    /// a key that this model has no place for is an error. The model must have been built with
    /// the directory's config (see [`read_adapter_config`]).
    ///
    /// Refused: a model whose adapters are merged ([`LoraModel::unmerge`] first: the merged
    /// update would stay in the base), and a directory whose `adapter_config.json` scales the
    /// update otherwise than the model's config ([`Error::AdapterConfigMismatch`]).
    pub fn load_adapter(&self, dir: &Path) -> Result<()> {
        if self.is_merged() {
            return Err(Error::InvalidArgument(format!(
                "loading {}: the model's adapters are merged into its base weights; unmerge() first (the merged update would stay in the base)",
                dir.display()
            )));
        }
        self.check_adapter_config(dir)?;
        let path = dir.join(ADAPTER_WEIGHTS);
        let pickle = dir.join("adapter_model.bin");
        if !path.exists() && pickle.exists() {
            return Err(Error::BadFile {
                path: pickle,
                message: format!(
                    "a pickled PyTorch adapter (PEFT's save_pretrained with \
                     safe_serialization=False); loraplus reads {ADAPTER_WEIGHTS} only: re-save it \
                     with safe_serialization=True"
                ),
            });
        }
        let bytes = std::fs::read(&path).io_context("reading", &path)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| not_safetensors(&path, e))?;
        let file_name = path.display().to_string();
        let mut expected = BTreeMap::new();
        for p in self.trainable_params() {
            expected.insert(self.peft_key(p), p);
        }
        // PEFT also saves copies of modules_to_save under these infixes; they are not ours.
        let is_peft_copy =
            |k: &str| k.contains(".modules_to_save.") || k.contains(".original_module.");
        // The other name of a tied table (see `SavedTie`): the same tensor.
        let aliases: Vec<String> = self
            .saved_ties()
            .iter()
            .map(|t| format!("{PEFT_PREFIX}{}.weight", t.alias))
            .collect();
        let is_peft_copy = |k: &str| is_peft_copy(k) || aliases.iter().any(|a| a == k);
        // The base of an adapted embedding or lm_head, which PEFT saves with the adapter
        // (`save_embedding_layers`, "auto" when such a layer is a target) and loads into the
        // base: so does this.
        let base_layers: BTreeMap<String, &crate::layers::MergeHandle> = self
            .merge_handles()
            .iter()
            .map(|m| (format!("{PEFT_PREFIX}{}.base_layer.weight", m.name), m))
            .collect();
        let unexpected: Vec<String> = st
            .names()
            .into_iter()
            .filter(|k| {
                !expected.contains_key(*k) && !is_peft_copy(k) && !base_layers.contains_key(*k)
            })
            .cloned()
            .collect();
        if !unexpected.is_empty() {
            return Err(Error::UnexpectedTensors {
                file: file_name.clone(),
                keys: unexpected,
            });
        }
        let mut loaded = Vec::new();
        for (key, p) in &expected {
            let view = st.tensor(key).map_err(|_| Error::MissingTensor {
                file: file_name.clone(),
                key: key.clone(),
                detail: format!("{:?}, shape {:?}", p.role, p.tensor.size()),
            })?;
            let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let want = p.tensor.size();
            if found != want {
                return Err(Error::ShapeMismatch {
                    what: format!("{file_name}: tensor {key}"),
                    hint: shape_hint(p.role, &want),
                    found,
                    expected: want,
                });
            }
            if !matches!(
                view.dtype(),
                Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16
            ) {
                return Err(Error::BadFile {
                    path: path.clone(),
                    message: format!(
                        "tensor {key} has dtype {:?}, expected a floating-point tensor (F32, BF16, F16 or F64)",
                        view.dtype()
                    ),
                });
            }
            let t =
                tensor_from_view(&view).with_context(|| format!("{file_name}: tensor {key}"))?;
            let finite = t.to_kind(Kind::Float).isfinite().all().int64_value(&[]) != 0;
            if !finite {
                return Err(Error::NonFinite(format!(
                    "{file_name}: tensor {key} holds NaN or Inf values"
                )));
            }
            loaded.push((p, t));
        }
        let mut bases = Vec::new();
        for (key, m) in &base_layers {
            let Ok(view) = st.tensor(key) else { continue };
            if self.is_quantized_module(&m.name) {
                return Err(Error::Quantization(format!(
                    "{file_name}: tensor {key} replaces the base of {}, which is quantized here: \
                     load this adapter on the full-precision base",
                    m.name
                )));
            }
            let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let want = m.weight.size();
            if found != want {
                return Err(Error::ShapeMismatch {
                    what: format!("{file_name}: tensor {key}"),
                    hint: format!(
                        " (the base weight of {}; a resized vocabulary is not supported)",
                        m.name
                    ),
                    found,
                    expected: want,
                });
            }
            let t =
                tensor_from_view(&view).with_context(|| format!("{file_name}: tensor {key}"))?;
            bases.push((m, t));
        }
        let _guard = tch::no_grad_guard();
        for (p, t) in loaded {
            p.tensor.shallow_clone().f_copy_(&t)?;
        }
        for (m, t) in bases {
            m.weight.shallow_clone().f_copy_(&t)?;
        }
        Ok(())
    }
}

fn shape_hint(role: ParamRole, want: &[i64]) -> String {
    match (role, want) {
        (ParamRole::LoraA, [r, i]) => format!(" (r={r}, in_features={i})"),
        (ParamRole::LoraB, [o, r]) => format!(" (out_features={o}, r={r})"),
        (ParamRole::EmbeddingA, [r, n]) => format!(" (r={r}, num_embeddings={n})"),
        (ParamRole::EmbeddingB, [d, r]) => format!(" (embedding_dim={d}, r={r})"),
        _ => String::new(),
    }
}

/// Read `dir/adapter_config.json`. A saved adapter names the modules it adapts: a config
/// without `target_modules` (which PEFT resolves before it saves) is refused.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join(ADAPTER_CONFIG);
    let cfg = LoraConfig::from_file(&path)?;
    if cfg.target_modules.is_none() {
        return Err(Error::BadConfigValue(format!(
            "{}: no target_modules; a saved adapter names the modules it adapts (PEFT writes \
             them), e.g. \"target_modules\": [\"query\", \"value\"]",
            path.display()
        )));
    }
    Ok(cfg)
}

/// The adapter directory's weight file path.
pub fn adapter_weights_path(dir: &Path) -> PathBuf {
    dir.join(ADAPTER_WEIGHTS)
}

/// Strip PEFT's `base_model.model.` prefix from a key.
pub fn strip_peft_prefix(key: &str) -> &str {
    key.strip_prefix(PEFT_PREFIX).unwrap_or(key)
}
