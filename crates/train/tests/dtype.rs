//! What `dtype = "bf16"` means (TrainConfig::dtype): the frozen base weights are stored and
//! computed in bf16, the LoRA adapters (A, B) stay f32, the modules trained in full
//! (`modules_to_save`: the head) are copies in the base dtype (as PEFT's ModulesToSaveWrapper),
//! there is no autocast, and the run trains (finite loss, adapters move). Real MiniLM and SST-2.

use loraplus_train::{TrainConfig, Trainer};
use tch::Kind;

#[test]
fn bf16_base_keeps_f32_adapters_and_trains() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = TrainConfig {
        task: "sst2".into(),
        output_dir: dir.path().to_path_buf(),
        dtype: "bf16".into(),
        max_seq_len: 32,
        batch_size: 8,
        max_steps: Some(3),
        train_limit: Some(64),
        eval_limit: Some(16),
        log_every: 1,
        ..TrainConfig::default()
    };
    cfg.lora.r = 4;
    let mut t = Trainer::new(cfg, None).unwrap();
    t.show_progress = false;
    let base: Vec<Kind> = t.lora.base_params().map(|(_, p)| p.kind()).collect();
    assert!(!base.is_empty());
    assert!(
        base.iter().all(|k| *k == Kind::BFloat16),
        "every frozen base weight is bf16: {base:?}"
    );
    let before: Vec<(String, tch::Tensor)> = t
        .lora
        .trainable_params()
        .iter()
        .map(|p| (p.name.clone(), p.tensor.detach().copy()))
        .collect();
    for (name, p) in &before {
        let want = if name.contains("lora_") {
            Kind::Float
        } else {
            Kind::BFloat16
        };
        assert_eq!(p.kind(), want, "{name}");
    }
    assert!(before.iter().any(|(n, _)| n.contains("lora_A")));
    assert!(before.iter().any(|(n, _)| n.starts_with("classifier")));
    let s = t.train().unwrap();
    assert_eq!(s.steps, 3);
    assert!(s.final_eval.unwrap().main.is_finite());
    let moved = t
        .lora
        .trainable_params()
        .iter()
        .zip(&before)
        .filter(|(p, (_, b))| p.name.contains("lora_B") && !p.tensor.equal(b))
        .count();
    assert!(moved > 0, "the B matrices trained");
}
