//! Helpers shared by the integration tests: the Python of `.venv`, safetensors exchange,
//! and value comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Kind, Tensor};

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<repo>/.venv/bin/python`, with torch, transformers and peft.
pub fn python() -> PathBuf {
    let p = manifest_dir().join("../../.venv/bin/python");
    assert!(
        p.exists(),
        "{} not found: run `make setup` to create the virtual environment",
        p.display()
    );
    p
}

/// Run `tests/reference/<script>` with `args`; panics with its output when it fails.
pub fn run_reference(script: &str, args: &[&Path]) {
    let path = manifest_dir().join("tests/reference").join(script);
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn read(path: &Path) -> HashMap<String, Tensor> {
    loraplus_core::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .into_iter()
        .collect()
}

pub fn write(path: &Path, tensors: &[(&str, &Tensor)]) {
    let owned: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.shallow_clone()))
        .collect();
    loraplus_core::write_safetensors(path, &owned, &Default::default()).unwrap();
}

/// Largest absolute difference, in f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

pub fn max_abs(a: &Tensor) -> f64 {
    a.to_kind(Kind::Double).abs().max().double_value(&[])
}

/// Assert `a` and `b` agree within `tol`; returns the difference for the report.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) -> f64 {
    let d = max_abs_diff(a, b);
    println!(
        "{what}: max |diff| = {d:.3e} (max |value| = {:.3e})",
        max_abs(b)
    );
    assert!(d <= tol, "{what}: max |diff| = {d:e} > {tol:e}");
    d
}

/// Keep the positions where `mask` (`[B, T]`) is 1 of a `[B, T, ...]` tensor, flattened.
pub fn masked_positions(x: &Tensor, mask: &Tensor) -> Tensor {
    let keep = mask.ne(0).view([-1]).nonzero().squeeze_dim(1);
    let s = x.size();
    x.reshape([s[0] * s[1], -1]).index_select(0, &keep)
}

/// Write `dir/config.json` and `dir/model.safetensors` with random f32 tensors of the given
/// names and shapes (normal(0, 0.2); `*LayerNorm.weight`/`*norm.weight` around 1).
pub fn write_random_checkpoint(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &[(String, Vec<i64>)],
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
    let owned: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(name, shape)| {
            let t = Tensor::randn(shape.as_slice(), (Kind::Float, tch::Device::Cpu)) * 0.2;
            let t = if name.ends_with("orm.weight") {
                t + 1.0
            } else {
                t
            };
            (name.clone(), t)
        })
        .collect();
    loraplus_core::write_safetensors(&dir.join("model.safetensors"), &owned, &Default::default())
        .unwrap();
}

/// A tiny BERT (`BertModel` names, no prefix, no pooler): config and tensor list.
pub fn tiny_bert() -> (serde_json::Value, Vec<(String, Vec<i64>)>) {
    let (v, h, i, layers, pos) = (50, 16, 24, 2, 32);
    let config = serde_json::json!({
        "model_type": "bert", "vocab_size": v, "hidden_size": h, "num_hidden_layers": layers,
        "num_attention_heads": 4, "intermediate_size": i, "max_position_embeddings": pos,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1
    });
    let mut t = vec![
        ("embeddings.word_embeddings.weight".to_string(), vec![v, h]),
        (
            "embeddings.position_embeddings.weight".to_string(),
            vec![pos, h],
        ),
        (
            "embeddings.token_type_embeddings.weight".to_string(),
            vec![2, h],
        ),
        ("embeddings.LayerNorm.weight".to_string(), vec![h]),
        ("embeddings.LayerNorm.bias".to_string(), vec![h]),
    ];
    for l in 0..layers {
        let p = format!("encoder.layer.{l}");
        for (name, shape) in [
            ("attention.self.query", vec![h, h]),
            ("attention.self.key", vec![h, h]),
            ("attention.self.value", vec![h, h]),
            ("attention.output.dense", vec![h, h]),
            ("intermediate.dense", vec![i, h]),
            ("output.dense", vec![h, i]),
        ] {
            let out = shape[0];
            t.push((format!("{p}.{name}.weight"), shape));
            t.push((format!("{p}.{name}.bias"), vec![out]));
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            t.push((format!("{p}.{name}.weight"), vec![h]));
            t.push((format!("{p}.{name}.bias"), vec![h]));
        }
    }
    (config, t)
}

/// A tiny Llama (`LlamaForCausalLM` names) with grouped-query attention and dropout.
pub fn tiny_llama() -> (serde_json::Value, Vec<(String, Vec<i64>)>) {
    let (v, h, i, layers, heads, kv) = (50, 16, 24, 2, 4, 2);
    let d = h / heads;
    let config = serde_json::json!({
        "model_type": "llama", "vocab_size": v, "hidden_size": h, "intermediate_size": i,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "attention_dropout": 0.1, "pad_token_id": 0, "tie_word_embeddings": false
    });
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, h]),
        ("model.norm.weight".to_string(), vec![h]),
        ("lm_head.weight".to_string(), vec![v, h]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm", vec![h]),
            ("post_attention_layernorm", vec![h]),
            ("self_attn.q_proj", vec![heads * d, h]),
            ("self_attn.k_proj", vec![kv * d, h]),
            ("self_attn.v_proj", vec![kv * d, h]),
            ("self_attn.o_proj", vec![h, heads * d]),
            ("mlp.gate_proj", vec![i, h]),
            ("mlp.up_proj", vec![i, h]),
            ("mlp.down_proj", vec![h, i]),
        ] {
            t.push((format!("{p}.{name}.weight"), shape));
        }
    }
    (config, t)
}

/// A tiny GPT-2 (`GPT2Model` names, no prefix; Conv1D `[in, out]` weights): config and tensors.
pub fn tiny_gpt2() -> (serde_json::Value, Vec<(String, Vec<i64>)>) {
    let (v, e, layers, pos) = (50, 16, 2, 32);
    let config = serde_json::json!({
        "model_type": "gpt2", "vocab_size": v, "n_embd": e, "n_layer": layers, "n_head": 4,
        "n_positions": pos, "pad_token_id": 0
    });
    let mut t = vec![
        ("wte.weight".to_string(), vec![v, e]),
        ("wpe.weight".to_string(), vec![pos, e]),
        ("ln_f.weight".to_string(), vec![e]),
        ("ln_f.bias".to_string(), vec![e]),
    ];
    for l in 0..layers {
        let p = format!("h.{l}");
        for (name, fin, fout) in [
            ("attn.c_attn", e, 3 * e),
            ("attn.c_proj", e, e),
            ("mlp.c_fc", e, 4 * e),
            ("mlp.c_proj", 4 * e, e),
        ] {
            t.push((format!("{p}.{name}.weight"), vec![fin, fout]));
            t.push((format!("{p}.{name}.bias"), vec![fout]));
        }
        for name in ["ln_1", "ln_2"] {
            t.push((format!("{p}.{name}.weight"), vec![e]));
            t.push((format!("{p}.{name}.bias"), vec![e]));
        }
    }
    (config, t)
}

/// Every trainable tensor's gradient (copied), by name; the gradients are then reset.
pub fn take_grads(lora: &loraplus_core::LoraModel) -> Vec<(String, Tensor)> {
    lora.trainable_params()
        .iter()
        .map(|p| {
            let mut t = p.tensor.shallow_clone();
            let g = t.grad().copy();
            t.zero_grad();
            (p.name.clone(), g)
        })
        .collect()
}
