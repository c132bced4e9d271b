//! A tokenizer that gives ids the model has no embedding rows for (an added token without
//! resized embeddings) is refused before training, naming the id and the vocabulary size,
//! instead of failing inside the embedding lookup. Real MiniLM, its tokenizer with one token
//! added past the vocabulary.

use std::path::{Path, PathBuf};

use loraplus_train::{TrainConfig, Trainer};

/// `dir/model`, holding links to these files of MiniLM (the others are written by the test).
fn linked_model(dir: &Path, files: &[&str]) -> PathBuf {
    let minilm = loraplus_data::paths::model_dir();
    let model = dir.join("model");
    std::fs::create_dir(&model).unwrap();
    for f in files {
        if minilm.join(f).exists() {
            std::os::unix::fs::symlink(minilm.join(f), model.join(f)).unwrap();
        }
    }
    model
}

#[test]
fn ids_outside_the_vocabulary_are_refused_with_the_id_and_the_size() {
    let minilm = loraplus_data::paths::model_dir();
    let dir = tempfile::tempdir().unwrap();
    let model = linked_model(
        dir.path(),
        &["config.json", "model.safetensors", "tokenizer_config.json"],
    );
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(minilm.join("tokenizer.json")).unwrap())
            .unwrap();
    tok["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": 30522, "content": "<new>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    std::fs::write(model.join("tokenizer.json"), tok.to_string()).unwrap();

    let rows = |with_new: bool| {
        let mut s = String::from("text,label\n");
        for i in 0..8 {
            let t = if with_new && i == 5 {
                "fine <new>"
            } else {
                "fine"
            };
            s += &format!("{t} {i},{}\n", ["neg", "pos"][i % 2]);
        }
        s
    };
    let (train, dev) = (dir.path().join("train.csv"), dir.path().join("dev.csv"));
    let cfg = |train_has_new: bool| {
        std::fs::write(&train, rows(train_has_new)).unwrap();
        std::fs::write(&dev, rows(!train_has_new)).unwrap();
        let mut c = TrainConfig {
            task: "classification".into(),
            model: Some(model.clone()),
            train_file: Some(train.clone()),
            eval_file: Some(dev.clone()),
            text_column: "text".into(),
            output_dir: dir.path().join("out"),
            overwrite_output_dir: true,
            max_seq_len: Some(16),
            batch_size: 4,
            max_steps: Some(1),
            ..TrainConfig::default()
        };
        c.lora.r = 2;
        c
    };
    for (train_has_new, what) in [(true, "training data"), (false, "evaluation data")] {
        let e = match Trainer::new(cfg(train_has_new), None) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains(&format!("the {what} holds token id 30522"))
                && e.contains("vocabulary of 30522"),
            "{what}: {e}"
        );
    }
}

/// Pairs of texts (token type 1 for the second) given to a model with `type_vocab_size` 1 are
/// refused before training as bad data, naming the type id and the size (it panicked inside the
/// embedding). MiniLM with its type table cut to one row.
#[test]
fn pairs_for_a_model_with_one_token_type_are_refused() {
    let minilm = loraplus_data::paths::model_dir();
    let dir = tempfile::tempdir().unwrap();
    let model = linked_model(dir.path(), &["tokenizer.json", "tokenizer_config.json"]);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(minilm.join("config.json")).unwrap())
            .unwrap();
    config["type_vocab_size"] = 1.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let tensors: Vec<(String, tch::Tensor)> =
        tch::Tensor::read_safetensors(minilm.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(k, t)| {
                let t = if k.ends_with("token_type_embeddings.weight") {
                    t.narrow(0, 0, 1)
                } else {
                    t
                };
                (k, t)
            })
            .collect();
    tch::Tensor::write_safetensors(&tensors, model.join("model.safetensors")).unwrap();

    let data = dir.path().join("pairs.csv");
    let mut rows = String::from("a,b,label\n");
    for i in 0..8 {
        rows += &format!("fine {i},also fine,{}\n", ["neg", "pos"][i % 2]);
    }
    std::fs::write(&data, rows).unwrap();
    let cfg = |pairs: bool| {
        let mut c = TrainConfig {
            task: "classification".into(),
            model: Some(model.clone()),
            train_file: Some(data.clone()),
            text_column: "a".into(),
            text_pair_column: pairs.then(|| "b".into()),
            output_dir: dir.path().join(if pairs { "pairs" } else { "single" }),
            max_seq_len: Some(16),
            batch_size: 4,
            max_steps: Some(1),
            eval_every: 0,
            ..TrainConfig::default()
        };
        c.lora.r = 2;
        c
    };
    // Single texts train on the one type.
    Trainer::new(cfg(false), None).unwrap().train().unwrap();
    let e = match Trainer::new(cfg(true), None) {
        Ok(_) => panic!("pairs accepted by a model with one token type"),
        Err(e) => e,
    };
    assert!(
        e.downcast_ref::<loraplus_train::task::BadData>().is_some(),
        "not BadData: {e:#}"
    );
    let e = format!("{e:#}");
    assert!(
        e.contains("the training data holds token type id 1") && e.contains("type_vocab_size 1"),
        "{e}"
    );
}
