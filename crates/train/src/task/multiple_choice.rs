//! Multiple-choice scoring by log-likelihood, as lm-eval-harness scores MMLU-style tasks (the
//! way the LoRA+ paper's Llama runs are evaluated): each row `{"question", "choices": [...],
//! "answer": index}` is scored by `log p(" " + choice | question)` for every choice; the
//! prediction is the most likely choice (`accuracy`), or the most likely per character of the
//! choice (`accuracy_norm`, lm-eval's `acc_norm`, which divides by `len(choice)`). An
//! evaluation-only task.
//!
//! Tokenization follows lm-eval-harness' `HFLM` for causal models: no special tokens (but for
//! the Gemma family, whose BOS HFLM adds: the tokenizer's special tokens); spaces
//! that end the question move to the start of the continuation; the context is the question's
//! tokens and the continuation the tokens of `question + continuation` past them; an empty
//! question's context is the prefix token (BOS, else EOS) and its continuation is encoded
//! alone. A sequence longer than `max_len + 1` tokens loses its first context tokens (lm-eval
//! keeps the last `max_length + 1`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use loraplus_data::lm::LmTokenizer;

use crate::model::Model;

/// One question.
#[derive(Debug, Clone, PartialEq)]
pub struct McRow {
    /// 1-based line in the file.
    pub line: usize,
    pub question: String,
    pub choices: Vec<String>,
    pub answer: usize,
}

/// The scores of one question.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct McScore {
    /// Sum of the continuation's token log-probabilities, per choice.
    pub logprobs: Vec<f64>,
    /// Argmax of `logprobs` (first on ties).
    pub prediction: usize,
    /// Argmax of `logprobs / characters of the choice`.
    pub prediction_norm: usize,
    pub answer: usize,
}

/// The result of a file.
#[derive(Debug, Clone, Serialize)]
pub struct McReport {
    pub accuracy: f64,
    pub accuracy_norm: f64,
    pub rows: Vec<McScore>,
}

/// Read `{"question", "choices", "answer"}` rows; errors name the file and line.
pub fn read_rows(path: &Path) -> Result<Vec<McRow>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let origin = path.display();
    let mut rows = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let text = std::str::from_utf8(raw)
            .map_err(|e| anyhow::anyhow!("{origin}: line {line}: invalid UTF-8 ({e})"))?;
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin}: line {line}: not valid JSON: {e}"))?;
        let obj = v
            .as_object()
            .with_context(|| format!("{origin}: line {line}: expected a JSON object"))?;
        let question = match obj.get("question") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => bail!("{origin}: line {line}: field \"question\" must be a string"),
            None => bail!("{origin}: line {line}: missing field \"question\""),
        };
        let choices: Vec<String> = match obj.get("choices") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|c| c.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .with_context(|| {
                    format!("{origin}: line {line}: field \"choices\" must be a list of strings")
                })?,
            Some(_) => bail!("{origin}: line {line}: field \"choices\" must be a list of strings"),
            None => bail!("{origin}: line {line}: missing field \"choices\""),
        };
        if choices.len() < 2 {
            bail!(
                "{origin}: line {line}: \"choices\" needs at least 2 entries, found {}",
                choices.len()
            );
        }
        let answer = match obj.get("answer").and_then(serde_json::Value::as_u64) {
            Some(a) if (a as usize) < choices.len() => a as usize,
            Some(a) => bail!(
                "{origin}: line {line}: \"answer\" is {a}, but there are {} choices (0-based index)",
                choices.len()
            ),
            None => bail!(
                "{origin}: line {line}: field \"answer\" must be the 0-based index of the right choice"
            ),
        };
        rows.push(McRow {
            line,
            question,
            choices,
            answer,
        });
    }
    if rows.is_empty() {
        bail!("{origin}: no rows (empty file)");
    }
    Ok(rows)
}

fn ids(v: Vec<u32>) -> Vec<i64> {
    v.into_iter().map(i64::from).collect()
}

/// `(context ids, continuation ids)` of one choice (see the module's documentation).
/// `special`: encode with the tokenizer's special tokens (lm-eval's `add_bos_token`, which it
/// forces for the Gemma family).
pub fn encode_pair(
    tok: &LmTokenizer,
    question: &str,
    choice: &str,
    special: bool,
) -> Result<(Vec<i64>, Vec<i64>)> {
    let trimmed = question.trim_end();
    let continuation = format!("{} {choice}", &question[trimmed.len()..]);
    let (context, cont) = if trimmed.is_empty() {
        let prefix = tok.bos_id().unwrap_or(tok.eos_id());
        (
            vec![i64::from(prefix)],
            ids(tok.encode(&continuation, special)?),
        )
    } else {
        let whole = ids(tok.encode(&format!("{trimmed}{continuation}"), special)?);
        let context = ids(tok.encode(trimmed, special)?);
        let n = context.len().min(whole.len());
        (context, whole[n..].to_vec())
    };
    if cont.is_empty() {
        bail!("the choice {choice:?} tokenizes to nothing after the question");
    }
    Ok((context, cont))
}

/// lm-eval's truncation: at most `max_len + 1` tokens of context and continuation, the first
/// context tokens dropped; a continuation that leaves no context token is an error.
fn truncate((context, cont): (Vec<i64>, Vec<i64>), max_len: usize) -> Result<(Vec<i64>, Vec<i64>)> {
    let total = context.len() + cont.len();
    if total <= max_len + 1 {
        return Ok((context, cont));
    }
    if cont.len() > max_len {
        bail!(
            "the choice takes {} tokens, more than the {max_len} the model reads at once (max_seq_len, or the model's positions)",
            cont.len()
        );
    }
    let drop = total - (max_len + 1);
    Ok((context[drop..].to_vec(), cont))
}

fn argmax(v: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in v.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// Score every row of `path` with `model`.
/// Score every row of `path` with `model`, each sequence at most `max_len` tokens long (the
/// first context tokens dropped beyond it; `None`: the model's positions, unbounded for rotary
/// ones).
pub fn evaluate(
    model: &Model,
    tok: &LmTokenizer,
    path: &Path,
    batch_size: usize,
    max_len: Option<usize>,
) -> Result<McReport> {
    let rows = read_rows(path)?;
    // lm-eval's max_length: the model's positions (n_positions, max_position_embeddings).
    let limit = model
        .config()
        .arch()
        .generation_positions()
        .map(|p| p.max(1) as usize);
    let max_len = match (max_len, limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // lm-eval's HFLM adds the BOS token for the Gemma family ("Gemma underperforms without it").
    let special = model.config().model_type().contains("gemma");
    let mut items = Vec::new();
    for r in &rows {
        for c in &r.choices {
            let item = encode_pair(tok, &r.question, c, special).and_then(|it| match max_len {
                Some(m) => truncate(it, m),
                None => Ok(it),
            });
            items.push(
                item.with_context(|| format!("{}: line {}", path.display(), r.line))
                    .map_err(crate::task::bad_data)?,
            );
        }
    }
    let scores = model.continuation_logprobs(&items, batch_size)?;
    let mut at = 0;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let lp: Vec<f64> = scores[at..at + r.choices.len()]
            .iter()
            .map(|s| s.0)
            .collect();
        at += r.choices.len();
        let prediction = argmax(lp.iter().copied());
        let prediction_norm = argmax(
            lp.iter()
                .zip(&r.choices)
                .map(|(l, c)| l / c.chars().count().max(1) as f64),
        );
        out.push(McScore {
            logprobs: lp,
            prediction,
            prediction_norm,
            answer: r.answer,
        });
    }
    let n = out.len() as f64;
    let accuracy = out.iter().filter(|s| s.prediction == s.answer).count() as f64 / n;
    let accuracy_norm = out.iter().filter(|s| s.prediction_norm == s.answer).count() as f64 / n;
    Ok(McReport {
        accuracy,
        accuracy_norm,
        rows: out,
    })
}
