//! Causal-LM fine-tuning end to end with the `loraplus` binary, on tiny random Llama and GPT-2
//! (and Phi-3 and Gemma 2 for the PEFT and merge round trips) checkpoints written by transformers (with the test tokenizer and a ChatML template): each data
//! format trains; packing trains; an interrupted-and-resumed run equals an uninterrupted one
//! bitwise; the adapter loads in PEFT (`PeftModel.from_pretrained`, CAUSAL_LM) with the same
//! logits; `merge` writes a `*ForCausalLM` folder transformers loads with the same logits;
//! `generate` gives the same tokens merged or not, cached or not (on an int8 base too);
//! multiple-choice scoring equals a Python reference row by row; bad files fail with the file and
//! line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tch::{Device, Kind, Tensor};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(p.exists(), "{} not found: run `make setup`", p.display());
    p
}

fn reference(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/causal_lm_ref.py");
    let o = Command::new(python())
        .arg(&script)
        .args(args)
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .expect("running python");
    assert!(
        o.status.success(),
        "causal_lm_ref.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loraplus"))
        .env("LORAPLUS_LOG", "warn")
        .args(args)
        .output()
        .expect("running loraplus")
}

fn ok(args: &[&str]) -> String {
    let o = bin(args);
    assert!(
        o.status.success(),
        "loraplus {args:?} failed ({:?}):\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const TOPICS: [&str; 6] = [
    "the cat",
    "a small dog",
    "the red bird",
    "my old car",
    "the blue sea",
    "a tall tree",
];

/// A small text file in `dir` (written once).
fn jsonl_ok(dir: &tempfile::TempDir) -> PathBuf {
    let p = dir.path().join("ok.jsonl");
    if !p.exists() {
        write_jsonl(&p, &text_rows(4));
    }
    p
}

fn write_jsonl(path: &Path, rows: &[serde_json::Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn messages_rows(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            let t = TOPICS[i % TOPICS.len()];
            let mut msgs = vec![];
            if i % 2 == 0 {
                msgs.push(serde_json::json!({"role": "system", "content": "you answer in short words"}));
            }
            msgs.push(serde_json::json!({"role": "user", "content": format!("tell me about {t}")}));
            msgs.push(serde_json::json!({"role": "assistant", "content": format!("{t} is nice and it is here")}));
            if i % 3 == 0 {
                msgs.push(serde_json::json!({"role": "user", "content": "and then"}));
                msgs.push(serde_json::json!({"role": "assistant", "content": format!("then {t} went home")}));
            }
            serde_json::json!({ "messages": msgs })
        })
        .collect()
}

fn prompt_completion_rows(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            let t = TOPICS[i % TOPICS.len()];
            serde_json::json!({"prompt": format!("question: where is {t}?"), "completion": format!(" answer: {t} is at home")})
        })
        .collect()
}

fn text_rows(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| serde_json::json!({"text": format!("{} runs over the hill and {} sleeps", TOPICS[i % 6], TOPICS[(i + 1) % 6])}))
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        reference(&["fixture", s(&root)]);
        Fixture { _dir: dir, root }
    }
    fn model(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

fn train_args<'a>(model: &'a str, train: &'a str, eval: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--task",
        "causal-lm",
        "--model",
        model,
        "--train-file",
        train,
        "--eval-file",
        eval,
        "--output-dir",
        out,
        "--batch-size",
        "4",
        "--max-seq-len",
        "64",
        "--threads",
        "1",
        "--lr",
        "2e-3",
        "--no-progress",
    ]
}

fn eval_losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["kind"] == "eval").then(|| v["main"].as_f64().unwrap())
        })
        .collect()
}

fn adapter_tensors(dir: &Path) -> Vec<(String, Tensor)> {
    let mut v = loraplus_core::read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Our logits of `ids` (rows of one length) with the adapter in `adapter` (or none).
fn our_logits(model: &Path, adapter: Option<&Path>, ids: &[Vec<i64>]) -> Tensor {
    use loraplus_models::{Head, LoadOptions, TaskModel};
    let lora = adapter.map(|a| loraplus_core::read_adapter_config(a).unwrap());
    let opts = LoadOptions {
        task: Head::CausalLm,
        lora,
        ..LoadOptions::default()
    };
    let (m, l) = TaskModel::load(model, &opts).unwrap();
    if let Some(a) = adapter {
        l.load_adapter(a).unwrap();
    }
    let t = Tensor::from_slice2(ids);
    let mask = t.ones_like();
    tch::no_grad(|| m.forward_t(&t, &mask, None, false).unwrap())
}

fn read_logits(path: &Path) -> Tensor {
    loraplus_core::read_safetensors(path)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "logits")
        .unwrap()
        .1
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn sft_with_chat_data_trains_resumes_loads_in_peft_merges_and_generates() {
    let fx = Fixture::new();
    let llama = fx.model("llama");
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.jsonl");
    let dev = dir.path().join("dev.jsonl");
    write_jsonl(&train, &messages_rows(24));
    write_jsonl(&dev, &messages_rows(8));

    // Uninterrupted: 8 steps, checkpoint at 4, evaluations at 4 and 8.
    let full = dir.path().join("full");
    let mut a = train_args(s(&llama), s(&train), s(&dev), s(&full));
    a.extend([
        "--max-steps",
        "8",
        "--save-every",
        "4",
        "--eval-every",
        "4",
        "--packing",
    ]);
    let out = ok(&a);
    assert!(out.contains("eval_loss"), "{out}");
    let losses = eval_losses(&full);
    assert_eq!(losses.len(), 2, "{losses:?}");
    assert!(losses[1] < losses[0], "eval loss goes down: {losses:?}");
    // eval without --model takes the base the adapter records (not the default encoder), and
    // with the run's max_seq_len gives the run's last evaluation.
    let eval = |model: Option<&Path>| {
        let mut e = vec![
            "eval",
            "--task",
            "causal-lm",
            "--adapter",
            s(&full),
            "--eval-file",
            s(&dev),
            "--max-seq-len",
            "64",
        ];
        if let Some(m) = model {
            e.extend(["--model", s(m)]);
        }
        ok(&e)
    };
    let named = eval(Some(&llama));
    assert_eq!(eval(None), named);
    // The base alone (no --adapter): its loss, above the trained adapter's.
    let base = ok(&[
        "eval",
        "--task",
        "causal-lm",
        "--model",
        s(&llama),
        "--eval-file",
        s(&dev),
        "--max-seq-len",
        "64",
    ]);
    let loss_of = |out: &str| -> f64 {
        let at = out.find("eval_loss ").unwrap() + "eval_loss ".len();
        out[at..].split(',').next().unwrap().trim().parse().unwrap()
    };
    assert!(loss_of(&base) > loss_of(&named) + 0.01, "{base} vs {named}");
    // On another base: exit 2, pointing at the base the adapter records.
    let gemma2 = fx.model("gemma2");
    let o = bin(&[
        "eval",
        "--task",
        "causal-lm",
        "--adapter",
        s(&full),
        "--eval-file",
        s(&dev),
        "--model",
        s(&gemma2),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "the adapter records base model {}",
            llama.display()
        )),
        "{err}"
    );
    assert!(
        named.contains(&format!("eval_loss {:.4}", losses[1])),
        "{named} vs {losses:?}"
    );

    // Resumed from step 4 in a fresh process: the same adapter, bitwise. Naming the format the
    // checkpoint's run detected is the same setting.
    let resumed = dir.path().join("resumed");
    let ck = full.join("checkpoints/step-000004");
    let mut r = train_args(s(&llama), s(&train), s(&dev), s(&resumed));
    r.extend([
        "--max-steps",
        "8",
        "--save-every",
        "4",
        "--eval-every",
        "4",
        "--packing",
        "--format",
        "messages",
        "--resume",
        s(&ck),
    ]);
    ok(&r);
    let (x, y) = (
        adapter_tensors(&full.join("adapter")),
        adapter_tensors(&resumed.join("adapter")),
    );
    assert_eq!(x.len(), y.len());
    for ((n, t), (_, u)) in x.iter().zip(&y) {
        assert!(t.equal(u), "{n}: resumed run differs");
    }

    // PEFT loads the adapter (CAUSAL_LM) and computes the same logits.
    let adapter = full.join("adapter");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["task_type"], "CAUSAL_LM", "{cfg}");
    let ids: Vec<Vec<i64>> = vec![
        vec![1, 5, 9, 14, 30, 7, 22, 3],
        vec![1, 40, 41, 42, 43, 44, 45, 46],
    ];
    let ids_path = dir.path().join("ids.json");
    std::fs::write(&ids_path, serde_json::to_string(&ids).unwrap()).unwrap();
    let peft_out = dir.path().join("peft.safetensors");
    reference(&["logits", s(&llama), s(&adapter), s(&ids_path), s(&peft_out)]);
    let ours = our_logits(&llama, Some(&adapter), &ids);
    let d = max_diff(&ours, &read_logits(&peft_out));
    assert!(d < 1e-4, "PEFT logits differ by {d}");

    // merge: a LlamaForCausalLM folder with the same logits.
    let merged = dir.path().join("merged");
    ok(&[
        "merge",
        "--task",
        "causal-lm",
        "--model",
        s(&llama),
        "--adapter",
        s(&full),
        "--output",
        s(&merged),
    ]);
    let mcfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(mcfg["architectures"][0], "LlamaForCausalLM", "{mcfg}");
    // The tokenizer, chat template and generation defaults travel with the merged model.
    let mut carried = 0;
    for f in loraplus_models::hub::OPTIONAL_FILES {
        if llama.join(f).exists() {
            carried += 1;
            assert_eq!(
                std::fs::read(llama.join(f)).unwrap(),
                std::fs::read(merged.join(f)).unwrap_or_default(),
                "{f} not copied into the merged model"
            );
        }
    }
    assert!(carried >= 2, "the fixture has a tokenizer and its config");
    let merged_out = dir.path().join("merged.safetensors");
    reference(&["merged", s(&merged), s(&ids_path), s(&merged_out)]);
    let d = max_diff(&ours, &read_logits(&merged_out));
    assert!(d < 1e-4, "merged logits differ by {d}");

    // generate: merged or not, cached or not, the same greedy tokens.
    let gen = |extra: &[&str]| {
        let mut g = vec![
            "generate",
            "--model",
            s(&llama),
            "--adapter",
            s(&full),
            "--chat",
            "--prompt",
            "tell me about the cat",
            "--max-new-tokens",
            "12",
        ];
        g.extend_from_slice(extra);
        ok(&g)
    };
    let plain = gen(&[]);
    assert!(!plain.trim().is_empty());
    // generation_config.json's eos_token_id (where chat models list their end-of-turn
    // tokens) stops generation too: make the third generated token one.
    let tokens_with = |model: &Path, extra: &[&str]| -> Vec<i64> {
        let out = dir.path().join("gen.jsonl");
        let mut g = vec![
            "generate",
            "--model",
            s(model),
            "--adapter",
            s(&full),
            "--chat",
            "--prompt",
            "tell me about the cat",
            "--output",
            s(&out),
        ];
        g.extend_from_slice(extra);
        ok(&g);
        let row: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
        serde_json::from_value(row["tokens"].clone()).unwrap()
    };
    let tokens_of = |model: &Path| tokens_with(model, &["--max-new-tokens", "12"]);
    let all = tokens_of(&llama);
    assert_eq!(all.len(), 12, "{all:?}");
    // A prompt given as turns (TRL's conversational prompt), with --chat, is the same prompt.
    let turns = dir.path().join("turns.jsonl");
    std::fs::write(
        &turns,
        r#"{"prompt": [{"role": "user", "content": "tell me about the cat"}]}"#,
    )
    .unwrap();
    let out = dir.path().join("turns-out.jsonl");
    ok(&[
        "generate",
        "--model",
        s(&llama),
        "--adapter",
        s(&full),
        "--chat",
        "--input",
        s(&turns),
        "--max-new-tokens",
        "12",
        "--output",
        s(&out),
    ]);
    let row: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    assert_eq!(row["tokens"], serde_json::json!(all), "{row}");
    let stop = all[2];
    let first = all.iter().position(|&t| t == stop).unwrap();
    let with_gc = dir.path().join("llama-gc");
    std::fs::create_dir_all(&with_gc).unwrap();
    for e in std::fs::read_dir(&llama).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), with_gc.join(e.file_name())).unwrap();
        }
    }
    std::fs::write(
        with_gc.join("generation_config.json"),
        format!(
            "{{\"eos_token_id\": [{}, {stop}]}}",
            (3..).find(|t| !all.contains(t)).unwrap()
        ),
    )
    .unwrap();
    let stopped = tokens_of(&with_gc);
    assert!(
        all.starts_with(&stopped) && (first..=first + 1).contains(&stopped.len()),
        "stops at token {stop} (position {first}): {stopped:?} of {all:?}"
    );
    // The decoding settings of generation_config.json apply unless a flag says otherwise (as
    // in transformers' generate): a repetition penalty and max_new_tokens from the file equal
    // the same flags given.
    std::fs::write(
        with_gc.join("generation_config.json"),
        "{\"max_new_tokens\": 6, \"repetition_penalty\": 3.0, \"do_sample\": false}",
    )
    .unwrap();
    let from_file = tokens_with(&with_gc, &[]);
    let flags = tokens_with(
        &llama,
        &["--max-new-tokens", "6", "--repetition-penalty", "3"],
    );
    assert_eq!(from_file, flags);
    assert_eq!(from_file.len(), 6, "{from_file:?}");
    assert_ne!(from_file, all[..6], "the penalty changed nothing");
    assert_eq!(
        tokens_with(
            &with_gc,
            &["--repetition-penalty", "1", "--max-new-tokens", "12"]
        ),
        all,
        "flags override the file"
    );
    // max_length (prompt and new tokens), where the file has no max_new_tokens.
    let tok = loraplus_data::lm::LmTokenizer::from_model_dir(&llama).unwrap();
    let prompt = tok
        .chat_template()
        .unwrap()
        .render(
            &[loraplus_data::Message::new("user", "tell me about the cat")],
            true,
        )
        .unwrap();
    let prompt_len = tok.encode(&prompt, false).unwrap().len();
    std::fs::write(
        with_gc.join("generation_config.json"),
        format!("{{\"max_length\": {}}}", prompt_len + 5),
    )
    .unwrap();
    assert_eq!(
        tokens_with(&with_gc, &[]),
        all[..5],
        "max_length {}",
        prompt_len + 5
    );
    assert_eq!(plain, gen(&["--merge"]));
    assert_eq!(plain, gen(&["--no-cache"]));
    // On an int8 base: decoding one row a step (libtorch's int8 kernel), the whole sequence
    // without the cache (the dequantizing product) and the merged, dequantized base agree.
    let int8 = gen(&["--quantize", "int8"]);
    assert!(!int8.trim().is_empty());
    assert_eq!(int8, gen(&["--quantize", "int8", "--no-cache"]));
    assert_eq!(int8, gen(&["--quantize", "int8", "--merge"]));
    let sampled = gen(&[
        "--do-sample",
        "--seed",
        "7",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
    ]);
    assert_eq!(
        sampled,
        gen(&[
            "--do-sample",
            "--seed",
            "7",
            "--top-k",
            "20",
            "--top-p",
            "0.9"
        ])
    );
    // Several prompts: a seeded sample does not depend on how they are batched.
    let input = dir.path().join("prompts.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"tell me about the cat\"}\n{\"prompt\": \"the dog\"}\n{\"prompt\": \"a longer prompt about birds, trees and the sea\"}\n",
    )
    .unwrap();
    let batched = |n: &str| {
        ok(&[
            "generate",
            "--model",
            s(&llama),
            "--adapter",
            s(&full),
            "--input",
            s(&input),
            "--max-new-tokens",
            "8",
            "--do-sample",
            "--seed",
            "7",
            "--batch-size",
            n,
        ])
    };
    let one = batched("1");
    assert_eq!(one.lines().count(), 3, "{one}");
    assert_eq!(one, batched("2"));
    assert_eq!(one, batched("3"));
}

#[test]
fn each_format_trains_on_llama_and_gpt2() {
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    for (name, rows) in [
        ("text", text_rows(12)),
        ("prompt-completion", prompt_completion_rows(12)),
        ("messages", messages_rows(12)),
    ] {
        let path = dir.path().join(format!("{name}.jsonl"));
        write_jsonl(&path, &rows);
        for model in ["llama", "gpt2"] {
            let out = dir.path().join(format!("{model}-{name}"));
            let m = fx.model(model);
            let mut a = train_args(s(&m), s(&path), s(&path), s(&out));
            a.extend(["--max-steps", "4", "--format", name]);
            ok(&a);
            let losses = eval_losses(&out);
            assert_eq!(losses.len(), 1);
            assert!(losses[0].is_finite(), "{model} {name}: {losses:?}");
            // The adapter loads back and the merged export is the model's causal-LM class.
            let merged = dir.path().join(format!("merged-{model}-{name}"));
            ok(&[
                "merge",
                "--task",
                "causal-lm",
                "--model",
                s(&m),
                "--adapter",
                s(&out),
                "--output",
                s(&merged),
            ]);
            let mcfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap())
                    .unwrap();
            let want = if model == "gpt2" {
                "GPT2LMHeadModel"
            } else {
                "LlamaForCausalLM"
            };
            assert_eq!(mcfg["architectures"][0], want);
        }
    }
    // A tokenizer that pads on the left (for generation) does not shift GPT-2's learned
    // positions in training and evaluation batches: they pad on the right, as TRL's collator,
    // so an example's loss does not depend on the batch it is in.
    let left = dir.path().join("gpt2-left");
    std::fs::create_dir(&left).unwrap();
    for e in std::fs::read_dir(fx.model("gpt2")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), left.join(e.file_name())).unwrap();
    }
    let cfg_path = left.join("tokenizer_config.json");
    let mut tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    tc["padding_side"] = "left".into();
    std::fs::write(&cfg_path, tc.to_string()).unwrap();
    let text = dir.path().join("text.jsonl");
    let loss = |batch: &str| -> f64 {
        let out = ok(&[
            "eval",
            "--task",
            "causal-lm",
            "--model",
            s(&left),
            "--eval-file",
            s(&text),
            "--batch-size",
            batch,
        ]);
        let at = out.find("eval_loss ").unwrap() + "eval_loss ".len();
        out[at..].split(',').next().unwrap().trim().parse().unwrap()
    };
    let (one, four) = (loss("1"), loss("4"));
    assert!(
        (one - four).abs() <= 1e-4 * one.abs(),
        "gpt2, left-padding tokenizer: eval_loss {one} one by one, {four} in batches of 4"
    );
}

/// Phi-3 and Gemma 2, trained with their recommended LoRA targets (Phi-3: the fused
/// `qkv_proj`): the adapter loads in PEFT with our logits, and the merged export is their
/// `*ForCausalLM` class, which transformers loads with the same logits.
#[test]
fn phi3_and_gemma2_adapters_load_in_peft_and_merges_load_in_transformers() {
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.jsonl");
    write_jsonl(&train, &text_rows(12));
    let ids: Vec<Vec<i64>> = vec![(5..17).collect(), (20..32).rev().collect()];
    let ids_path = dir.path().join("ids.json");
    std::fs::write(&ids_path, serde_json::to_string(&ids).unwrap()).unwrap();
    // Gemma 2's head is tied to its embeddings: with LoRA on both, a merge must give the head
    // its own table (merging into the shared one changed both, silently).
    let tied = dir.path().join("tied.toml");
    std::fs::write(
        &tied,
        "[lora]\ntarget_modules = [\"q_proj\", \"v_proj\", \"embed_tokens\", \"lm_head\"]\n",
    )
    .unwrap();
    // The tied table in modules_to_save, under either name: it trains once here; PEFT must load
    // the same model (both names saved, ensure_weight_tying).
    let saved_head = dir.path().join("saved-head.toml");
    std::fs::write(&saved_head, "[lora]\nmodules_to_save = [\"lm_head\"]\n").unwrap();
    let saved_table = dir.path().join("saved-table.toml");
    std::fs::write(
        &saved_table,
        "[lora]\nmodules_to_save = [\"embed_tokens\"]\n",
    )
    .unwrap();
    for (model, class, targets, config) in [
        ("phi3", "Phi3ForCausalLM", vec!["qkv_proj"], None),
        (
            "gemma2",
            "Gemma2ForCausalLM",
            vec!["q_proj", "v_proj"],
            None,
        ),
        (
            "gemma2",
            "Gemma2ForCausalLM",
            vec!["q_proj", "v_proj", "embed_tokens", "lm_head"],
            Some(&tied),
        ),
        (
            "gemma2",
            "Gemma2ForCausalLM",
            vec!["q_proj", "v_proj"],
            Some(&saved_head),
        ),
        (
            "gemma2",
            "Gemma2ForCausalLM",
            vec!["q_proj", "v_proj"],
            Some(&saved_table),
        ),
    ] {
        let m = fx.model(model);
        let name = format!(
            "{model}{}",
            config.map_or(String::new(), |c| format!(
                "-{}",
                c.file_stem().unwrap().to_str().unwrap()
            ))
        );
        let out = dir.path().join(&name);
        let mut a = train_args(s(&m), s(&train), s(&train), s(&out));
        a.extend(["--max-steps", "4"]);
        if let Some(c) = config {
            a.extend(["--config", s(c)]);
        }
        ok(&a);
        let model = name.as_str();
        let adapter = out.join("adapter");
        let acfg = loraplus_core::read_adapter_config(&adapter).unwrap();
        let written: Vec<String> = match &acfg.target_modules {
            Some(loraplus_core::TargetModules::List(t)) => t.clone(),
            other => panic!("{model}: target_modules {other:?}"),
        };
        assert_eq!(written, targets, "{model}: recommended targets");
        let ours = our_logits(&m, Some(&adapter), &ids);
        let base = our_logits(&m, None, &ids);
        assert!(
            max_diff(&ours, &base) > 1e-4,
            "{model}: the trained adapter changes nothing"
        );
        let peft_out = dir.path().join(format!("{model}-peft.safetensors"));
        reference(&["logits", s(&m), s(&adapter), s(&ids_path), s(&peft_out)]);
        let d = max_diff(&ours, &read_logits(&peft_out));
        assert!(d < 1e-4, "{model}: PEFT logits differ by {d}");
        let merged = dir.path().join(format!("{model}-merged"));
        ok(&[
            "merge",
            "--task",
            "causal-lm",
            "--model",
            s(&m),
            "--adapter",
            s(&out),
            "--output",
            s(&merged),
        ]);
        let mcfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(mcfg["architectures"][0], class, "{mcfg}");
        let merged_out = dir.path().join(format!("{model}-merged.safetensors"));
        reference(&["merged", s(&merged), s(&ids_path), s(&merged_out)]);
        let dm = max_diff(&ours, &read_logits(&merged_out));
        assert!(dm < 1e-4, "{model}: merged logits differ by {dm}");
        if config.is_some_and(|c| *c != tied) {
            let saved = adapter_tensors(&adapter);
            let table = |k: &str| {
                saved
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, t)| t.shallow_clone())
                    .unwrap_or_else(|| panic!("{model}: no {k} in the adapter"))
            };
            let (head, emb) = (
                table("base_model.model.lm_head.weight"),
                table("base_model.model.model.embed_tokens.weight"),
            );
            assert_eq!(
                max_diff(&head, &emb),
                0.0,
                "{model}: one table under both names"
            );
            let written: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(written["ensure_weight_tying"], true, "{written}");
            // The merged model keeps the tie (the table trained, no update to split).
            assert_ne!(mcfg["tie_word_embeddings"], false, "{mcfg}");
        }
        if config == Some(&tied) {
            assert_eq!(mcfg["tie_word_embeddings"], false, "{mcfg}");
            // In memory too: generate --merge gives the unmerged tokens.
            let generate = |merge: bool| {
                let mut g = vec![
                    "generate",
                    "--model",
                    s(&m),
                    "--adapter",
                    s(&adapter),
                    "--prompt",
                    "hello there",
                    "--max-new-tokens",
                    "12",
                ];
                if merge {
                    g.push("--merge");
                }
                ok(&g)
            };
            assert_eq!(generate(true), generate(false), "{model}: generate --merge");
        }
        println!("{model}: PEFT max |diff| {d:.3e}, merged (transformers) {dm:.3e}");
    }
}

/// A decoder classifier (Llama, score head) evaluated on rows of different lengths: its logits
/// equal transformers + PEFT's, row by row. The fixture's tokenizer.json declares no padding and
/// its config's pad_token_id is 2, so batches must pad with 2 for the head to read each row's
/// last real token, as transformers does (padding with 0 read a padding position).
#[test]
fn llama_classifier_logits_equal_peft_on_padded_batches() {
    let fx = Fixture::new();
    let llama = fx.model("llama");
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<serde_json::Value> = (0..12)
        .map(|i| {
            let t = TOPICS[i % 6];
            let text = match i % 3 {
                0 => t.to_string(),
                1 => format!("{t} runs over the hill"),
                _ => format!(
                    "{t} sleeps under the tree and {} runs home",
                    TOPICS[(i + 1) % 6]
                ),
            };
            serde_json::json!({"text": text, "label": if i % 2 == 0 { "pos" } else { "neg" }})
        })
        .collect();
    let data = dir.path().join("rows.jsonl");
    write_jsonl(&data, &rows);
    let out = dir.path().join("run");
    ok(&[
        "train",
        "--task",
        "classification",
        "--model",
        s(&llama),
        "--train-file",
        s(&data),
        "--eval-file",
        s(&data),
        "--output-dir",
        s(&out),
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--lr",
        "1e-2",
        "--threads",
        "1",
        "--no-progress",
    ]);
    let preds = dir.path().join("ours.jsonl");
    ok(&[
        "eval",
        "--task",
        "classification",
        "--model",
        s(&llama),
        "--adapter",
        s(&out),
        "--eval-file",
        s(&data),
        "--predictions",
        s(&preds),
    ]);
    let theirs_path = dir.path().join("theirs.json");
    reference(&[
        "seqcls",
        s(&llama),
        s(&out.join("adapter")),
        s(&data),
        s(&theirs_path),
    ]);
    let theirs: Vec<Vec<f64>> =
        serde_json::from_str(&std::fs::read_to_string(&theirs_path).unwrap()).unwrap();
    let ours: Vec<serde_json::Value> = std::fs::read_to_string(&preds)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ours.len(), rows.len());
    assert_eq!(theirs.len(), rows.len());
    // Classes are numbered in sorted order ("neg", "pos"), as PEFT's label ids here.
    for (i, (row, t)) in ours.iter().zip(&theirs).enumerate() {
        let l: Vec<f64> = row["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(l.len(), 2, "row {i}");
        for (a, b) in l.iter().zip(t) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "row {i}: ours {l:?}, PEFT {t:?}"
            );
        }
    }
}

#[test]
fn multiple_choice_accuracy_equals_the_python_reference() {
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    // lm-eval-harness' corner cases too: a question ending in spaces (they move to the
    // continuation), an empty question (the prefix token is the context), choices whose
    // characters are not bytes (acc_norm divides by characters), a long question.
    let mut rows: Vec<serde_json::Value> = (0..8)
        .map(|i| {
            let t = TOPICS[i % 6];
            serde_json::json!({
                "question": format!("where is {t}?"),
                "choices": ["at home", "on the hill", format!("{t} is here"), "nowhere at all"],
                "answer": i % 4,
            })
        })
        .collect();
    rows.push(
        serde_json::json!({"question": "the sky is  ", "choices": ["blue", "green"], "answer": 0}),
    );
    rows.push(serde_json::json!({"question": "", "choices": ["blue sky", "grün"], "answer": 1}));
    rows.push(serde_json::json!({"question": "où est le café ?", "choices": ["ici", "là-bas, très loin"], "answer": 1}));
    rows.push(serde_json::json!({
        "question": TOPICS.iter().cycle().take(40).copied().collect::<Vec<_>>().join(" "),
        "choices": ["at home", "on the hill"],
        "answer": 0,
    }));
    let mc = dir.path().join("mc.jsonl");
    write_jsonl(&mc, &rows);
    // Gemma: lm-eval's HFLM encodes with BOS for that family.
    for (name, max_len) in [("llama", None), ("llama", Some("20")), ("gemma2", None)] {
        let model = fx.model(name);
        let ours = dir.path().join("ours.json");
        let mut args = vec![
            "eval",
            "--task",
            "multiple-choice",
            "--model",
            s(&model),
            "--eval-file",
            s(&mc),
            "--output",
            s(&ours),
        ];
        if let Some(m) = max_len {
            args.extend(["--max-seq-len", m]);
        }
        let out = ok(&args);
        assert!(out.contains("accuracy"), "{out}");
        let ref_out = dir.path().join("ref.json");
        let mut ref_args = vec!["mc", s(&model), "-", s(&mc), s(&ref_out)];
        ref_args.extend(max_len);
        reference(&ref_args);
        let reference: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&ref_out).unwrap()).unwrap();
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&ours).unwrap()).unwrap();
        let (mut correct, mut correct_norm) = (0, 0);
        let n = rows.len();
        assert_eq!(report["rows"].as_array().unwrap().len(), n);
        for (i, (r, want)) in report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&reference)
            .enumerate()
        {
            let f = |v: &serde_json::Value| -> Vec<f64> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect()
            };
            let (got, want_lp) = (f(&r["logprobs"]), f(&want["logprobs"]));
            assert_eq!(got.len(), want_lp.len());
            for (c, (g, w)) in got.iter().zip(&want_lp).enumerate() {
                assert!(
                    (g - w).abs() < 1e-4,
                    "{name} max_len {max_len:?} row {i} choice {c}: {g} vs {w}"
                );
            }
            let pred = want_lp
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |b, (j, &v)| if v > b.1 { (j, v) } else { b },
                )
                .0;
            assert_eq!(r["prediction"].as_u64().unwrap() as usize, pred, "row {i}");
            assert_eq!(r["prediction_norm"], want["pred_norm"], "row {i}");
            let answer = rows[i]["answer"].as_u64().unwrap() as usize;
            correct += usize::from(pred == answer);
            correct_norm += usize::from(want["pred_norm"].as_u64().unwrap() as usize == answer);
        }
        let acc = report["accuracy"].as_f64().unwrap();
        assert!((acc - correct as f64 / n as f64).abs() < 1e-12, "{acc}");
        let acc_norm = report["accuracy_norm"].as_f64().unwrap();
        assert!(
            (acc_norm - correct_norm as f64 / n as f64).abs() < 1e-12,
            "{acc_norm}"
        );
    }
}

#[test]
fn bad_causal_lm_files_fail_with_the_file_and_line() {
    let fx = Fixture::new();
    let llama = fx.model("llama");
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 4] = [
        ("missing.jsonl", "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\"}\n", "line 2"),
        ("type.jsonl", "{\"text\": \"a b c\"}\n{\"text\": 5}\n", "line 2"),
        ("empty.jsonl", "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\", \"completion\": \"\"}\n", "line 2"),
        ("utf8.jsonl", "{\"text\": \"a b c\"}\n{\"text\": \"\u{0}\"}\n", ""),
    ];
    for (name, text, needle) in cases {
        let path = dir.path().join(name);
        if name == "utf8.jsonl" {
            std::fs::write(&path, b"{\"text\": \"a b c\"}\n{\"text\": \"\xff\"}\n").unwrap();
        } else {
            std::fs::write(&path, text).unwrap();
        }
        let out = dir.path().join(format!("out-{name}"));
        let mut a = train_args(s(&llama), s(&path), s(&path), s(&out));
        a.extend(["--max-steps", "1"]);
        let o = bin(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{name}: should fail");
        assert!(err.contains(name), "{name}: {err}");
        let needle = if needle.is_empty() { "line 2" } else { needle };
        assert!(err.contains(needle), "{name}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // CSV given to causal-lm: the JSON error says what the format is.
    let csv = dir.path().join("data.csv");
    std::fs::write(&csv, "text,label\nhello there,1\n").unwrap();
    let out = dir.path().join("out-csv");
    let mut a = train_args(s(&llama), s(&csv), s(&csv), s(&out));
    a.extend(["--max-steps", "1"]);
    let o = bin(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("data.csv: line 1: not valid JSON")
            && err.contains("causal-LM data is JSON Lines"),
        "{err}"
    );
    // Conversations without an assistant turn (a misspelt role): exit 2 saying so; trained on
    // every token (--assistant-only-loss false) they train. The setting is causal-lm's only.
    let typo = dir.path().join("typo.jsonl");
    let row = serde_json::json!({"messages": [
        {"role": "user", "content": "the cat sat"}, {"role": "assistent", "content": "on the mat"}]});
    write_jsonl(&typo, &[row.clone(), row]);
    let out_typo = dir.path().join("out-typo");
    let mut a = train_args(s(&llama), s(&typo), s(&typo), s(&out_typo));
    a.extend(["--max-steps", "1"]);
    let o = bin(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("have no assistant turn") && err.contains("roles found: assistent, user"),
        "{err}"
    );
    a.extend(["--assistant-only-loss", "false"]);
    ok(&a);
    let o = bin(&[
        "train",
        "--task",
        "sst2",
        "--assistant-only-loss",
        "false",
        "--max-steps",
        "1",
        "--output-dir",
        s(&dir.path().join("out-sst2")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`assistant_only_loss` is for task = \"causal-lm\""),
        "{err}"
    );
    // LoRA on a tied lm_head whose table is also in modules_to_save (tied, as loraplus trains
    // it): the head would be trained both ways, and PEFT cannot load such an adapter. Exit 2.
    let gemma2 = fx.model("gemma2");
    let both = dir.path().join("both.toml");
    std::fs::write(
        &both,
        "[lora]\ntarget_modules = [\"q_proj\", \"lm_head\"]\nmodules_to_save = [\"embed_tokens\"]\n",
    )
    .unwrap();
    let (ok_file, out_both) = (jsonl_ok(&dir), dir.path().join("out-both"));
    let mut a = train_args(s(&gemma2), s(&ok_file), s(&ok_file), s(&out_both));
    a.extend(["--config", s(&both), "--max-steps", "1"]);
    let o = bin(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("lm_head is a LoRA target, and the table it is tied to (model.embed_tokens)"),
        "{err}"
    );
    // An encoder given to causal-lm: exit 2 naming the model type, before the data is read.
    let minilm = repo().join(".venv/minilm");
    let jsonl = dir.path().join("text.jsonl");
    write_jsonl(&jsonl, &text_rows(4));
    let mut a = train_args(s(&minilm), s(&jsonl), s(&jsonl), s(&out));
    a.extend(["--max-steps", "1"]);
    let o = bin(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("is bert (an encoder)"), "{err}");
    let o = bin(&["generate", "--model", s(&minilm), "--prompt", "hi"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("is bert (an encoder)"), "{err}");
    // A prompt longer than GPT-2's 256 learned positions, or too long for max_new_tokens after
    // it: exit 2 naming the prompt's line, before anything is generated.
    let gpt2 = fx.model("gpt2");
    let prompts = dir.path().join("prompts.jsonl");
    let long = |words: usize| serde_json::json!({"prompt": "a b ".repeat(words / 2)}).to_string();
    for (rows, needle) in [
        (
            format!("{}\n\n{}\n", long(4), long(300)),
            "prompts.jsonl: line 3: a prompt has",
        ),
        (
            format!("{}\n{}\n", long(250), long(4)),
            "prompts.jsonl: line 1: a prompt of",
        ),
    ] {
        std::fs::write(&prompts, rows).unwrap();
        let o = bin(&[
            "generate",
            "--model",
            s(&gpt2),
            "--input",
            s(&prompts),
            "--max-new-tokens",
            "20",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains(needle) && err.contains("256") && !err.contains("panicked"),
            "{needle}: {err}"
        );
    }
    let _ = Device::Cpu;
}
