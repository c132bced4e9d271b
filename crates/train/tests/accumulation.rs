//! Gradient accumulation through the trainer library: 4 micro-batches of 4 train what one
//! batch of 16 does, also where an epoch does not divide into steps. One test in this binary:
//! the trainer seeds libtorch's global generator, so runs compared number for number must not
//! share a process with other tests' runs (the harness runs tests in parallel threads).

mod common;

use common::minilm_without_dropout;
use loraplus_train::{TrainConfig, Trainer};

fn tiny(dir: &std::path::Path) -> TrainConfig {
    let mut c = TrainConfig {
        task: "sst2".into(),
        output_dir: dir.to_path_buf(),
        max_seq_len: Some(32),
        eval_limit: Some(32),
        log_every: 1,
        threads: 1,
        ..TrainConfig::default()
    };
    c.lora.r = 4;
    c
}

/// Accumulating 4 micro-batches of 4 trains what one batch of 16 does, across an epoch that
/// does not divide into steps (100 rows: 6 full steps and one of 4 rows): the epoch's last step
/// takes only what is left of it, as transformers' Trainer does, instead of borrowing the next
/// epoch's first micro-batches. One epoch is 7 steps either way.
#[test]
fn accumulation_equals_one_big_batch_across_an_uneven_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let model = minilm_without_dropout(dir.path());
    let train = |accum: usize, name: &str, steps: Option<usize>| {
        let mut cfg = tiny(&dir.path().join(name));
        cfg.model = Some(model.clone());
        cfg.batch_size = 16;
        cfg.grad_accum = accum;
        cfg.train_limit = Some(100);
        cfg.max_steps = steps;
        cfg.epochs = 1.0;
        cfg.eval_every = 0;
        cfg.lora.lora_dropout = 0.0;
        cfg.optim.lr = 1e-3;
        let mut t = Trainer::new(cfg, None).unwrap();
        t.show_progress = false;
        let s = t.train().unwrap();
        let mut a = loraplus_core::read_safetensors(
            &dir.path()
                .join(name)
                .join("adapter/adapter_model.safetensors"),
        )
        .unwrap();
        a.sort_by(|x, y| x.0.cmp(&y.0));
        (s.steps, a)
    };
    for steps in [Some(9), None] {
        let (n1, one) = train(1, &format!("one-{steps:?}"), steps);
        let (n4, four) = train(4, &format!("four-{steps:?}"), steps);
        assert_eq!(n1, n4);
        assert_eq!(n1, steps.unwrap_or(7));
        for ((k, x), (_, y)) in one.iter().zip(&four) {
            let d = (x - y).abs().max().double_value(&[]);
            assert!(
                d < 5e-5,
                "{k}: accumulation differs by {d} after {n1} steps"
            );
        }
    }
}
