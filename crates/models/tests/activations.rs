//! Every activation name loraplus accepts computes what transformers' `ACT2FN[name]` computes,
//! bit for bit in f32, bf16 and f16 (same libtorch kernels, same order of operations), on
//! values from -12 to 12. Reference: `tests/reference/activations.py`.

mod common;

use loraplus_models::arch::{Activation, SUPPORTED_ACTIVATIONS};

#[test]
fn every_activation_equals_transformers_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    common::run_reference("activations.py", &[dir.path()]);
    let r = common::read(&dir.path().join("activations.safetensors"));
    for dtype in ["f32", "bf16", "f16"] {
        let x = &r[&format!("x.{dtype}")];
        for name in SUPPORTED_ACTIVATIONS {
            let want = r
                .get(&format!("{name}.{dtype}"))
                .unwrap_or_else(|| panic!("no reference for {name}"));
            let got = Activation::parse(name).unwrap().apply(x);
            assert_eq!(got.kind(), want.kind(), "{name} {dtype}");
            let d = common::max_abs_diff(&got, want);
            assert!(
                d == 0.0,
                "{name} {dtype}: differs from transformers by {d:e}"
            );
        }
    }
}
