//! Task heads on top of a backbone, and their losses as HuggingFace computes them:
//! cross-entropy for classification, MSE for regression (`num_labels == 1`), shifted
//! cross-entropy with `-100` ignored for causal language modelling.
//!
//! The heads belong to the task, not to an architecture: the decoders share `score` and
//! `lm_head` ([`decoder_head`], [`decoder_head_specs`]); an encoder whose classifier reads the
//! first token brings its own layers as a [`FirstTokenHead`].

use anyhow::Result;
use tch::{Kind, Reduction, Tensor};

use loraplus_core::{LoraEmbedding, LoraLinear, WeightLayout};

use crate::backbone::{FreshLinear, Loader};

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `*ForSequenceClassification`; `num_labels == 1` is regression (STS-B).
    SequenceClassification { num_labels: i64 },
    /// `*ForCausalLM` / `GPT2LMHeadModel` (GPT-2 and Llama).
    CausalLm,
}

/// The label HF's cross-entropy ignores.
pub const IGNORE_INDEX: i64 = -100;

/// The classifier of an encoder, on one pooled hidden state per sequence: the first token's
/// (BERT's pooler and classifier, RoBERTa's `RobertaClassificationHead`), or the tokens' mean
/// ([`TaskHead::MeanPooled`]).
pub trait FirstTokenHead: std::fmt::Debug + Send {
    /// Logits `[B, num_labels]` from the pooled hidden state `[B, H]`.
    fn forward_read(&self, first: &Tensor, train: bool) -> Tensor;
}

/// A head's layers.
#[derive(Debug)]
pub enum TaskHead {
    /// An encoder's classifier on the first token.
    FirstToken(Box<dyn FirstTokenHead>),
    /// An encoder's classifier on the mean of the hidden states of the tokens the attention
    /// mask keeps (ModernBERT's `classifier_pooling: "mean"`).
    MeanPooled(Box<dyn FirstTokenHead>),
    /// GPT-2 / Llama `score`, applied to the last non-padding token.
    LastToken {
        score: LoraLinear,
        pad_token_id: Option<i64>,
    },
    /// `lm_head` on every position (tied to the input embeddings when the config says so),
    /// its logits soft-capped to `(-c, c)` as `c * tanh(logits / c)` when `softcap` is `Some(c)`
    /// (Gemma 2's `final_logit_softcapping`).
    Lm {
        lm_head: LoraLinear,
        softcap: Option<f64>,
    },
}

/// `c * tanh(x / c)`: `x` squashed into `(-c, c)` (Gemma 2's logit soft-capping).
pub fn soft_cap(x: &Tensor, c: f64) -> Tensor {
    (x / c).tanh() * c
}

fn lm_logits(lm_head: &LoraLinear, softcap: Option<f64>, x: &Tensor, train: bool) -> Tensor {
    let logits = lm_head.forward_t(x, train);
    match softcap {
        Some(c) => soft_cap(&logits, c),
        None => logits,
    }
}

impl TaskHead {
    /// The one position per sequence a classification head reads, `[B]` (the first token for
    /// BERT/RoBERTa, the last non-padding one for the decoders); `None` for the LM head, which
    /// reads every position.
    pub fn read_positions(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Option<Tensor> {
        match self {
            TaskHead::FirstToken(_) => {
                let b = input_ids.size()[0];
                Some(Tensor::zeros([b], (Kind::Int64, input_ids.device())))
            }
            TaskHead::LastToken { pad_token_id, .. } => {
                Some(last_token_index(input_ids, attention_mask, *pad_token_id))
            }
            TaskHead::Lm { .. } | TaskHead::MeanPooled(_) => None,
        }
    }

    /// Logits from the hidden states at [`Self::read_positions`], `[B, H]`.
    pub fn forward_read(&self, rows: &Tensor, train: bool) -> Tensor {
        match self {
            TaskHead::FirstToken(h) | TaskHead::MeanPooled(h) => h.forward_read(rows, train),
            TaskHead::LastToken { score, .. } => score.forward_t(rows, train),
            TaskHead::Lm { lm_head, softcap } => lm_logits(lm_head, *softcap, rows, train),
        }
    }

    /// `hidden`: the backbone's last hidden state `[B, T, H]`.
    pub fn forward_t(
        &self,
        hidden: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Tensor {
        match self {
            TaskHead::FirstToken(h) => h.forward_read(&hidden.select(1, 0), train),
            TaskHead::MeanPooled(h) => {
                // transformers: (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).
                let mask = attention_mask.to_kind(hidden.kind());
                let sum = (hidden * mask.unsqueeze(-1)).sum_dim_intlist(1, false, hidden.kind());
                let count = attention_mask.sum_dim_intlist(1, true, Kind::Int64);
                h.forward_read(&(sum / count), train)
            }
            TaskHead::LastToken {
                score,
                pad_token_id,
            } => {
                let idx = last_token_index(input_ids, attention_mask, *pad_token_id);
                let size = hidden.size();
                let gather = idx
                    .view([size[0], 1, 1])
                    .expand([size[0], 1, size[2]], false);
                let last = hidden.gather(1, &gather, false).squeeze_dim(1);
                score.forward_t(&last, train)
            }
            TaskHead::Lm { lm_head, softcap } => lm_logits(lm_head, *softcap, hidden, train),
        }
    }
}

/// The layers a decoder's head for `task` may need to create (HF `_init_weights`) when the
/// checkpoint lacks them: `score` for classification, an untied `lm_head` for the causal LM.
pub fn decoder_head_specs(task: Head, hidden: i64, vocab: i64, tie: bool) -> Vec<FreshLinear> {
    let (module, out_features) = match task {
        Head::SequenceClassification { num_labels } => ("score", num_labels),
        Head::CausalLm if tie => return Vec::new(),
        Head::CausalLm => ("lm_head", vocab),
    };
    vec![FreshLinear {
        module: module.into(),
        in_features: hidden,
        out_features,
        bias: false,
    }]
}

/// The checkpoint's `lm_head.weight` when it holds other values than the embedding table
/// although the config ties the two: transformers 5 then leaves them untied (with a warning),
/// and so does this.
fn stored_untied_head(ld: &mut Loader, embeddings: &LoraEmbedding) -> Result<Option<Tensor>> {
    if !ld.w.contains("lm_head.weight") {
        return Ok(None);
    }
    let stored = ld.w.get("lm_head.weight", &embeddings.weight.size())?;
    if stored.equal(&embeddings.weight) {
        return Ok(None);
    }
    tracing::warn!(
        "config.json ties lm_head to {}, but {} holds an lm_head.weight with other values: \
         it is used, untied, as transformers does (set tie_word_embeddings to false to say so)",
        embeddings.name,
        ld.w.files()
    );
    Ok(Some(stored))
}

/// A tied `lm_head` given a table of its own (`weight`): through the builder, so that the
/// table is a base parameter (a merged export writes it as `lm_head.weight`) and takes an
/// adapter or trains when the config says so; the model records that it is untied.
fn own_head(ld: &mut Loader, weight: Tensor) -> Result<TaskHead> {
    ld.untied_head = true;
    Ok(TaskHead::Lm {
        lm_head: ld.b.linear("lm_head", weight, None, WeightLayout::OutIn)?,
        softcap: None,
    })
}

/// A decoder's head: `score` on the last token (sequence classification) or `lm_head` (causal
/// LM, tied to `embeddings` when `tie`).
pub fn decoder_head(
    ld: &mut Loader,
    task: Head,
    hidden: i64,
    pad_token_id: Option<i64>,
    tie: bool,
    embeddings: &LoraEmbedding,
) -> Result<TaskHead> {
    if task == Head::CausalLm && tie {
        if let Some(stored) = stored_untied_head(ld, embeddings)? {
            return own_head(ld, stored);
        }
    }
    match task {
        Head::SequenceClassification { num_labels } => Ok(TaskHead::LastToken {
            score: ld.linear("score", hidden, num_labels, false, WeightLayout::OutIn)?,
            pad_token_id,
        }),
        Head::CausalLm if tie => {
            let named_target = ld.b.config().is_some_and(|c| c.is_target("lm_head"));
            // The tied head shares the embedding table; it goes through the builder only when
            // the LoRA config names it, so that it is not counted twice otherwise. With the
            // table in modules_to_save (under either name) and PEFT's `ensure_weight_tying`, it
            // trains once, and is saved under both names for PEFT (`SavedTie`); without it, as
            // in PEFT, the listed module gets its own copy and the other keeps the base table.
            let (saved_table, saved_head, one_table) =
                ld.b.config().map_or((false, false, false), |c| {
                    (
                        c.is_module_to_save(&embeddings.name),
                        c.is_module_to_save("lm_head"),
                        c.ties_saved_tables(),
                    )
                });
            // The head gets its own copy of the table: for merging, when an adapter is on one
            // side (merging into a shared table would change the other), or, as in PEFT, when
            // one side is in modules_to_save without tying.
            let why = if ld.untie_adapted_head && (named_target || embeddings.adapter.is_some()) {
                Some("an adapter is on one of them")
            } else if (saved_table || saved_head) && !one_table {
                Some("one of them is in modules_to_save without ensure_weight_tying (as in PEFT)")
            } else {
                None
            };
            if let Some(why) = why {
                tracing::info!(
                    "lm_head is tied to {} and {why}: the head gets its own copy of the table",
                    embeddings.name
                );
                let weight = tch::no_grad(|| embeddings.weight.detach().copy());
                return own_head(ld, weight);
            }
            let weight = embeddings.weight.shallow_clone();
            let lm_head = if saved_table {
                if named_target {
                    return Err(loraplus_core::Error::BadConfigValue(format!(
                        "lm_head is a LoRA target, and the table it is tied to ({}) is in \
                         modules_to_save with ensure_weight_tying: the head would be trained both \
                         ways (PEFT cannot load such an adapter); drop lm_head from \
                         target_modules, or the table from modules_to_save",
                        embeddings.name
                    ))
                    .into());
                }
                // Trains as the embedding's parameter.
                ld.b.tie_saved("lm_head", &format!("{}.weight", embeddings.name));
                LoraLinear::plain("lm_head", weight, None, WeightLayout::OutIn)
            } else if saved_head || named_target {
                if saved_head {
                    ld.b.tie_saved(&embeddings.name, "lm_head.weight");
                }
                ld.b.linear("lm_head", weight, None, WeightLayout::OutIn)?
            } else {
                LoraLinear::plain("lm_head", weight, None, WeightLayout::OutIn)
            };
            Ok(TaskHead::Lm {
                lm_head,
                softcap: None,
            })
        }
        Head::CausalLm => {
            let vocab = embeddings.weight.size()[0];
            Ok(TaskHead::Lm {
                lm_head: ld.linear("lm_head", hidden, vocab, false, WeightLayout::OutIn)?,
                softcap: None,
            })
        }
    }
}

/// The position the sequence-classification decoders read, as HF does: the rightmost token
/// that is not `pad_token_id` (right or left padding alike; 0 when a row is all padding).
/// Without a `pad_token_id` (HF then refuses batches > 1) the rightmost position the
/// attention mask keeps.
pub fn last_token_index(
    input_ids: &Tensor,
    attention_mask: &Tensor,
    pad_token_id: Option<i64>,
) -> Tensor {
    let t = input_ids.size()[1];
    let keep = match pad_token_id {
        Some(pad) => input_ids.ne(pad),
        None => attention_mask.ne(0),
    };
    let positions = Tensor::arange(t, (Kind::Int64, input_ids.device()));
    (positions * keep.to_kind(Kind::Int64)).argmax(-1, false)
}

/// The training loss of `head` (mean over the batch), computed in f32:
/// - classification: `labels` integer `[B]`, cross-entropy;
/// - regression (`num_labels == 1`): `labels` float `[B]`, MSE;
/// - causal LM: `labels` integer `[B, T]` (usually the input ids, padding set to -100);
///   position `t` predicts `labels[t + 1]`, `-100` is ignored.
pub fn loss(head: Head, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logits = logits.to_kind(Kind::Float);
    let ls = logits.size();
    match head {
        Head::SequenceClassification { num_labels: 1 } => {
            if labels.numel() != ls[0] as usize {
                return Err(crate::bad_input(format!(
                    "regression labels: expected {} values, found shape {:?}",
                    ls[0],
                    labels.size()
                )));
            }
            let target = labels.to_kind(Kind::Float).view([-1]);
            Ok(logits.view([-1]).mse_loss(&target, Reduction::Mean))
        }
        Head::SequenceClassification { num_labels } => {
            if labels.is_floating_point() || labels.kind() == Kind::Bool {
                return Err(crate::bad_input(format!(
                    "classification labels must be integer class ids, found {:?}",
                    labels.kind()
                )));
            }
            if labels.numel() != ls[0] as usize {
                return Err(crate::bad_input(format!(
                    "classification labels: expected {} values, found shape {:?}",
                    ls[0],
                    labels.size()
                )));
            }
            let target = labels.to_kind(Kind::Int64).view([-1]);
            // Fallible: a class id outside 0..num_labels is an error (a panic otherwise).
            logits
                .view([-1, num_labels])
                .f_cross_entropy_loss::<Tensor>(&target, None, Reduction::Mean, IGNORE_INDEX, 0.0)
                .map_err(|e| {
                    crate::bad_input(format!(
                        "classification loss: the labels must be class ids in 0..{num_labels} (or {IGNORE_INDEX}): {e}"
                    ))
                })
        }
        Head::CausalLm => {
            let lsz = labels.size();
            if lsz.len() != 2 || ls.len() != 3 || lsz[..] != ls[..2] {
                return Err(crate::bad_input(format!(
                    "causal-LM labels: expected shape [{}, {}], found {lsz:?}",
                    ls[0],
                    ls.get(1).copied().unwrap_or(0)
                )));
            }
            let labels = labels.to_kind(Kind::Int64);
            let pad = Tensor::full([lsz[0], 1], IGNORE_INDEX, (Kind::Int64, labels.device()));
            let shifted = Tensor::cat(&[labels.narrow(1, 1, lsz[1] - 1), pad], 1);
            logits
                .view([-1, ls[2]])
                .f_cross_entropy_loss::<Tensor>(
                    &shifted.view([-1]),
                    None,
                    Reduction::Mean,
                    IGNORE_INDEX,
                    0.0,
                )
                .map_err(|e| {
                    crate::bad_input(format!(
                        "causal-LM loss: the labels must be token ids in 0..{} (or {IGNORE_INDEX}): {e}",
                        ls[2]
                    ))
                })
        }
    }
}
