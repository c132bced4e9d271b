//! What `--resume` may change and what it may not (checkpoint::RESUME_FIXED): the optimizer's
//! settings and the step budget take this run's values (a lower lr after a divergence, more
//! steps on a linear schedule that would otherwise sit at lr 0); what the data stream, the model
//! and the adapters are made of must be the checkpoint's, or the run is refused naming the
//! setting. Real MiniLM and SST-2 rows, tiny budget.

use loraplus_train::checkpoint::ResumeMismatch;
use loraplus_train::{TrainConfig, Trainer};

fn config(dir: &std::path::Path) -> TrainConfig {
    let mut cfg = TrainConfig {
        task: "sst2".into(),
        output_dir: dir.to_path_buf(),
        max_seq_len: Some(32),
        batch_size: 8,
        max_steps: Some(3),
        train_limit: Some(64),
        eval_limit: Some(8),
        log_every: 1,
        ..TrainConfig::default()
    };
    cfg.lora.r = 4;
    cfg.optim.lr = 1e-3;
    cfg.optim.loraplus_ratio = 4.0;
    cfg.optim.warmup_ratio = 0.0;
    cfg.optim.schedule = "linear".into();
    cfg
}

fn mismatch(r: anyhow::Result<Trainer>) -> String {
    let e = match r {
        Ok(_) => panic!("the resume was accepted"),
        Err(e) => e,
    };
    assert!(e.downcast_ref::<ResumeMismatch>().is_some(), "{e:#}");
    format!("{e:#}")
}

#[test]
fn resume_takes_new_optimizer_settings_and_refuses_new_data_settings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut t = Trainer::new(cfg.clone(), None).unwrap();
    t.show_progress = false;
    assert_eq!(t.train().unwrap().steps, 3);
    // The run ended at step 3 of 3: its linear schedule is at lr 0 there.
    let ckpt = dir.path().join("checkpoints/step-000003");
    assert!(ckpt.exists());

    // More steps and half the lr: the schedule is this run's (linear over 10 steps, at step 3
    // 0.7 of the lr), not the checkpoint's (which would train steps 4..10 at lr 0).
    let mut more = cfg.clone();
    more.max_steps = Some(10);
    more.optim.lr = 5e-4;
    let t = Trainer::new(more, Some(&ckpt)).unwrap();
    assert_eq!(t.state().step, 3);
    let (a, b) = t.optimizer.lrs();
    assert!((a - 5e-4 * 0.7).abs() < 1e-12, "lr_A {a}");
    assert!((b - 4.0 * 5e-4 * 0.7).abs() < 1e-12, "lr_B {b}");

    // Settings the saved data position or the adapters depend on.
    for (what, change, needle) in [
        (
            "batch size",
            Box::new(|c: &mut TrainConfig| c.batch_size = 4) as Box<dyn Fn(&mut TrainConfig)>,
            "batch_size: 8 in the checkpoint, 4 now",
        ),
        (
            "seed",
            Box::new(|c| c.seed = 7),
            "seed: 42 in the checkpoint, 7 now",
        ),
        (
            "rank",
            Box::new(|c| c.lora.r = 8),
            "lora.r: 4 in the checkpoint, 8 now",
        ),
        (
            "train limit",
            Box::new(|c| c.train_limit = Some(32)),
            "train_limit: 64 in the checkpoint, 32 now",
        ),
        (
            "a head lr of its own",
            Box::new(|c| c.optim.head_lr = Some(1e-3)),
            "optim.head_lr: unset in the checkpoint, 0.001 now",
        ),
    ] {
        let mut c = cfg.clone();
        c.max_steps = Some(10);
        change(&mut c);
        let msg = mismatch(Trainer::new(c, Some(&ckpt)));
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(msg.contains("trainer_state.json"), "{what}: {msg}");
    }

    // Fewer steps than the checkpoint has trained.
    let mut fewer = cfg.clone();
    fewer.max_steps = Some(2);
    let msg = mismatch(Trainer::new(fewer, Some(&ckpt)));
    assert!(
        msg.contains("at step 3, past this run's end at step 2"),
        "{msg}"
    );
    // At the budget exactly: accepted (the run evaluates and writes its adapter).
    assert_eq!(Trainer::new(cfg, Some(&ckpt)).unwrap().state().step, 3);
}

/// The training file changed between the checkpoint and the resume (same name, other rows):
/// the saved position would continue in other rows, so the resume is refused. The same file
/// resumes.
#[test]
fn resume_refuses_training_data_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("train.csv");
    let rows = |word: &str| -> String {
        let mut t = String::from("text,label\n");
        for i in 0..32 {
            t += &format!(
                "a {word} film {i},{}\n",
                if i % 2 == 0 { "pos" } else { "neg" }
            );
        }
        t
    };
    std::fs::write(&csv, rows("fine")).unwrap();
    let mut cfg = config(&dir.path().join("out"));
    cfg.task = "classification".into();
    cfg.train_file = Some(csv.clone());
    cfg.eval_limit = None;
    let mut t = Trainer::new(cfg.clone(), None).unwrap();
    t.show_progress = false;
    assert_eq!(t.train().unwrap().steps, 3);
    let ckpt = dir.path().join("out/checkpoints/step-000003");
    let mut more = cfg.clone();
    more.max_steps = Some(4);
    assert_eq!(
        Trainer::new(more.clone(), Some(&ckpt))
            .unwrap()
            .state()
            .step,
        3
    );
    std::fs::write(&csv, rows("dull")).unwrap();
    let msg = mismatch(Trainer::new(more, Some(&ckpt)));
    assert!(
        msg.contains("the training data are not the checkpoint's run's"),
        "{msg}"
    );
}
