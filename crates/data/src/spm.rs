//! DeBERTa-v2/v3 tokenizers from `spm.model`: the Hub's `microsoft/deberta-v3-*` folders ship a
//! SentencePiece model, `tokenizer_config.json`, `special_tokens_map.json` and
//! `added_tokens.json`, but no `tokenizer.json`. [`deberta_tokenizer_json`] builds the
//! `tokenizer.json` that transformers' `DebertaV2Tokenizer` builds from the same files (Unigram
//! over the model's pieces and scores; lowercase if `do_lower_case`; runs of whitespace, tabs and
//! newlines to one space; NFC; strip on the right; punctuation isolated if `split_by_punct`;
//! Metaspace with a prefix space; `[CLS] A [SEP] (B [SEP])` with type ids 0 then 1; control and
//! unknown pieces and the added tokens as special tokens), so the ids are the Python ones
//! (`tests/spm_tokenizer.rs` checks it row by row).
//!
//! The model file is read with `prost` (SentencePiece's `ModelProto`, the fields used here).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use prost::Message;
use serde_json::{json, Value};

/// The SentencePiece model file of DeBERTa-v2/v3 checkpoints.
pub const SPM_FILE: &str = "spm.model";

/// `sentencepiece.ModelProto`: the pieces and the trainer settings.
#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<Piece>,
    #[prost(message, optional, tag = "2")]
    trainer_spec: Option<TrainerSpec>,
}

/// `ModelProto.SentencePiece`.
#[derive(Clone, PartialEq, Message)]
struct Piece {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
    /// NORMAL 1 (the default), UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6.
    #[prost(int32, optional, tag = "3")]
    kind: Option<i32>,
}

/// `sentencepiece.TrainerSpec`, the fields read here.
#[derive(Clone, PartialEq, Message)]
struct TrainerSpec {
    /// UNIGRAM 1 (the default), BPE 2, WORD 3, CHAR 4.
    #[prost(int32, optional, tag = "3")]
    model_type: Option<i32>,
    #[prost(int32, optional, tag = "40")]
    unk_id: Option<i32>,
}

const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNIGRAM: i32 = 1;

/// The vocabulary of an `spm.model`: `(piece, score, type)` in id order, the unknown piece's id.
struct SpmModel {
    pieces: Vec<(String, f64, i32)>,
    unk_id: usize,
}

fn read_model(path: &Path) -> Result<SpmModel> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let proto = ModelProto::decode(bytes.as_slice()).map_err(|e| {
        anyhow!(
            "{}: not a SentencePiece model (ModelProto): {e}",
            path.display()
        )
    })?;
    let spec = proto.trainer_spec.unwrap_or_default();
    let model_type = spec.model_type.unwrap_or(UNIGRAM);
    if model_type != UNIGRAM {
        let name = match model_type {
            2 => "BPE",
            3 => "WORD",
            4 => "CHAR",
            _ => "unknown",
        };
        bail!(
            "{}: a SentencePiece {name} model (model_type {model_type}); only Unigram models \
             (DeBERTa-v2/v3) are read here: give the folder a tokenizer.json (transformers' \
             `tokenizer.save_pretrained` writes one)",
            path.display()
        );
    }
    if proto.pieces.is_empty() {
        bail!("{}: the SentencePiece model has no pieces", path.display());
    }
    let pieces: Vec<(String, f64, i32)> = proto
        .pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let piece = p
                .piece
                .ok_or_else(|| anyhow!("{}: piece {i} has no text", path.display()))?;
            Ok((
                piece,
                f64::from(p.score.unwrap_or(0.0)),
                p.kind.unwrap_or(1),
            ))
        })
        .collect::<Result<_>>()?;
    let unk_id = usize::try_from(spec.unk_id.unwrap_or(0))
        .ok()
        .filter(|&i| i < pieces.len())
        .ok_or_else(|| {
            anyhow!(
                "{}: unk_id {:?} is not a piece id (0..{})",
                path.display(),
                spec.unk_id,
                pieces.len()
            )
        })?;
    Ok(SpmModel { pieces, unk_id })
}

/// A JSON file of the folder, or an empty object when it is absent.
fn read_json(dir: &Path, name: &str) -> Result<serde_json::Map<String, Value>> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(Default::default());
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    match serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))? {
        Value::Object(m) => Ok(m),
        other => bail!(
            "{}: expected a JSON object, found {}",
            path.display(),
            kind_of(&other)
        ),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A special token's text: a string, or an AddedToken object's `content`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn flag(
    cfg: &serde_json::Map<String, Value>,
    key: &str,
    default: bool,
    file: &Path,
) -> Result<bool> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => bail!(
            "{}: {key} must be true or false, found {}",
            file.display(),
            kind_of(other)
        ),
    }
}

/// `tokenizer.json` bytes for the DeBERTa-v2/v3 folder `dir` (see the module doc).
pub fn deberta_tokenizer_json(dir: &Path) -> Result<Vec<u8>> {
    let model = read_model(&dir.join(SPM_FILE))?;
    let config_path = dir.join("tokenizer_config.json");
    let config = read_json(dir, "tokenizer_config.json")?;
    let special_map = read_json(dir, "special_tokens_map.json")?;
    let do_lower_case = flag(&config, "do_lower_case", false, &config_path)?;
    let split_by_punct = flag(&config, "split_by_punct", false, &config_path)?;
    let add_prefix_space = flag(&config, "add_prefix_space", true, &config_path)?;
    // Special tokens: the config's, else special_tokens_map.json's, else DeBERTa's defaults.
    let special = |key: &str, default: &str| -> String {
        config
            .get(key)
            .and_then(token_text)
            .or_else(|| special_map.get(key).and_then(token_text))
            .unwrap_or_else(|| default.to_string())
    };
    let cls = special("cls_token", "[CLS]");
    let sep = special("sep_token", "[SEP]");
    let unk = special("unk_token", "[UNK]");
    let specials = [
        cls.clone(),
        sep.clone(),
        unk.clone(),
        special("pad_token", "[PAD]"),
        special("mask_token", "[MASK]"),
        special("bos_token", "[CLS]"),
        special("eos_token", "[SEP]"),
    ];

    // The unknown piece: the unk token with score 0 (as transformers looks it up), else the
    // trainer's unk_id.
    let unk_id = model
        .pieces
        .iter()
        .position(|(p, s, _)| *p == unk && *s == 0.0)
        .unwrap_or(model.unk_id);

    // Added tokens: control and unknown pieces (special), user-defined pieces, then the tokens
    // of added_tokens.json and tokenizer_config.json's added_tokens_decoder.
    let mut added: std::collections::BTreeMap<u64, (String, bool)> = Default::default();
    for (i, (piece, _, kind)) in model.pieces.iter().enumerate() {
        match *kind {
            UNKNOWN | CONTROL => {
                added.insert(i as u64, (piece.clone(), true));
            }
            USER_DEFINED => {
                added.insert(i as u64, (piece.clone(), specials.contains(piece)));
            }
            _ => {}
        }
    }
    let added_path = dir.join("added_tokens.json");
    for (text, id) in read_json(dir, "added_tokens.json")? {
        let id = id.as_u64().ok_or_else(|| {
            anyhow!(
                "{}: the id of {text:?} must be a non-negative integer, found {}",
                added_path.display(),
                kind_of(&id)
            )
        })?;
        let is_special = specials.contains(&text);
        added.insert(id, (text, is_special));
    }
    if let Some(decoder) = config.get("added_tokens_decoder") {
        let Value::Object(decoder) = decoder else {
            bail!(
                "{}: added_tokens_decoder must be an object, found {}",
                config_path.display(),
                kind_of(decoder)
            );
        };
        for (id, tok) in decoder {
            let id: u64 = id.parse().map_err(|_| {
                anyhow!(
                    "{}: added_tokens_decoder key {id:?} is not a token id",
                    config_path.display()
                )
            })?;
            let text = token_text(tok).ok_or_else(|| {
                anyhow!(
                    "{}: added_tokens_decoder[{id}] has no content",
                    config_path.display()
                )
            })?;
            let is_special = tok
                .get("special")
                .and_then(Value::as_bool)
                .unwrap_or_else(|| specials.contains(&text));
            added.insert(id, (text, is_special));
        }
    }
    let n = model.pieces.len() as u64;
    if let Some((&id, (text, _))) = added
        .iter()
        .find(|(&id, (text, _))| id < n && model.pieces[id as usize].0 != *text)
    {
        bail!(
            "{}: added token {text:?} has id {id}, which is the piece {:?} of {SPM_FILE}",
            dir.display(),
            model.pieces[id as usize].0
        );
    }
    // Ids past the model's pieces must follow it without gaps (tokenizers appends them in order).
    for (expected, (&id, (text, _))) in (n..).zip(added.range(n..)) {
        if id != expected {
            bail!(
                "{}: added token {text:?} has id {id}, but the next free id is {expected}",
                dir.display()
            );
        }
    }
    let id_of = |token: &str| -> Result<u64> {
        added
            .iter()
            .find(|(_, (t, _))| t == token)
            .map(|(&id, _)| id)
            .or_else(|| {
                model
                    .pieces
                    .iter()
                    .position(|(p, _, _)| p == token)
                    .map(|i| i as u64)
            })
            .ok_or_else(|| {
                anyhow!(
                    "{}: the special token {token:?} is neither a piece of {SPM_FILE} nor an added token",
                    dir.display()
                )
            })
    };
    let (cls_id, sep_id) = (id_of(&cls)?, id_of(&sep)?);

    let mut normalizers = Vec::new();
    if do_lower_case {
        normalizers.push(json!({"type": "Lowercase"}));
    }
    normalizers.push(
        json!({"type": "Replace", "pattern": {"Regex": "\\s{2,}|[\\n\\r\\t]"}, "content": " "}),
    );
    normalizers.push(json!({"type": "NFC"}));
    normalizers.push(json!({"type": "Strip", "strip_left": false, "strip_right": true}));
    let prepend_scheme = if add_prefix_space { "always" } else { "first" };
    let metaspace = json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": prepend_scheme, "split": true});
    let mut pre = Vec::new();
    if split_by_punct {
        pre.push(json!({"type": "Punctuation", "behavior": "Isolated"}));
    }
    pre.push(metaspace.clone());
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added.iter().map(|(id, (text, special))| json!({
            "id": id, "content": text, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special,
        })).collect::<Vec<_>>(),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": cls, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": sep, "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": cls, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": sep, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": sep, "type_id": 1}},
            ],
            "special_tokens": {
                cls.clone(): {"id": cls, "ids": [cls_id], "tokens": [cls]},
                sep.clone(): {"id": sep, "ids": [sep_id], "tokens": [sep]},
            },
        },
        "decoder": metaspace,
        "model": {
            "type": "Unigram",
            "unk_id": unk_id,
            "vocab": model.pieces.iter().map(|(p, s, _)| json!([p, s])).collect::<Vec<_>>(),
            "byte_fallback": false,
        },
    });
    Ok(serde_json::to_vec(&tokenizer)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_bytes(pieces: &[(&str, f32, i32)], model_type: Option<i32>, unk_id: i32) -> Vec<u8> {
        ModelProto {
            pieces: pieces
                .iter()
                .map(|(p, s, k)| Piece {
                    piece: Some(p.to_string()),
                    score: Some(*s),
                    kind: Some(*k),
                })
                .collect(),
            trainer_spec: Some(TrainerSpec {
                model_type,
                unk_id: Some(unk_id),
            }),
        }
        .encode_to_vec()
    }

    const PIECES: &[(&str, f32, i32)] = &[
        ("[PAD]", 0.0, CONTROL),
        ("[CLS]", 0.0, CONTROL),
        ("[SEP]", 0.0, CONTROL),
        ("[UNK]", 0.0, UNKNOWN),
        ("\u{2581}a", -1.0, 1),
        ("\u{2581}", -2.0, 1),
        ("b", -3.0, 1),
        ("a", -3.5, 1),
    ];

    #[test]
    fn a_small_model_tokenizes_with_cls_sep_and_added_mask() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SPM_FILE), model_bytes(PIECES, None, 3)).unwrap();
        std::fs::write(dir.path().join("added_tokens.json"), r#"{"[MASK]": 8}"#).unwrap();
        let bytes = deberta_tokenizer_json(dir.path()).unwrap();
        let tok = tokenizers::Tokenizer::from_bytes(&bytes).unwrap();
        let e = tok.encode(("a ab", "b [MASK]"), true).unwrap();
        // [CLS] ▁a ▁a b [SEP] ▁ b [MASK] [SEP]: type ids 0 then 1; an unknown character is [UNK].
        assert_eq!(e.get_ids(), [1, 4, 4, 6, 2, 5, 6, 8, 2]);
        assert_eq!(e.get_type_ids(), [0, 0, 0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(tok.encode("z", true).unwrap().get_ids(), [1, 5, 3, 2]);
    }

    #[test]
    fn bad_models_and_configs_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let spm = dir.path().join(SPM_FILE);
        std::fs::write(&spm, b"\xff\xff\xff not a proto").unwrap();
        let e = format!("{:#}", deberta_tokenizer_json(dir.path()).unwrap_err());
        assert!(e.contains("not a SentencePiece model"), "{e}");
        std::fs::write(&spm, model_bytes(PIECES, Some(2), 3)).unwrap();
        let e = format!("{:#}", deberta_tokenizer_json(dir.path()).unwrap_err());
        assert!(
            e.contains("a SentencePiece BPE model") && e.contains("tokenizer.json"),
            "{e}"
        );
        std::fs::write(&spm, model_bytes(PIECES, None, 99)).unwrap();
        let e = format!("{:#}", deberta_tokenizer_json(dir.path()).unwrap_err());
        assert!(e.contains("unk_id Some(99) is not a piece id"), "{e}");
        std::fs::write(&spm, model_bytes(PIECES, None, 3)).unwrap();
        std::fs::write(dir.path().join("added_tokens.json"), r#"{"[MASK]": 10}"#).unwrap();
        let e = format!("{:#}", deberta_tokenizer_json(dir.path()).unwrap_err());
        assert!(
            e.contains("\"[MASK]\" has id 10, but the next free id is 8"),
            "{e}"
        );
        std::fs::write(dir.path().join("added_tokens.json"), r#"{"[MASK]": 8}"#).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"do_lower_case": "yes"}"#,
        )
        .unwrap();
        let e = format!("{:#}", deberta_tokenizer_json(dir.path()).unwrap_err());
        assert!(
            e.contains("do_lower_case must be true or false, found a string"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"cls_token": "<s>"}"#,
        )
        .unwrap();
        let e = format!("{:#}", deberta_tokenizer_json(dir.path()).unwrap_err());
        assert!(e.contains("special token \"<s>\" is neither"), "{e}");
    }
}
