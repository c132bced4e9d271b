//! Adapters written by PEFT with its sequence-classification defaults load here and give PEFT's
//! predictions: `get_peft_model(model, LoraConfig(task_type="SEQ_CLS", target_modules=...))`
//! lists both `classifier` and `score` in `modules_to_save` (an entry that matches nothing is
//! ignored, by PEFT and by loraplus). BERT is the real MiniLM; RoBERTa, GPT-2 and Llama are tiny
//! random classifiers; the inputs are real SST-2 dev sentences (`$GLUE_DIR`, default
//! `../shared/glue`) tokenized by MiniLM's tokenizer. Logits are compared row by row. The
//! reference is `reference/peft_seq_cls.py`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{read, run_reference};
use loraplus_core::read_adapter_config;
use loraplus_models::{find_default_model_dir, Head, LoadOptions, TaskModel};
use tch::{Kind, Tensor};

/// SST-2 dev sentences in the batch.
const SENTENCES: &str = "24";
/// Largest difference allowed between a row of logits here and PEFT's.
const TOL: f64 = 1e-5;

fn glue_dir() -> PathBuf {
    match std::env::var_os("GLUE_DIR") {
        Some(d) => PathBuf::from(d),
        None => common::manifest_dir().join("../../../shared/glue"),
    }
}

fn minilm_dir() -> PathBuf {
    find_default_model_dir().unwrap_or_else(|e| panic!("{e:#}"))
}

fn reference() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let tsv = glue_dir().join("SST-2/dev.tsv");
        assert!(tsv.is_file(), "{} not found (set GLUE_DIR)", tsv.display());
        run_reference(
            "peft_seq_cls.py",
            &[&minilm_dir(), &tsv, Path::new(SENTENCES), dir.path()],
        );
        dir
    })
    .path()
}

/// Load `case`'s model with the adapter PEFT wrote, and compare its logits with PEFT's.
fn check(case: &str, expected_saved: &[&str]) {
    let root = reference();
    let mut inputs = read(&root.join("inputs.safetensors"));
    let ids = inputs.remove("input_ids").unwrap();
    let mask = inputs.remove("attention_mask").unwrap();
    let token_types = inputs.remove("token_type_ids").unwrap();
    let adapter = root.join(case).join("adapter");
    let cfg = read_adapter_config(&adapter).unwrap_or_else(|e| panic!("{e:#}"));
    // PEFT's SEQ_CLS default: both names, whatever the architecture has.
    let saved: Vec<&str> = cfg
        .modules_to_save
        .iter()
        .flatten()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(saved, expected_saved, "{case}: modules_to_save");
    let model_dir = if case.starts_with("bert") {
        minilm_dir()
    } else {
        root.join(case).join("model")
    };
    let opts = LoadOptions {
        task: Head::SequenceClassification { num_labels: 2 },
        lora: Some(cfg),
        ..LoadOptions::default()
    };
    let (model, lora) = TaskModel::load(&model_dir, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    lora.load_adapter(&adapter)
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
    let tt = case.starts_with("bert").then_some(&token_types);
    let logits = tch::no_grad(|| model.forward_t(&ids, &mask, tt, false))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let want = read(&root.join(case).join("peft.safetensors"))
        .remove("logits")
        .unwrap();
    assert_eq!(logits.size(), want.size(), "{case}: logits shape");
    let rows = want.size()[0];
    let mut worst = 0.0f64;
    for i in 0..rows {
        let d = (logits.get(i).to_kind(Kind::Double) - want.get(i).to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            d <= TOL,
            "{case}: row {i}: logits {:?} vs PEFT's {:?} (|diff| {d:e} > {TOL:e})",
            Vec::<f32>::try_from(&logits.get(i)).unwrap(),
            Vec::<f32>::try_from(&want.get(i)).unwrap()
        );
        worst = worst.max(d);
    }
    // The adapter matters: the logits move away from the plain model's.
    let (plain, _) = TaskModel::load(
        &model_dir,
        &LoadOptions {
            task: Head::SequenceClassification { num_labels: 2 },
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let base: Tensor = tch::no_grad(|| plain.forward_t(&ids, &mask, tt, false)).unwrap();
    let moved = (&base - &logits).abs().max().double_value(&[]);
    println!("{case}: {rows} rows, max |diff| vs PEFT = {worst:.3e}; adapter moves logits by up to {moved:.3e}");
    assert!(moved > 100.0 * TOL, "{case}: the adapter changes nothing");
}

#[test]
fn bert_minilm_seq_cls_defaults() {
    check("bert", &["classifier", "score"]);
}

#[test]
fn bert_pooler_as_module_to_save() {
    check("bert_pooler", &["pooler", "classifier", "score"]);
}

#[test]
fn roberta_seq_cls_defaults() {
    check("roberta", &["classifier", "score"]);
}

#[test]
fn gpt2_seq_cls_defaults() {
    check("gpt2", &["classifier", "score"]);
}

#[test]
fn llama_seq_cls_defaults() {
    check("llama", &["classifier", "score"]);
}
