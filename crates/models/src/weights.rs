//! `Weights`: the tensors of a HuggingFace checkpoint (`model.safetensors`, or shards listed in
//! `model.safetensors.index.json`), memory-mapped, looked up by the task model's names with or
//! without the backbone prefix, converted to the requested dtype and device one tensor at a
//! time, and tracked so that tensors the model never asked for are reported.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::tensor::Metadata;
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use loraplus_core::io::kind_of;

use crate::bad_checkpoint;

/// The single-file checkpoint name transformers writes.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// Checkpoint entries that are buffers, not parameters, in some transformers versions: never
/// asked for, never reported as unused.
const KNOWN_BUFFERS: &[&str] = &[
    "embeddings.position_ids",
    "attn.bias",
    "attn.masked_bias",
    "rotary_emb.inv_freq",
];

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data block: 8 bytes of header length + the header.
    data_start: usize,
    metadata: Metadata,
}

/// A read-only view of a checkpoint's tensors.
pub struct Weights {
    shards: Vec<Shard>,
    /// Tensor name -> shard index.
    index: HashMap<String, usize>,
    /// The backbone prefix (`bert`, `roberta`, `transformer`, `model`), tried on and off.
    prefix: String,
    kind: Kind,
    device: Device,
    used: RefCell<BTreeSet<String>>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field(
                "files",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.index.len())
            .field("prefix", &self.prefix)
            .field("kind", &self.kind)
            .field("device", &self.device)
            .finish()
    }
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the file is mapped read-only; a checkpoint that is modified while mapped is
    // outside what this loader supports (as for every mmap-based safetensors reader).
    let mmap = unsafe { Mmap::map(&file) }
        .with_context(|| format!("memory-mapping {}", path.display()))?;
    let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
        bad_checkpoint(format!(
            "{}: not a valid safetensors file ({e:?})",
            path.display()
        ))
    })?;
    Ok(Shard {
        path: path.to_path_buf(),
        mmap,
        data_start: 8 + header_len,
        metadata,
    })
}

impl Weights {
    /// Open the checkpoint in `dir`: `model.safetensors`, or the shards named by
    /// `model.safetensors.index.json`. `prefix` is the backbone's name in the task model.
    pub fn open(dir: &Path, prefix: &str, kind: Kind, device: Device) -> Result<Self> {
        let single = dir.join(SAFETENSORS_FILE);
        let index = dir.join(SAFETENSORS_INDEX);
        let files = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_files(&index)?
        } else {
            return Err(bad_checkpoint(format!(
                "{}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX} (only safetensors checkpoints are supported)",
                dir.display()
            )));
        };
        Self::from_files(&files, prefix, kind, device)
    }

    /// Open the given safetensors files as one checkpoint. A tensor name present in two files
    /// is an error.
    pub fn from_files(files: &[PathBuf], prefix: &str, kind: Kind, device: Device) -> Result<Self> {
        if !matches!(
            kind,
            Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
        ) {
            bail!("model dtype {kind:?} is not supported; supported: f32, bf16, f16 (and f64)");
        }
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let shard = open_shard(path)?;
            for name in shard.metadata.tensors().keys() {
                if let Some(j) = index.insert(name.clone(), i) {
                    return Err(bad_checkpoint(format!(
                        "tensor {name} is in both {} and {}",
                        files[j].display(),
                        path.display()
                    )));
                }
            }
            shards.push(shard);
        }
        Ok(Weights {
            shards,
            index,
            prefix: prefix.to_string(),
            kind,
            device,
            used: RefCell::new(BTreeSet::new()),
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The files of the checkpoint, for messages.
    pub fn files(&self) -> String {
        self.shards
            .iter()
            .map(|s| {
                s.path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every tensor name in the checkpoint.
    pub fn names(&self) -> BTreeSet<&str> {
        self.index.keys().map(String::as_str).collect()
    }

    /// The names under which `name` may be stored: as given, and with the backbone prefix
    /// removed or added (checkpoints of the bare backbone have no prefix).
    fn candidates(&self, name: &str) -> Vec<String> {
        let p = format!("{}.", self.prefix);
        let mut out = vec![name.to_string()];
        match name.strip_prefix(&p) {
            Some(rest) => out.push(rest.to_string()),
            None => out.push(format!("{p}{name}")),
        }
        out
    }

    fn resolve(&self, name: &str) -> Option<String> {
        self.candidates(name)
            .into_iter()
            .find(|k| self.index.contains_key(k))
    }

    /// Does the checkpoint hold `name` (with or without prefix)?
    pub fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    /// The tensor `name`, of shape `shape`, in the model dtype (floating tensors) on the model
    /// device. Missing or of another shape: an error naming it.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.get_opt(name, shape)?.ok_or_else(|| {
            bad_checkpoint(format!(
                "{}: missing tensor {name} (also looked for {})",
                self.files(),
                self.candidates(name)[1]
            ))
        })
    }

    /// The shape of tensor `name` as stored, `None` when the checkpoint does not hold it.
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        let key = self.resolve(name)?;
        let info = self.shards[self.index[&key]].metadata.info(&key)?;
        Some(info.shape.iter().map(|&d| d as i64).collect())
    }

    /// As [`Self::get`], `None` when the checkpoint does not hold it.
    pub fn get_opt(&self, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
        let Some(key) = self.resolve(name) else {
            return Ok(None);
        };
        let shard = &self.shards[self.index[&key]];
        let info = shard.metadata.info(&key).ok_or_else(|| {
            anyhow!(
                "{}: tensor {key} vanished from the header",
                shard.path.display()
            )
        })?;
        let found: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if found != shape {
            return Err(bad_checkpoint(format!(
                "{}: tensor {key} has shape {found:?}, expected {shape:?} (from config.json)",
                shard.path.display()
            )));
        }
        let src_kind = kind_of(info.dtype)
            .map_err(|e| bad_checkpoint(format!("{}: tensor {key}: {e}", shard.path.display())))?;
        let (start, end) = info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + start..shard.data_start + end];
        // Every tensor a model asks for is a parameter (integer buffers are never asked for).
        if !matches!(
            src_kind,
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        ) {
            return Err(bad_checkpoint(format!(
                "{}: tensor {key} has dtype {:?}, expected a floating-point weight (F32, BF16, F16 or F64)",
                shard.path.display(),
                info.dtype
            )));
        }
        let target = self.kind;
        let base = shard.data_start + start;
        // Once a part of the tensor is copied, its file pages are dropped from this process,
        // so loading never holds the whole file and the whole model at once, nor one large
        // tensor twice (peak memory ~ the model plus one slice; a quantized base never holds
        // the full-precision file).
        let release = |offset: usize, len: usize| {
            #[cfg(unix)]
            {
                // SAFETY: a read-only file mapping: MADV_DONTNEED only evicts its pages from
                // this process, a later read faults them in again from the file; the range was
                // copied and no borrow of those bytes is used after this call.
                let _ = unsafe {
                    shard.mmap.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        base + offset,
                        len,
                    )
                };
            }
            #[cfg(not(unix))]
            let _ = (offset, len);
        };
        let t = tensor_from_bytes(bytes, &found, src_kind, target, self.device, release)
            .with_context(|| format!("{}: loading tensor {key}", shard.path.display()))?;
        self.used.borrow_mut().insert(key);
        Ok(Some(t))
    }

    /// Checkpoint tensors no call to `get` asked for (known buffers excluded), sorted.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        let mut out: Vec<String> = self
            .index
            .keys()
            .filter(|k| !used.contains(*k) && !is_known_buffer(k))
            .cloned()
            .collect();
        out.sort();
        out
    }
}

/// `name` is one of [`KNOWN_BUFFERS`] (a whole trailing part of the name: `h.0.attn.bias`,
/// not `h.0.attn.c_attn.bias`).
fn is_known_buffer(name: &str) -> bool {
    KNOWN_BUFFERS
        .iter()
        .any(|b| name == *b || name.ends_with(&format!(".{b}")))
}

/// Bytes of the file copied at a time for a large tensor (then released): the transient memory
/// of loading one tensor. Measured on a Llama-7B-shaped checkpoint (2 layers, CPU, f32, int8
/// base): one copy of the whole tensor kept its file pages and its copy resident together
/// (the 500 MiB embedding table twice), 64 MiB slices bound that to one slice.
const COPY_SLICE_BYTES: usize = 64 << 20;

/// One copy from the mapped bytes into a tensor of `target` kind on `device`, slice by slice
/// along the first dimension for large tensors; `release(offset, len)` is called for each
/// range of `bytes` once it has been copied (the whole of it, at the latest at the end).
fn tensor_from_bytes(
    bytes: &[u8],
    shape: &[i64],
    src: Kind,
    target: Kind,
    device: Device,
    release: impl FnMut(usize, usize),
) -> Result<Tensor> {
    copy_in_slices(
        bytes,
        shape,
        (src, target, device),
        COPY_SLICE_BYTES,
        release,
    )
}

/// [`tensor_from_bytes`] with slices of at most `slice_bytes` (at least one row).
fn copy_in_slices(
    bytes: &[u8],
    shape: &[i64],
    (src, target, device): (Kind, Kind, Device),
    slice_bytes: usize,
    mut release: impl FnMut(usize, usize),
) -> Result<Tensor> {
    let elt = src.elt_size_in_bytes();
    let numel: i64 = shape.iter().product();
    if bytes.len() != numel as usize * elt {
        bail!(
            "data holds {} bytes, expected {} for shape {shape:?} {src:?}",
            bytes.len(),
            numel as usize * elt
        );
    }
    let aligned = bytes.as_ptr().align_offset(elt) == 0;
    if !aligned || numel == 0 {
        // A CPU copy of the bytes (the tensor must own its data: merging writes into it).
        let t = Tensor::f_from_data_size(bytes, shape, src)?;
        release(0, bytes.len());
        return Ok(if target == src && device == Device::Cpu {
            t
        } else {
            t.f_to_device_(device, target, false, false)?
        });
    }
    let rows = shape.first().copied().unwrap_or(1).max(1);
    let row_bytes = bytes.len() / rows as usize;
    let per_slice = (slice_bytes / row_bytes.max(1)).max(1) as i64;
    let out = Tensor::f_empty(shape, (target, device))?;
    let mut r0 = 0i64;
    while r0 < rows {
        let len = per_slice.min(rows - r0);
        let (off, n) = (r0 as usize * row_bytes, len as usize * row_bytes);
        let slice_shape: Vec<i64> = match shape.split_first() {
            Some((_, rest)) => [&[len][..], rest].concat(),
            None => vec![],
        };
        {
            // A tensor over the mapped bytes, read once by the copy: no intermediate buffer.
            // SAFETY: `bytes` outlives the borrowed view, dropped at the end of this block
            // (after the copy, which is synchronous for a CPU source).
            let view = unsafe {
                Tensor::f_from_blob(bytes[off..].as_ptr(), &slice_shape, &[], src, Device::Cpu)?
            };
            let mut dst = if shape.is_empty() {
                out.shallow_clone()
            } else {
                out.f_narrow(0, r0, len)?
            };
            dst.f_copy_(&view)?;
        }
        release(off, n);
        r0 += len;
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The shard files named by an index, in order of first appearance.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text =
        std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let idx: ShardIndex = serde_json::from_str(&text).map_err(|e| {
        bad_checkpoint(format!(
            "{}: expected {{\"weight_map\": {{..}}}} ({e})",
            index.display()
        ))
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut seen = BTreeSet::new();
    let mut files = Vec::new();
    for file in idx.weight_map.values() {
        if seen.insert(file.clone()) {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(bad_checkpoint(format!(
                    "{}: shard {file} does not exist",
                    index.display()
                )));
            }
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(bad_checkpoint(format!(
            "{}: weight_map is empty",
            index.display()
        )));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_buffers_match_whole_name_parts() {
        assert!(is_known_buffer("h.0.attn.bias"));
        assert!(is_known_buffer("transformer.h.11.attn.masked_bias"));
        assert!(is_known_buffer("embeddings.position_ids"));
        assert!(!is_known_buffer("transformer.h.0.attn.c_attn.bias"));
        assert!(!is_known_buffer("h.0.crossattn.bias"));
    }

    /// Copied slice by slice, a tensor equals the one-piece conversion element by element, in
    /// every dtype pair the loader meets, and every byte is released exactly once, in order.
    #[test]
    fn sliced_copies_equal_the_whole_and_release_every_byte_once() {
        tch::manual_seed(2);
        let whole = Tensor::randn([7, 5, 3], (Kind::Float, Device::Cpu));
        for (src, target) in [
            (Kind::Float, Kind::Float),
            (Kind::BFloat16, Kind::Float),
            (Kind::Float, Kind::BFloat16),
            (Kind::Half, Kind::Float),
        ] {
            let t = whole.to_kind(src).contiguous();
            let n = t.numel() * src.elt_size_in_bytes();
            let mut bytes = vec![0u8; n];
            t.copy_data_u8(&mut bytes, t.numel());
            let want = t.to_kind(target);
            // 2 rows of 15 elements per slice, one row, everything at once.
            for slice in [2 * 15 * src.elt_size_in_bytes(), 1, 1 << 20] {
                let mut released = Vec::new();
                let got = copy_in_slices(
                    &bytes,
                    &[7, 5, 3],
                    (src, target, Device::Cpu),
                    slice,
                    |off, len| released.push((off, len)),
                )
                .unwrap();
                assert_eq!(got.kind(), target);
                assert!(
                    got.equal(&want),
                    "{src:?} -> {target:?}, slices of {slice} bytes"
                );
                let mut next = 0;
                for (off, len) in &released {
                    assert_eq!(*off, next, "{src:?}: released out of order: {released:?}");
                    next += len;
                }
                assert_eq!(next, n, "{src:?}: released {next} of {n} bytes");
            }
        }
        // A scalar and an empty tensor.
        let one = 2.5f32.to_le_bytes();
        let got = copy_in_slices(
            &one,
            &[],
            (Kind::Float, Kind::Float, Device::Cpu),
            1,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(got.double_value(&[]), 2.5);
        let got = copy_in_slices(
            &[],
            &[0, 4],
            (Kind::Float, Kind::Float, Device::Cpu),
            1,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(got.size(), [0, 4]);
    }
}
