//! Text generation and log-likelihood scoring with the causal-LM head (GPT-2, Llama), LoRA
//! adapters active or merged.
//!
//! - [`TaskModel::generate`]: transformers' `generate` for decoder-only models: prompts left
//!   padded into one batch, position ids `cumsum(attention_mask) - 1` (0 on padding), a
//!   per-layer key-value cache ([`KvCache`]) or the whole sequence recomputed each step (same
//!   tokens), greedy or sampled (temperature, then top-k, then top-p, HF's processor order),
//!   finished rows padded until every row has stopped or `max_new_tokens` are made.
//! - [`TaskModel::continuation_logprobs`]: lm-eval-harness' `loglikelihood` for multiple
//!   choice: the summed log-probability of a continuation given its context.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::attention::{KvCache, LayerCtx};
use crate::heads::Head;
use crate::task::{ModelInputs, TaskModel};

/// transformers' `GenerationConfig.max_length` default (20 tokens in all); here it bounds the
/// new tokens only.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 20;
/// transformers' `GenerationConfig.temperature` default.
pub const DEFAULT_TEMPERATURE: f64 = 1.0;
/// transformers' `GenerationConfig.top_k` default.
pub const DEFAULT_TOP_K: usize = 50;
/// transformers' `GenerationConfig.top_p` default (1.0: off).
pub const DEFAULT_TOP_P: f64 = 1.0;
/// transformers' `GenerationConfig.repetition_penalty` default (1.0: off).
pub const DEFAULT_REPETITION_PENALTY: f64 = 1.0;

/// How [`TaskModel::generate`] decodes; field names and defaults are transformers'
/// `GenerationConfig`'s, but for `eos_token_ids` (HF's `eos_token_id`, here always a list) and
/// `seed` (HF seeds torch globally instead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationConfig {
    /// New tokens at most per prompt (at least 1). Default [`DEFAULT_MAX_NEW_TOKENS`].
    pub max_new_tokens: usize,
    /// `false` (default): greedy (the first highest logit); `true`: sample.
    pub do_sample: bool,
    /// Sampling only: logits are divided by it (> 0). Default 1.0.
    pub temperature: f64,
    /// Sampling only: keep the `top_k` highest logits (ties with the k-th kept); 0 turns it off.
    /// Default 50.
    pub top_k: usize,
    /// Sampling only: keep the smallest set of highest-probability tokens whose probability
    /// exceeds `top_p`, at least one; in (0, 1], 1.0 (default) turns it off (not checked when
    /// decoding is greedy, where it does nothing).
    pub top_p: f64,
    /// Seed of the sampler's own generators, one per prompt, each drawn from the seed and the
    /// prompt's row: the same seed gives the same tokens (on a given device), and a prompt's
    /// draws do not depend on the others in its batch (see [`Self::starting_at_row`] to split
    /// a list into batches). `None` (default): drawn from torch's global generator.
    pub seed: Option<u64>,
    /// A row stops after producing one of these (included in its output). Empty (default): no
    /// stop token; [`TaskModel::eos_token_ids`] has the checkpoint's.
    pub eos_token_ids: Vec<i64>,
    /// Fills the left padding and the rows that have stopped; never part of the output.
    /// `None` (default): the config's `pad_token_id`, else the first EOS, else 0 (as HF).
    pub pad_token_id: Option<i64>,
    /// Keep each layer's keys and values (default); `false` recomputes the whole sequence at
    /// every step, with the same tokens.
    pub use_cache: bool,
    /// HF's `RepetitionPenaltyLogitsProcessor`, greedy or sampled, before the other
    /// processors: the logit of every token already in the row (its prompt and what it
    /// generated) is divided by it where positive, multiplied where negative. 1.0 (default):
    /// off. The row's own tokens only: HF's batched `generate` also penalises the left
    /// padding's pad id, so this equals HF on each prompt alone.
    pub repetition_penalty: f64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            do_sample: false,
            temperature: DEFAULT_TEMPERATURE,
            top_k: DEFAULT_TOP_K,
            top_p: DEFAULT_TOP_P,
            seed: None,
            eos_token_ids: Vec::new(),
            pad_token_id: None,
            use_cache: true,
            repetition_penalty: DEFAULT_REPETITION_PENALTY,
        }
    }
}

impl GenerationConfig {
    /// Greedy decoding of at most `max_new_tokens`, stopping at `eos_token_ids`.
    pub fn greedy(max_new_tokens: usize, eos_token_ids: &[i64]) -> Self {
        GenerationConfig {
            max_new_tokens,
            eos_token_ids: eos_token_ids.to_vec(),
            ..Default::default()
        }
    }

    /// This config for the prompts of a list from its row `first` on: with a seed, each
    /// prompt then draws what it draws at its place in one call over the whole list, so
    /// splitting the list into batches of any size samples the same tokens (up to the last
    /// bits of the logits, which padding to other lengths can change).
    pub fn starting_at_row(&self, first: usize) -> Self {
        GenerationConfig {
            seed: self
                .seed
                .map(|s| s.wrapping_add((first as u64).wrapping_mul(SplitMix64::ROW_STRIDE))),
            ..self.clone()
        }
    }

    /// Errors name the field, the value found and the range expected.
    pub fn validate(&self, vocab_size: i64) -> Result<()> {
        if self.max_new_tokens < 1 {
            bail!("generation config: max_new_tokens must be at least 1, found 0");
        }
        if self.do_sample && !(self.temperature.is_finite() && self.temperature > 0.0) {
            bail!(
                "generation config: temperature must be a number > 0 when do_sample is true, found {} (for greedy decoding set do_sample = false)",
                self.temperature
            );
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            bail!(
                "generation config: repetition_penalty must be a number > 0 (1.0: off), found {}",
                self.repetition_penalty
            );
        }
        if self.do_sample && !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!(
                "generation config: top_p must be in (0, 1], found {}",
                self.top_p
            );
        }
        for (field, id) in self
            .eos_token_ids
            .iter()
            .map(|id| ("eos_token_ids", *id))
            .chain(self.pad_token_id.map(|id| ("pad_token_id", id)))
        {
            if id < 0 || id >= vocab_size {
                bail!(
                    "generation config: {field} {id} is outside the vocabulary (0..{vocab_size})"
                );
            }
        }
        Ok(())
    }
}

/// splitmix64 (Steele, Lea, Flood 2014): the sampler's generator, independent of torch's and
/// of the device.
struct SplitMix64(u64);

impl SplitMix64 {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    /// Row `i` of a call seeded `s` starts from the mix of `s + i * ROW_STRIDE`: linear
    /// before the mix, so a call seeded `s + k * ROW_STRIDE` gives its row `j` the generator
    /// of row `k + j` ([`GenerationConfig::starting_at_row`]).
    const ROW_STRIDE: u64 = 0xD1B5_4A32_D192_ED03;

    /// The generator of row `row` of a call seeded `seed`.
    fn for_row(seed: u64, row: usize) -> SplitMix64 {
        let start = seed.wrapping_add((row as u64).wrapping_mul(Self::ROW_STRIDE));
        SplitMix64(SplitMix64(start).next_u64())
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        const MANTISSA_BITS: u32 = 53;
        (self.next_u64() >> (64 - MANTISSA_BITS)) as f64 / (1u64 << MANTISSA_BITS) as f64
    }
}

/// The decoding settings a checkpoint's `generation_config.json` gives, which transformers'
/// `generate` uses unless the call overrides them; `None` where the file (or the key) is absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    /// `max_new_tokens`.
    pub max_new_tokens: Option<usize>,
    /// `max_length`: prompt and new tokens together (used where `max_new_tokens` is not set;
    /// transformers counts the batch's padded prompt length).
    pub max_length: Option<usize>,
    /// `do_sample`.
    pub do_sample: Option<bool>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_k`.
    pub top_k: Option<usize>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `repetition_penalty`.
    pub repetition_penalty: Option<f64>,
    /// `eos_token_id` (an integer or a list), empty when absent. Chat models list their
    /// end-of-turn tokens there only (Gemma's `<end_of_turn>`, Phi-3's `<|end|>`, Llama 3's
    /// `<|eot_id|>`), and transformers' `generate` stops on them.
    pub eos_token_ids: Vec<i64>,
}

impl GenerationDefaults {
    /// Read from `model_dir/generation_config.json`; a key of the wrong type is an error naming
    /// it (the file is the checkpoint's fault).
    pub fn from_model_dir(model_dir: &std::path::Path) -> Result<GenerationDefaults> {
        let path = model_dir.join("generation_config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(GenerationDefaults::default())
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| crate::bad_checkpoint(format!("{}: not JSON ({e})", path.display())))?;
        if !value.is_object() {
            return Err(crate::bad_checkpoint(format!(
                "{}: expected a JSON object, found {value}",
                path.display()
            )));
        }
        let wrong = |key: &str, what: &str| {
            crate::bad_checkpoint(format!(
                "{}: {key} is {}, expected {what}",
                path.display(),
                value[key]
            ))
        };
        let number = |key: &str| -> Result<Option<f64>> {
            match value.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| wrong(key, "a number")),
            }
        };
        let count = |key: &str| -> Result<Option<usize>> {
            match value.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| wrong(key, "an integer >= 0")),
            }
        };
        Ok(GenerationDefaults {
            max_new_tokens: count("max_new_tokens")?,
            max_length: count("max_length")?,
            do_sample: match value.get("do_sample") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_bool()
                        .ok_or_else(|| wrong("do_sample", "true or false"))?,
                ),
            },
            temperature: number("temperature")?,
            top_k: count("top_k")?,
            top_p: number("top_p")?,
            repetition_penalty: number("repetition_penalty")?,
            eos_token_ids: ids_of(value.get("eos_token_id")),
        })
    }
}

fn ids_of(value: Option<&Value>) -> Vec<i64> {
    match value {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

/// HF's generation position ids: `cumsum(mask) - 1`, 0 on padding. `mask`: `[B, T]` int64.
fn generation_positions(mask: &Tensor) -> Tensor {
    (mask.cumsum(1, Kind::Int64) - 1).masked_fill(&mask.eq(0), 0)
}

/// Where [`TaskModel::generate`] draws its next tokens from.
enum Chooser {
    Greedy,
    /// One generator per row.
    Sample(Vec<SplitMix64>),
}

impl TaskModel {
    /// The checkpoint config's `eos_token_id` (integer or list; empty when absent), for
    /// [`GenerationConfig::eos_token_ids`].
    pub fn eos_token_ids(&self) -> Vec<i64> {
        ids_of(self.config.common().eos_token_id.as_ref())
    }

    fn require_causal_lm(&self, what: &str) -> Result<()> {
        if self.task() != Head::CausalLm {
            bail!(
                "{what} needs the causal-LM head; this {} model was loaded with {:?} (load it with Head::CausalLm)",
                self.config.model_type(),
                self.task()
            );
        }
        Ok(())
    }

    /// Token ids of `seq` (named `what`) within the vocabulary.
    fn check_token_ids(&self, what: &str, seq: &[i64]) -> Result<()> {
        let vocab = self.config.vocab_size();
        if let Some((i, id)) = seq
            .iter()
            .enumerate()
            .find(|(_, &id)| id < 0 || id >= vocab)
        {
            bail!("{what}: token {i} is {id}, outside the vocabulary (0..{vocab})");
        }
        Ok(())
    }

    /// A prompt of `len` tokens and `max_new_tokens` after it fit a learned position table
    /// (GPT-2 `n_positions`). Rotary positions go on past `max_position_embeddings`, as in
    /// transformers, with a warning (the model was not trained that far, unless its RoPE
    /// scaling is meant for it).
    pub fn check_prompt_length(&self, len: usize, max_new_tokens: usize) -> Result<()> {
        let Some(limit) = self.config.arch().generation_positions() else {
            bail!("{} is not a decoder", self.config.model_type());
        };
        let learned = self.config.max_positions().is_some();
        let (len, new) = (len as i64, max_new_tokens as i64);
        if !learned {
            if len + new > limit {
                tracing::warn!(
                    "a prompt of {len} tokens plus max_new_tokens ({new}) goes past the {limit} positions {} was configured for (max_position_embeddings): generating on, as transformers does; expect the quality to degrade unless its RoPE scaling is meant for it",
                    self.config.model_type()
                );
            }
            return Ok(());
        }
        if len > limit {
            bail!(
                "a prompt has {len} tokens, more than the {limit} positions {} supports",
                self.config.model_type()
            );
        }
        if learned && len + new > limit {
            bail!(
                "a prompt of {len} tokens plus max_new_tokens ({new}) exceeds the {limit} learned positions of {}; lower max_new_tokens to at most {}",
                self.config.model_type(),
                limit - len
            );
        }
        Ok(())
    }

    /// The new tokens of each prompt (token ids, unpadded): at most `cfg.max_new_tokens`,
    /// ending with the first of `cfg.eos_token_ids` when one is produced (included, as HF
    /// returns it). Prompts are decoded together, left padded; no gradient is recorded.
    /// LoRA adapters act as they stand (unmerged, or merged by [`loraplus_core::LoraModel::merge`]).
    ///
    /// Errors (before any computation): a head other than the causal LM, an empty prompt, ids
    /// outside the vocabulary, a prompt (plus `max_new_tokens`) longer than a learned position
    /// table (GPT-2 `n_positions`; rotary models go on past `max_position_embeddings`, with a
    /// warning), and a bad config ([`GenerationConfig::validate`]).
    pub fn generate(&self, prompts: &[Vec<i64>], cfg: &GenerationConfig) -> Result<Vec<Vec<i64>>> {
        self.require_causal_lm("generate")?;
        cfg.validate(self.config.vocab_size())?;
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                bail!("generate: prompt {i} is empty (it needs at least one token, e.g. BOS)");
            }
            self.check_token_ids(&format!("generate: prompt {i}"), p)?;
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        self.check_prompt_length(longest, cfg.max_new_tokens)
            .map_err(|e| anyhow::anyhow!("generate: {e}"))?;
        let pad = cfg
            .pad_token_id
            .or(self.config.pad_token_id())
            .or(cfg.eos_token_ids.first().copied())
            .unwrap_or(0);
        let mut chooser = if cfg.do_sample {
            let seed =
                match cfg.seed {
                    Some(s) => s,
                    None => Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu))
                        .int64_value(&[0]) as u64,
                };
            Chooser::Sample(
                (0..prompts.len())
                    .map(|row| SplitMix64::for_row(seed, row))
                    .collect(),
            )
        } else {
            Chooser::Greedy
        };
        let _guard = tch::no_grad_guard();
        self.decode(prompts, longest as i64, pad, cfg, &mut chooser)
    }

    fn decode(
        &self,
        prompts: &[Vec<i64>],
        longest: i64,
        pad: i64,
        cfg: &GenerationConfig,
        chooser: &mut Chooser,
    ) -> Result<Vec<Vec<i64>>> {
        let b = prompts.len() as i64;
        let device = self.device();
        let mut ids_flat = Vec::with_capacity((b * longest) as usize);
        let mut mask_flat = Vec::with_capacity((b * longest) as usize);
        for p in prompts {
            let padding = longest as usize - p.len();
            ids_flat.extend(std::iter::repeat_n(pad, padding).chain(p.iter().copied()));
            mask_flat
                .extend(std::iter::repeat_n(0i64, padding).chain(std::iter::repeat_n(1, p.len())));
        }
        let mut ids = Tensor::from_slice(&ids_flat)
            .view([b, longest])
            .to_device(device);
        let mut mask = Tensor::from_slice(&mask_flat)
            .view([b, longest])
            .to_device(device);
        let mut positions = generation_positions(&mask);
        // The tokens each row holds, for the repetition penalty: [B, vocab] (a padding id
        // counts only where the prompt itself has it).
        let mut seen = if cfg.repetition_penalty != DEFAULT_REPETITION_PENALTY {
            let vocab = self.config.vocab_size();
            // Counts of each id's real occurrences (padding adds 0).
            let held =
                Tensor::zeros([b, vocab], (Kind::Int64, device)).f_scatter_add(1, &ids, &mask)?;
            Some(held.gt(0))
        } else {
            None
        };
        let mut caches: Vec<KvCache> = (0..self.backbone.num_layers()).map(|_| None).collect();
        let mut out: Vec<Vec<i64>> = vec![Vec::new(); prompts.len()];
        let mut done = vec![false; prompts.len()];
        let ones = Tensor::ones([b, 1], (Kind::Int64, device));
        for step in 0..cfg.max_new_tokens {
            let width = ids.size()[1];
            if self.backbone.cache_stale_at() == Some(width) {
                // The rotary tables changed with the length: keys cached so far are stale.
                caches.iter_mut().for_each(|c| *c = None);
            }
            let logits = if cfg.use_cache {
                let (input, pos) = if caches.iter().all(Option::is_none) {
                    (ids.shallow_clone(), positions.shallow_clone())
                } else {
                    let t = ids.size()[1];
                    (ids.narrow(1, t - 1, 1), positions.narrow(1, t - 1, 1))
                };
                let queries = input.size()[1];
                let step_mask = self.backbone.step_mask(&mask, queries);
                self.last_logits(&input, &pos, step_mask, Some(&mut caches))?
            } else {
                let t = ids.size()[1];
                self.last_logits(&ids, &positions, self.backbone.step_mask(&mask, t), None)?
            };
            let logits = match &seen {
                Some(held) => {
                    let p = cfg.repetition_penalty;
                    // where(logit < 0, logit * p, logit / p), on the row's tokens only.
                    let penalized = (&logits * p).where_self(&logits.lt(0.0), &(&logits / p));
                    penalized.where_self(held, &logits)
                }
                None => logits,
            };
            let next = self.choose(&logits, cfg, chooser)?;
            let next_host = Vec::<i64>::try_from(&next).context("reading the next tokens")?;
            let next_host: Vec<i64> = next_host
                .iter()
                .zip(&done)
                .map(|(&tok, &d)| if d { pad } else { tok })
                .collect();
            for (row, &tok) in next_host.iter().enumerate() {
                if !done[row] {
                    out[row].push(tok);
                    done[row] = cfg.eos_token_ids.contains(&tok);
                }
            }
            if done.iter().all(|&d| d) || step + 1 == cfg.max_new_tokens {
                break;
            }
            let next = Tensor::from_slice(&next_host)
                .view([b, 1])
                .to_device(device);
            if let Some(held) = &mut seen {
                // A stopped row's pad is not one of its tokens.
                let live = Tensor::from_slice(&done.iter().map(|d| !d).collect::<Vec<bool>>())
                    .view([b, 1])
                    .to_device(device);
                let was = held.gather(1, &next, false);
                let _ = held.scatter_(1, &next, &was.logical_or(&live));
            }
            let last_pos = positions.narrow(1, positions.size()[1] - 1, 1);
            ids = Tensor::cat(&[ids, next], 1);
            mask = Tensor::cat(&[&mask, &ones], 1);
            positions = Tensor::cat(&[&positions, &(last_pos + 1)], 1);
        }
        Ok(out)
    }

    /// Logits `[B, vocab]` (f32) of the last position of `ids` (`[B, T_new]`, at `positions`),
    /// attending with `mask` (`[B, 1, T_new, T_keys]`); with `caches`, earlier keys and values
    /// come from them and this step's are appended.
    fn last_logits(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: Tensor,
        caches: Option<&mut Vec<KvCache>>,
    ) -> Result<Tensor> {
        let size = ids.size();
        let (b, t) = (size[0], size[1]);
        let mut h = self.backbone.embed(ids, None, Some(positions), false);
        let mut ctx = LayerCtx::dense(mask, self.backbone.rope(positions), b, t);
        ctx.local_rope = self.backbone.local_rope(positions);
        match caches {
            Some(caches) => {
                for (i, cache) in caches.iter_mut().enumerate() {
                    h = self
                        .backbone
                        .layer(i)
                        .forward_cached(&h, &ctx, cache)
                        .with_context(|| format!("generate: layer {i}"))?;
                }
            }
            None => {
                for i in 0..self.backbone.num_layers() {
                    h = self.backbone.layer(i).forward_t(&h, &ctx, false);
                }
            }
        }
        let last = self.backbone.final_norm(h.select(1, t - 1));
        Ok(self.head.forward_read(&last, false).to_kind(Kind::Float))
    }

    /// The next token of each row, `[B]` int64.
    fn choose(
        &self,
        logits: &Tensor,
        cfg: &GenerationConfig,
        chooser: &mut Chooser,
    ) -> Result<Tensor> {
        let rngs = match chooser {
            Chooser::Greedy => return Ok(logits.argmax(-1, false)),
            Chooser::Sample(rngs) => rngs,
        };
        let vocab = logits.size()[1];
        // HF's processors, in its order: temperature, top-k, top-p.
        let mut scores = if cfg.temperature != DEFAULT_TEMPERATURE {
            logits / cfg.temperature
        } else {
            logits.shallow_clone()
        };
        if cfg.top_k > 0 {
            let k = (cfg.top_k as i64).min(vocab);
            let kth = scores.topk(k, -1, true, true).0.narrow(1, k - 1, 1);
            scores = scores.masked_fill(&scores.lt_tensor(&kth), f64::NEG_INFINITY);
        }
        if cfg.top_p < DEFAULT_TOP_P {
            // Ascending: drop the low tail whose probabilities sum to at most 1 - top_p,
            // never the highest token.
            let (sorted, order) = scores.sort(-1, false);
            let cumulative = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
            let drop_sorted = cumulative.le(1.0 - cfg.top_p);
            let drop_sorted = drop_sorted.index_fill(
                1,
                &Tensor::from_slice(&[vocab - 1]).to_device(logits.device()),
                0,
            );
            let drop = drop_sorted.scatter(1, &order, &drop_sorted);
            scores = scores.masked_fill(&drop, f64::NEG_INFINITY);
        }
        // Inverse CDF with this generator's uniforms: the first token whose cumulative
        // probability exceeds u * total (tokens of zero probability are never chosen).
        let cdf = scores.softmax(-1, Kind::Float).cumsum(-1, Kind::Double);
        let b = logits.size()[0];
        let u: Vec<f64> = rngs.iter_mut().map(SplitMix64::next_f64).collect();
        let total = cdf.narrow(1, vocab - 1, 1);
        let target = Tensor::from_slice(&u)
            .to_device(logits.device())
            .view([b, 1])
            * total;
        let index = target.f_searchsorted(&cdf, false, true, "right", None::<Tensor>)?;
        Ok(index.clamp_max(vocab - 1).view([b]))
    }

    /// lm-eval-harness' `loglikelihood`: for each `(context, continuation)` (token ids), the
    /// sum over the continuation's tokens of `log p(token | context, earlier continuation
    /// tokens)` (log-softmax in f32, summed in f64), and the number of continuation tokens.
    /// Items run `batch_size` at a time, right padded, as `context + continuation` without its
    /// last token; the LM head runs only on the positions scored. No gradient is recorded.
    ///
    /// The context must not be empty (lm-eval puts the end-of-text token there; pass it), nor
    /// the continuation; the sequence must fit the model's positions (it is not truncated).
    pub fn continuation_logprobs(
        &self,
        items: &[(Vec<i64>, Vec<i64>)],
        batch_size: usize,
    ) -> Result<Vec<(f64, usize)>> {
        self.require_causal_lm("continuation_logprobs")?;
        if batch_size < 1 {
            bail!("continuation_logprobs: batch_size must be at least 1, found 0");
        }
        let limit = self.config.max_positions();
        for (i, (context, continuation)) in items.iter().enumerate() {
            if context.is_empty() {
                bail!("continuation_logprobs: item {i} has an empty context (lm-eval-harness puts the end-of-text token there: pass it)");
            }
            if continuation.is_empty() {
                bail!("continuation_logprobs: item {i} has an empty continuation");
            }
            self.check_token_ids(&format!("continuation_logprobs: item {i} context"), context)?;
            self.check_token_ids(
                &format!("continuation_logprobs: item {i} continuation"),
                continuation,
            )?;
            let len = (context.len() + continuation.len() - 1) as i64;
            if let Some(max) = limit {
                if len > max {
                    bail!(
                        "continuation_logprobs: item {i} needs {len} positions, more than the {max} {} supports (it is not truncated)",
                        self.config.model_type()
                    );
                }
            }
        }
        let _guard = tch::no_grad_guard();
        let mut results = Vec::with_capacity(items.len());
        for chunk in items.chunks(batch_size) {
            results.extend(self.score_chunk(chunk)?);
        }
        Ok(results)
    }

    fn score_chunk(&self, chunk: &[(Vec<i64>, Vec<i64>)]) -> Result<Vec<(f64, usize)>> {
        let device = self.device();
        let b = chunk.len() as i64;
        let t = chunk
            .iter()
            .map(|(c, k)| (c.len() + k.len() - 1) as i64)
            .max()
            .unwrap_or(1);
        let mut ids = vec![0i64; (b * t) as usize];
        let mut mask = vec![0i64; (b * t) as usize];
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for (row, (context, continuation)) in chunk.iter().enumerate() {
            let start = row * t as usize;
            let whole: Vec<i64> = context.iter().chain(continuation).copied().collect();
            let input = &whole[..whole.len() - 1];
            ids[start..start + input.len()].copy_from_slice(input);
            mask[start..start + input.len()].fill(1);
            // Position p predicts token p + 1: the continuation's tokens are predicted from
            // positions context.len() - 1 onwards.
            for (j, &tok) in continuation.iter().enumerate() {
                rows.push((start + context.len() - 1 + j) as i64);
                targets.push(tok);
            }
        }
        let ids = Tensor::from_slice(&ids).view([b, t]).to_device(device);
        let mask = Tensor::from_slice(&mask).view([b, t]).to_device(device);
        self.check_inputs(&ModelInputs::new(&ids, &mask))?;
        let hidden = self.encode(&ids, &mask, None, false)?;
        let width = hidden.size()[2];
        let rows = Tensor::from_slice(&rows).to_device(device);
        let picked = hidden.reshape([-1, width]).index_select(0, &rows);
        let logprobs = self
            .head
            .forward_read(&picked, false)
            .log_softmax(-1, Kind::Float);
        let targets = Tensor::from_slice(&targets).to_device(device).view([-1, 1]);
        let chosen = logprobs.gather(1, &targets, false).to_kind(Kind::Double);
        let chosen =
            Vec::<f64>::try_from(&chosen.view([-1])).context("reading log-probabilities")?;
        let mut out = Vec::with_capacity(chunk.len());
        let mut at = 0;
        for (_, continuation) in chunk {
            let n = continuation.len();
            out.push((chosen[at..at + n].iter().sum(), n));
            at += n;
        }
        Ok(out)
    }
}
