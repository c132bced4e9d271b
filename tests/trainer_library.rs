//! The trainer as a library: callbacks see every log line and evaluation and can stop the run;
//! early stopping; a non-finite loss stops with a checkpoint and a message naming the step.
//! Real MiniLM and real SST-2 rows, tiny budgets.

use std::sync::{Arc, Mutex};

use loraplus::train::metrics_log::{EvalRecord, TrainRecord};
use loraplus::train::{checkpoint, Callback, Control, TrainConfig, Trainer};

fn tiny(dir: &std::path::Path) -> TrainConfig {
    let mut c = TrainConfig {
        task: "sst2".into(),
        output_dir: dir.to_path_buf(),
        max_seq_len: Some(32),
        batch_size: 8,
        max_steps: Some(6),
        train_limit: Some(128),
        eval_limit: Some(32),
        log_every: 1,
        eval_every: 2,
        threads: 1,
        ..TrainConfig::default()
    };
    c.lora.r = 4;
    c
}

#[derive(Default)]
struct Seen {
    logs: Vec<usize>,
    evals: Vec<usize>,
}

struct Recorder(Arc<Mutex<Seen>>, Option<usize>);

impl Callback for Recorder {
    fn on_log(&mut self, r: &TrainRecord) -> Control {
        assert!(r.loss.is_finite());
        assert!(
            (r.lr_b - 16.0 * r.lr_a).abs() <= 1e-12 * r.lr_b.abs(),
            "LoRA+: lr of B is 16 x lr of A at every step"
        );
        self.0.lock().unwrap().logs.push(r.step);
        if Some(r.step) == self.1 {
            Control::Stop
        } else {
            Control::Continue
        }
    }
    fn on_eval(&mut self, r: &EvalRecord) -> Control {
        assert!((0.0..=1.0).contains(&r.main));
        self.0.lock().unwrap().evals.push(r.step);
        Control::Continue
    }
}

#[test]
fn callbacks_see_logs_and_evals_and_can_stop() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut t = Trainer::new(tiny(dir.path()), None).unwrap();
    t.show_progress = false;
    t.add_callback(Box::new(Recorder(seen.clone(), None)));
    let s = t.train().unwrap();
    assert_eq!(s.steps, 6);
    let seen_now = seen.lock().unwrap();
    assert_eq!(seen_now.logs, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(seen_now.evals, vec![2, 4, 6]);
    drop(seen_now);

    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut t = Trainer::new(tiny(dir.path()), None).unwrap();
    t.show_progress = false;
    t.add_callback(Box::new(Recorder(seen, Some(3))));
    let s = t.train().unwrap();
    assert_eq!(s.steps, 3);
    assert!(s.stopped_because.contains("callback"));
    // The stopped run left a resumable checkpoint at step 3.
    let latest = checkpoint::resolve(dir.path()).unwrap();
    assert_eq!(checkpoint::read_state(&latest).unwrap().step, 3);
}

#[test]
fn early_stopping_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(dir.path());
    cfg.max_steps = Some(40);
    cfg.eval_every = 1;
    cfg.optim.lr = 0.0; // nothing improves
    cfg.optim.loraplus_ratio = 1.0;
    cfg.early_stopping_patience = Some(2);
    let mut t = Trainer::new(cfg, None).unwrap();
    t.show_progress = false;
    let s = t.train().unwrap();
    assert_eq!(s.steps, 3, "{}", s.stopped_because);
    assert!(s.stopped_because.contains("early stopping"));
    // The evaluation that stopped the run is the final one: not run (and logged) again.
    let (_, evals) = loraplus::train::metrics_log::read(&dir.path().join("metrics.jsonl")).unwrap();
    let steps: Vec<usize> = evals.iter().map(|e| e.step).collect();
    assert_eq!(steps, [1, 2, 3]);
    let latest = checkpoint::resolve(dir.path()).unwrap();
    assert_eq!(checkpoint::read_state(&latest).unwrap().evals_since_best, 2);
}

#[test]
fn a_non_finite_loss_stops_with_a_checkpoint_and_advice() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(dir.path());
    cfg.optim.lr = 1e30;
    cfg.optim.max_grad_norm = 0.0;
    cfg.eval_every = 0;
    let mut t = Trainer::new(cfg, None).unwrap();
    t.show_progress = false;
    let err = format!("{:#}", t.train().unwrap_err());
    assert!(
        err.contains("non-finite") && err.contains("at step") && err.contains("lower lr"),
        "{err}"
    );
    let latest = checkpoint::resolve(dir.path()).unwrap();
    let step = checkpoint::read_state(&latest).unwrap().step;
    assert!(err.contains(&format!("at step {}", step + 1)), "{err}");
    // The saved adapter is the last good one: finite.
    let tensors =
        loraplus::core::read_safetensors(&latest.join("adapter/adapter_model.safetensors"))
            .unwrap();
    for (k, v) in tensors {
        assert!(
            v.isfinite().all().int64_value(&[]) == 1,
            "{k} is not finite"
        );
    }
}
