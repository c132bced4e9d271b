//! Token ids equal HuggingFace's: `reference/tokenize_ref.py` reads the same GLUE files and runs
//! `AutoTokenizer(...)(a, b, truncation="longest_first", max_length=N)` with the Python of
//! `.venv`. Checked on the whole SST-2 dev set and all MRPC dev pairs at 128 and 16 tokens, and
//! 500 QNLI dev pairs at 48 (long passages: truncation of both sides). Also: the on-disk cache
//! is hit on a second run and survives damage, and real batches are padded with HF's pad id.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use loraplus_data::paths::{glue_dir, model_dir};
use loraplus_data::{
    load_split, read_split, CacheStatus, DataLoader, Dataset, Encoder, LoaderConfig, Position,
    ReadOptions, Split, Task,
};
use serde_json::Value;

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(p.exists(), "{} not found: run `make setup`", p.display());
    p
}

/// The Python reference, computed once per test binary.
fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ref.json");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/tokenize_ref.py");
        let run = Command::new(python())
            .arg(script)
            .arg(model_dir())
            .arg(glue_dir())
            .arg(&out)
            .output()
            .expect("running python");
        assert!(
            run.status.success(),
            "tokenize_ref.py failed:\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
    })
}

fn read(task: &str, split: Split) -> Dataset {
    read_split(
        &glue_dir(),
        Task::from_name(task).unwrap(),
        split,
        ReadOptions::default(),
    )
    .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn assert_parity(case: &str, ds: &Dataset, max_len: usize, limit: Option<usize>) {
    let want = reference()[case]
        .as_array()
        .unwrap_or_else(|| panic!("{case} missing"));
    let encoder = Encoder::from_model_dir(&model_dir(), max_len).unwrap();
    let got = encoder.encode_dataset(ds).unwrap();
    let n = limit.unwrap_or(ds.len());
    assert_eq!(want.len(), n, "{case}: example count");
    let mut truncated = 0;
    for (i, w) in want.iter().enumerate() {
        let ex = got.get(i);
        assert_eq!(
            ex.input_ids,
            ids(&w["input_ids"]),
            "{case}: input ids of example {i}: {:?}",
            ds.examples[i]
        );
        assert_eq!(
            ex.token_type_ids,
            ids(&w["token_type_ids"]),
            "{case}: type ids of example {i}"
        );
        assert!(ex.input_ids.len() <= max_len);
        truncated += usize::from(ex.input_ids.len() == max_len);
        // One example at a time gives the same as the parallel dataset path.
        if i % 97 == 0 {
            let e = &ds.examples[i];
            let (one, types) = encoder.encode(&e.text_a, e.text_b.as_deref()).unwrap();
            assert_eq!(
                (one.as_slice(), types.as_slice()),
                (ex.input_ids, ex.token_type_ids)
            );
        }
    }
    if max_len <= 48 {
        assert!(
            truncated > n / 4,
            "{case}: only {truncated} examples reach the limit; truncation untested"
        );
    }
}

#[test]
fn sst2_dev_equals_huggingface() {
    let ds = read("sst2", Split::Dev);
    assert_parity("sst2_dev_128", &ds, 128, None);
    assert_parity("sst2_dev_16", &ds, 16, None);
}

#[test]
fn mrpc_dev_pairs_equal_huggingface() {
    let ds = read("mrpc", Split::Dev);
    assert_parity("mrpc_dev_128", &ds, 128, None);
    assert_parity("mrpc_dev_16", &ds, 16, None);
}

#[test]
fn qnli_dev_long_pairs_equal_huggingface() {
    let mut ds = read("qnli", Split::Dev);
    ds.examples.truncate(500);
    assert_parity("qnli_dev500_48", &ds, 48, Some(500));
}

#[test]
fn pad_id_and_batches_on_real_data() {
    let encoder = Encoder::from_model_dir(&model_dir(), 128).unwrap();
    assert_eq!(
        i64::from(encoder.pad_id()),
        reference()["pad_token_id"].as_i64().unwrap()
    );
    let ds = read("mrpc", Split::Dev);
    let data = Arc::new(encoder.encode_dataset(&ds).unwrap());
    let loader = DataLoader::new(data.clone(), encoder.pad_id(), LoaderConfig::eval(32)).unwrap();
    let mut seen = 0;
    for batch in loader.prefetch(Position::default()).unwrap() {
        let batch = batch.unwrap();
        let lengths: Vec<i64> = Vec::try_from(&batch.attention_mask.sum_dim_intlist(
            1,
            false,
            tch::Kind::Int64,
        ))
        .unwrap();
        for (row, &i) in batch.indices.iter().enumerate() {
            assert_eq!(lengths[row] as usize, data.seq_len(i));
            let first: i64 = batch.input_ids.int64_value(&[row as i64, 0]);
            assert_eq!(first, 101, "[CLS]");
        }
        seen += batch.size();
    }
    assert_eq!(seen, 408);
}

#[test]
fn second_run_reads_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let ds = read("sst2", Split::Dev);
    let encoder = Encoder::from_model_dir(&model_dir(), 128).unwrap();

    let (first, status) = encoder.encode_cached(&ds, cache.path()).unwrap();
    let CacheStatus::Written(path) = status else {
        panic!("first run: {status:?}")
    };
    assert!(path.is_file());
    assert_eq!(path, encoder.cache_path(&ds, cache.path()));

    let (second, status) = encoder.encode_cached(&ds, cache.path()).unwrap();
    assert_eq!(status, CacheStatus::Hit(path.clone()));
    assert_eq!(second, first);

    // Another max_seq_len is another key, another file.
    let short = Encoder::from_model_dir(&model_dir(), 16).unwrap();
    let (_, status) = short.encode_cached(&ds, cache.path()).unwrap();
    assert!(
        matches!(status, CacheStatus::Written(ref p) if *p != path),
        "{status:?}"
    );

    // Other data (dev vs train of another task) is another key too.
    let other = read("cola", Split::Dev);
    assert_ne!(encoder.cache_key(&other), encoder.cache_key(&ds));

    // A damaged file is ignored and rewritten.
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (third, status) = encoder.encode_cached(&ds, cache.path()).unwrap();
    assert_eq!(status, CacheStatus::Written(path.clone()));
    assert_eq!(third, first);
    let (_, status) = encoder.encode_cached(&ds, cache.path()).unwrap();
    assert_eq!(status, CacheStatus::Hit(path));

    // The one-call path gives the same, with or without the cache.
    let task = Task::from_name("sst2").unwrap();
    let opts = ReadOptions::default();
    let cached = load_split(
        &glue_dir(),
        task,
        Split::Dev,
        &encoder,
        Some(cache.path()),
        opts,
    )
    .unwrap();
    let fresh = load_split(&glue_dir(), task, Split::Dev, &encoder, None, opts).unwrap();
    assert_eq!(cached, first);
    assert_eq!(fresh, first);
}

#[test]
fn tokenizer_errors_are_clear() {
    let err = Encoder::from_file(Path::new("/nonexistent/tokenizer.json"), 128)
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains(
            "/nonexistent/tokenizer.json (a model folder holds tokenizer.json beside config.json)"
        ),
        "{err:#}"
    );
    let err = Encoder::from_model_dir(&model_dir(), 3).err().unwrap();
    assert!(err.to_string().contains("max_seq_len 3"), "{err}");
    let err = Encoder::from_bytes(b"{}", "x.json", 128).err().unwrap();
    assert!(err.to_string().contains("x.json"), "{err}");
}
