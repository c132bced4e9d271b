//! `loraplus merge` of a sequence classifier, for every registered architecture: the tiny random
//! checkpoints and PEFT adapters (B != 0, heads in `modules_to_save`) that the models crate's
//! `tests/reference/fixtures.py` writes with transformers and PEFT are merged by the binary; the
//! merged folder loads in transformers as the architecture's `*ForSequenceClassification` and
//! gives PEFT's logits of the unmerged adapter, row by row (1e-4). Reference:
//! `tests/reference/merged_seq_cls_ref.py`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(p.exists(), "{} not found: run `make setup`", p.display());
    p
}

fn python_run(script: &Path, args: &[&Path]) -> String {
    let o = Command::new(python())
        .arg(script)
        .args(args)
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .expect("running python");
    assert!(
        o.status.success(),
        "{} failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn read(path: &Path, key: &str) -> Tensor {
    loraplus_core::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("{}: no {key}", path.display()))
        .1
}

/// The sequence-classification cases of the fixtures: (case, model_type, the GLUE task whose
/// head has the case's number of labels, transformers' class).
const CASES: &[(&str, &str, &str, &str)] = &[
    ("bert", "bert", "mnli", "BertForSequenceClassification"),
    (
        "roberta",
        "roberta",
        "sst2",
        "RobertaForSequenceClassification",
    ),
    ("gpt2", "gpt2", "stsb", "GPT2ForSequenceClassification"),
    ("llama", "llama", "mnli", "LlamaForSequenceClassification"),
    ("qwen2", "qwen2", "mnli", "Qwen2ForSequenceClassification"),
    ("qwen3", "qwen3", "mnli", "Qwen3ForSequenceClassification"),
    ("olmo2", "olmo2", "mnli", "Olmo2ForSequenceClassification"),
    ("olmo3", "olmo3", "mnli", "Olmo3ForSequenceClassification"),
    (
        "smollm3",
        "smollm3",
        "mnli",
        "SmolLM3ForSequenceClassification",
    ),
    (
        "mistral",
        "mistral",
        "sst2",
        "MistralForSequenceClassification",
    ),
    ("gemma", "gemma", "mnli", "GemmaForSequenceClassification"),
    (
        "gemma2",
        "gemma2",
        "mnli",
        "Gemma2ForSequenceClassification",
    ),
    (
        "gemma3",
        "gemma3_text",
        "mnli",
        "Gemma3TextForSequenceClassification",
    ),
    ("phi3", "phi3", "mnli", "Phi3ForSequenceClassification"),
    (
        "modernbert",
        "modernbert",
        "mnli",
        "ModernBertForSequenceClassification",
    ),
    (
        "deberta_v2",
        "deberta-v2",
        "mnli",
        "DebertaV2ForSequenceClassification",
    ),
    (
        "deberta_v2_reg",
        "deberta-v2",
        "stsb",
        "DebertaV2ForSequenceClassification",
    ),
];

#[test]
fn every_architecture_merges_into_a_classifier_transformers_loads_with_peft_logits() {
    // Every registered architecture has a case.
    let covered: BTreeSet<&str> = CASES.iter().map(|c| c.1).collect();
    let registered: BTreeSet<&str> = loraplus_models::supported_model_types()
        .iter()
        .copied()
        .collect();
    assert_eq!(covered, registered, "architectures without a merge case");

    let fixtures = tempfile::tempdir().unwrap();
    python_run(
        &repo().join("crates/models/tests/reference/fixtures.py"),
        &[fixtures.path()],
    );
    let out = tempfile::tempdir().unwrap();
    let mut py_args: Vec<PathBuf> = Vec::new();
    for (case, _, task, _) in CASES {
        let dir = fixtures.path().join(case);
        let merged = out.path().join(case);
        let o = Command::new(env!("CARGO_BIN_EXE_loraplus"))
            .env("LORAPLUS_LOG", "warn")
            .args(["merge", "--task", task, "--model"])
            .arg(dir.join("model"))
            .arg("--adapter")
            .arg(dir.join("adapter"))
            .arg("--output")
            .arg(&merged)
            .output()
            .expect("running loraplus");
        assert!(
            o.status.success(),
            "{case}: merge failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        py_args.extend([
            merged,
            dir.join("inputs.safetensors"),
            out.path().join(format!("{case}.safetensors")),
        ]);
    }
    let args: Vec<&Path> = py_args.iter().map(|p| p.as_path()).collect();
    let classes = python_run(
        &repo().join("crates/train/tests/reference/merged_seq_cls_ref.py"),
        &args,
    );
    let classes: Vec<&str> = classes.lines().collect();
    assert_eq!(classes.len(), CASES.len(), "{classes:?}");
    for ((case, _, _, class), loaded) in CASES.iter().zip(&classes) {
        assert_eq!(loaded, class, "{case}: transformers loaded another class");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join(case).join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["architectures"][0], *class, "{case}: config.json");
        let theirs = read(&out.path().join(format!("{case}.safetensors")), "logits");
        let peft = read(
            &fixtures.path().join(case).join("peft.safetensors"),
            "logits",
        );
        let plain = read(
            &fixtures.path().join(case).join("reference.safetensors"),
            "logits",
        );
        assert_eq!(theirs.size(), peft.size(), "{case}: logits shape");
        let mut worst = 0.0f64;
        for i in 0..peft.size()[0] {
            let (a, b) = (theirs.get(i), peft.get(i));
            let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
                .abs()
                .max()
                .double_value(&[]);
            assert!(
                d <= TOL,
                "{case}: row {i}: merged in transformers {:?} vs PEFT unmerged {:?} (|diff| {d:e})",
                Vec::<f32>::try_from(&a).unwrap(),
                Vec::<f32>::try_from(&b).unwrap()
            );
            worst = worst.max(d);
        }
        // The merge carries the adapter: the logits are not the plain model's.
        let moved = (&plain - &theirs).abs().max().double_value(&[]);
        assert!(
            moved > 100.0 * TOL,
            "{case}: the merged model is the plain one"
        );
        println!(
            "{case}: merged vs PEFT max |diff| {worst:.2e}, adapter moves logits by {moved:.2e}"
        );
    }
}
