//! Causal-LM data equals what `transformers` gives: one run of `reference/lm_ref.py` writes
//! tiny tokenizers (reference/tiny_tokenizer.py) with five chat templates (Llama-2 with a
//! system prompt and `raise_exception`, Zephyr, ChatML with a generation prompt, one with
//! `tojson` and Python string methods, one with a row's `tools`, `tool_calls` with null or
//! absent content, `tool` turns, `reasoning_content` and `chat_template_kwargs`), the data
//! files, and the expected values:
//! - chat templates: `apply_chat_template` text and token ids, with and without the generation
//!   prompt, and the `raise_exception` path (both sides fail, ours naming template and message);
//! - each format (text, prompt-completion, messages), truncated and packed: token ids, labels
//!   and position ids, value by value, and the skipped / truncated counts;
//! - batches of that data: labels padded with -100 on the tokenizer's padding side, position
//!   ids collated.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use loraplus_data::lm::{self, LmRecord};
use loraplus_data::{
    ChatExtras, ChatTemplate, DataLoader, Labels, LmOptions, LmTokenizer, LoaderConfig, Message,
    PaddingSide, Position, TooLong, IGNORE_INDEX,
};
use serde_json::Value;

struct Fixture {
    dir: PathBuf,
    reference: Value,
    /// Rows: messages with their tools and template variables.
    conversations: Vec<(Vec<Message>, ChatExtras)>,
}

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(p.exists(), "{} not found: run `make setup`", p.display());
    p
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // Under the target folder (removed by `cargo clean`), kept for the whole test binary.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/lm_ref.py");
        let run = Command::new(python())
            .arg(script)
            .arg(&dir)
            .output()
            .expect("running python");
        assert!(
            run.status.success(),
            "lm_ref.py failed:\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let read = |name: &str| -> Value {
            serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
        };
        let reference = read("ref.json");
        let conversations = read("conversations.json")
            .as_array()
            .unwrap()
            .iter()
            .map(|row| lm::parse_conversation(row.as_object().unwrap()).unwrap())
            .collect();
        Fixture {
            dir,
            reference,
            conversations,
        }
    })
}

fn tokenizer(model: &str) -> LmTokenizer {
    LmTokenizer::from_model_dir(&fixture().dir.join(model)).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn i64s(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn chat_templates_render_like_transformers() {
    let fx = fixture();
    let entries = fx.reference["chat"].as_array().unwrap();
    // Every template renders the rows without tools; only "tools" renders those with them.
    let with_tools = fx
        .conversations
        .iter()
        .filter(|(m, x)| {
            *x != ChatExtras::default()
                || m.iter().any(|m| {
                    m.role() == "tool"
                        || m.get("tool_calls").is_some()
                        || m.get("reasoning_content").is_some()
                        || m.get("content").is_some_and(Value::is_array)
                })
        })
        .count();
    assert_eq!(with_tools, 5);
    let plain = fx.conversations.len() - with_tools;
    assert_eq!(entries.len(), (5 * plain + with_tools) * 2);
    assert!(entries.iter().any(|e| e["template"] == "tools"));
    let mut errors = 0;
    for e in entries {
        let name = e["template"].as_str().unwrap();
        let tok = tokenizer(name);
        let template = tok.chat_template().expect("fixture has a template");
        let conv = &fx.conversations[e["conversation"].as_u64().unwrap() as usize];
        let gen = e["add_generation_prompt"].as_bool().unwrap();
        let case = format!(
            "{name}, conversation {}, generation prompt {gen}",
            e["conversation"]
        );
        let got = template.render_with(&conv.0, &conv.1, gen);
        if let Some(msg) = e["error"].as_str() {
            errors += 1;
            let err = format!("{:#}", got.expect_err(&case));
            assert!(err.contains(msg), "{case}: {err} should contain {msg:?}");
            assert!(
                err.contains(
                    &fx.dir
                        .join(name)
                        .join("tokenizer_config.json")
                        .display()
                        .to_string()
                ),
                "{case}: {err} should name the template"
            );
            continue;
        }
        let text = got.unwrap_or_else(|err| panic!("{case}: {err:#}"));
        assert_eq!(text, e["text"].as_str().unwrap(), "{case}: text");
        assert_eq!(
            tok.encode(&text, false).unwrap(),
            u32s(&e["ids"]),
            "{case}: ids"
        );
    }
    // The llama2 template refuses the conversation whose roles do not alternate.
    assert_eq!(errors, 2);
}

#[test]
fn tokenizer_config_is_read() {
    let tok = tokenizer("llama2");
    assert_eq!(tok.bos_token(), Some("<s>")); // written in the AddedToken dict form
    assert_eq!(tok.eos_token(), "</s>");
    assert_eq!(tok.bos_id(), Some(0));
    assert_eq!(tok.eos_id(), 1);
    assert_eq!(tok.pad_id(), 2);
    assert_eq!(tok.padding_side(), PaddingSide::Right);
    assert_eq!(tokenizer("chatml").padding_side(), PaddingSide::Left);
    // The post-processor adds BOS to plain text; the chat path does not add it again.
    assert_eq!(tok.encode("Paris", true).unwrap()[0], 0);
    assert_ne!(tok.encode("Paris", false).unwrap()[0], 0);
    let t = ChatTemplate::from_model_dir(&fixture().dir.join("zephyr")).unwrap();
    assert_eq!(t.special_tokens()["bos_token"], "<s>");
}

#[test]
fn tokenizer_without_pad_or_with_a_broken_template() {
    let src = fixture().dir.join("llama2");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(src.join("tokenizer_config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("pad_token");
    cfg["chat_template"] = Value::from("{% if %}");
    let cfg_path = dir.path().join("tokenizer_config.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    // No pad token: EOS pads (as TRL). A template that does not compile only fails messages.
    let tok = LmTokenizer::from_model_dir(dir.path()).unwrap();
    assert_eq!(tok.pad_id(), tok.eos_id());
    assert!(tok.chat_template().is_none());
    let rows = vec![lm::LmRow {
        line: 3,
        record: LmRecord::Messages {
            messages: vec![Message::new("user", "a")],
            extras: Default::default(),
        },
    }];
    let err = format!(
        "{:#}",
        lm::build_dataset(&rows, "m.jsonl", &tok, &LmOptions::default()).unwrap_err()
    );
    assert!(
        err.contains("m.jsonl: line 3") && err.contains(&cfg_path.display().to_string()),
        "{err}"
    );
    let text = vec![lm::LmRow {
        line: 1,
        record: LmRecord::Text("Paris".into()),
    }];
    assert!(lm::build_dataset(&text, "t.jsonl", &tok, &LmOptions::default()).is_ok());
    // chat_template.jinja takes precedence over the config's template.
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{{ messages[0].content }}!",
    )
    .unwrap();
    let tok = LmTokenizer::from_model_dir(dir.path()).unwrap();
    let t = tok.chat_template().unwrap();
    assert!(
        t.origin().ends_with("chat_template.jinja"),
        "{}",
        t.origin()
    );
    assert_eq!(
        t.render(&[Message::new("user", "hi")], false).unwrap(),
        "hi!"
    );
}

fn check_case(name: &str) {
    let fx = fixture();
    let want = &fx.reference["cases"][name];
    let tok = tokenizer(want["model"].as_str().unwrap());
    let opts = LmOptions {
        max_seq_len: want["max_seq_len"].as_u64().unwrap() as usize,
        packing: want["packing"].as_bool().unwrap(),
        assistant_only_loss: want["assistant_only_loss"].as_bool().unwrap(),
        ..LmOptions::default()
    };
    let path = fx.dir.join("data").join(want["data"].as_str().unwrap());
    let (ds, stats) =
        lm::load_jsonl(&path, &tok, &opts).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let rows = want["rows"].as_array().unwrap();
    assert_eq!(ds.len(), rows.len(), "{name}: rows");
    let Labels::Tokens(labels) = ds.labels() else {
        panic!("{name}: token labels expected");
    };
    for (i, w) in rows.iter().enumerate() {
        let ex = ds.get(i);
        assert_eq!(
            ex.input_ids,
            u32s(&w["input_ids"]),
            "{name}: input ids of row {i}"
        );
        assert_eq!(labels[i], i64s(&w["labels"]), "{name}: labels of row {i}");
        let want_pos = (!w["position_ids"].is_null()).then(|| u32s(&w["position_ids"]));
        assert_eq!(
            ex.position_ids.map(<[u32]>::to_vec),
            want_pos,
            "{name}: position ids of row {i}"
        );
        assert!(
            ex.input_ids.len() <= opts.max_seq_len,
            "{name}: row {i} too long"
        );
    }
    let skipped: Vec<usize> = want["skipped_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(stats.skipped_lines, skipped, "{name}: skipped lines");
    assert_eq!(stats.rows_skipped, skipped.len(), "{name}");
    assert_eq!(
        stats.rows_truncated,
        want["truncated"].as_u64().unwrap() as usize,
        "{name}: truncated"
    );
    assert_eq!(
        stats.examples,
        want["examples"].as_u64().unwrap() as usize,
        "{name}: examples"
    );
    assert_eq!(stats.rows, rows.len(), "{name}");
    assert_eq!(stats.tokens, ds.num_tokens(), "{name}");
    assert_eq!(stats.target_tokens, ds.num_target_tokens(), "{name}");
    assert!(stats.target_tokens > 0, "{name}");
}

#[test]
fn text_rows_match_reference() {
    check_case("text");
    check_case("text_short");
    check_case("text_packed");
}

#[test]
fn prompt_completion_rows_match_reference() {
    check_case("pc");
    check_case("pc_packed");
}

/// TRL's conversational prompt-completion, with and without assistant-only loss.
#[test]
fn conversational_prompt_completion_rows_match_reference() {
    check_case("chat_pc");
    check_case("chat_pc_all_turns");
    // Only the completion's assistant turns are located: a template that renders the prompt's
    // assistant turn otherwise (drops its reasoning) and one whose generation prompt opens the
    // reasoning train as TRL's completion mask says.
    check_case("chat_pc_rewriting");
    check_case("chat_pc_think_prompt");
}

#[test]
fn messages_rows_match_reference() {
    for case in [
        "messages_llama2",
        "messages_zephyr",
        "messages_chatml",
        "messages_chatml_short",
        "messages_chatml_packed",
        "messages_all_tokens",
    ] {
        check_case(case);
    }
}

#[test]
fn messages_labels_cover_assistant_content_only() {
    // A spot check of the rule itself, independent of the reference: decoded targets of the
    // ChatML rows hold the assistant answers and none of the user questions.
    let fx = fixture();
    let tok = tokenizer("chatml");
    let (ds, _) = lm::load_jsonl(
        &fx.dir.join("data/messages.jsonl"),
        &tok,
        &LmOptions::default(),
    )
    .unwrap();
    let Labels::Tokens(labels) = ds.labels() else {
        panic!("token labels expected")
    };
    let targets: Vec<u32> = labels[1]
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    let text = tok.tokenizer().decode(&targets, false).unwrap();
    // The template trims the content (" Five, of course. ").
    assert_eq!(text, "Four.<|im_end|>\nFive, of course.<|im_end|>\n");
}

/// A conversation without an assistant turn has no target token: skipped and counted like a
/// row truncated to nothing (it used to fail the whole file), refused with too_long = error.
#[test]
fn conversations_without_an_assistant_turn_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"messages": [{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "Four."}]}"#,
            "\n",
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}"#,
            "\n",
            r#"{"messages": [{"role": "system", "content": "Be brief."}]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "And three?"}, {"role": "assistant", "content": "Six."}]}"#,
            "\n",
        ),
    )
    .unwrap();
    let tok = tokenizer("chatml");
    let (ds, stats) = lm::load_jsonl(&path, &tok, &LmOptions::default()).unwrap();
    assert_eq!((stats.rows_read, stats.rows_skipped), (4, 2), "{stats:?}");
    assert_eq!(stats.skipped_lines, vec![2, 3]);
    assert_eq!(ds.len(), 2);
    let opts = LmOptions {
        too_long: TooLong::Error,
        ..LmOptions::default()
    };
    let err = format!("{:#}", lm::load_jsonl(&path, &tok, &opts).unwrap_err());
    assert!(
        err.contains("line 2") && err.contains("no assistant turn"),
        "{err}"
    );
    // A file where no row has one (a misspelt role) says so, with the roles it has.
    let typo = dir.path().join("typo.jsonl");
    std::fs::write(
        &typo,
        r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistent", "content": "Hello"}]}"#,
    )
    .unwrap();
    let err = format!(
        "{:#}",
        lm::load_jsonl(&typo, &tok, &LmOptions::default()).unwrap_err()
    );
    assert!(
        err.contains("1 of the 1 rows (first at line 1) have no assistant turn")
            && err.contains("roles found: assistent, user"),
        "{err}"
    );
    // Trained on every token, they have something to learn.
    let all = LmOptions {
        assistant_only_loss: false,
        ..LmOptions::default()
    };
    let (ds, _) = lm::load_jsonl(&typo, &tok, &all).unwrap();
    assert_eq!(ds.len(), 1);
}

/// `completion_only_loss = false` puts the loss on the prompt's tokens too (every token after
/// the first, as a text row).
#[test]
fn completion_only_loss_off_trains_the_prompt_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pc.jsonl");
    std::fs::write(
        &path,
        r#"{"prompt": "What is two plus two?", "completion": " Four."}"#,
    )
    .unwrap();
    let tok = tokenizer("llama2");
    let opts = |completion_only_loss| LmOptions {
        completion_only_loss,
        ..LmOptions::default()
    };
    let (only, _) = lm::load_jsonl(&path, &tok, &opts(true)).unwrap();
    let (all, _) = lm::load_jsonl(&path, &tok, &opts(false)).unwrap();
    let n = all.get(0).input_ids.len();
    assert_eq!(all.num_target_tokens(), n - 1);
    assert!(
        only.num_target_tokens() < n - 5,
        "{}",
        only.num_target_tokens()
    );
}

#[test]
fn nothing_to_learn_is_refused_on_request() {
    let fx = fixture();
    let tok = tokenizer("llama2");
    let opts = LmOptions {
        max_seq_len: 48,
        too_long: TooLong::Error,
        ..LmOptions::default()
    };
    let path = fx.dir.join("data/pc.jsonl");
    let err = format!("{:#}", lm::load_jsonl(&path, &tok, &opts).unwrap_err());
    assert!(
        err.contains(&format!("{}: line 5", path.display())) && err.contains("nothing to learn"),
        "{err}"
    );
    // The file's format is checked against a named one.
    let opts = LmOptions {
        format: Some(lm::LmFormat::Messages),
        ..LmOptions::default()
    };
    let err = format!("{:#}", lm::load_jsonl(&path, &tok, &opts).unwrap_err());
    assert!(
        err.contains("line 1") && err.contains("prompt-completion row"),
        "{err}"
    );
    // A messages row with a template that raises names the line and the template message.
    let rows = vec![lm::LmRow {
        line: 7,
        record: LmRecord::Messages {
            messages: vec![Message::new("user", "a"), Message::new("user", "b")],
            extras: Default::default(),
        },
    }];
    let err = format!(
        "{:#}",
        lm::build_dataset(&rows, "mem.jsonl", &tok, &LmOptions::default()).unwrap_err()
    );
    assert!(
        err.contains("mem.jsonl: line 7") && err.contains("must alternate"),
        "{err}"
    );
}

#[test]
fn lm_batches_pad_labels_and_positions() {
    let fx = fixture();
    for (model, side) in [
        ("llama2", PaddingSide::Right),
        ("chatml", PaddingSide::Left),
    ] {
        let tok = tokenizer(model);
        assert_eq!(tok.padding_side(), side);
        for packing in [false, true] {
            let opts = LmOptions {
                max_seq_len: 64,
                packing,
                ..LmOptions::default()
            };
            let (ds, _) = lm::load_jsonl(&fx.dir.join("data/text.jsonl"), &tok, &opts).unwrap();
            let ds = Arc::new(ds);
            let cfg = LoaderConfig {
                padding_side: tok.padding_side(),
                ..LoaderConfig::train(3, 5)
            };
            let loader = DataLoader::new(ds.clone(), tok.pad_id(), cfg).unwrap();
            let Labels::Tokens(labels) = ds.labels() else {
                panic!("token labels expected")
            };
            let batches: Vec<_> = loader.iter(Position::start_of(0)).unwrap().collect();
            assert_eq!(batches.len(), ds.len().div_ceil(3));
            for b in batches {
                let b = b.unwrap();
                let (rows, width) = b.input_ids.size2().unwrap();
                let ids = Vec::<i64>::try_from(b.input_ids.reshape([-1])).unwrap();
                let mask = Vec::<i64>::try_from(b.attention_mask.reshape([-1])).unwrap();
                let lab = Vec::<i64>::try_from(b.labels.as_ref().unwrap().reshape([-1])).unwrap();
                assert_eq!(b.labels.as_ref().unwrap().size(), vec![rows, width]);
                assert_eq!(b.position_ids.is_some(), packing);
                let pos = b
                    .position_ids
                    .as_ref()
                    .map(|p| Vec::<i64>::try_from(p.reshape([-1])).unwrap());
                for (r, &i) in b.indices.iter().enumerate() {
                    let ex = ds.get(i);
                    let n = ex.input_ids.len();
                    let w = width as usize;
                    let start = match side {
                        PaddingSide::Right => 0,
                        PaddingSide::Left => w - n,
                    };
                    let row = r * w..(r + 1) * w;
                    let real = r * w + start..r * w + start + n;
                    let want_ids: Vec<i64> = ex.input_ids.iter().map(|&x| i64::from(x)).collect();
                    assert_eq!(ids[real.clone()], want_ids[..]);
                    // The row's first token is never a target (the collator's rule); the rest
                    // are the example's labels.
                    assert_eq!(lab[real.start], IGNORE_INDEX);
                    assert_eq!(lab[real.start + 1..real.end], labels[i][1..]);
                    for k in row.clone().filter(|k| !real.contains(k)) {
                        assert_eq!(ids[k], i64::from(tok.pad_id()));
                        assert_eq!(lab[k], IGNORE_INDEX);
                        assert_eq!(mask[k], 0);
                        if let Some(p) = &pos {
                            assert_eq!(p[k], 0);
                        }
                    }
                    assert!(mask[real.clone()].iter().all(|&m| m == 1));
                    if let (Some(p), Some(want)) = (&pos, ex.position_ids) {
                        let want: Vec<i64> = want.iter().map(|&x| i64::from(x)).collect();
                        assert_eq!(p[real], want[..]);
                    }
                }
            }
        }
    }
}
