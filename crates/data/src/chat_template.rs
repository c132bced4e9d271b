//! Chat templates: a conversation rendered to text by the model's own Jinja template, as
//! `transformers`' `apply_chat_template(..., tokenize=False)` does.
//!
//! The template comes from the model folder: `chat_template.jinja` when present (what
//! `transformers` 4.43+ writes), else the `chat_template` key of `tokenizer_config.json` (a
//! string, or a list of `{name, template}` of which `default` is used). It is rendered with
//! `minijinja` set up like `transformers`' sandboxed Jinja environment:
//! - `trim_blocks` and `lstrip_blocks` on, `break`/`continue` in loops, and Python's string and
//!   dict methods (`.strip()`, `.startswith()`, `.items()`, ...) from `minijinja-contrib`
//!   (`.isspace()` false on the empty string, as in Python), with its `truncate` and `wordcount`
//!   filters;
//! - globals: `messages`, `add_generation_prompt`, the special tokens of the tokenizer config
//!   (`bos_token`, `eos_token`, `pad_token`, `unk_token`), `raise_exception(msg)` (fails the
//!   render with `msg`) and `strftime_now(fmt)` (the local time, formatted);
//! - a `tojson` filter with Python's `json.dumps` output: separators `", "` and `": "` (`","`
//!   with `indent`), non-ASCII kept, keys in insertion order (`sort_keys=true` sorts them).
//!
//! `{% generation %}`/`{% endgeneration %}` (the `transformers` tags that mark assistant text
//! for `return_assistant_tokens_mask`) render their body unchanged, as in `transformers`.
//!
//! A render failure names the template's origin and gives the Jinja error.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::Serialize;

/// The name the template is registered under in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// The special tokens `transformers` passes to a chat template (its `special_tokens_map`).
const SPECIAL_TOKEN_KEYS: [&str; 4] = ["bos_token", "eos_token", "unk_token", "pad_token"];

/// One turn of a conversation, as in HF's `messages` lists: its `role`, and every key of the turn
/// as given (`content`, `tool_calls`, `reasoning_content`, `name`, `tool_call_id`, ...), which
/// the template sees unchanged and in their order, as `apply_chat_template` passes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    role: String,
    /// The whole turn, `role` included.
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Message {
    /// `{"role": role, "content": content}`.
    pub fn new(role: &str, content: &str) -> Message {
        let mut fields = serde_json::Map::new();
        fields.insert("role".into(), role.into());
        fields.insert("content".into(), content.into());
        Message {
            role: role.to_string(),
            fields,
        }
    }

    /// A turn from its JSON object, which must have a string `role`; the other keys are the
    /// template's to read, prepared as `apply_chat_template` prepares them: keys whose value is
    /// null are dropped (templates handle a missing key, not a `None`), and the reasoning,
    /// under any of `reasoning_content`, `thinking` or `reasoning`, is also given as
    /// `reasoning_content` and `thinking` (the names templates read). The error says what is
    /// wrong (the caller adds where).
    pub fn from_object(
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> std::result::Result<Message, String> {
        let mut fields: serde_json::Map<String, serde_json::Value> =
            fields.into_iter().filter(|(_, v)| !v.is_null()).collect();
        let reasoning = REASONING_FIELDS
            .iter()
            .find_map(|k| fields.get(*k))
            .cloned();
        if let Some(r) = reasoning {
            // `{"thinking": r, **message, "reasoning_content": r}`, key order included.
            let mut aliased = serde_json::Map::new();
            aliased.insert("thinking".into(), r.clone());
            aliased.extend(fields);
            aliased.insert("reasoning_content".into(), r);
            fields = aliased;
        }
        let role = match fields.get("role") {
            Some(serde_json::Value::String(r)) => r.clone(),
            Some(v) => {
                return Err(format!(
                    "role is {}, expected a string",
                    crate::reader::json_type(v)
                ))
            }
            None => return Err("has no \"role\"".into()),
        };
        Ok(Message { role, fields })
    }

    /// This turn with another `content` (in the same place among its keys).
    pub fn with_content(&self, content: serde_json::Value) -> Message {
        let mut fields = self.fields.clone();
        fields.insert("content".into(), content);
        Message {
            role: self.role.clone(),
            fields,
        }
    }

    /// `system`, `user`, `assistant`, `tool`, ... (the template decides which it accepts).
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The text of the turn, when its `content` is a string.
    pub fn content(&self) -> Option<&str> {
        self.fields
            .get("content")
            .and_then(serde_json::Value::as_str)
    }

    /// Any key of the turn (`tool_calls`, ...).
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.fields.get(key)
    }
}

impl Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.fields.serialize(s)
    }
}

/// The names a turn's reasoning comes under, the first one read first (transformers'
/// `_REASONING_FIELDS`).
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// What a conversation gives its template besides the messages, as `apply_chat_template`'s
/// arguments: `tools` (JSON schemas of the functions the model may call; `None` renders as
/// `none`) and other template variables (TRL's `chat_template_kwargs`, e.g. `enable_thinking`),
/// which override the special tokens of the same name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChatExtras {
    /// `tools=`: a list of JSON schemas.
    pub tools: Option<serde_json::Value>,
    /// Further variables of the template.
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

/// Template variables `apply_chat_template` sets itself, which `chat_template_kwargs` cannot.
pub const RESERVED_TEMPLATE_VARIABLES: [&str; 4] =
    ["messages", "tools", "documents", "add_generation_prompt"];

/// A compiled chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: String,
    special_tokens: BTreeMap<String, String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("special_tokens", &self.special_tokens)
            .finish_non_exhaustive()
    }
}

/// A token of `tokenizer_config.json`: a string, or the `AddedToken` form `{"content": ...}`.
pub(crate) fn token_content(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// The special tokens a template sees, from a parsed `tokenizer_config.json`.
pub(crate) fn special_tokens_of(config: &serde_json::Value) -> BTreeMap<String, String> {
    SPECIAL_TOKEN_KEYS
        .iter()
        .filter_map(|&k| {
            config
                .get(k)
                .and_then(token_content)
                .map(|t| (k.to_string(), t))
        })
        .collect()
}

/// The template text of a `chat_template` value: a string, or a list of named templates of
/// which `default` is taken.
fn template_text(v: &serde_json::Value, origin: &str) -> Result<String> {
    match v {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Array(items) => {
            let mut names = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let name = item.get("name").and_then(serde_json::Value::as_str);
                let template = item.get("template").and_then(serde_json::Value::as_str);
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(t.to_string()),
                    (Some(n), Some(_)) => names.push(n.to_string()),
                    _ => bail!(
                        "{origin}: chat_template[{i}] should be {{\"name\": ..., \"template\": ...}}, \
                         found {item}"
                    ),
                }
            }
            bail!(
                "{origin}: chat_template lists the templates {names:?} but none named \"default\""
            )
        }
        other => bail!(
            "{origin}: chat_template should be a string or a list of named templates, found {other}"
        ),
    }
}

impl ChatTemplate {
    /// Compile `source`; `origin` names it in messages (a path, or a description).
    pub fn new(
        source: &str,
        origin: &str,
        special_tokens: BTreeMap<String, String>,
    ) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(python_methods);
        env.set_formatter(python_formatter);
        env.add_test("iterable", python_iterable);
        env.add_filter("truncate", truncate);
        env.add_filter("wordcount", minijinja_contrib::filters::wordcount);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, without_generation_tags(source))
            .map_err(|e| anyhow!("{origin}: the chat template does not compile: {e:#}"))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            origin: origin.to_string(),
            special_tokens,
        })
    }

    /// The template of a model folder: `chat_template.jinja`, else the `chat_template` of
    /// `tokenizer_config.json`; special tokens from `tokenizer_config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<ChatTemplate> {
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?;
        match ChatTemplate::from_dir_and_config(dir, &config)? {
            Some(t) => Ok(t),
            None => bail!(
                "{} has no chat template: neither chat_template.jinja nor a chat_template key in \
                 {}; messages data needs one (or use the text / prompt-completion formats)",
                dir.display(),
                config_path.display()
            ),
        }
    }

    /// As [`Self::from_model_dir`] with the config already parsed; `None` when the folder has
    /// no template.
    pub(crate) fn from_dir_and_config(
        dir: &Path,
        config: &serde_json::Value,
    ) -> Result<Option<ChatTemplate>> {
        let special = special_tokens_of(config);
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let source = std::fs::read_to_string(&jinja)
                .with_context(|| format!("reading {}", jinja.display()))?;
            return ChatTemplate::new(&source, &jinja.display().to_string(), special).map(Some);
        }
        let origin = format!(
            "{} (chat_template)",
            dir.join("tokenizer_config.json").display()
        );
        match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => {
                let source = template_text(v, &origin)?;
                ChatTemplate::new(&source, &origin, special).map(Some)
            }
        }
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The special tokens the template is rendered with (`bos_token`, `eos_token`, ...).
    pub fn special_tokens(&self) -> &BTreeMap<String, String> {
        &self.special_tokens
    }

    /// Render `messages`; with `add_generation_prompt` the template appends the start of an
    /// assistant turn. Same text as `tokenizer.apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, &ChatExtras::default(), add_generation_prompt)
    }

    /// [`Self::render`] with `tools` and template variables (`apply_chat_template(messages,
    /// tools=..., **kwargs)`). `documents` is `none`, as when `apply_chat_template` is not given
    /// any.
    pub fn render_with(
        &self,
        messages: &[Message],
        extras: &ChatExtras,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| anyhow!("{}: {e:#}", self.origin))?;
        let mut ctx: BTreeMap<&str, Value> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.as_str(), Value::from(v.as_str())))
            .collect();
        for (k, v) in &extras.kwargs {
            if RESERVED_TEMPLATE_VARIABLES.contains(&k.as_str()) {
                bail!(
                    "chat_template_kwargs cannot set {k:?}, which the template gets from the row"
                );
            }
            ctx.insert(k.as_str(), Value::from_serialize(v));
        }
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert(
            "tools",
            extras
                .tools
                .as_ref()
                .map_or(Value::from(()), Value::from_serialize),
        );
        ctx.insert("documents", Value::from(()));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        template.render(ctx).map_err(|e| {
            anyhow!(
                "the chat template of {} failed to render {} messages: {}",
                self.origin,
                messages.len(),
                describe_jinja_error(&e)
            )
        })
    }
}

/// Values printed as Python's Jinja prints them: `True`/`False`, and `None` for none (a tool
/// call's null `content` printed by a template shows as `None` in transformers too); the rest
/// as minijinja prints it (no autoescape in chat templates).
fn python_formatter(
    out: &mut minijinja::Output<'_>,
    state: &minijinja::State<'_, '_>,
    value: &Value,
) -> Result<(), JinjaError> {
    match value.kind() {
        ValueKind::Bool | ValueKind::None | ValueKind::Seq | ValueKind::Map => {
            out.write_str(&python_repr(value))?
        }
        ValueKind::Number if value.as_i64().is_none() => match f64::try_from(value.clone()) {
            Ok(x) => out.write_str(&python_float(x))?,
            Err(_) => minijinja::escape_formatter(out, state, value)?,
        },
        _ => minijinja::escape_formatter(out, state, value)?,
    }
    Ok(())
}

/// Python's `repr` of a JSON-like value: `True`, `None`, `'text'`, `[1, 'a']`, `{'k': 2.5}`.
fn python_repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number => match (value.as_i64(), f64::try_from(value.clone())) {
            (Some(i), _) => i.to_string(),
            (None, Ok(x)) => python_float(x),
            _ => value.to_string(),
        },
        ValueKind::String => python_str_repr(value.as_str().unwrap_or_default()),
        ValueKind::Seq => match value.try_iter() {
            Ok(items) => format!(
                "[{}]",
                items
                    .map(|v| python_repr(&v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(_) => value.to_string(),
        },
        ValueKind::Map => match value.try_iter() {
            Ok(keys) => format!(
                "{{{}}}",
                keys.map(|k| {
                    let v = value.get_item(&k).unwrap_or_default();
                    format!("{}: {}", python_repr(&k), python_repr(&v))
                })
                .collect::<Vec<_>>()
                .join(", ")
            ),
            Err(_) => value.to_string(),
        },
        _ => value.to_string(),
    }
}

/// Python's `repr` of a string: single quotes unless it holds a single quote and no double
/// one; backslashes, the quote and control characters escaped.
fn python_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr` of a float: the shortest digits that round-trip, in positional notation
/// for exponents -4 to 15 (with `.0` when whole), else as `1.5e+20`.
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: `-1.25e-5`.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!(
            "{sign}{m}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

/// Jinja's `truncate(s, length=255, killwords=False, end='...', leeway=5)`, positional or
/// keyword arguments: `s` when it is at most `length + leeway` characters, else cut to
/// `length - len(end)` characters (at the last space unless `killwords`) and `end` appended.
fn truncate(s: String, args: minijinja::value::Rest<Value>) -> Result<String, JinjaError> {
    // Positional arguments, then keyword arguments (a trailing kwargs map).
    let (positional, keywords) = match args.split_last() {
        Some((last, rest)) if last.is_kwargs() => (rest, Some(Kwargs::try_from(last.clone())?)),
        _ => (&args[..], None),
    };
    const NAMES: [&str; 4] = ["length", "killwords", "end", "leeway"];
    if positional.len() > NAMES.len() {
        return Err(JinjaError::new(
            ErrorKind::TooManyArguments,
            "truncate takes at most 4 arguments (length, killwords, end, leeway)",
        ));
    }
    let arg = |i: usize| -> Result<Option<Value>, JinjaError> {
        match (positional.get(i), &keywords) {
            (Some(v), _) => Ok(Some(v.clone())),
            (None, Some(k)) => k.get::<Option<Value>>(NAMES[i]),
            (None, None) => Ok(None),
        }
    };
    let length = arg(0)?.map(usize::try_from).transpose()?.unwrap_or(255);
    let killwords = arg(1)?.is_some_and(|v| v.is_true());
    let end = arg(2)?
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        })
        .unwrap_or_else(|| "...".into());
    let leeway = arg(3)?.map(usize::try_from).transpose()?.unwrap_or(5);
    if let Some(k) = &keywords {
        k.assert_all_used()?;
    }
    let end_len = end.chars().count();
    if length < end_len {
        return Err(JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("truncate: expected length >= {end_len}, got {length}"),
        ));
    }
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= length + leeway {
        return Ok(s);
    }
    let head: String = chars[..length - end_len].iter().collect();
    let kept = if killwords {
        head
    } else {
        match head.rsplit_once(' ') {
            Some((before, _)) => before.to_string(),
            None => head,
        }
    };
    Ok(kept + &end)
}

/// Jinja's `iterable` test as Python answers it: strings, lists, dicts and undefined values
/// are, none, numbers and booleans are not (minijinja says none is).
fn python_iterable(value: &Value) -> bool {
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Invalid => false,
        ValueKind::Undefined | ValueKind::String | ValueKind::Bytes => true,
        _ => value.try_iter().is_ok(),
    }
}

/// Python's methods on values (`minijinja-contrib`'s pycompat), with `str.isspace()` as Python
/// has it: false for the empty string.
fn python_methods(
    state: &minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, JinjaError> {
    if let ("isspace", [], Some(s)) = (method, args, value.as_str()) {
        return Ok(Value::from(
            !s.is_empty() && s.chars().all(char::is_whitespace),
        ));
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// `source` with `{% generation %}` and `{% endgeneration %}` made plain blocks (`{% if true %}`,
/// `{% endif %}`), whitespace control (`{%-`, `-%}`, `+`) kept.
fn without_generation_tags(source: &str) -> String {
    static TAG: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = TAG.get_or_init(|| {
        regex::Regex::new(r"\{%([-+]?)\s*(end)?generation\s*([-+]?)%\}").expect("valid regex")
    });
    re.replace_all(source, |c: &regex::Captures<'_>| {
        let body = if c.get(2).is_some() {
            "endif"
        } else {
            "if true"
        };
        format!("{{%{} {body} {}%}}", &c[1], &c[3])
    })
    .into_owned()
}

/// A Jinja error with its chain of causes, on one line.
fn describe_jinja_error(e: &JinjaError) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let _ = write!(s, ": {inner}");
        source = inner.source();
    }
    s
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// `raise_exception(msg)`: fail the render with `msg`, as `transformers`' helper does.
fn raise_exception(msg: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {msg}"),
    ))
}

/// `strftime_now(fmt)`: the local time formatted with a C `strftime` format.
fn strftime_now(format: String) -> Result<Value, JinjaError> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(Value::from(out))
}

/// `tojson` as `transformers` defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, JinjaError> {
    let indent = match indent.or(kwargs.get::<Option<Value>>("indent")?) {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(
            usize::try_from(v.clone())
                .map(|n| " ".repeat(n))
                .or_else(|_| v.as_str().map(str::to_string).ok_or(()))
                .map_err(|()| {
                    JinjaError::new(
                        ErrorKind::InvalidOperation,
                        format!("tojson: indent should be a number or a string, found {v}"),
                    )
                })?,
        ),
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let _ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(s) => {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                format!("tojson: separators should be a pair, found {s:?}"),
            ))
        }
        // Python's defaults: (", ", ": "), or ("," ": ") with an indent.
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let fmt = JsonFormat {
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    fmt.write(&mut out, value, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonFormat {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonFormat {
    fn newline(&self, out: &mut String, depth: usize) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    }

    fn write(&self, out: &mut String, v: &Value, depth: usize) -> Result<(), JinjaError> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            // minijinja prints numbers as Python does (1.0 stays 1.0).
            ValueKind::Number => {
                let _ = write!(out, "{v}");
            }
            ValueKind::String | ValueKind::Plain => write_json_string(out, &v.to_string()),
            ValueKind::Bytes => {
                write_json_string(out, &String::from_utf8_lossy(v.as_bytes().unwrap_or(&[])))
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.write_items(out, depth, '[', ']', &items, |s, out, item, d| {
                    s.write(out, item, d)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort_by_key(|k| k.to_string());
                }
                let mut pairs = Vec::with_capacity(keys.len());
                for k in keys {
                    let item = v.get_item(&k)?;
                    pairs.push((k, item));
                }
                self.write_items(out, depth, '{', '}', &pairs, |s, out, (k, item), d| {
                    write_json_string(out, &k.to_string());
                    out.push_str(&s.key_sep);
                    s.write(out, item, d)
                })?;
            }
            _ => write_json_string(out, &v.to_string()),
        }
        Ok(())
    }

    fn write_items<T>(
        &self,
        out: &mut String,
        depth: usize,
        open: char,
        close: char,
        items: &[T],
        each: impl Fn(&Self, &mut String, &T, usize) -> Result<(), JinjaError>,
    ) -> Result<(), JinjaError> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            self.newline(out, depth + 1);
            each(self, out, item, depth + 1)?;
        }
        self.newline(out, depth);
        out.push(close);
        Ok(())
    }
}

/// A JSON string as Python's `json.dumps(..., ensure_ascii=False)` writes it.
fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(src: &str) -> ChatTemplate {
        let special = [("bos_token", "<s>"), ("eos_token", "</s>")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ChatTemplate::new(src, "test template", special).unwrap()
    }

    /// As Python's Jinja renders it: `False|True|3|hello...` (`''.isspace()` is false there;
    /// pycompat said true).
    #[test]
    fn python_string_methods_and_filters() {
        let t = template(
            "{{ ''.isspace() }}|{{ ' '.isspace() }}|{{ 'a b c' | wordcount }}|\
             {{ 'hello world' | truncate(length=8, leeway=0) }}",
        );
        let out = t.render(&[], false).unwrap();
        assert_eq!(out, "False|True|3|hello...");
        // truncate with positional arguments, as Python's Jinja takes them.
        let t = template(
            "{{ 'the quick brown fox jumps' | truncate(18) }}|\
             {{ 'the quick brown fox jumps' | truncate(10, True) }}|\
             {{ 'the quick brown fox jumps' | truncate(12, False, '..') }}|\
             {{ 'the quick brown fox jumps' | truncate(12, False, '..', 0) }}|\
             {{ 'short' | truncate(3, leeway=5) }}",
        );
        assert_eq!(
            t.render(&[], false).unwrap(),
            "the quick...|the qui...|the quick..|the quick..|short"
        );
        // Values print as Python prints them, containers included, and none is not iterable.
        let t = template(
            "{{ true }}|{{ none }}|{{ messages[0].missing }}|{{ 1.5 }}|{{ [1, true, none, 'a'] }}|\
             {{ {'k': false, 'q': \"it's\"} }}|{{ 1e20 }}|{{ 0.0001 }}|{{ 1.25e-5 }}|{{ 3.0 }}|\
             {{ none is iterable }}|{{ 'a' is iterable }}|{{ [] is iterable }}|{{ 1 is iterable }}",
        );
        let out = t.render(&[Message::new("user", "q")], false).unwrap();
        assert_eq!(
            out,
            "True|None||1.5|[1, True, None, 'a']|{'k': False, 'q': \"it's\"}|1e+20|0.0001|\
             1.25e-05|3.0|False|True|True|False"
        );
    }

    #[test]
    fn tojson_uses_python_separators() {
        let t = template("{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}");
        let out = t
            .render(&[Message::new("user", "é \"q\"\n")], false)
            .unwrap();
        assert_eq!(
            out,
            "[{\"role\": \"user\", \"content\": \"é \\\"q\\\"\\n\"}]|{\n  \"role\": \"user\",\n  \
             \"content\": \"é \\\"q\\\"\\n\"\n}"
        );
        let t = template("{{ {'b': 1, 'a': [1.0, none, true]} | tojson(sort_keys=true) }}");
        assert_eq!(
            t.render(&[], false).unwrap(),
            "{\"a\": [1.0, null, true], \"b\": 1}"
        );
    }

    #[test]
    fn raise_exception_names_template_and_message() {
        let t =
            template("{% if messages|length == 0 %}{{ raise_exception('need turns') }}{% endif %}");
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(
            err.contains("test template") && err.contains("need turns"),
            "{err}"
        );
    }

    #[test]
    fn python_methods_and_blocks() {
        let t = template(
            "{% for m in messages %}\n  {% if m.role.startswith('us') %}\n{{ bos_token }}{{ m.content.strip() }}{% break %}\n  {% endif %}\n{% endfor %}",
        );
        assert_eq!(
            t.render(
                &[Message::new("user", "  hi "), Message::new("user", "x")],
                false
            )
            .unwrap(),
            "<s>hi"
        );
        let t = template("{{ strftime_now('%Y') | length }}");
        assert_eq!(t.render(&[], false).unwrap(), "4");
    }

    #[test]
    fn config_forms() {
        let v: serde_json::Value = serde_json::json!([
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"}
        ]);
        assert_eq!(template_text(&v, "x").unwrap(), "D");
        let v = serde_json::json!([{"name": "tool_use", "template": "T"}]);
        let err = template_text(&v, "x").unwrap_err().to_string();
        assert!(err.contains("tool_use") && err.contains("default"), "{err}");
        let cfg = serde_json::json!({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "pad_token": null});
        let sp = special_tokens_of(&cfg);
        assert_eq!(sp.get("bos_token").map(String::as_str), Some("<s>"));
        assert_eq!(sp.get("eos_token").map(String::as_str), Some("</s>"));
        assert!(!sp.contains_key("pad_token"));
    }

    #[test]
    fn generation_tags_render_their_body() {
        let t = template(
            "{% for m in messages %}{% if m.role == 'assistant' %}{%- generation -%} A:{{ m.content }} {%- endgeneration %}{% endif %}{% endfor %}",
        );
        let out = t
            .render(
                &[Message::new("user", "q"), Message::new("assistant", "x")],
                false,
            )
            .unwrap();
        assert_eq!(out, "A:x");
    }

    #[test]
    fn syntax_error_names_origin() {
        let err = ChatTemplate::new("{% if %}", "cfg.json (chat_template)", BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cfg.json (chat_template)"), "{err}");
    }
}
