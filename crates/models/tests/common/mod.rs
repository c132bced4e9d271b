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
