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
        max_seq_len: Some(32),
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

/// `dtype = "f16"`: the base and the head in f16, the adapters in f32, and dynamic loss scaling
/// (the loss is multiplied by the scale before backward, the gradients divided by it before the
/// step). The first step's gradient norm (before clipping) and update are those of the f32 run
/// up to f16 rounding, not 65,536 times smaller (the scale left out of the loss, divided out of
/// the gradients all the same).
#[test]
fn f16_scales_the_loss_and_matches_the_f32_step() {
    let run = |dtype: &str| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = TrainConfig {
            task: "sst2".into(),
            output_dir: dir.path().to_path_buf(),
            dtype: dtype.into(),
            max_seq_len: Some(32),
            batch_size: 8,
            max_steps: Some(1),
            train_limit: Some(64),
            eval_limit: Some(8),
            log_every: 1,
            ..TrainConfig::default()
        };
        cfg.lora.r = 4;
        cfg.lora.lora_dropout = 0.0;
        cfg.optim.warmup_ratio = 0.0;
        let mut t = Trainer::new(cfg, None).unwrap();
        t.show_progress = false;
        let b_of = |t: &Trainer| -> Vec<tch::Tensor> {
            t.lora
                .trainable_params()
                .iter()
                .filter(|p| p.name.contains("lora_B"))
                .map(|p| p.tensor.detach().to_kind(Kind::Double))
                .collect()
        };
        let before = b_of(&t);
        let s = t.train().unwrap();
        assert_eq!(s.steps, 1, "{dtype}: the step was taken, not skipped");
        let delta: Vec<tch::Tensor> = b_of(&t).iter().zip(&before).map(|(a, b)| a - b).collect();
        let (train, _) =
            loraplus_train::metrics_log::read(&dir.path().join("metrics.jsonl")).unwrap();
        let norm = train[0].grad_norm.expect("a logged gradient norm");
        (norm, delta)
    };
    let (n32, d32) = run("f32");
    let (n16, d16) = run("f16");
    assert!(n32 > 0.0 && n32.is_finite(), "f32 gradient norm {n32}");
    assert!(
        (n16 / n32 - 1.0).abs() < 0.05,
        "f16 gradient norm {n16} against f32 {n32}"
    );
    for (i, (a, b)) in d16.iter().zip(&d32).enumerate() {
        let (na, nb) = (a.norm().double_value(&[]), b.norm().double_value(&[]));
        assert!(nb > 0.0, "B[{i}] moved in f32");
        assert!(
            (na / nb - 1.0).abs() < 0.1,
            "B[{i}]: f16 update norm {na} against f32 {nb}"
        );
    }
}
