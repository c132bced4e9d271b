//! `loraplus generate`: text from a causal LM with (or without) an adapter: greedy or sampled,
//! with a KV cache, the chat template applied with `--chat`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use loraplus_data::chat_template::{ChatExtras, Message};
use loraplus_data::lm::LmTokenizer;
use loraplus_models::{GenerationConfig, Head};

use crate::cli::{adapter_dir, UsageError};
use crate::config::usable_device;
use crate::model;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The base model folder (config.json, safetensors, tokenizer.json, tokenizer_config.json),
    /// or a Hub repository id (ORG/NAME) fetched into the Hub cache.
    #[arg(long)]
    pub model: PathBuf,
    /// Revision (branch, tag or commit) of a Hub --model (default main).
    #[arg(long)]
    pub revision: Option<String>,
    /// A checkpoint or adapter directory (PEFT format); none: the base model alone.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Merge the adapter into the base weights before generating (same tokens, faster).
    #[arg(long, requires = "adapter")]
    pub merge: bool,
    /// One prompt.
    #[arg(long, conflicts_with = "input")]
    pub prompt: Option<String>,
    /// A JSONL file of prompts: `{"prompt": ...}` or, with --chat, `{"messages": [...]}` too.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Where JSONL results go (each input row's `prompt` or `messages`, with `completion` and
    /// `tokens`); default: standard output
    /// (the completion only, for --prompt).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Render the prompt as a user turn with the model's chat template (generation prompt added).
    #[arg(long)]
    pub chat: bool,
    /// Tokens generated at most per prompt (fewer where an EOS token comes first). Default: the
    /// model's generation_config.json, else 20. Decoding settings not given here come from that
    /// file as in transformers' generate, else transformers' defaults.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Sample instead of greedy decoding (`--do-sample false`: greedy whatever
    /// generation_config.json says).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub do_sample: Option<bool>,
    /// Sampling temperature (default 1.0).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sample among the k most likely tokens (0: off; default 50).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches p (default 1.0: off).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Divide (multiply, if negative) the logits of tokens already in the row by this, greedy or
    /// sampled (default 1.0: off).
    #[arg(long)]
    pub repetition_penalty: Option<f64>,
    /// Seed of the sampler (when sampling): the same seed gives the same text, whatever
    /// --batch-size.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Recompute the whole sequence at every step instead of keeping keys and values.
    #[arg(long)]
    pub no_cache: bool,
    /// Prompts generated together.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Run on a quantized base (int8 or int4), as the adapter was trained.
    #[command(flatten)]
    pub quant: super::QuantFlags,
    /// Base weights dtype: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

/// One prompt: plain text or a conversation.
enum Prompt {
    Text(String),
    /// A conversation, with the row's `tools` and `chat_template_kwargs`.
    Chat(Vec<Message>, ChatExtras),
}

/// Each prompt with its line (1-based) and the input field it came from (`{"prompt": ..}` or
/// `{"messages": ..}`, echoed in the output rows).
fn read_prompts(path: &Path, chat: bool) -> Result<Vec<(usize, serde_json::Value, Prompt)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}: line {}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", at()))?;
        if let Some(turns @ serde_json::Value::Array(_)) = v.get("prompt") {
            // A conversational prompt (TRL's prompt-completion given as turns).
            if !chat {
                bail!(
                    "{}: a \"prompt\" given as a list of turns needs --chat",
                    at()
                );
            }
            let obj = v
                .as_object()
                .with_context(|| format!("{}: expected an object", at()))?;
            let msgs = loraplus_data::lm::parse_turns(obj, "prompt")
                .map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
            let extras = loraplus_data::lm::parse_extras(obj)
                .map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
            out.push((
                i + 1,
                serde_json::json!({"prompt": turns}),
                Prompt::Chat(msgs, extras),
            ));
        } else if let Some(p) = v.get("prompt") {
            let p = p
                .as_str()
                .with_context(|| format!("{}: field \"prompt\" must be a string", at()))?;
            let prompt = if chat {
                Prompt::Chat(vec![Message::new("user", p)], ChatExtras::default())
            } else {
                Prompt::Text(p.to_string())
            };
            out.push((i + 1, serde_json::json!({"prompt": p}), prompt));
        } else if let Some(m) = v.get("messages") {
            if !chat {
                bail!("{}: a \"messages\" row needs --chat", at());
            }
            let obj = v
                .as_object()
                .with_context(|| format!("{}: expected an object", at()))?;
            let (msgs, extras) = loraplus_data::lm::parse_conversation(obj)
                .map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
            out.push((
                i + 1,
                serde_json::json!({"messages": m}),
                Prompt::Chat(msgs, extras),
            ));
        } else {
            bail!(
                "{}: expected a \"prompt\" (or, with --chat, \"messages\") field",
                at()
            );
        }
    }
    if out.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(out)
}

fn encode(tok: &LmTokenizer, p: &Prompt) -> Result<Vec<i64>> {
    let ids = match p {
        Prompt::Text(t) => tok.encode(t, true)?,
        Prompt::Chat(m, extras) => {
            let template = tok
                .chat_template()
                .context("--chat: the model's tokenizer_config.json has no chat_template")?;
            let text = loraplus_data::lm::render_turns(template, m, extras, true)?;
            // The rendered template already holds its special tokens: none added again.
            tok.encode(&text, false)?
        }
    };
    Ok(ids.into_iter().map(i64::from).collect())
}

/// The decoding settings: the flags given, else the model's generation_config.json (as
/// transformers' `generate` takes them), else transformers' defaults. Sampling flags under
/// greedy decoding are refused (they would do nothing).
/// The second value is generation_config.json's `max_length` where nothing sets the new
/// tokens (the caller counts them per batch).
fn decoding(
    a: &GenerateArgs,
    model_dir: &Path,
    file: &loraplus_models::generate::GenerationDefaults,
    eos_token_ids: Vec<i64>,
    pad: i64,
) -> Result<(GenerationConfig, Option<usize>)> {
    use loraplus_models::generate as g;
    let mut from_file = Vec::new();
    macro_rules! pick {
        ($field:ident, $default:expr) => {
            match (a.$field, file.$field) {
                (Some(v), _) => v,
                (None, Some(v)) => {
                    from_file.push(format!("{} {v}", stringify!($field)));
                    v
                }
                (None, None) => $default,
            }
        };
    }
    let gc = GenerationConfig {
        max_new_tokens: pick!(max_new_tokens, g::DEFAULT_MAX_NEW_TOKENS),
        do_sample: pick!(do_sample, false),
        temperature: pick!(temperature, g::DEFAULT_TEMPERATURE),
        top_k: pick!(top_k, g::DEFAULT_TOP_K),
        top_p: pick!(top_p, g::DEFAULT_TOP_P),
        repetition_penalty: pick!(repetition_penalty, g::DEFAULT_REPETITION_PENALTY),
        seed: a.seed,
        eos_token_ids,
        pad_token_id: Some(pad),
        use_cache: !a.no_cache,
    };
    if !gc.do_sample {
        // Sampling settings do nothing under greedy decoding: not worth a mention.
        from_file.retain(|f| {
            !["temperature ", "top_k ", "top_p "]
                .iter()
                .any(|k| f.starts_with(k))
        });
    }
    let max_length = match (a.max_new_tokens, file.max_new_tokens) {
        (None, None) => file.max_length,
        _ => None,
    };
    if let Some(total) = max_length {
        from_file.push(format!("max_length {total} (prompt and new tokens)"));
    }
    if !from_file.is_empty() {
        eprintln!(
            "from {}: {} (flags override them)",
            model_dir.join("generation_config.json").display(),
            from_file.join(", ")
        );
    }
    refuse_unused_sampling_flags(a, file.do_sample)?;
    Ok((gc, max_length))
}

/// Sampling flags (`--temperature`, `--top-k`, `--top-p`, `--seed`) when decoding is greedy
/// (no `--do-sample`, and generation_config.json's `do_sample` is not true): refused, as they
/// would do nothing.
fn refuse_unused_sampling_flags(a: &GenerateArgs, file_do_sample: Option<bool>) -> Result<()> {
    if a.do_sample.or(file_do_sample).unwrap_or(false) {
        return Ok(());
    }
    let given: Vec<&str> = [
        ("--temperature", a.temperature.is_some()),
        ("--top-k", a.top_k.is_some()),
        ("--top-p", a.top_p.is_some()),
        ("--seed", a.seed.is_some()),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(f, _)| *f)
    .collect();
    if given.is_empty() {
        return Ok(());
    }
    Err(UsageError::wrap(anyhow::anyhow!(
        "{} {} for sampling, and decoding is greedy: add --do-sample",
        given.join(", "),
        if given.len() == 1 { "is" } else { "are" }
    )))
}

/// `loraplus generate`.
pub fn generate(a: GenerateArgs) -> Result<()> {
    let device = usable_device(&a.device)
        .context("--device")
        .map_err(UsageError::wrap)?;
    let kind = model::kind_of(&a.dtype).map_err(UsageError::wrap)?;
    let prompts: Vec<(usize, serde_json::Value, Prompt)> = match (&a.prompt, &a.input) {
        (Some(p), None) => {
            let prompt = if a.chat {
                Prompt::Chat(vec![Message::new("user", p)], ChatExtras::default())
            } else {
                Prompt::Text(p.clone())
            };
            vec![(0, serde_json::json!({"prompt": p}), prompt)]
        }
        (None, Some(path)) => read_prompts(path, a.chat).map_err(UsageError::wrap)?,
        _ => {
            return Err(UsageError::wrap(anyhow::anyhow!(
                "give --prompt TEXT or --input prompts.jsonl"
            )))
        }
    };
    if a.batch_size == 0 {
        return Err(UsageError::wrap(anyhow::anyhow!(
            "--batch-size must be at least 1"
        )));
    }
    // Before anything loads, where a local folder can say whether its generation_config.json
    // samples (a Hub model is checked again once fetched).
    let local = if a.model.is_dir() {
        loraplus_models::generate::GenerationDefaults::from_model_dir(&a.model).unwrap_or_default()
    } else {
        Default::default()
    };
    refuse_unused_sampling_flags(&a, local.do_sample)?;
    let quantize =
        crate::config::quant_scheme(a.quant.quantize.as_deref(), a.quant.quant_group_size)
            .map_err(UsageError::wrap)?;
    if let Some(scheme) = quantize {
        scheme
            .check_device(device, kind)
            .map_err(|e| UsageError::wrap(e.into()))?;
    }
    let model_dir = loraplus_models::hub::resolve_model(
        &a.model,
        a.revision.as_deref(),
        &loraplus_models::hub::HubOptions::from_env(),
    )?;
    let tok = crate::model::decoder_tokenizer(&model_dir)?;
    let adapter = a.adapter.as_deref().map(adapter_dir).transpose()?;
    let lora_cfg = match &adapter {
        Some(ad) => {
            let lc =
                loraplus_core::read_adapter_config(ad).map_err(|e| UsageError::wrap(e.into()))?;
            super::check_adapter_task(&lc, Head::CausalLm, ad)?;
            if let Some(run) = super::recorded_config(ad) {
                super::warn_full_precision(
                    &run,
                    a.quant.quantize.as_deref(),
                    "generates with it on",
                    "generates on the base it trained on",
                );
            }
            Some(lc)
        }
        None => None,
    };
    let opts = loraplus_models::LoadOptions {
        task: Head::CausalLm,
        dtype: kind,
        device,
        lora: lora_cfg,
        quantize,
        untie_adapted_head: a.merge,
        ..loraplus_models::LoadOptions::default()
    };
    let (m, lora) = loraplus_models::TaskModel::load(&model_dir, &opts)?;
    if let Some(ad) = &adapter {
        lora.load_adapter(ad)?;
        if a.merge {
            lora.dequantize_base()?;
            lora.merge(true)?;
        }
    }
    // Generation stops on any of: config.json's eos_token_id, generation_config.json's (where
    // chat models list their end-of-turn tokens), the tokenizer's EOS.
    let file = loraplus_models::generate::GenerationDefaults::from_model_dir(&model_dir)?;
    let mut eos = m.eos_token_ids();
    for &id in file.eos_token_ids.iter().chain(&[i64::from(tok.eos_id())]) {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    let (gc, max_length) = decoding(&a, &model_dir, &file, eos, i64::from(tok.pad_id()))?;
    gc.validate(m.config().vocab_size())
        .map_err(UsageError::wrap)?;
    // Each prompt renders, encodes and fits the model, named by its line: before anything is
    // generated.
    let origin = |line: usize| match &a.input {
        Some(path) if a.prompt.is_none() => format!("{}: line {line}", path.display()),
        _ => "--prompt".to_string(),
    };
    let ids: Vec<Vec<i64>> = prompts
        .iter()
        .map(|(line, _, p)| encode(&tok, p).with_context(|| origin(*line)))
        .collect::<Result<_>>()?;
    for ((line, _, _), p) in prompts.iter().zip(&ids) {
        if p.is_empty() {
            return Err(UsageError::wrap(anyhow::anyhow!(
                "{}: the prompt encodes to no tokens (and the tokenizer adds no BOS): give some text",
                origin(*line)
            )));
        }
        m.check_prompt_length(p.len(), gc.max_new_tokens)
            .map_err(|e| UsageError::wrap(anyhow::anyhow!("{}: {e}", origin(*line))))?;
    }
    // generation_config.json's max_length (no max_new_tokens anywhere): the new tokens are what
    // the batch's longest prompt leaves, as transformers counts them (at least one).
    let mut outputs = Vec::with_capacity(ids.len());
    for (k, chunk) in ids.chunks(a.batch_size).enumerate() {
        // Seeded sampling draws the same for a prompt whatever --batch-size.
        let mut cfg = gc.starting_at_row(k * a.batch_size);
        if let Some(total) = max_length {
            let longest = chunk.iter().map(Vec::len).max().unwrap_or(0);
            if longest >= total {
                tracing::warn!(
                    "a prompt of {longest} tokens reaches generation_config.json's max_length \
                     {total}: one new token (give --max-new-tokens)"
                );
            }
            cfg.max_new_tokens = total.saturating_sub(longest).max(1);
        }
        outputs.extend(m.generate(chunk, &cfg)?);
    }
    let mut sink: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    for ((_, echo, _), new) in prompts.iter().zip(&outputs) {
        let new_u32: Vec<u32> = new.iter().map(|&t| t as u32).collect();
        let text = tok
            .tokenizer()
            .decode(&new_u32, true)
            .map_err(|e| anyhow::anyhow!("decoding the generated tokens: {e}"))?;
        if a.prompt.is_some() && a.output.is_none() {
            writeln!(sink, "{text}")?;
        } else {
            let mut row = echo.clone();
            row["completion"] = text.into();
            row["tokens"] = serde_json::json!(new);
            writeln!(sink, "{row}")?;
        }
    }
    sink.flush()?;
    Ok(())
}
