//! Tokenization: a [`Dataset`] into a [`TokenizedDataset`] of token ids, with the model's
//! `tokenizer.json`, in parallel, cached on disk.
//!
//! The [`Encoder`] wraps a `tokenizers::Tokenizer` and produces, for one example, exactly what
//! HuggingFace's `tokenizer(text_a, text_b, truncation="longest_first", max_length=N)` gives:
//! special tokens (`[CLS] a [SEP] b [SEP]`), token type ids (0 for the first segment, 1 for the
//! second), longest-first truncation to `max_seq_len` tokens in total, and no padding (batches
//! are padded by [`crate::batch`]). The padding and truncation settings stored in the
//! `tokenizer.json` itself are ignored. Parity with Python is tested in
//! `tests/tokenize_parity.rs`.
//!
//! [`Encoder::encode_dataset`] splits the dataset into chunks that rayon encodes in parallel;
//! each chunk writes into flat buffers, so a dataset costs three vectors rather than one small
//! allocation per example. [`Encoder::encode_cached`] stores the result under a cache folder
//! (default [`crate::paths::cache_dir`]) in a file named by the sha256 of the data file's
//! fingerprint, the `tokenizer.json` bytes and `max_seq_len`, so a second run reads it back
//! instead of tokenizing again.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tokenizers::{
    PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::cache;
use crate::reader::{Dataset, Label};

/// Default `max_seq_len`: the `--max_seq_length` default of HuggingFace `run_glue.py`.
pub const DEFAULT_MAX_SEQ_LEN: usize = 128;

/// Examples per parallel work item: large enough to amortize scheduling, small enough to
/// balance two to a few dozen threads on 67k sentences.
const CHUNK: usize = 512;

/// The labels of a tokenized dataset, as the batches need them.
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    /// An unlabeled split (GLUE test files).
    None,
    /// Class ids.
    Classes(Vec<i64>),
    /// Regression targets.
    Scores(Vec<f32>),
    /// Causal-LM targets: one label per token of each example (the token id to predict at
    /// that position, HF convention: the model shifts), [`IGNORE_INDEX`] where no loss is taken.
    Tokens(Vec<Vec<i64>>),
}

/// The label of a token that takes no loss (PyTorch's `CrossEntropyLoss` `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

impl Labels {
    fn from_examples(ds: &Dataset) -> Result<Labels> {
        let Some(first) = ds.examples.first() else {
            bail!("{}: no examples", ds.origin);
        };
        let kind_error = |i: usize| {
            anyhow!(
                "{}: example {} has {} but the first example has {}: a split must be all classes, \
                 all scores or all unlabeled",
                ds.origin,
                i + 1,
                describe(ds.examples[i].label),
                describe(first.label)
            )
        };
        Ok(match first.label {
            None => {
                if let Some(i) = ds.examples.iter().position(|e| e.label.is_some()) {
                    return Err(kind_error(i));
                }
                Labels::None
            }
            Some(Label::Class(_)) => {
                let mut v = Vec::with_capacity(ds.len());
                for (i, e) in ds.examples.iter().enumerate() {
                    match e.label {
                        Some(Label::Class(c)) => v.push(c as i64),
                        _ => return Err(kind_error(i)),
                    }
                }
                Labels::Classes(v)
            }
            Some(Label::Score(_)) => {
                let mut v = Vec::with_capacity(ds.len());
                for (i, e) in ds.examples.iter().enumerate() {
                    match e.label {
                        Some(Label::Score(s)) => v.push(s),
                        _ => return Err(kind_error(i)),
                    }
                }
                Labels::Scores(v)
            }
        })
    }

    /// Number of labels (0 for [`Labels::None`]).
    pub fn len(&self) -> usize {
        match self {
            Labels::None => 0,
            Labels::Classes(v) => v.len(),
            Labels::Scores(v) => v.len(),
            Labels::Tokens(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The labels of the examples `idx`, in that order. Panics on an index out of range.
    pub fn select(&self, idx: &[usize]) -> Labels {
        match self {
            Labels::None => Labels::None,
            Labels::Classes(v) => Labels::Classes(idx.iter().map(|&i| v[i]).collect()),
            Labels::Scores(v) => Labels::Scores(idx.iter().map(|&i| v[i]).collect()),
            Labels::Tokens(v) => Labels::Tokens(idx.iter().map(|&i| v[i].clone()).collect()),
        }
    }

    /// The label of example `i` as a [`Label`] (`None` for unlabeled and token labels).
    pub fn get(&self, i: usize) -> Option<Label> {
        match self {
            Labels::None | Labels::Tokens(_) => None,
            Labels::Classes(v) => v.get(i).map(|&c| Label::Class(c as usize)),
            Labels::Scores(v) => v.get(i).map(|&s| Label::Score(s)),
        }
    }
}

fn describe(label: Option<Label>) -> &'static str {
    match label {
        None => "no label",
        Some(Label::Class(_)) => "a class label",
        Some(Label::Score(_)) => "a score",
    }
}

/// One tokenized example, borrowed from its [`TokenizedDataset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenizedExample<'a> {
    pub input_ids: &'a [u32],
    pub token_type_ids: &'a [u32],
    /// Position of each token within its document; only for packed causal-LM rows.
    pub position_ids: Option<&'a [u32]>,
}

/// One causal-LM example (or packed row) before it joins a [`TokenizedDataset`].
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LmExample {
    pub input_ids: Vec<u32>,
    /// One per token; [`IGNORE_INDEX`] where no loss is taken.
    pub labels: Vec<i64>,
    /// One per token for packed rows (restarting at 0 for each document), else `None`.
    pub position_ids: Option<Vec<u32>>,
}

/// Token ids of a whole split, stored flat: example `i` is `offsets[i]..offsets[i + 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizedDataset {
    pub(crate) input_ids: Vec<u32>,
    pub(crate) token_type_ids: Vec<u32>,
    pub(crate) offsets: Vec<usize>,
    pub(crate) labels: Labels,
    /// Flat like `input_ids`: set for packed causal-LM rows only.
    pub(crate) position_ids: Option<Vec<u32>>,
}

impl TokenizedDataset {
    /// sha256 (hex) of every example's tokens, token types, positions and labels: equal for the
    /// same data read the same way. A resumed run compares it with its checkpoint's, whose
    /// saved position in the data means nothing in other rows.
    pub fn content_sha256(&self) -> String {
        let mut h = Sha256::new();
        // Little-endian u64 words through a buffer: one hasher call per 8 KiB.
        let mut buf: Vec<u8> = Vec::with_capacity(8192);
        let mut words = |tag: &[u8], v: &mut dyn Iterator<Item = u64>| {
            h.update(tag);
            let mut n = 0u64;
            for x in v {
                buf.extend_from_slice(&x.to_le_bytes());
                n += 1;
                if buf.len() >= 8192 {
                    h.update(&buf);
                    buf.clear();
                }
            }
            h.update(&buf);
            buf.clear();
            h.update(n.to_le_bytes());
        };
        words(b"ids", &mut self.input_ids.iter().map(|&x| u64::from(x)));
        words(
            b"types",
            &mut self.token_type_ids.iter().map(|&x| u64::from(x)),
        );
        words(b"offsets", &mut self.offsets.iter().map(|&x| x as u64));
        if let Some(p) = &self.position_ids {
            words(b"positions", &mut p.iter().map(|&x| u64::from(x)));
        }
        match &self.labels {
            Labels::None => words(b"unlabeled", &mut std::iter::empty()),
            Labels::Classes(c) => words(b"classes", &mut c.iter().map(|&x| x as u64)),
            Labels::Scores(s) => words(b"scores", &mut s.iter().map(|&x| u64::from(x.to_bits()))),
            Labels::Tokens(t) => {
                for row in t {
                    words(b"tokens", &mut row.iter().map(|&x| x as u64));
                }
            }
        }
        hex(&h.finalize())
    }

    /// The largest token id of every example (`None` when there are no tokens): checked against
    /// the model's vocabulary before a run, as an id past it would fail inside the embedding.
    pub fn max_input_id(&self) -> Option<u32> {
        self.input_ids.iter().copied().max()
    }

    /// The largest token type id (segment) of any example, `None` when empty.
    pub fn max_token_type_id(&self) -> Option<u32> {
        self.token_type_ids.iter().copied().max()
    }

    /// Build from per-example `(input_ids, token_type_ids)`, e.g. in tests or for ids made
    /// elsewhere. Each pair must have equal lengths; `labels` must be `None` or one per example.
    pub fn from_examples(examples: Vec<(Vec<u32>, Vec<u32>)>, labels: Labels) -> Result<Self> {
        if examples.is_empty() {
            bail!("a tokenized dataset needs at least one example");
        }
        if !labels.is_empty() && labels.len() != examples.len() {
            bail!("{} labels for {} examples", labels.len(), examples.len());
        }
        let mut ds = TokenizedDataset {
            input_ids: Vec::new(),
            token_type_ids: Vec::new(),
            offsets: vec![0],
            labels,
            position_ids: None,
        };
        if let Labels::Tokens(per_token) = &ds.labels {
            if let Some((i, (l, (ids, _)))) = per_token
                .iter()
                .zip(&examples)
                .enumerate()
                .find(|(_, (l, (ids, _)))| l.len() != ids.len())
            {
                bail!(
                    "example {i}: {} input ids but {} token labels",
                    ids.len(),
                    l.len()
                );
            }
        }
        for (i, (ids, types)) in examples.into_iter().enumerate() {
            if ids.len() != types.len() {
                bail!(
                    "example {i}: {} input ids but {} token type ids",
                    ids.len(),
                    types.len()
                );
            }
            ds.input_ids.extend_from_slice(&ids);
            ds.token_type_ids.extend_from_slice(&types);
            ds.offsets.push(ds.input_ids.len());
        }
        Ok(ds)
    }

    /// Build a causal-LM dataset: token labels, token type ids all 0, and position ids when
    /// every example has them (packed rows) — all or none.
    pub fn from_lm_examples(examples: Vec<LmExample>) -> Result<Self> {
        if examples.is_empty() {
            bail!("a tokenized dataset needs at least one example");
        }
        let packed = examples[0].position_ids.is_some();
        let total: usize = examples.iter().map(|e| e.input_ids.len()).sum();
        let mut ds = TokenizedDataset {
            input_ids: Vec::with_capacity(total),
            token_type_ids: vec![0; total],
            offsets: Vec::with_capacity(examples.len() + 1),
            labels: Labels::None,
            position_ids: packed.then(|| Vec::with_capacity(total)),
        };
        ds.offsets.push(0);
        let mut labels = Vec::with_capacity(examples.len());
        for (i, e) in examples.into_iter().enumerate() {
            let n = e.input_ids.len();
            if n == 0 {
                bail!("example {i} has no tokens");
            }
            if e.labels.len() != n {
                bail!(
                    "example {i}: {n} input ids but {} token labels",
                    e.labels.len()
                );
            }
            match (&mut ds.position_ids, e.position_ids) {
                (Some(all), Some(p)) if p.len() == n => all.extend_from_slice(&p),
                (Some(_), Some(p)) => {
                    bail!("example {i}: {n} input ids but {} position ids", p.len())
                }
                (None, None) => {}
                _ => bail!(
                    "example {i}: position ids must be given for all examples or none (packed \
                     and unpacked rows cannot be mixed)"
                ),
            }
            ds.input_ids.extend_from_slice(&e.input_ids);
            ds.offsets.push(ds.input_ids.len());
            labels.push(e.labels);
        }
        ds.labels = Labels::Tokens(labels);
        Ok(ds)
    }

    /// The examples `idx`, in that order, as a new dataset (a subset or a reordering).
    pub fn select(&self, idx: &[usize]) -> Result<TokenizedDataset> {
        if idx.is_empty() {
            bail!("a tokenized dataset needs at least one example");
        }
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.len()) {
            bail!(
                "example index {bad} out of range (dataset of {})",
                self.len()
            );
        }
        let mut out = TokenizedDataset {
            input_ids: Vec::new(),
            token_type_ids: Vec::new(),
            offsets: vec![0],
            labels: self.labels.select(idx),
            position_ids: self.position_ids.as_ref().map(|_| Vec::new()),
        };
        for &i in idx {
            let r = self.offsets[i]..self.offsets[i + 1];
            out.input_ids.extend_from_slice(&self.input_ids[r.clone()]);
            out.token_type_ids
                .extend_from_slice(&self.token_type_ids[r.clone()]);
            if let (Some(dst), Some(src)) = (&mut out.position_ids, &self.position_ids) {
                dst.extend_from_slice(&src[r]);
            }
            out.offsets.push(out.input_ids.len());
        }
        Ok(out)
    }

    /// Whether examples carry position ids (packed causal-LM rows).
    pub fn has_position_ids(&self) -> bool {
        self.position_ids.is_some()
    }

    /// Number of tokens that take a loss: labels other than [`IGNORE_INDEX`] after the first
    /// position of each example (a causal LM never predicts position 0); 0 unless the labels
    /// are [`Labels::Tokens`].
    pub fn num_target_tokens(&self) -> usize {
        match &self.labels {
            Labels::Tokens(v) => v
                .iter()
                .map(|l| l.iter().skip(1).filter(|&&x| x != IGNORE_INDEX).count())
                .sum(),
            _ => 0,
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Example `i`. Panics if `i >= len()`, like slice indexing.
    pub fn get(&self, i: usize) -> TokenizedExample<'_> {
        let r = self.offsets[i]..self.offsets[i + 1];
        TokenizedExample {
            input_ids: &self.input_ids[r.clone()],
            token_type_ids: &self.token_type_ids[r.clone()],
            position_ids: self.position_ids.as_ref().map(|p| &p[r]),
        }
    }

    /// Number of tokens of example `i`.
    pub fn seq_len(&self, i: usize) -> usize {
        self.offsets[i + 1] - self.offsets[i]
    }

    /// The longest example, in tokens.
    pub fn max_seq_len(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0)
    }

    /// Total number of tokens.
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// The labels.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }
}

/// Where a tokenized split came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Read from this cache file; no tokenization was done.
    Hit(PathBuf),
    /// Tokenized and written to this cache file.
    Written(PathBuf),
    /// Tokenized; the cache file could not be written (a warning was logged).
    NotWritten(PathBuf),
}

/// A tokenizer set up for one model input length.
pub struct Encoder {
    tokenizer: Tokenizer,
    max_seq_len: usize,
    pad_id: u32,
    tokenizer_sha256: [u8; 32],
    source: String,
}

impl Encoder {
    /// Load `tokenizer.json` and truncate to `max_seq_len` tokens (special tokens included).
    pub fn from_file(tokenizer_json: &Path, max_seq_len: usize) -> Result<Encoder> {
        let bytes = std::fs::read(tokenizer_json).with_context(|| {
            format!(
                "reading the tokenizer {} (a model folder holds tokenizer.json beside config.json)",
                tokenizer_json.display()
            )
        })?;
        Encoder::from_bytes(&bytes, &tokenizer_json.display().to_string(), max_seq_len)
    }

    /// The tokenizer of a model folder: its `tokenizer.json`, else (DeBERTa-v2/v3 checkpoints)
    /// the one [`crate::spm::deberta_tokenizer_json`] builds from its `spm.model`.
    pub fn from_model_dir(dir: &Path, max_seq_len: usize) -> Result<Encoder> {
        let json = dir.join("tokenizer.json");
        let spm = dir.join(crate::spm::SPM_FILE);
        if !json.exists() && spm.exists() {
            let bytes = crate::spm::deberta_tokenizer_json(dir)?;
            return Encoder::from_bytes(&bytes, &spm.display().to_string(), max_seq_len);
        }
        Encoder::from_file(&json, max_seq_len)
    }

    /// The tokenizer of the default model folder ([`crate::paths::model_dir`]).
    pub fn from_default_model(max_seq_len: usize) -> Result<Encoder> {
        Encoder::from_file(&crate::paths::tokenizer_path(), max_seq_len)
    }

    /// From the bytes of a `tokenizer.json`; `source` names it in messages.
    pub fn from_bytes(bytes: &[u8], source: &str, max_seq_len: usize) -> Result<Encoder> {
        let mut tokenizer = Tokenizer::from_bytes(bytes)
            .map_err(|e| anyhow!("{source}: not a valid tokenizer.json: {e}"))?;
        let added = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        if max_seq_len <= added {
            let single = tokenizer
                .get_post_processor()
                .map_or(0, |p| p.added_tokens(false));
            bail!(
                "max_seq_len {max_seq_len} is too short: {source} adds {added} special tokens to a \
                 sentence pair ({single} to a single sentence), and the encoder is built for both; \
                 give at least {}",
                added + 1
            );
        }
        // The pad id the file declares (BERT: [PAD] = 0), else the [PAD] token, else 0: padding
        // positions are masked out, so the id only has to be a valid embedding row.
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| tokenizer.token_to_id("[PAD]"))
            .unwrap_or(0);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_seq_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| anyhow!("{source}: setting truncation to {max_seq_len}: {e}"))?;
        Ok(Encoder {
            tokenizer,
            max_seq_len,
            pad_id,
            tokenizer_sha256: Sha256::digest(bytes).into(),
            source: source.to_string(),
        })
    }

    /// Longest sequence produced, special tokens included.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// The id to pad batches with.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// sha256 of the `tokenizer.json` bytes.
    pub fn tokenizer_sha256(&self) -> [u8; 32] {
        self.tokenizer_sha256
    }

    /// The wrapped tokenizer (padding off, truncation set).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokenize one example: `(input_ids, token_type_ids)`.
    pub fn encode(&self, text_a: &str, text_b: Option<&str>) -> Result<(Vec<u32>, Vec<u32>)> {
        let enc = match text_b {
            None => self.tokenizer.encode_fast(text_a, true),
            Some(b) => self.tokenizer.encode_fast((text_a, b), true),
        }
        .map_err(|e| anyhow!("{}: tokenizing {text_a:?}: {e}", self.source))?;
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    /// Tokenize every example, in parallel (rayon), keeping the order.
    pub fn encode_dataset(&self, ds: &Dataset) -> Result<TokenizedDataset> {
        let labels = Labels::from_examples(ds)?;
        let parts: Vec<Chunk> = ds
            .examples
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(c, examples)| self.encode_chunk(ds, c * CHUNK, examples))
            .collect::<Result<_>>()?;
        let total: usize = parts.iter().map(|p| p.input_ids.len()).sum();
        let mut out = TokenizedDataset {
            input_ids: Vec::with_capacity(total),
            token_type_ids: Vec::with_capacity(total),
            offsets: Vec::with_capacity(ds.len() + 1),
            labels,
            position_ids: None,
        };
        out.offsets.push(0);
        for p in parts {
            let base = out.input_ids.len();
            out.offsets.extend(p.ends.iter().map(|e| base + e));
            out.input_ids.extend_from_slice(&p.input_ids);
            out.token_type_ids.extend_from_slice(&p.token_type_ids);
        }
        Ok(out)
    }

    fn encode_chunk(
        &self,
        ds: &Dataset,
        first: usize,
        examples: &[crate::reader::Example],
    ) -> Result<Chunk> {
        // Two tokens a word is a fair first guess for English GLUE text.
        let guess = examples.iter().map(|e| e.text_a.len() / 2).sum::<usize>();
        let mut chunk = Chunk {
            input_ids: Vec::with_capacity(guess),
            token_type_ids: Vec::with_capacity(guess),
            ends: Vec::with_capacity(examples.len()),
        };
        for (k, e) in examples.iter().enumerate() {
            let enc = match &e.text_b {
                None => self.tokenizer.encode_fast(e.text_a.as_str(), true),
                Some(b) => self
                    .tokenizer
                    .encode_fast((e.text_a.as_str(), b.as_str()), true),
            }
            .map_err(|err| {
                anyhow!(
                    "{}: example {}: tokenizing: {err}",
                    ds.origin,
                    first + k + 1
                )
            })?;
            chunk.input_ids.extend_from_slice(enc.get_ids());
            chunk.token_type_ids.extend_from_slice(enc.get_type_ids());
            chunk.ends.push(chunk.input_ids.len());
        }
        Ok(chunk)
    }

    /// The cache key of `ds` with this encoder: sha256 of the dataset fingerprint (data file
    /// bytes and how they were read), the `tokenizer.json` bytes and `max_seq_len`.
    pub fn cache_key(&self, ds: &Dataset) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"loraplus-data tokenized");
        h.update(cache::FORMAT_VERSION.to_le_bytes());
        h.update(ds.fingerprint);
        h.update(self.tokenizer_sha256);
        h.update((self.max_seq_len as u64).to_le_bytes());
        h.finalize().into()
    }

    /// The cache file of `ds` under `cache_dir`.
    pub fn cache_path(&self, ds: &Dataset, cache_dir: &Path) -> PathBuf {
        cache_dir.join(format!("{}.tok", hex(&self.cache_key(ds))))
    }

    /// Tokenize `ds`, or read it back from `cache_dir` when a previous run stored it. A missing,
    /// stale or damaged cache file is (re)written; failing to write it only logs a warning.
    pub fn encode_cached(
        &self,
        ds: &Dataset,
        cache_dir: &Path,
    ) -> Result<(TokenizedDataset, CacheStatus)> {
        let key = self.cache_key(ds);
        let path = self.cache_path(ds, cache_dir);
        if path.is_file() {
            match cache::load(&path, &key) {
                Ok(t) if t.len() == ds.len() => {
                    tracing::debug!(
                        "{}: tokenized split read from {}",
                        ds.origin,
                        path.display()
                    );
                    return Ok((t, CacheStatus::Hit(path)));
                }
                Ok(t) => tracing::warn!(
                    "{}: ignoring {}: it holds {} examples, the data {}",
                    ds.origin,
                    path.display(),
                    t.len(),
                    ds.len()
                ),
                Err(e) => tracing::warn!("ignoring the tokenization cache file: {e:#}"),
            }
        }
        let t = self.encode_dataset(ds)?;
        let status = match cache::save(&path, &key, &t) {
            Ok(()) => CacheStatus::Written(path),
            Err(e) => {
                tracing::warn!("could not write the tokenization cache: {e:#}");
                CacheStatus::NotWritten(path)
            }
        };
        Ok((t, status))
    }
}

struct Chunk {
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
    /// End offset of each example within this chunk.
    ends: Vec<usize>,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of `bytes`, in hex: what the tokenization cache keys and data checks compare.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_examples_checks_lengths() {
        let t = TokenizedDataset::from_examples(
            vec![
                (vec![101, 5, 102], vec![0, 0, 0]),
                (vec![101, 102], vec![0, 0]),
            ],
            Labels::Classes(vec![1, 0]),
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(1).input_ids, &[101, 102]);
        assert_eq!(t.seq_len(0), 3);
        assert_eq!(t.max_seq_len(), 3);
        assert_eq!(t.labels().get(0), Some(Label::Class(1)));
        assert!(TokenizedDataset::from_examples(vec![(vec![1], vec![])], Labels::None).is_err());
        assert!(TokenizedDataset::from_examples(
            vec![(vec![1], vec![0])],
            Labels::Scores(vec![1.0, 2.0])
        )
        .is_err());
        assert!(TokenizedDataset::from_examples(vec![], Labels::None).is_err());
    }

    /// The digest a resume compares: the same rows give the same one; a token, a label, or
    /// where one example ends and the next begins changes it.
    #[test]
    fn content_sha256_tells_rows_apart() {
        let ds = |ex: Vec<(Vec<u32>, Vec<u32>)>, labels: Vec<i64>| {
            TokenizedDataset::from_examples(ex, Labels::Classes(labels))
                .unwrap()
                .content_sha256()
        };
        let base = ds(
            vec![(vec![1, 2, 3], vec![0; 3]), (vec![4], vec![0])],
            vec![0, 1],
        );
        assert_eq!(base.len(), 64);
        assert_eq!(
            base,
            ds(
                vec![(vec![1, 2, 3], vec![0; 3]), (vec![4], vec![0])],
                vec![0, 1]
            )
        );
        for other in [
            ds(
                vec![(vec![1, 2, 5], vec![0; 3]), (vec![4], vec![0])],
                vec![0, 1],
            ),
            ds(
                vec![(vec![1, 2, 3], vec![0; 3]), (vec![4], vec![0])],
                vec![1, 1],
            ),
            ds(
                vec![(vec![1, 2], vec![0; 2]), (vec![3, 4], vec![0; 2])],
                vec![0, 1],
            ),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn mixed_labels_are_an_error() {
        let ds = Dataset::from_examples(
            "mem",
            vec![
                crate::reader::Example {
                    text_a: "a".into(),
                    text_b: None,
                    label: Some(Label::Class(0)),
                },
                crate::reader::Example {
                    text_a: "b".into(),
                    text_b: None,
                    label: None,
                },
            ],
        )
        .unwrap();
        let err = Labels::from_examples(&ds).unwrap_err().to_string();
        assert!(err.contains("example 2"), "{err}");
    }

    #[test]
    fn hex_formats() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
