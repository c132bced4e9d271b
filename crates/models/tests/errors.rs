//! Loading errors say what and where: a missing tensor, a tensor of the wrong shape, an
//! unknown `model_type`, a corrupt safetensors file, a missing shard; unused tensors are
//! reported, not fatal; the recommended LoRA config of each architecture loads.

mod common;

use std::path::Path;

use loraplus_core::LoraConfig;
use loraplus_models::{Head, LoadOptions, TaskModel};
use tch::Kind;

fn load_err(dir: &Path, opts: &LoadOptions) -> String {
    match TaskModel::load(dir, opts) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn tiny(dir: &Path, edit: impl FnOnce(&mut serde_json::Value, &mut Vec<(String, Vec<i64>)>)) {
    let (mut config, mut tensors) = common::tiny_bert();
    edit(&mut config, &mut tensors);
    common::write_random_checkpoint(dir, &config, &tensors);
}

#[test]
fn tiny_bert_loads_and_reports_unused_tensors() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path(), |_, t| {
        t.push(("cls.predictions.bias".into(), vec![50]))
    });
    let (model, lora) = TaskModel::load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(model.unused_weights(), ["cls.predictions.bias".to_string()]);
    assert_eq!(
        model.initialised_modules(),
        ["bert.pooler.dense".to_string(), "classifier".to_string()]
    );
    assert_eq!(lora.trainable_params().len(), 0);
}

#[test]
fn recommended_lora_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path(), |_, _| {});
    let config = loraplus_models::ModelConfig::from_file(dir.path().join("config.json")).unwrap();
    let head = Head::SequenceClassification { num_labels: 2 };
    let cfg = config.recommended_lora_config(head, 4, 8.0);
    assert_eq!(cfg.task_type.as_deref(), Some("SEQ_CLS"));
    let opts = LoadOptions {
        task: head,
        lora: Some(cfg),
        ..Default::default()
    };
    let (_model, lora) = TaskModel::load(dir.path(), &opts).unwrap();
    let names: Vec<&str> = lora
        .trainable_params()
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    for want in [
        "bert.encoder.layer.1.attention.self.value.lora_B.weight",
        "bert.pooler.dense.weight",
        "classifier.bias",
    ] {
        assert!(names.contains(&want), "{want} not trainable: {names:?}");
    }
    assert_eq!(names.len(), 2 * 2 * 2 + 4);
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path(), |_, t| {
        t.retain(|(n, _)| n != "encoder.layer.1.attention.self.key.weight")
    });
    let msg = load_err(dir.path(), &LoadOptions::default());
    assert!(
        msg.contains("missing tensor bert.encoder.layer.1.attention.self.key.weight"),
        "{msg}"
    );
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path(), |_, t| {
        for (n, s) in t.iter_mut() {
            if n == "encoder.layer.0.intermediate.dense.weight" {
                *s = vec![25, 16];
            }
        }
    });
    let msg = load_err(dir.path(), &LoadOptions::default());
    assert!(
        msg.contains(
            "encoder.layer.0.intermediate.dense.weight has shape [25, 16], expected [24, 16]"
        ),
        "{msg}"
    );
}

/// A classifier checkpoint for 3 labels given a 2-label task: the message says so (it blamed
/// config.json).
#[test]
fn a_classifier_for_another_label_count_is_named() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path(), |_, t| {
        t.push(("bert.pooler.dense.weight".into(), vec![16, 16]));
        t.push(("bert.pooler.dense.bias".into(), vec![16]));
        t.push(("classifier.weight".into(), vec![3, 16]));
        t.push(("classifier.bias".into(), vec![3]));
    });
    let msg = load_err(dir.path(), &LoadOptions::default());
    assert!(
        msg.contains("classifier.weight has shape [3, 16]: the checkpoint's classifier has 3 outputs, but the task has 2 labels"),
        "{msg}"
    );
}

#[test]
fn unknown_model_type_lists_supported() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path(), |c, _| c["model_type"] = "t5".into());
    let msg = load_err(dir.path(), &LoadOptions::default());
    assert!(
        msg.contains("model_type \"t5\" is not supported; supported: bert, roberta, gpt2, llama"),
        "{msg}"
    );
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn corrupt_safetensors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path(), |_, _| {});
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    // Truncated: the header promises more data than the file holds.
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let msg = load_err(dir.path(), &LoadOptions::default());
    assert!(
        msg.contains("model.safetensors: not a valid safetensors file"),
        "{msg}"
    );
    // Garbage header.
    let mut garbage = bytes.clone();
    garbage[8..20].copy_from_slice(b"not json at ");
    std::fs::write(&path, &garbage).unwrap();
    let msg = load_err(dir.path(), &LoadOptions::default());
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
    // Too short to hold a header.
    std::fs::write(&path, b"abc").unwrap();
    let msg = load_err(dir.path(), &LoadOptions::default());
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
}

#[test]
fn missing_shard_and_missing_checkpoint_are_named() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path(), |_, _| {});
    std::fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": {
        "embeddings.word_embeddings.weight": "model-00001-of-00002.safetensors",
        "encoder.layer.1.output.dense.weight": "model-00002-of-00002.safetensors"
    }});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let msg = load_err(dir.path(), &LoadOptions::default());
    assert!(
        msg.contains("shard model-00002-of-00002.safetensors does not exist"),
        "{msg}"
    );
    std::fs::remove_file(dir.path().join("model.safetensors.index.json")).unwrap();
    let msg = load_err(dir.path(), &LoadOptions::default());
    assert!(
        msg.contains("no model.safetensors or model.safetensors.index.json"),
        "{msg}"
    );
}

#[test]
fn bad_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path(), |_, _| {});
    let msg = load_err(
        dir.path(),
        &LoadOptions {
            task: Head::CausalLm,
            ..Default::default()
        },
    );
    assert!(
        msg.contains("causal-LM head is available for gpt2, llama, qwen2, qwen3, mistral")
            && msg.contains("bert is an encoder"),
        "{msg}"
    );
    let msg = load_err(
        dir.path(),
        &LoadOptions {
            dtype: Kind::Int,
            ..Default::default()
        },
    );
    assert!(msg.contains("supported: f32, bf16, f16"), "{msg}");
    let opts = LoadOptions {
        lora: Some(LoraConfig::new(4, 8.0, &["q_proj"])),
        ..Default::default()
    };
    let msg = load_err(dir.path(), &opts);
    assert!(
        msg.contains("matches no module")
            && msg.contains("bert.encoder.layer.{i}.attention.self.query (2)")
            && msg.contains("by last name part: position_embeddings, token_type_embeddings, word_embeddings, dense, key, query, value"),
        "{msg}"
    );
}

/// `e`'s message, checked to be a typed [`loraplus_models::BadInput`].
fn bad_input(e: &anyhow::Error) -> String {
    assert!(
        e.downcast_ref::<loraplus_models::BadInput>().is_some(),
        "not a BadInput: {e:#}"
    );
    format!("{e:#}")
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path(), |_, _| {});
    let (model, _) = TaskModel::load(dir.path(), &LoadOptions::default()).unwrap();
    let ids = tch::Tensor::ones([2, 40], (Kind::Int64, tch::Device::Cpu));
    let mask = ids.ones_like();
    let e = model.forward_t(&ids, &mask, None, false).unwrap_err();
    assert!(
        bad_input(&e).contains("sequence length 40 exceeds the 32 positions bert supports"),
        "{e:#}"
    );
    let ids = ids.narrow(1, 0, 8);
    let e = model.forward_t(&ids, &mask, None, false).unwrap_err();
    assert!(
        bad_input(&e).contains("attention_mask: shape [2, 40] differs from input_ids [2, 8]"),
        "{e:#}"
    );
    let e = model
        .forward_t(&ids.to_kind(Kind::Float), &ids.ones_like(), None, false)
        .unwrap_err();
    assert!(bad_input(&e).contains("int64"), "{e:#}");
    // Ids outside the vocabulary, and a class id past the labels: errors (they panicked).
    let vocab = model.config().vocab_size();
    for bad in [vocab, -5] {
        let ids = tch::Tensor::ones([2, 8], (Kind::Int64, tch::Device::Cpu)) * bad;
        let e = model
            .forward_t(&ids, &ids.ones_like(), None, false)
            .unwrap_err();
        assert!(
            bad_input(&e).contains(&format!("token id {bad} is outside the vocabulary")),
            "{e:#}"
        );
    }
    let logits = model
        .forward_t(&ids, &ids.ones_like(), None, false)
        .unwrap();
    let labels = tch::Tensor::from_slice(&[0i64, 7]);
    let e = model.loss(&logits, &labels).unwrap_err();
    assert!(bad_input(&e).contains("class ids in 0..2"), "{e:#}");
}

/// Token type ids past `type_vocab_size` (a pair given to a model with one type) are a typed
/// error naming the size (it panicked in the embedding); DeBERTa with `type_vocab_size` 0
/// ignores them, as transformers does, so nothing is checked there.
#[test]
fn token_types_past_the_table_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path(), |cfg, tensors| {
        cfg["type_vocab_size"] = 1.into();
        for (name, shape) in tensors.iter_mut() {
            if name.ends_with("token_type_embeddings.weight") {
                shape[0] = 1;
            }
        }
    });
    let (model, _) = TaskModel::load(dir.path(), &LoadOptions::default()).unwrap();
    let ids = tch::Tensor::ones([2, 6], (Kind::Int64, tch::Device::Cpu));
    let ok = model.forward_t(&ids, &ids.ones_like(), Some(&ids.zeros_like()), false);
    assert!(ok.is_ok(), "{:?}", ok.err());
    let pairs = ids
        .zeros_like()
        .index_fill(1, &tch::Tensor::from_slice(&[4i64, 5]), 1);
    let e = model
        .forward_t(&ids, &ids.ones_like(), Some(&pairs), false)
        .unwrap_err();
    assert!(
        bad_input(&e).contains("type id 1 is outside the type_vocab_size of 1 of this bert"),
        "{e:#}"
    );
}
