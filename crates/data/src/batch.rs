//! Batching: a [`TokenizedDataset`] into padded [`Batch`]es of CPU tensors, in a deterministic,
//! resumable order, built ahead of time on a background thread.
//!
//! Order of one epoch (a function of `(seed, epoch)` only, see [`DataLoader::epoch_batches`]):
//! 1. indices `0..n`, shuffled with a SplitMix64 stream seeded from `(seed, epoch)` when
//!    [`LoaderConfig::shuffle`] is on;
//! 2. with length bucketing ([`LoaderConfig::bucket_multiplier`] = m), each window of
//!    `m * batch_size` indices is sorted by length, longest first, so a batch holds sequences of
//!    similar length and pads little;
//! 3. cut into batches of `batch_size`; a short last batch is dropped with
//!    [`LoaderConfig::drop_last`];
//! 4. with bucketing and shuffling, the order of the full batches is shuffled again (the short
//!    batch, if kept, stays last).
//!
//! A [`Position`] `{epoch, index}` counts batches already consumed; saving
//! [`Batch::next_position`] after a step and passing it to [`DataLoader::iter`] or
//! [`DataLoader::prefetch`] resumes with exactly the batch that would have come next.
//! Padding is dynamic (to the longest sequence of the batch) or fixed ([`Padding::Fixed`]), on
//! the right (default) or the left ([`PaddingSide`]).
//!
//! Causal-LM data ([`Labels::Tokens`]) gives `[B, T]` i64 labels padded with
//! [`IGNORE_INDEX`](crate::tokenize::IGNORE_INDEX); packed rows also give `position_ids`
//! (`[B, T]` i64, 0 on padding): a document starts wherever a position id is not the previous
//! one plus 1, which is how the model keeps attention inside each document. The first token of
//! every row is never a target (label -100): nothing precedes it, and under left padding the
//! shifted loss would otherwise predict it from padding, so the loss would depend on the side.

use std::cmp::Reverse;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::tokenize::{Labels, TokenizedDataset, IGNORE_INDEX};

/// How batches are padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Padding {
    /// To the longest sequence in the batch.
    Dynamic,
    /// Every batch to this length (must be at least the longest example).
    Fixed(usize),
}

/// Which end of a row padding goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddingSide {
    /// After the tokens (HF's default `padding_side="right"`).
    #[default]
    Right,
    /// Before the tokens (`padding_side="left"`, for generation).
    Left,
}

/// Settings of a [`DataLoader`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Examples per batch. Default 32, as in the `run_glue.py` example of `transformers`.
    pub batch_size: usize,
    /// Shuffle every epoch. Default true; use [`LoaderConfig::eval`] for evaluation.
    pub shuffle: bool,
    /// Seed of the shuffle. Default 42, the `TrainingArguments.seed` default of `transformers`.
    pub seed: u64,
    /// Drop the last batch when it is short. Default false, as `dataloader_drop_last`.
    pub drop_last: bool,
    /// Length bucketing: sort windows of `m * batch_size` examples by length. Default `None`
    /// (off); `transformers`' `LengthGroupedSampler` uses m = 50.
    pub bucket_multiplier: Option<usize>,
    /// Padding. Default dynamic.
    pub padding: Padding,
    /// Batches the prefetch thread prepares ahead. Default 4: a few batches of at most
    /// `batch_size x max_seq_len x 3 x 8` bytes each, enough to hide a slow one.
    pub prefetch: usize,
    /// Where padding goes. Default right; a tokenizer's `padding_side` (see
    /// `LmTokenizer::padding_side`) is the usual source.
    #[serde(default)]
    pub padding_side: PaddingSide,
}

impl Default for LoaderConfig {
    fn default() -> LoaderConfig {
        LoaderConfig {
            batch_size: 32,
            shuffle: true,
            seed: 42,
            drop_last: false,
            bucket_multiplier: None,
            padding: Padding::Dynamic,
            prefetch: 4,
            padding_side: PaddingSide::Right,
        }
    }
}

impl LoaderConfig {
    /// Training: shuffled with `seed`.
    pub fn train(batch_size: usize, seed: u64) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            seed,
            ..LoaderConfig::default()
        }
    }

    /// Evaluation: file order, nothing dropped.
    pub fn eval(batch_size: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            shuffle: false,
            ..LoaderConfig::default()
        }
    }
}

/// Where the loader stands: `index` batches of epoch `epoch` have been consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub index: usize,
}

impl Position {
    /// The start of `epoch`.
    pub fn start_of(epoch: u64) -> Position {
        Position { epoch, index: 0 }
    }
}

/// One batch of CPU tensors. Move it to the model's device with `Tensor::to_device`.
#[derive(Debug)]
pub struct Batch {
    /// `[B, T]` i64.
    pub input_ids: Tensor,
    /// `[B, T]` i64: 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// `[B, T]` i64: 0 for the first segment, 1 for the second; 0 for padding.
    pub token_type_ids: Tensor,
    /// `[B]`: i64 class ids or f32 scores; `[B, T]` i64 token labels (padding
    /// [`IGNORE_INDEX`]) for causal-LM data; `None` for unlabeled splits.
    pub labels: Option<Tensor>,
    /// `[B, T]` i64 position of each token in its document (0 on padding), only for datasets
    /// with position ids (packed causal-LM rows).
    pub position_ids: Option<Tensor>,
    /// The dataset index of each row, to map predictions back to examples.
    pub indices: Vec<usize>,
    /// The position of this batch: `index` is its number within the epoch.
    pub position: Position,
}

impl Batch {
    /// Number of examples.
    pub fn size(&self) -> usize {
        self.indices.len()
    }

    /// The position to save after training on this batch, for an exact resume.
    pub fn next_position(&self) -> Position {
        Position {
            epoch: self.position.epoch,
            index: self.position.index + 1,
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed generator, so that the order never
/// depends on another crate's version.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The stream of `epoch` under `seed`.
    pub(crate) fn for_epoch(seed: u64, epoch: u64) -> SplitMix64 {
        SplitMix64(Self::mix(seed) ^ Self::mix(epoch.wrapping_add(Self::GAMMA)))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        Self::mix(self.0)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias (Lemire 2019).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher-Yates.
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// Turns a tokenized split into batches. Cheap to clone (the data is shared).
#[derive(Clone, Debug)]
pub struct DataLoader {
    data: Arc<TokenizedDataset>,
    config: LoaderConfig,
    pad_id: i64,
}

impl DataLoader {
    /// A loader over `data`, padding with `pad_id` (see `Encoder::pad_id`).
    pub fn new(data: Arc<TokenizedDataset>, pad_id: u32, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        if config.bucket_multiplier == Some(0) {
            bail!("bucket_multiplier must be at least 1 (or None for no bucketing)");
        }
        if config.prefetch == 0 {
            bail!("prefetch must be at least 1 batch");
        }
        if data.is_empty() {
            bail!("the dataset has no examples");
        }
        if let Padding::Fixed(len) = config.padding {
            let longest = data.max_seq_len();
            if len < longest {
                bail!(
                    "fixed padding length {len} is shorter than the longest example ({longest} \
                     tokens); use the tokenizer's max_seq_len or more"
                );
            }
        }
        if config.drop_last && data.len() < config.batch_size {
            bail!(
                "drop_last with batch_size {} and only {} examples leaves no batch",
                config.batch_size,
                data.len()
            );
        }
        Ok(DataLoader {
            data,
            config,
            pad_id: i64::from(pad_id),
        })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    pub fn data(&self) -> &Arc<TokenizedDataset> {
        &self.data
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.data.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The batches of `epoch`, as dataset indices; depends only on the config and `epoch`.
    pub fn epoch_batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let cfg = &self.config;
        let bs = cfg.batch_size;
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        let mut rng = SplitMix64::for_epoch(cfg.seed, epoch);
        if cfg.shuffle {
            rng.shuffle(&mut order);
        }
        if let Some(m) = cfg.bucket_multiplier {
            for window in order.chunks_mut(bs.saturating_mul(m)) {
                // Stable: ties keep the (shuffled) order.
                window.sort_by_key(|&i| Reverse(self.data.seq_len(i)));
            }
        }
        let mut batches: Vec<Vec<usize>> = order.chunks(bs).map(<[usize]>::to_vec).collect();
        let short_last = batches.last().is_some_and(|b| b.len() < bs);
        if short_last && cfg.drop_last {
            batches.pop();
        }
        if cfg.shuffle && cfg.bucket_multiplier.is_some() {
            let full = batches.len() - usize::from(short_last && !cfg.drop_last);
            rng.shuffle(&mut batches[..full]);
        }
        batches
    }

    /// `pos`, with the end of an epoch written as the start of the next.
    pub fn normalize(&self, pos: Position) -> Result<Position> {
        let n = self.batches_per_epoch();
        if pos.index == n {
            return Ok(Position::start_of(pos.epoch + 1));
        }
        if pos.index > n {
            bail!(
                "position {pos:?} is past the end of an epoch of {n} batches (batch_size {} over \
                 {} examples): was it saved with other data or settings?",
                self.config.batch_size,
                self.data.len()
            );
        }
        Ok(pos)
    }

    /// Pad the examples `indices` into a batch.
    pub fn build_batch(&self, indices: &[usize], position: Position) -> Result<Batch> {
        build_batch(
            &self.data,
            indices,
            (self.config.padding, self.config.padding_side),
            self.pad_id,
            position,
        )
    }

    /// The batches from `from` to the end of its epoch, built on the calling thread.
    pub fn iter(&self, from: Position) -> Result<BatchIter> {
        let from = self.normalize(from)?;
        let batches = self.epoch_batches(from.epoch);
        Ok(BatchIter {
            loader: self.clone(),
            batches,
            epoch: from.epoch,
            next: from.index,
        })
    }

    /// The batches from `from` to the end of its epoch, built ahead by a background thread
    /// that keeps up to [`LoaderConfig::prefetch`] batches ready. Same batches as [`Self::iter`].
    pub fn prefetch(&self, from: Position) -> Result<PrefetchIter> {
        let from = self.normalize(from)?;
        let (tx, rx) = sync_channel::<Result<Batch>>(self.config.prefetch);
        let loader = self.clone();
        let remaining = self.batches_per_epoch() - from.index;
        let handle = std::thread::Builder::new()
            .name("loraplus-prefetch".into())
            .spawn(move || {
                let batches = loader.epoch_batches(from.epoch);
                for (index, indices) in batches.iter().enumerate().skip(from.index) {
                    let pos = Position {
                        epoch: from.epoch,
                        index,
                    };
                    let batch = loader.build_batch(indices, pos);
                    let failed = batch.is_err();
                    // A closed channel means the consumer is gone: stop.
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
            })
            .context("starting the prefetch thread")?;
        Ok(PrefetchIter {
            rx: Some(rx),
            handle: Some(handle),
            remaining,
        })
    }
}

fn build_batch(
    data: &TokenizedDataset,
    indices: &[usize],
    (padding, side): (Padding, PaddingSide),
    pad_id: i64,
    position: Position,
) -> Result<Batch> {
    if indices.is_empty() {
        bail!("a batch needs at least one example");
    }
    if let Some(&bad) = indices.iter().find(|&&i| i >= data.len()) {
        bail!(
            "example index {bad} out of range (dataset of {})",
            data.len()
        );
    }
    let longest = indices.iter().map(|&i| data.seq_len(i)).max().unwrap_or(0);
    let width = match padding {
        Padding::Dynamic => longest,
        Padding::Fixed(len) if len >= longest => len,
        Padding::Fixed(len) => bail!("fixed padding length {len} < example length {longest}"),
    };
    let b = indices.len();
    let token_labels = match data.labels() {
        Labels::Tokens(v) => Some(v),
        _ => None,
    };
    let mut ids = vec![pad_id; b * width];
    let mut mask = vec![0i64; b * width];
    let mut types = vec![0i64; b * width];
    let mut positions = data.has_position_ids().then(|| vec![0i64; b * width]);
    let mut labels = token_labels.map(|_| vec![IGNORE_INDEX; b * width]);
    for (row, &i) in indices.iter().enumerate() {
        let ex = data.get(i);
        let n = ex.input_ids.len();
        let start = match side {
            PaddingSide::Right => row * width,
            PaddingSide::Left => row * width + width - n,
        };
        let span = start..start + n;
        for (dst, &id) in ids[span.clone()].iter_mut().zip(ex.input_ids) {
            *dst = i64::from(id);
        }
        mask[span.clone()].fill(1);
        for (dst, &t) in types[span.clone()].iter_mut().zip(ex.token_type_ids) {
            *dst = i64::from(t);
        }
        if let (Some(dst), Some(src)) = (&mut positions, ex.position_ids) {
            for (d, &p) in dst[span.clone()].iter_mut().zip(src) {
                *d = i64::from(p);
            }
        }
        if let (Some(dst), Some(src)) = (&mut labels, token_labels) {
            dst[span.clone()].copy_from_slice(&src[i]);
            // A row's first token has no context to be predicted from. Under right padding the
            // shifted loss never targets it; under left padding the padding before it would:
            // it is not a target either way, so the loss does not depend on the padding side.
            dst[span.start] = IGNORE_INDEX;
        }
    }
    let shape = [b as i64, width as i64];
    let tensor = |v: &[i64]| -> Result<Tensor> { Ok(Tensor::f_from_slice(v)?.f_view(shape)?) };
    let labels = match (data.labels(), labels) {
        (Labels::Tokens(_), Some(l)) => Some(tensor(&l)?),
        (Labels::None | Labels::Tokens(_), _) => None,
        (Labels::Classes(v), _) => {
            let l: Vec<i64> = indices.iter().map(|&i| v[i]).collect();
            Some(Tensor::f_from_slice(&l)?)
        }
        (Labels::Scores(v), _) => {
            let l: Vec<f32> = indices.iter().map(|&i| v[i]).collect();
            Some(Tensor::f_from_slice(&l)?)
        }
    };
    Ok(Batch {
        input_ids: tensor(&ids)?,
        attention_mask: tensor(&mask)?,
        token_type_ids: tensor(&types)?,
        labels,
        position_ids: positions.as_deref().map(tensor).transpose()?,
        indices: indices.to_vec(),
        position,
    })
}

/// Padding tokens over all tokens (`0.0` = no padding) of the given batches of `data`, each
/// padded to its longest example (dynamic padding) or to `fixed` tokens when given.
pub fn padding_fraction(
    data: &TokenizedDataset,
    batches: &[Vec<usize>],
    fixed: Option<usize>,
) -> f64 {
    let (mut real, mut total) = (0usize, 0usize);
    for batch in batches {
        let lens = batch
            .iter()
            .filter(|&&i| i < data.len())
            .map(|&i| data.seq_len(i));
        let longest = lens.clone().max().unwrap_or(0);
        real += lens.sum::<usize>();
        total += batch.len() * fixed.map_or(longest, |f| f.max(longest));
    }
    if total == 0 {
        0.0
    } else {
        (total - real) as f64 / total as f64
    }
}

impl DataLoader {
    /// The padding fraction of the batches of `epoch` with this loader's settings (see
    /// [`padding_fraction`]).
    pub fn padding_fraction(&self, epoch: u64) -> f64 {
        let fixed = match self.config.padding {
            Padding::Dynamic => None,
            Padding::Fixed(len) => Some(len),
        };
        padding_fraction(&self.data, &self.epoch_batches(epoch), fixed)
    }
}

/// Batches built on the calling thread; see [`DataLoader::iter`].
pub struct BatchIter {
    loader: DataLoader,
    batches: Vec<Vec<usize>>,
    epoch: u64,
    next: usize,
}

impl Iterator for BatchIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let indices = self.batches.get(self.next)?;
        let pos = Position {
            epoch: self.epoch,
            index: self.next,
        };
        self.next += 1;
        Some(self.loader.build_batch(indices, pos))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.batches.len().saturating_sub(self.next);
        (n, Some(n))
    }
}

impl ExactSizeIterator for BatchIter {}

/// Batches built ahead by a background thread; see [`DataLoader::prefetch`]. Dropping it stops
/// and joins the thread.
pub struct PrefetchIter {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Iterator for PrefetchIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(b) => {
                // After an error the thread stops: end the iteration there too.
                self.remaining = if b.is_err() {
                    0
                } else {
                    self.remaining.saturating_sub(1)
                };
                Some(b)
            }
            Err(_) => {
                // The thread is done. If it ended early it can only have panicked: report it.
                let early = self.remaining > 0;
                self.rx = None;
                self.remaining = 0;
                let panicked = self
                    .handle
                    .take()
                    .map(|h| h.join().is_err())
                    .unwrap_or(false);
                (early || panicked)
                    .then(|| Err(anyhow::anyhow!("the prefetch thread stopped unexpectedly")))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl Drop for PrefetchIter {
    fn drop(&mut self) {
        // Closing the channel first makes a thread blocked in `send` return, so join cannot hang.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (reference C implementation by Vigna).
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut r = SplitMix64::for_epoch(1, 2);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            counts[r.below(5) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..100).collect();
        SplitMix64::for_epoch(3, 0).shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }
}
