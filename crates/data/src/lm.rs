//! Causal-LM examples for supervised fine-tuning: JSON Lines rows into token ids and per-token
//! labels, truncated, optionally packed, as TRL's `SFTTrainer` prepares them.
//!
//! Row formats ([`LmFormat`]), detected from the first row's keys unless named:
//! - `text`: `{"text": ...}`. The text, with the tokenizer's EOS token appended to the string
//!   when it does not already end with it, is tokenized with the special tokens of the
//!   tokenizer's post-processor (BOS for Llama); every token is a target.
//! - `prompt-completion`: `{"prompt": ..., "completion": ...}`. `prompt` and `prompt +
//!   completion (+ EOS as above)` are tokenized each with special tokens; the tokens the two
//!   have in common at the start are not targets, the rest are (TRL's `common_prefix_length`).
//!   When the prompt's tokens are not all a prefix of the whole's (a token merges across the
//!   boundary, e.g. a prompt ending in a space), the merged token is a target, and the row is
//!   counted in [`LmStats::prompt_prefix_mismatches`] with a warning, as TRL does.
//! - `messages`: `{"messages": [{"role": ..., "content": ...}, ...]}`, optionally with `tools`
//!   (JSON schemas) and `chat_template_kwargs` (template variables), TRL's columns. Every key of
//!   a turn reaches the template as given (`tool_calls`, whose turn may have a null or no
//!   `content`, `reasoning_content`, `name`, ...). Rendered by the model's
//!   chat template ([`ChatTemplate`]) and tokenized WITHOUT adding special tokens (the template
//!   writes BOS itself, so it is never doubled); no EOS is appended. With
//!   [`LmOptions::assistant_only_loss`] (default) the targets are the tokens of the assistant
//!   turns: for assistant message `i`, the turn is the text between the rendering of messages
//!   `0..i` with `add_generation_prompt=true` and the rendering of messages `0..=i` without it
//!   (its content and the template's end-of-turn text, e.g. `</s>` or `<|im_end|>\n`); both
//!   renderings must be prefixes of the whole conversation's (the second less the EOS token
//!   when the template closes every conversation with it, as Phi-3's), else the row is an
//!   error. A token is a target when its first character lies inside an assistant turn.
//!
//! Labels follow HF: `labels[t]` is the token at `t` itself or [`IGNORE_INDEX`]; the model
//! shifts them (position 0 is never predicted). Rows are cut to [`LmOptions::max_seq_len`]
//! tokens (their start kept, as TRL's `truncation_mode="keep_start"`); a row then left with no
//! target after position 0 is skipped and counted ([`TooLong::Skip`], default) or refused
//! ([`TooLong::Error`]).
//!
//! Packing ([`LmOptions::packing`]) puts the examples into rows of at most `max_seq_len` tokens
//! by best-fit decreasing, as TRL's `pack_dataset(..., strategy="bfd")`: longest first (ties in
//! file order), each into the open row with the least room that fits it (among rows with equal
//! room, the one that came to have that room first), else a new row. A packed row holds `position_ids` restarting at 0 for each example,
//! and the first token of each example is not a target (as `DataCollatorWithFlattening`).
//!
//! Errors name the file and the 1-based line: invalid UTF-8 or JSON, a missing field, a field
//! of the wrong type, an empty text or completion, a row of another format than the first, an
//! empty file.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::batch::PaddingSide;
use crate::chat_template::{read_json, token_content, ChatExtras, ChatTemplate, Message};
use crate::reader::{numbered_lines, strip_bom, utf8_line};
use crate::tokenize::{LmExample, TokenizedDataset, IGNORE_INDEX};

/// Default `max_seq_len` of causal-LM data: TRL's `SFTConfig.max_length` default (1024).
pub const DEFAULT_LM_MAX_SEQ_LEN: usize = 1024;

/// Byte ranges `start..end` of a text, as pairs.
pub type ByteSpans = Vec<(usize, usize)>;

/// The layout of a causal-LM JSONL row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LmFormat {
    /// `{"text": ...}`: loss on every token.
    Text,
    /// `{"prompt": ..., "completion": ...}`: loss on the completion.
    PromptCompletion,
    /// `{"messages": [{"role", "content"}, ...]}`: chat template; loss on assistant turns.
    Messages,
}

impl LmFormat {
    pub const ALL: [LmFormat; 3] = [
        LmFormat::Text,
        LmFormat::PromptCompletion,
        LmFormat::Messages,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LmFormat::Text => "text",
            LmFormat::PromptCompletion => "prompt-completion",
            LmFormat::Messages => "messages",
        }
    }

    /// The format a JSON object's keys say: `messages`, else `prompt` with `completion`, else
    /// `text`.
    pub fn detect(obj: &serde_json::Map<String, serde_json::Value>) -> Option<LmFormat> {
        if obj.contains_key("messages") {
            Some(LmFormat::Messages)
        } else if obj.contains_key("prompt") && obj.contains_key("completion") {
            Some(LmFormat::PromptCompletion)
        } else if obj.contains_key("text") {
            Some(LmFormat::Text)
        } else {
            None
        }
    }

    fn fields(self) -> &'static str {
        match self {
            LmFormat::Text => "\"text\"",
            LmFormat::PromptCompletion => "\"prompt\" and \"completion\"",
            LmFormat::Messages => "\"messages\"",
        }
    }
}

impl fmt::Display for LmFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LmFormat {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<LmFormat> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        LmFormat::ALL
            .into_iter()
            .find(|f| f.name() == norm)
            .ok_or_else(|| {
                anyhow!("unknown causal-LM data format {s:?}; expected text, prompt-completion or messages")
            })
    }
}

/// What to do with a row that has nothing left to learn after truncation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TooLong {
    /// Skip it and count it in [`LmStats::rows_skipped`] (default).
    #[default]
    Skip,
    /// Fail, naming the line.
    Error,
}

/// How causal-LM data is read and prepared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LmOptions {
    /// Row format; `None` detects it from the first row.
    pub format: Option<LmFormat>,
    /// Longest example (and packed row), in tokens. Default [`DEFAULT_LM_MAX_SEQ_LEN`].
    pub max_seq_len: usize,
    /// Pack examples into rows of `max_seq_len` tokens. Default false (TRL's default).
    pub packing: bool,
    /// Rows with no target left after truncation. Default skip.
    pub too_long: TooLong,
    /// `messages` (and conversational prompt-completion) rows: loss on assistant turns only.
    /// Default true (TRL's default is false);
    /// false puts the loss on every token of the conversation (TRL's
    /// `assistant_only_loss=False`).
    pub assistant_only_loss: bool,
    /// `prompt-completion` rows: loss on the completion only. Default true (TRL's default);
    /// false puts it on the prompt's tokens too.
    pub completion_only_loss: bool,
}

impl Default for LmOptions {
    fn default() -> LmOptions {
        LmOptions {
            format: None,
            max_seq_len: DEFAULT_LM_MAX_SEQ_LEN,
            packing: false,
            too_long: TooLong::Skip,
            assistant_only_loss: true,
            completion_only_loss: true,
        }
    }
}

/// What loading a causal-LM file did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LmStats {
    /// The format the rows were read as.
    pub format: Option<LmFormat>,
    /// The rows are conversations the chat template renders (`messages`, or prompt-completion
    /// given as lists of turns), where `assistant_only_loss` applies.
    pub chat: bool,
    /// Non-blank rows read.
    pub rows_read: usize,
    /// Rows dropped: nothing left to learn after truncation.
    pub rows_skipped: usize,
    /// Line numbers of the skipped rows.
    pub skipped_lines: Vec<usize>,
    /// Rows cut to `max_seq_len` (skipped ones included).
    pub rows_truncated: usize,
    /// Examples kept.
    pub examples: usize,
    /// Rows of the dataset: packed rows with packing, else `examples`.
    pub rows: usize,
    /// Tokens of the kept examples.
    pub tokens: usize,
    /// Tokens that take a loss in the dataset: label not [`IGNORE_INDEX`], after each row's
    /// first position ([`TokenizedDataset::num_target_tokens`]).
    pub target_tokens: usize,
    /// `prompt-completion` rows whose prompt tokens are not a prefix of the whole's.
    pub prompt_prefix_mismatches: usize,
}

impl fmt::Display for LmStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rows read as {}{}, {} skipped (nothing to learn), {} truncated; \
             {} examples in {} rows, {} tokens, {} targets",
            self.rows_read,
            self.format.map_or("?", LmFormat::name),
            if self.chat && self.format == Some(LmFormat::PromptCompletion) {
                " (turns)"
            } else {
                ""
            },
            self.rows_skipped,
            self.rows_truncated,
            self.examples,
            self.rows,
            self.tokens,
            self.target_tokens
        )
    }
}

/// The content of one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LmRecord {
    Text(String),
    PromptCompletion {
        prompt: String,
        completion: String,
    },
    /// A conversation, with the row's `tools` and `chat_template_kwargs`.
    Messages {
        messages: Vec<Message>,
        extras: ChatExtras,
    },
    /// TRL's conversational prompt-completion: `prompt` and `completion` as lists of turns
    /// (the completion usually the assistant's), rendered with the chat template.
    ChatPromptCompletion {
        prompt: Vec<Message>,
        completion: Vec<Message>,
        extras: ChatExtras,
    },
}

impl LmRecord {
    pub fn format(&self) -> LmFormat {
        match self {
            LmRecord::Text(_) => LmFormat::Text,
            LmRecord::PromptCompletion { .. } | LmRecord::ChatPromptCompletion { .. } => {
                LmFormat::PromptCompletion
            }
            LmRecord::Messages { .. } => LmFormat::Messages,
        }
    }

    /// Whether the chat template renders it (`messages`, conversational prompt-completion).
    pub fn is_chat(&self) -> bool {
        matches!(
            self,
            LmRecord::Messages { .. } | LmRecord::ChatPromptCompletion { .. }
        )
    }

    /// The turns of a conversation (prompt then completion), empty for plain text.
    pub fn turns(&self) -> Vec<&Message> {
        match self {
            LmRecord::Messages { messages, .. } => messages.iter().collect(),
            LmRecord::ChatPromptCompletion {
                prompt, completion, ..
            } => prompt.iter().chain(completion).collect(),
            _ => Vec::new(),
        }
    }
}

/// A row with its 1-based line number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmRow {
    pub line: usize,
    pub record: LmRecord,
}

/// A tokenizer for causal-LM data: `tokenizer.json` plus what `tokenizer_config.json` says
/// (special tokens, padding side, chat template).
pub struct LmTokenizer {
    tokenizer: Tokenizer,
    source: String,
    eos_token: String,
    eos_id: u32,
    bos_token: Option<String>,
    bos_id: Option<u32>,
    pad_id: u32,
    padding_side: PaddingSide,
    chat_template: Option<ChatTemplate>,
    /// Why the folder's chat template could not be used (it only matters for messages rows).
    chat_template_error: Option<String>,
}

impl fmt::Debug for LmTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LmTokenizer")
            .field("source", &self.source)
            .field("eos", &(&self.eos_token, self.eos_id))
            .field("bos", &(&self.bos_token, self.bos_id))
            .field("pad_id", &self.pad_id)
            .field("padding_side", &self.padding_side)
            .field(
                "chat_template",
                &self.chat_template.as_ref().map(ChatTemplate::origin),
            )
            .finish()
    }
}

impl LmTokenizer {
    /// From a model folder: `tokenizer.json`, `tokenizer_config.json` (`eos_token` required;
    /// `bos_token`, `pad_token`, `padding_side` optional) and the chat template when there is
    /// one. The pad id is the pad token's, else EOS's (as TRL does when there is no pad token).
    pub fn from_model_dir(dir: &Path) -> Result<LmTokenizer> {
        let tok_path = dir.join("tokenizer.json");
        let cfg_path = dir.join("tokenizer_config.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow!("{}: not a valid tokenizer.json: {e}", tok_path.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("{}: turning truncation off: {e}", tok_path.display()))?;
        let config = read_json(&cfg_path)?;
        let cfg_origin = cfg_path.display().to_string();
        let id_of = |key: &str| -> Result<Option<(String, u32)>> {
            let Some(token) = config.get(key).and_then(token_content) else {
                return Ok(None);
            };
            match tokenizer.token_to_id(&token) {
                Some(id) => Ok(Some((token, id))),
                None => bail!(
                    "{cfg_origin}: {key} {token:?} is not in the vocabulary of {}",
                    tok_path.display()
                ),
            }
        };
        let Some((eos_token, eos_id)) = id_of("eos_token")? else {
            bail!("{cfg_origin}: no eos_token; causal-LM data needs one to end examples");
        };
        let bos = id_of("bos_token")?;
        let pad_id = id_of("pad_token")?.map_or(eos_id, |(_, id)| id);
        let padding_side = match config.get("padding_side").and_then(|v| v.as_str()) {
            None | Some("right") => PaddingSide::Right,
            Some("left") => PaddingSide::Left,
            Some(other) => {
                bail!("{cfg_origin}: padding_side {other:?}, expected \"right\" or \"left\"")
            }
        };
        // A template minijinja cannot compile only matters for messages rows: keep the error
        // for them instead of refusing text data.
        let (chat_template, chat_template_error) =
            match ChatTemplate::from_dir_and_config(dir, &config) {
                Ok(t) => (t, None),
                Err(e) => {
                    tracing::warn!("{e:#}");
                    (None, Some(format!("{e:#}")))
                }
            };
        Ok(LmTokenizer {
            tokenizer,
            source: tok_path.display().to_string(),
            eos_token,
            eos_id,
            bos_token: bos.as_ref().map(|(t, _)| t.clone()),
            bos_id: bos.map(|(_, id)| id),
            pad_id,
            padding_side,
            chat_template,
            chat_template_error,
        })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// `padding_side` of `tokenizer_config.json` (default right).
    pub fn padding_side(&self) -> PaddingSide {
        self.padding_side
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The wrapped tokenizer (padding and truncation off).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text`, with the post-processor's special tokens when `add_special_tokens`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text, add_special_tokens)?.0)
    }

    /// Token ids and the byte range of `text` each covers.
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<(Vec<u32>, ByteSpans)> {
        let enc = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("{}: tokenizing: {e}", self.source))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// The chat template, which rows of `record`'s kind need.
    fn template_for(&self, record: &LmRecord) -> Result<&ChatTemplate> {
        let what = match record {
            LmRecord::ChatPromptCompletion { .. } => "prompt-completion rows given as turns",
            _ => "messages rows",
        };
        self.chat_template
            .as_ref()
            .ok_or_else(|| match &self.chat_template_error {
                Some(e) => anyhow!("{what} need the chat template: {e}"),
                None => anyhow!(
                    "{what} need a chat template, and the tokenizer {} has none",
                    self.source
                ),
            })
    }

    /// `text` with the EOS token appended unless it already ends with it (TRL's `add_eos`).
    fn with_eos(&self, text: &str) -> String {
        if text.ends_with(&self.eos_token) {
            text.to_string()
        } else {
            format!("{text}{}", self.eos_token)
        }
    }

    /// Token ids and labels of one record, before truncation, under `opts`'
    /// `assistant_only_loss` and `completion_only_loss`. The second value is false when a
    /// prompt's tokens are not a prefix of the prompt + completion tokens.
    pub fn tokenize_record(
        &self,
        record: &LmRecord,
        opts: &LmOptions,
    ) -> Result<(LmExample, bool)> {
        let assistant_only_loss = opts.assistant_only_loss;
        match record {
            LmRecord::Text(text) => {
                let ids = self.encode(&self.with_eos(text), true)?;
                let labels = ids.iter().map(|&i| i64::from(i)).collect();
                Ok((example(ids, labels), true))
            }
            LmRecord::PromptCompletion { prompt, completion } => {
                let prompt_ids = self.encode(prompt, true)?;
                let ids = self.encode(&self.with_eos(&format!("{prompt}{completion}")), true)?;
                let (start, prefix_ok) = completion_start(&prompt_ids, &ids, opts);
                let labels = ids
                    .iter()
                    .enumerate()
                    .map(|(t, &i)| {
                        if t < start {
                            IGNORE_INDEX
                        } else {
                            i64::from(i)
                        }
                    })
                    .collect();
                Ok((example(ids, labels), prefix_ok))
            }
            LmRecord::ChatPromptCompletion {
                prompt,
                completion,
                extras,
            } => {
                // TRL: the prompt with the generation prompt, the whole without; the completion
                // starts where their tokens diverge.
                let template = self.template_for(record)?;
                let prompt_text = render_turns(template, prompt, extras, true)?;
                let all: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
                let text = render_turns(template, &all, extras, false)?;
                let prompt_ids = self.encode(&prompt_text, false)?;
                let (ids, offsets) = self.encode_with_offsets(&text, false)?;
                let (start, prefix_ok) = completion_start(&prompt_ids, &ids, opts);
                // Under completion-only loss the prompt's turns are masked anyway: only the
                // completion's assistant turns are located (a template that renders earlier
                // turns otherwise, as Qwen3's, is then no obstacle).
                let spans = if assistant_only_loss {
                    let (from, lenient) = if opts.completion_only_loss {
                        (prompt.len(), true)
                    } else {
                        (0, false)
                    };
                    assistant_spans_from(template, &all, extras, &text, from, lenient)?
                } else {
                    vec![(0, text.len())]
                };
                let labels = span_labels(&ids, &offsets, &spans, start);
                Ok((example(ids, labels), prefix_ok))
            }
            LmRecord::Messages { messages, extras } => {
                let template = self.template_for(record)?;
                let text = render_turns(template, messages, extras, false)?;
                let (ids, offsets) = self.encode_with_offsets(&text, false)?;
                let spans = if assistant_only_loss {
                    assistant_spans(template, messages, extras, &text)?
                } else {
                    vec![(0, text.len())]
                };
                let labels = span_labels(&ids, &offsets, &spans, 0);
                Ok((example(ids, labels), true))
            }
        }
    }
}

/// Where a completion starts in `ids` (the prompt + completion tokens): where they diverge
/// from `prompt_ids` (TRL's `common_prefix_length`: a token merged across the boundary is a
/// target), or 0 without completion-only loss; and whether the prompt's tokens are a prefix.
fn completion_start(prompt_ids: &[u32], ids: &[u32], opts: &LmOptions) -> (usize, bool) {
    let common = prompt_ids
        .iter()
        .zip(ids)
        .take_while(|(a, b)| a == b)
        .count();
    let start = if opts.completion_only_loss { common } else { 0 };
    (start, common == prompt_ids.len())
}

/// Labels of a rendered conversation: a token from position `start` on whose first byte lies
/// in one of `spans` is a target.
fn span_labels(ids: &[u32], offsets: &ByteSpans, spans: &ByteSpans, start: usize) -> Vec<i64> {
    ids.iter()
        .zip(offsets)
        .enumerate()
        .map(|(t, (&id, &(at, _)))| {
            if t >= start && spans.iter().any(|&(a, b)| a <= at && at < b) {
                i64::from(id)
            } else {
                IGNORE_INDEX
            }
        })
        .collect()
}

fn example(input_ids: Vec<u32>, labels: Vec<i64>) -> LmExample {
    LmExample {
        input_ids,
        labels,
        position_ids: None,
    }
}

/// The byte spans of `full` (the rendering of all `messages`) that the assistant turns cover.
pub fn assistant_spans(
    template: &ChatTemplate,
    messages: &[Message],
    extras: &ChatExtras,
    full: &str,
) -> Result<ByteSpans> {
    assistant_spans_from(template, messages, extras, full, 0, false)
}

/// [`assistant_spans`] of the assistant turns from message `from` on. With `lenient`, a turn
/// whose rendering does not start with the generation prompt (DeepSeek's adds `<think>\n`,
/// which the rendered turn lacks) starts where the conversation before it ends, header
/// included: for a caller that masks that header anyway (conversational prompt-completion,
/// whose completion starts where the prompt's tokens end).
fn assistant_spans_from(
    template: &ChatTemplate,
    messages: &[Message],
    extras: &ChatExtras,
    full: &str,
    from: usize,
    lenient: bool,
) -> Result<ByteSpans> {
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate().skip(from) {
        if m.role() != "assistant" {
            continue;
        }
        let mut before = template.render_with(&messages[..i], extras, true)?;
        let through = template.render_with(&messages[..=i], extras, false)?;
        if lenient && !through.starts_with(&before) {
            before = template.render_with(&messages[..i], extras, false)?;
        }
        let eos = template
            .special_tokens()
            .get("eos_token")
            .map(String::as_str);
        let end = turn_end(&through, full, eos).filter(|&end| through[..end].starts_with(&before));
        let Some(end) = end else {
            bail!(
                "the chat template of {} does not render the conversation up to message {} as a \
                 prefix of the whole conversation (it renders earlier turns differently, e.g. \
                 drops their reasoning), so the assistant turn cannot be located; train on every \
                 token (assistant_only_loss = false, --assistant-only-loss false) or use another \
                 template",
                template.origin(),
                i + 1
            );
        };
        spans.push((before.len(), end));
    }
    // No assistant turn: no target token; the row is skipped (and counted) or refused as any
    // row with nothing to learn (see `build_dataset`).
    Ok(spans)
}

/// Where the turn that `through` (the rendering of the conversation up to it) ends in `full`:
/// `through` itself when it is a prefix of `full`; else, for a template that closes every
/// conversation with the EOS token (Phi-3's, which the longer conversation puts at its own
/// end), `through` less that EOS when the rest is a prefix. `None` otherwise.
fn turn_end(through: &str, full: &str, eos: Option<&str>) -> Option<usize> {
    if full.starts_with(through) {
        return Some(through.len());
    }
    let body = through.strip_suffix(eos.filter(|e| !e.is_empty())?)?;
    (full.starts_with(body) && full.ends_with(eos?)).then_some(body.len())
}

/// Content given as a list of parts (`[{"type": "text", "text": "..."}, ...]`, the OpenAI and
/// multimodal form) reaches the template as it is, as `apply_chat_template` passes it; only
/// text parts are taken (loraplus trains text models). The error names the part.
fn check_text_parts(parts: &[serde_json::Value]) -> std::result::Result<(), String> {
    if parts.is_empty() {
        return Err(" is an empty list of content parts".into());
    }
    for (k, part) in parts.iter().enumerate() {
        let Some(o) = part.as_object() else {
            return Err(format!(
                "[{k}] is {}, expected a content part ({{\"type\": \"text\", \"text\": ...}})",
                json_kind(part)
            ));
        };
        match o.get("type").and_then(serde_json::Value::as_str) {
            Some("text") => {}
            Some(other) => {
                return Err(format!(
                    "[{k}] is a {other:?} part; loraplus trains text models: only \"text\" parts are taken"
                ))
            }
            None => return Err(format!("[{k}] has no string \"type\" (expected \"text\")")),
        }
        if !o.get("text").is_some_and(serde_json::Value::is_string) {
            return Err(format!("[{k}] is a text part without a string \"text\""));
        }
    }
    Ok(())
}

/// `messages` rendered by `template`, for turns whose content is a list of parts checked to
/// print each part as text (`check_parts_rendered`). Where rendering fails and a turn's
/// content is a list of parts, the error says the template cannot take them (as
/// transformers, which fails too) and to give a string.
pub fn render_turns(
    template: &ChatTemplate,
    messages: &[Message],
    extras: &ChatExtras,
    add_generation_prompt: bool,
) -> Result<String> {
    let text = render_raw(template, messages, extras, add_generation_prompt)?;
    check_parts_rendered(template, messages, extras, add_generation_prompt)?;
    Ok(text)
}

fn render_raw(
    template: &ChatTemplate,
    messages: &[Message],
    extras: &ChatExtras,
    add_generation_prompt: bool,
) -> Result<String> {
    template
        .render_with(messages, extras, add_generation_prompt)
        .map_err(|e| match first_parts(messages) {
            Some(i) => e.context(format!(
                "messages[{i}].content is a list of content parts, which the chat template of {} \
                 cannot take; give the turn's text as one string",
                template.origin()
            )),
            None => e,
        })
}

fn first_parts(messages: &[Message]) -> Option<usize> {
    messages
        .iter()
        .position(|m| matches!(m.get("content"), Some(serde_json::Value::Array(_))))
}

/// For turns whose content is a list of text parts: the template must print each part's text
/// as text. The conversation is rendered once more with each part's text replaced by a marker
/// of its own; every marker must appear, and none as the value of a printed dict (a template
/// that prints or concatenates the list as a string: Python's `{'type': 'text', ...}`, or
/// `|trim`'s, `|string`'s and `~`'s own form). A template that does not take parts otherwise
/// renders, silently, an empty or mangled turn (transformers trains on that); here the row is
/// refused, saying to give the content as a string.
fn check_parts_rendered(
    template: &ChatTemplate,
    messages: &[Message],
    extras: &ChatExtras,
    add_generation_prompt: bool,
) -> Result<()> {
    if first_parts(messages).is_none() {
        return Ok(());
    }
    let marker = |i: usize, k: usize| format!("@@loraplus-part-{i}-{k}@@");
    let mut marked = Vec::with_capacity(messages.len());
    let mut markers = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(serde_json::Value::Array(parts)) = m.get("content") else {
            marked.push(m.clone());
            continue;
        };
        let mut parts = parts.clone();
        for (k, part) in parts.iter_mut().enumerate() {
            if let Some(text) = part.get_mut("text") {
                markers.push((i, k, text.as_str().unwrap_or_default().to_string()));
                *text = marker(i, k).into();
            }
        }
        marked.push(m.with_content(serde_json::Value::Array(parts)));
    }
    let text = render_raw(template, &marked, extras, add_generation_prompt)?;
    for (i, k, original) in markers {
        let m = marker(i, k);
        let why = if !text.contains(&m) {
            format!(
                "does not print them (part {k}, {:?}, is not in the rendering)",
                truncate_chars(&original, 40)
            )
        } else if text.contains(&format!("'text': '{m}"))
            || text.contains(&format!("\"text\": \"{m}"))
        {
            "prints the list as data (its dicts), not as text".to_string()
        } else {
            continue;
        };
        bail!(
            "messages[{i}].content is a list of content parts, and the chat template of {} {why}; \
             give the turn's text as one string",
            template.origin()
        );
    }
    Ok(())
}

fn truncate_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    crate::reader::json_type(v)
}

fn string_field(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    format: LmFormat,
) -> std::result::Result<String, String> {
    match obj.get(key) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!(
            "field {key:?} is {}, expected a string",
            json_kind(v)
        )),
        None => Err(format!(
            "missing field {key:?} ({format} rows have {})",
            format.fields()
        )),
    }
}

/// The `messages` of a row, with its `tools` and `chat_template_kwargs` (TRL's columns); the
/// error says what is wrong (the caller adds the file and line). Each turn needs a string
/// `role` and a string `content`, which may be null or absent in a turn with `tool_calls`; any
/// other key goes to the template as it is.
pub fn parse_conversation(
    obj: &serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<(Vec<Message>, ChatExtras), String> {
    Ok((parse_turns(obj, "messages")?, parse_extras(obj)?))
}

/// The list of turns under `key` (`messages`, or a conversational `prompt` / `completion`):
/// see [`parse_conversation`].
pub fn parse_turns(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> std::result::Result<Vec<Message>, String> {
    let list = match obj.get(key) {
        Some(serde_json::Value::Array(a)) => a,
        Some(v) => {
            return Err(format!(
                "field {key:?} is {}, expected a list{}",
                json_kind(v),
                if key == "messages" {
                    ""
                } else {
                    " of turns, as the other of prompt and completion"
                }
            ))
        }
        None => return Err(format!("missing field {key:?} ({key} rows have {key:?})")),
    };
    if list.is_empty() {
        return Err(format!("field {key:?} is an empty list"));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let Some(o) = m.as_object() else {
                return Err(format!(
                    "{key}[{i}] is {}, expected an object",
                    json_kind(m)
                ));
            };
            // A null or absent content is the template's to handle, as in transformers (which
            // drops null keys): a tool-call turn has none.
            match o.get("content") {
                Some(serde_json::Value::String(_)) | Some(serde_json::Value::Null) | None => {}
                Some(serde_json::Value::Array(parts)) => {
                    check_text_parts(parts).map_err(|e| format!("{key}[{i}].content{e}"))?
                }
                Some(v) => {
                    return Err(format!(
                        "{key}[{i}].content is {}, expected a string",
                        json_kind(v)
                    ))
                }
            }
            Message::from_object(o.clone()).map_err(|e| format!("{key}[{i}] {e}"))
        })
        .collect()
}

/// A row's `tools` and `chat_template_kwargs` (TRL's columns).
pub fn parse_extras(
    obj: &serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<ChatExtras, String> {
    // TRL also takes the schemas as a JSON string (datasets stores them so).
    let parsed_tools;
    let tools_value = match obj.get("tools") {
        Some(serde_json::Value::String(text)) => {
            parsed_tools = serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| format!("field \"tools\" is a string that is not JSON ({e})"))?;
            Some(&parsed_tools)
        }
        other => other,
    };
    let tools = match tools_value {
        None | Some(serde_json::Value::Null) => None,
        Some(t @ serde_json::Value::Array(items)) => {
            if let Some(k) = items.iter().position(|t| !t.is_object()) {
                return Err(format!(
                    "tools[{k}] is {}, expected an object (a JSON schema)",
                    json_kind(&items[k])
                ));
            }
            Some(t.clone())
        }
        Some(v) => {
            return Err(format!(
                "field \"tools\" is {}, expected a list of JSON schemas",
                json_kind(v)
            ))
        }
    };
    let kwargs = match obj.get("chat_template_kwargs") {
        None | Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(serde_json::Value::Object(o)) => {
            if let Some(k) = o
                .keys()
                .find(|k| crate::chat_template::RESERVED_TEMPLATE_VARIABLES.contains(&k.as_str()))
            {
                return Err(format!(
                    "chat_template_kwargs cannot set {k:?}, which the template gets from the row"
                ));
            }
            o.clone()
        }
        Some(v) => {
            return Err(format!(
                "field \"chat_template_kwargs\" is {}, expected an object",
                json_kind(v)
            ))
        }
    };
    Ok(ChatExtras { tools, kwargs })
}

fn parse_row(
    line: &[u8],
    format: Option<LmFormat>,
) -> std::result::Result<(LmFormat, LmRecord), String> {
    let text = utf8_line(line)?;
    let obj = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(v) => return Err(format!("expected a JSON object, found {}", json_kind(&v))),
        Err(e) => return Err(format!("not valid JSON: {e}")),
    };
    let detected = LmFormat::detect(&obj);
    let format = match (format, detected) {
        (Some(f), Some(d)) if f != d => {
            return Err(format!(
                "a {d} row, but the data is {f} (from the first row or the options)"
            ))
        }
        (Some(f), _) => f,
        (None, Some(d)) => d,
        (None, None) => {
            let keys: Vec<&String> = obj.keys().collect();
            return Err(format!(
                "cannot tell the format from the keys {keys:?}: expected \"text\", \"prompt\" and \
                 \"completion\", or \"messages\""
            ));
        }
    };
    let record = match format {
        LmFormat::Text => {
            let t = string_field(&obj, "text", format)?;
            if t.is_empty() {
                return Err("field \"text\" is empty".into());
            }
            LmRecord::Text(t)
        }
        LmFormat::PromptCompletion
            if obj.get("prompt").is_some_and(serde_json::Value::is_array)
                || obj
                    .get("completion")
                    .is_some_and(serde_json::Value::is_array) =>
        {
            let prompt = parse_turns(&obj, "prompt")?;
            let completion = parse_turns(&obj, "completion")?;
            let extras = parse_extras(&obj)?;
            LmRecord::ChatPromptCompletion {
                prompt,
                completion,
                extras,
            }
        }
        LmFormat::PromptCompletion => {
            let prompt = string_field(&obj, "prompt", format)?;
            let completion = string_field(&obj, "completion", format)?;
            if completion.is_empty() {
                return Err("field \"completion\" is empty: nothing to learn".into());
            }
            LmRecord::PromptCompletion { prompt, completion }
        }
        LmFormat::Messages => {
            let (messages, extras) = parse_conversation(&obj)?;
            LmRecord::Messages { messages, extras }
        }
    };
    Ok((format, record))
}

/// Parse JSONL bytes into rows; `format` `None` takes the first row's. Blank lines are ignored.
pub fn parse_lm_jsonl(
    bytes: &[u8],
    origin: &str,
    format: Option<LmFormat>,
) -> Result<(LmFormat, Vec<LmRow>)> {
    let mut format = format;
    let mut rows = Vec::new();
    for (line, raw) in numbered_lines(strip_bom(bytes)) {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (f, record) = parse_row(raw, format).map_err(|reason| {
            // A first line that is not JSON: most likely a CSV/TSV file given to causal-lm.
            let hint = if rows.is_empty() && reason.starts_with("not valid JSON") {
                "; causal-LM data is JSON Lines, one object per line: {\"text\"}, \
                 {\"prompt\", \"completion\"} or {\"messages\"}"
            } else {
                ""
            };
            anyhow!("{origin}: line {line}: {reason}{hint}")
        })?;
        if let Some(first) = rows.first().map(|r: &LmRow| &r.record) {
            if first.is_chat() != record.is_chat() {
                let form = |chat| if chat { "lists of turns" } else { "strings" };
                bail!(
                    "{origin}: line {line}: prompt and completion are {}, but {} in the first row (line {}); give every row in one form",
                    form(record.is_chat()),
                    form(first.is_chat()),
                    rows[0].line
                );
            }
        }
        format = Some(f);
        rows.push(LmRow { line, record });
    }
    match format {
        Some(f) if !rows.is_empty() => Ok((f, rows)),
        _ => bail!("{origin}: no rows (empty file)"),
    }
}

/// The format the first row of a causal-LM JSONL file says (`None`: no row, or a first row
/// that is not an object with a known key).
pub fn detect_jsonl_format(path: &Path) -> Result<Option<LmFormat>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let first = numbered_lines(strip_bom(&bytes))
        .map(|(_, raw)| raw)
        .find(|raw| !raw.iter().all(u8::is_ascii_whitespace));
    Ok(first
        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(raw).ok())
        .and_then(|v| v.as_object().and_then(LmFormat::detect)))
}

/// Read a causal-LM JSONL file and prepare it: see [`build_dataset`].
pub fn load_jsonl(
    path: &Path,
    tok: &LmTokenizer,
    opts: &LmOptions,
) -> Result<(TokenizedDataset, LmStats)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let origin = path.display().to_string();
    let (format, rows) = parse_lm_jsonl(&bytes, &origin, opts.format)?;
    let opts = LmOptions {
        format: Some(format),
        ..opts.clone()
    };
    build_dataset(&rows, &origin, tok, &opts)
}

/// Tokenize rows (in parallel), truncate, skip or refuse rows with nothing to learn, and pack
/// when asked. `origin` names the data in messages.
pub fn build_dataset(
    rows: &[LmRow],
    origin: &str,
    tok: &LmTokenizer,
    opts: &LmOptions,
) -> Result<(TokenizedDataset, LmStats)> {
    if opts.max_seq_len < 2 {
        bail!(
            "max_seq_len {} leaves nothing to learn: a causal LM needs at least 2 tokens",
            opts.max_seq_len
        );
    }
    let tokenized: Vec<(LmExample, bool)> = rows
        .par_iter()
        .map(|r| {
            tok.tokenize_record(&r.record, opts)
                .with_context(|| format!("{origin}: line {}", r.line))
        })
        .collect::<Result<_>>()?;
    let mut stats = LmStats {
        format: rows.first().map(|r| r.record.format()),
        chat: rows.first().is_some_and(|r| r.record.is_chat()),
        rows_read: rows.len(),
        ..LmStats::default()
    };
    let mut kept = Vec::with_capacity(rows.len());
    for (row, (mut ex, prefix_ok)) in rows.iter().zip(tokenized) {
        if !prefix_ok {
            stats.prompt_prefix_mismatches += 1;
        }
        let full_len = ex.input_ids.len();
        if full_len > opts.max_seq_len {
            stats.rows_truncated += 1;
            ex.input_ids.truncate(opts.max_seq_len);
            ex.labels.truncate(opts.max_seq_len);
        }
        // Position 0 is never predicted by a causal LM.
        if ex.labels.iter().skip(1).all(|&l| l == IGNORE_INDEX) {
            let why = if full_len > opts.max_seq_len {
                format!(
                    "nothing to learn in the first {} of its {full_len} tokens",
                    opts.max_seq_len
                )
            } else {
                format!("nothing to learn in its {full_len} tokens (no target token, e.g. no assistant turn)")
            };
            match opts.too_long {
                TooLong::Error => bail!(
                    "{origin}: line {}: {why} (raise max_seq_len, or skip such rows with \
                     too_long = skip)",
                    row.line
                ),
                TooLong::Skip => {
                    stats.rows_skipped += 1;
                    stats.skipped_lines.push(row.line);
                    continue;
                }
            }
        }
        kept.push(ex);
    }
    if stats.prompt_prefix_mismatches > 0 && stats.chat {
        tracing::warn!(
            "{origin}: in {} rows the tokens of the prompt rendered with the generation prompt are \
             not a prefix of the whole conversation's (the chat template renders the generation \
             prompt otherwise than the start of an assistant turn, as DeepSeek's `<think>`, or a \
             token merges across the boundary): the completion starts where they diverge, as in \
             TRL, so the model trains on a context that differs from the one it sees when generating",
            stats.prompt_prefix_mismatches
        );
    } else if stats.prompt_prefix_mismatches > 0 {
        tracing::warn!(
            "{origin}: in {} rows the prompt's tokens are not a prefix of prompt + completion's \
             (a token merges across the boundary): the completion starts where they diverge, as in \
             TRL, so the model trains on a context that differs from the prompt alone; end prompts on a \
             token boundary (e.g. no trailing space) to avoid it",
            stats.prompt_prefix_mismatches
        );
    }
    if kept.is_empty() {
        // Conversations without an assistant turn are the usual cause: say so, with the roles.
        let no_assistant: Vec<&LmRow> = rows
            .iter()
            .filter(|r| {
                r.record.is_chat()
                    && opts.assistant_only_loss
                    && r.record.turns().iter().all(|m| m.role() != "assistant")
            })
            .collect();
        if !no_assistant.is_empty() {
            let mut roles: Vec<&str> = no_assistant
                .iter()
                .flat_map(|r| r.record.turns().into_iter().map(Message::role))
                .collect();
            roles.sort_unstable();
            roles.dedup();
            bail!(
                "{origin}: no example left: {} of the {} rows (first at line {}) have no assistant \
                 turn (role \"assistant\"; roles found: {}), and the loss is on assistant turns \
                 (assistant_only_loss)",
                no_assistant.len(),
                stats.rows_read,
                no_assistant[0].line,
                roles.join(", ")
            );
        }
        bail!(
            "{origin}: no example left: all {} rows have nothing to learn within max_seq_len {} \
             (first at line {})",
            stats.rows_read,
            opts.max_seq_len,
            stats.skipped_lines.first().copied().unwrap_or(1)
        );
    }
    if stats.rows_skipped > 0 {
        tracing::warn!(
            "{origin}: skipped {} rows with nothing to learn within max_seq_len {} (no target token, e.g. no assistant turn, or all cut by truncation; first at line {})",
            stats.rows_skipped,
            opts.max_seq_len,
            stats.skipped_lines[0]
        );
    }
    stats.examples = kept.len();
    stats.tokens = kept.iter().map(|e| e.input_ids.len()).sum();
    let examples = if opts.packing {
        pack(kept, opts.max_seq_len)
    } else {
        kept
    };
    stats.rows = examples.len();
    let ds = TokenizedDataset::from_lm_examples(examples)?;
    stats.target_tokens = ds.num_target_tokens();
    Ok((ds, stats))
}

/// Best-fit decreasing: the rows (lists of indices into `lengths`) that hold every item, each
/// row's total at most `capacity`. Items are taken longest first (ties in index order); each
/// goes into the row with the least room that still fits it (among rows with equal room, the
/// one that came to have that room first, as TRL's queue per room), or opens a new row. Rows are in the order they were opened. Items longer than `capacity` get a
/// row of their own.
pub fn pack_bfd(lengths: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut rows: Vec<Vec<usize>> = Vec::new();
    // Room left -> the open rows with that room, oldest first.
    let mut by_room: BTreeMap<usize, VecDeque<usize>> = BTreeMap::new();
    for i in order {
        let len = lengths[i];
        let found = by_room
            .range_mut(len..)
            .next()
            .map(|(&room, q)| (room, q.pop_front()));
        let (row, room) = match found {
            Some((room, Some(row))) => {
                if by_room.get(&room).is_some_and(VecDeque::is_empty) {
                    by_room.remove(&room);
                }
                (row, room)
            }
            _ => {
                rows.push(Vec::new());
                (rows.len() - 1, capacity.max(len))
            }
        };
        rows[row].push(i);
        let left = room - len;
        if left > 0 {
            by_room.entry(left).or_default().push_back(row);
        }
    }
    rows
}

/// Pack examples with [`pack_bfd`] into rows with position ids; the first token of each
/// example takes no loss.
fn pack(examples: Vec<LmExample>, capacity: usize) -> Vec<LmExample> {
    let lengths: Vec<usize> = examples.iter().map(|e| e.input_ids.len()).collect();
    let plan = pack_bfd(&lengths, capacity);
    let mut slots: Vec<Option<LmExample>> = examples.into_iter().map(Some).collect();
    plan.into_iter()
        .map(|members| {
            let mut row = LmExample {
                position_ids: Some(Vec::new()),
                ..LmExample::default()
            };
            for i in members {
                let Some(mut ex) = slots[i].take() else {
                    continue;
                };
                if let Some(first) = ex.labels.first_mut() {
                    *first = IGNORE_INDEX;
                }
                let n = ex.input_ids.len() as u32;
                row.input_ids.append(&mut ex.input_ids);
                row.labels.append(&mut ex.labels);
                if let Some(p) = &mut row.position_ids {
                    p.extend(0..n);
                }
            }
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_roundtrip() {
        for f in LmFormat::ALL {
            assert_eq!(f.name().parse::<LmFormat>().unwrap(), f);
        }
        assert_eq!(
            "prompt_completion".parse::<LmFormat>().unwrap(),
            LmFormat::PromptCompletion
        );
        assert!("chat".parse::<LmFormat>().is_err());
        let json = serde_json::to_string(&LmFormat::PromptCompletion).unwrap();
        assert_eq!(json, "\"prompt-completion\"");
    }

    /// Content parts reach the template; a template that prints them as text passes (also when
    /// another turn holds a dict's text literally), one that drops them (Qwen3's: `is string`
    /// else empty; also when another turn holds the same words), prints the list as data
    /// (`{{ }}`, `|trim`, `~`) or cannot add it to a string is refused with a message that says
    /// to give a string.
    #[test]
    fn content_parts_must_be_printed_by_the_template() {
        let row = |assistant: &str| {
            let row = serde_json::json!({"messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there."}]},
                {"role": "assistant", "content": assistant},
            ]});
            parse_conversation(row.as_object().unwrap()).unwrap()
        };
        let (conv, extras) = row("Hello.");
        let template = |source: &str| ChatTemplate::new(source, "t", BTreeMap::new()).unwrap();
        let err = |t: &ChatTemplate, conv: &[Message]| {
            format!(
                "{:#}",
                check_parts_rendered(t, conv, &extras, false).unwrap_err()
            )
        };
        let takes_parts = template(
            "{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}\
             {% for p in m.content %}{{ p.text | trim }}{% endfor %}{% endif %}|{% endfor %}",
        );
        let text = render_turns(&takes_parts, &conv, &extras, false).unwrap();
        assert_eq!(text, "Hithere.|Hello.|");
        check_parts_rendered(&takes_parts, &conv, &extras, false).unwrap();
        let (literal, _) = row("Use {'type': 'text', 'text': 'x'} for that.");
        check_parts_rendered(&takes_parts, &literal, &extras, false).unwrap();

        let drops = template(
            "{% for m in messages %}{% if m.content is string %}{{ m.content }}{% endif %}|{% endfor %}",
        );
        for conv in [&conv, &row("Hi there.").0] {
            let e = err(&drops, conv);
            assert!(
                e.contains("messages[0].content is a list of content parts")
                    && e.contains("does not print them (part 0, \"Hi \"")
                    && e.contains("give the turn's text as one string"),
                "{e}"
            );
        }
        for source in [
            "{% for m in messages %}{{ m.content }}|{% endfor %}",
            "{% for m in messages %}{{ m.content | trim }}|{% endfor %}",
            "{% for m in messages %}{{ '<' ~ m.content ~ '>' }}{% endfor %}",
        ] {
            let e = err(&template(source), &conv);
            assert!(e.contains("prints the list as data"), "{source}: {e}");
        }
        let concatenates =
            template("{% for m in messages %}{{ '<' + m.content + '>' }}{% endfor %}");
        let e = format!(
            "{:#}",
            render_turns(&concatenates, &conv, &extras, false).unwrap_err()
        );
        assert!(
            e.contains("messages[0].content is a list of content parts, which the chat template of t cannot take")
                && e.contains("give the turn's text as one string"),
            "{e}"
        );
    }

    /// A template that closes every conversation with EOS (Phi-3's) has its assistant turns
    /// found, each up to its own end (the EOS only in the last); one that renders an earlier
    /// turn otherwise than as the last (drops its reasoning, as Qwen3's) is refused, naming
    /// the setting that trains on every token.
    #[test]
    fn assistant_turns_under_a_closing_tail_and_a_rewriting_template() {
        let special = BTreeMap::from([("eos_token".to_string(), "<eos>".to_string())]);
        let phi3 = ChatTemplate::new(
            "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}",
            "phi3-like",
            special.clone(),
        )
        .unwrap();
        let conv = vec![
            Message::new("user", "q1"),
            Message::new("assistant", "a1"),
            Message::new("user", "q2"),
            Message::new("assistant", "a2"),
        ];
        let extras = ChatExtras::default();
        let full = phi3.render(&conv, false).unwrap();
        let spans = assistant_spans(&phi3, &conv, &extras, &full).unwrap();
        let turns: Vec<&str> = spans.iter().map(|&(a, b)| &full[a..b]).collect();
        assert_eq!(turns, ["a1<|end|>\n", "a2<|end|>\n<eos>"]);

        let rewriting = ChatTemplate::new(
            "{% for m in messages %}<|{{ m.role }}|>\n{% if loop.last and m.reasoning_content is defined %}\
             <think>{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}<|end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|assistant|>\n{% endif %}",
            "qwen3-like",
            special,
        )
        .unwrap();
        let mut a1 = serde_json::Map::new();
        a1.insert("role".into(), "assistant".into());
        a1.insert("content".into(), "a1".into());
        a1.insert("reasoning_content".into(), "r1".into());
        let conv = vec![
            Message::new("user", "q1"),
            Message::from_object(a1).unwrap(),
            Message::new("user", "q2"),
            Message::new("assistant", "a2"),
        ];
        let full = rewriting.render(&conv, false).unwrap();
        let err = format!(
            "{:#}",
            assistant_spans(&rewriting, &conv, &extras, &full).unwrap_err()
        );
        assert!(
            err.contains("up to message 2") && err.contains("--assistant-only-loss false"),
            "{err}"
        );
    }

    /// A turn as `apply_chat_template` prepares it: null keys dropped (a tool call's null
    /// content, a `tool_calls: null`), the reasoning under any name given as `thinking` and
    /// `reasoning_content` too; tools given as a JSON string parsed, as TRL does.
    #[test]
    fn turns_are_prepared_as_transformers_prepares_them() {
        let row = serde_json::json!({
            "messages": [
                {"role": "user", "content": "q", "tool_calls": null, "name": null},
                {"role": "assistant", "content": null, "tool_calls": [{"function": {"name": "f"}}]},
                {"role": "assistant", "reasoning": "because", "content": "a"},
            ],
            "tools": "[{\"type\": \"function\"}]",
        });
        let (messages, extras) = parse_conversation(row.as_object().unwrap()).unwrap();
        let keys = |m: &Message| {
            serde_json::to_value(m)
                .unwrap()
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&messages[0]), ["role", "content"]);
        assert_eq!(keys(&messages[1]), ["role", "tool_calls"]);
        assert_eq!(
            keys(&messages[2]),
            [
                "thinking",
                "role",
                "reasoning",
                "content",
                "reasoning_content"
            ]
        );
        assert_eq!(messages[2].get("reasoning_content").unwrap(), "because");
        assert_eq!(
            extras.tools.unwrap(),
            serde_json::json!([{"type": "function"}])
        );
    }

    fn parse_err(text: &[u8], format: Option<LmFormat>) -> String {
        format!("{:#}", parse_lm_jsonl(text, "d.jsonl", format).unwrap_err())
    }

    #[test]
    fn formats_are_detected_from_the_first_row() {
        let (f, rows) = parse_lm_jsonl(
            b"\n{\"text\": \"a\"}\n\n{\"text\": \"b\", \"id\": 3}\n",
            "d",
            None,
        )
        .unwrap();
        assert_eq!(f, LmFormat::Text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].line, 4);
        let (f, rows) = parse_lm_jsonl(
            b"{\"prompt\": \"p\", \"completion\": \"c\", \"text\": \"ignored\"}",
            "d",
            None,
        )
        .unwrap();
        assert_eq!(f, LmFormat::PromptCompletion);
        assert_eq!(
            rows[0].record,
            LmRecord::PromptCompletion {
                prompt: "p".into(),
                completion: "c".into()
            }
        );
        let (f, rows) = parse_lm_jsonl(
            "\u{feff}{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}".as_bytes(),
            "d",
            None,
        )
        .unwrap();
        assert_eq!(f, LmFormat::Messages);
        assert_eq!(
            rows[0].record,
            LmRecord::Messages {
                messages: vec![Message::new("user", "q")],
                extras: ChatExtras::default()
            }
        );
    }

    #[test]
    fn bad_rows_name_file_and_line() {
        let cases: &[(&[u8], Option<LmFormat>, &[&str])] = &[
            (b"", None, &["d.jsonl: no rows"]),
            (b"\n\n", None, &["d.jsonl: no rows"]),
            (
                b"{\"text\": \"a\"}\n{\"txt\": \"b\"}",
                None,
                &["d.jsonl: line 2", "missing field \"text\""],
            ),
            (
                b"{\"text\": \"a\"}\n{\"text\": 5}",
                None,
                &["line 2", "\"text\" is a number, expected a string"],
            ),
            (b"{\"text\": \"\"}", None, &["line 1", "\"text\" is empty"]),
            (
                b"{\"prompt\": \"p\", \"completion\": \"\"}",
                None,
                &["line 1", "\"completion\" is empty"],
            ),
            (
                b"{\"prompt\": \"p\", \"completion\": null}",
                None,
                &["line 1", "\"completion\" is null"],
            ),
            (
                b"{\"text\": \"a\"}\n{\"prompt\": \"p\", \"completion\": \"c\"}",
                None,
                &["line 2", "a prompt-completion row, but the data is text"],
            ),
            (
                b"{\"text\": \"a\"}",
                Some(LmFormat::Messages),
                &["line 1", "a text row, but the data is messages"],
            ),
            (
                b"{\"question\": \"a\"}",
                None,
                &["line 1", "cannot tell the format", "question"],
            ),
            (
                b"{\"text\": \"a\"}\n{\"text\": \"\xff\"}",
                None,
                &["line 2", "UTF-8"],
            ),
            (
                b"{\"text\": \"a\"}\n[1, 2]",
                None,
                &["line 2", "expected a JSON object, found an array"],
            ),
            (b"{\"text\": \"a\"\n", None, &["line 1", "not valid JSON"]),
            (
                b"text,label\nhello,1\n",
                None,
                &["line 1", "not valid JSON", "causal-LM data is JSON Lines"],
            ),
            (
                b"{\"messages\": \"hi\"}",
                None,
                &["line 1", "\"messages\" is a string, expected a list"],
            ),
            (b"{\"messages\": []}", None, &["line 1", "empty list"]),
            (
                b"{\"messages\": [{\"content\": \"hi\"}]}",
                None,
                &["line 1", "messages[0] has no \"role\""],
            ),
            (
                b"{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"tools\": \"[1\"}",
                None,
                &["line 1", "\"tools\" is a string that is not JSON"],
            ),
            (
                b"{\"messages\": [{\"role\": \"user\", \"content\": [1]}]}",
                None,
                &["messages[0].content[0] is a number, expected a content part"],
            ),
            (
                b"{\"messages\": [{\"role\": \"user\", \"content\": []}]}",
                None,
                &["messages[0].content is an empty list"],
            ),
            (
                b"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, {\"type\": \"image\", \"url\": \"x.png\"}]}]}",
                None,
                &["messages[0].content[1] is a \"image\" part", "only \"text\" parts"],
            ),
            (
                b"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}",
                None,
                &["messages[0].content[0] is a text part without a string \"text\""],
            ),
            (
                b"{\"messages\": [{\"role\": \"user\", \"content\": [{\"text\": \"a\"}]}]}",
                None,
                &["messages[0].content[0] has no string \"type\""],
            ),
            (
                b"{\"messages\": [\"hi\"]}",
                None,
                &["messages[0] is a string, expected an object"],
            ),
            (
                b"{\"prompt\": \"q\", \"completion\": [{\"role\": \"assistant\", \"content\": \"a\"}]}",
                None,
                &["\"prompt\" is a string, expected a list of turns"],
            ),
            (
                b"{\"prompt\": [{\"role\": \"user\", \"content\": \"q\"}], \"completion\": []}",
                None,
                &["\"completion\" is an empty list"],
            ),
            (
                b"{\"prompt\": [{\"role\": \"user\", \"content\": \"q\"}], \"completion\": [{\"role\": \"assistant\", \"content\": \"a\"}]}\n{\"prompt\": \"q\", \"completion\": \"a\"}",
                None,
                &["line 2", "prompt and completion are strings, but lists of turns in the first row (line 1)"],
            ),
        ];
        for (text, format, needles) in cases {
            let err = parse_err(text, *format);
            for n in *needles {
                assert!(
                    err.contains(n),
                    "{:?}: {err} should contain {n:?}",
                    String::from_utf8_lossy(text)
                );
            }
        }
    }

    #[test]
    fn bfd_packs_best_fit() {
        // Longest first: 0 (6), 2 (5), 1 (4), 3 (3), 4 (2), 5 (1); capacity 8.
        let rows = pack_bfd(&[6, 4, 5, 3, 2, 1], 8);
        assert_eq!(rows, vec![vec![0, 4], vec![2, 3], vec![1, 5]]);
        // Equal room: the row opened first wins; an item longer than the capacity stands alone.
        assert_eq!(
            pack_bfd(&[3, 3, 2, 9], 5),
            vec![vec![3], vec![0, 2], vec![1]]
        );
    }
}
