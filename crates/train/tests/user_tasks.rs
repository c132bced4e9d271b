//! Task kinds on the user's own files: classification on a CSV/JSONL rewrite of real SST-2 rows
//! trains to exactly the same adapter and metrics as the GLUE path on the same rows; labels
//! read from the data or given; bad files name the file and line.

use std::path::{Path, PathBuf};

use loraplus_train::{TrainConfig, Trainer};

fn glue_dir() -> PathBuf {
    std::env::var_os("GLUE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/glue"))
}

/// The first `n` rows (after the header) of a GLUE SST-2 file: `(sentence, label)`.
fn sst2_rows(file: &str, n: usize) -> Vec<(String, String)> {
    let path = glue_dir().join("SST-2").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set GLUE_DIR)", path.display()));
    text.lines()
        .skip(1)
        .take(n)
        .map(|l| {
            let (s, y) = l.rsplit_once('\t').expect("sentence<TAB>label");
            (s.to_string(), y.trim().to_string())
        })
        .collect()
}

fn csv_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn tiny(out: &Path) -> TrainConfig {
    let mut c = TrainConfig {
        output_dir: out.to_path_buf(),
        max_seq_len: Some(32),
        batch_size: 8,
        max_steps: Some(6),
        log_every: 3,
        eval_every: 3,
        ..TrainConfig::default()
    };
    c.lora.r = 4;
    c.lora.lora_dropout = 0.0;
    c
}

fn adapter(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let mut v =
        loraplus_core::read_safetensors(&dir.join("adapter/adapter_model.safetensors")).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn classification_on_user_files_equals_the_glue_path_on_the_same_rows() {
    let train = sst2_rows("train.tsv", 96);
    let dev = sst2_rows("dev.tsv", 40);
    let tmp = tempfile::tempdir().unwrap();
    // The GLUE path on a GLUE folder holding exactly these rows.
    let glue = tmp.path().join("glue/SST-2");
    std::fs::create_dir_all(&glue).unwrap();
    let tsv = |rows: &[(String, String)]| {
        let mut s = String::from("sentence\tlabel\n");
        for (x, y) in rows {
            s.push_str(&format!("{x}\t{y}\n"));
        }
        s
    };
    std::fs::write(glue.join("train.tsv"), tsv(&train)).unwrap();
    std::fs::write(glue.join("dev.tsv"), tsv(&dev)).unwrap();
    // The same rows as the user's CSV (train) and JSONL with integer labels (eval).
    let csv_path = tmp.path().join("train.csv");
    let mut csv = String::from("id,label,sentence\n");
    for (i, (x, y)) in train.iter().enumerate() {
        csv.push_str(&format!("{i},{y},{}\n", csv_quote(x)));
    }
    std::fs::write(&csv_path, csv).unwrap();
    let jsonl_path = tmp.path().join("dev.jsonl");
    let mut jsonl = String::new();
    for (x, y) in &dev {
        let y: i64 = y.parse().unwrap();
        jsonl.push_str(&serde_json::json!({"sentence": x, "label": y}).to_string());
        jsonl.push('\n');
    }
    std::fs::write(&jsonl_path, jsonl).unwrap();

    let mut g = tiny(&tmp.path().join("glue-run"));
    g.task = "sst2".into();
    g.glue_dir = Some(tmp.path().join("glue"));
    let mut u = tiny(&tmp.path().join("user-run"));
    u.task = "classification".into();
    u.train_file = Some(csv_path.clone());
    u.eval_file = Some(jsonl_path.clone());
    u.text_column = "sentence".into();
    let mut runs = Vec::new();
    for cfg in [g, u] {
        let mut t = Trainer::new(cfg, None).unwrap();
        t.show_progress = false;
        runs.push(t.train().unwrap());
    }
    let (ge, ue) = (
        runs[0].final_eval.as_ref().unwrap(),
        runs[1].final_eval.as_ref().unwrap(),
    );
    assert_eq!(ge.metrics, ue.metrics, "same metrics on the same rows");
    assert_eq!(ge.main_name, "accuracy");
    let (ga, ua) = (adapter(&runs[0].output_dir), adapter(&runs[1].output_dir));
    assert_eq!(ga.len(), ua.len());
    for ((gn, gt), (un, ut)) in ga.iter().zip(&ua) {
        assert_eq!(gn, un);
        assert!(gt.equal(ut), "{gn}: adapters differ");
    }

    // Labels given as a list, in the other order: ids swap, so the run differs but trains.
    let mut l = tiny(&tmp.path().join("listed"));
    l.task = "classification".into();
    l.train_file = Some(csv_path.clone());
    l.eval_file = Some(jsonl_path.clone());
    l.text_column = "sentence".into();
    l.labels = Some(vec!["1".into(), "0".into()]);
    l.max_steps = Some(1);
    let mut t = Trainer::new(l, None).unwrap();
    t.show_progress = false;
    assert!(t.train().unwrap().final_eval.is_some());
}

fn error_of(cfg: TrainConfig) -> String {
    match Trainer::new(cfg, None) {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_user_files_name_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let base = |train: &Path| {
        let mut c = tiny(&tmp.path().join("run"));
        c.task = "classification".into();
        c.train_file = Some(train.to_path_buf());
        c
    };
    // A label outside the given list.
    let p = tmp.path().join("t.csv");
    std::fs::write(&p, "text,label\ngood,pos\nbad,neg\nmeh,neutral\n").unwrap();
    let mut c = base(&p);
    c.labels = Some(vec!["neg".into(), "pos".into()]);
    let e = error_of(c);
    assert!(
        e.contains("t.csv") && e.contains("line 4") && e.contains("neutral"),
        "{e}"
    );
    // A missing column.
    let mut c = base(&p);
    c.text_column = "sentence".into();
    let e = error_of(c);
    assert!(e.contains("t.csv") && e.contains("sentence"), "{e}");
    // Wrong JSON type, at its line.
    let p = tmp.path().join("t.jsonl");
    std::fs::write(
        &p,
        "{\"text\": \"a\", \"label\": 1}\n{\"text\": 5, \"label\": 0}\n",
    )
    .unwrap();
    let e = error_of(base(&p));
    assert!(
        e.contains("t.jsonl") && e.contains("line 2") && e.contains("text"),
        "{e}"
    );
    // Invalid UTF-8.
    let p = tmp.path().join("u.csv");
    std::fs::write(&p, b"text,label\nok,1\n\xff\xfe,0\n").unwrap();
    let e = error_of(base(&p));
    assert!(e.contains("u.csv") && e.contains("line 3"), "{e}");
    // One class only.
    let p = tmp.path().join("one.csv");
    std::fs::write(&p, "text,label\na,1\nb,1\n").unwrap();
    let e = error_of(base(&p));
    assert!(e.contains("one.csv") && e.contains("at least 2"), "{e}");
    // An unknown extension.
    let p = tmp.path().join("data.txt");
    std::fs::write(&p, "x").unwrap();
    let e = error_of(base(&p));
    assert!(e.contains("data.txt") && e.contains(".csv"), "{e}");
    // Regression with a non-numeric score.
    let p = tmp.path().join("r.csv");
    std::fs::write(&p, "text,label\na,0.5\nb,high\n").unwrap();
    let mut c = base(&p);
    c.task = "regression".into();
    let e = error_of(c);
    assert!(e.contains("r.csv") && e.contains("line 3"), "{e}");
}
