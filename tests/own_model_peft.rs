//! `examples/own_model.rs` (a user's own `tch::nn` MLP, two layers wrapped with LoRA, trained
//! with LoRA+ and saved): the training lowers the loss, and PEFT loads the adapter on the same
//! torch model and gives the same outputs (`reference/own_model_peft.py`).

#[path = "../examples/own_model.rs"]
mod own_model;

use std::path::Path;
use std::process::Command;

use loraplus::core::{read_safetensors, write_safetensors};
use loraplus::tch::{Kind, Tensor};

/// Largest difference allowed between an output here and PEFT's.
const TOL: f64 = 1e-5;

#[test]
fn own_model_adapter_loads_in_peft_with_the_same_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let trained = own_model::train_and_save(dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        trained.loss_last < 0.5 * trained.loss_first,
        "training did not lower the loss: {} -> {}",
        trained.loss_first,
        trained.loss_last
    );
    write_safetensors(
        &dir.path().join("inputs.safetensors"),
        &[("x".to_string(), trained.x.shallow_clone())],
        &Default::default(),
    )
    .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run `make setup`",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root.join("tests/reference/own_model_peft.py"))
        .arg(dir.path())
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "own_model_peft.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peft: Tensor = read_safetensors(&dir.path().join("peft.safetensors"))
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "y")
        .map(|(_, t)| t)
        .expect("y in peft.safetensors");
    assert_eq!(peft.size(), trained.y.size());
    let diff = (&peft - &trained.y)
        .abs()
        .max()
        .to_kind(Kind::Double)
        .double_value(&[]);
    let moved = trained.loss_first - trained.loss_last;
    println!(
        "PEFT vs loraplus outputs: max |diff| = {diff:.3e}; loss {:.4} -> {:.4} (down {moved:.4})",
        trained.loss_first, trained.loss_last
    );
    assert!(diff <= TOL, "PEFT's outputs differ by {diff:e}");
}
