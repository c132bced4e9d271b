//! DeBERTa-v3-style folders (spm.model, no tokenizer.json) tokenize as transformers'
//! `AutoTokenizer` does: `reference/deberta_spm_ref.py` trains a small SentencePiece Unigram
//! model, writes the folders as microsoft/deberta-v3-* ship them (cased; lowercased with
//! punctuation split) and the ids and token type ids Python gives for single texts and pairs
//! (whitespace runs, tabs, accents composed and not, unknown characters, special and added
//! tokens in the text, truncation). Compared row by row.

use std::path::Path;
use std::process::Command;

use loraplus_data::Encoder;
use serde_json::Value;

#[test]
fn spm_folders_tokenize_as_transformers_row_by_row() {
    let dir = tempfile::tempdir().unwrap();
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run `make setup`",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/deberta_spm_ref.py");
    let o = Command::new(&python)
        .arg(&script)
        .arg(dir.path())
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .expect("running python");
    assert!(
        o.status.success(),
        "deberta_spm_ref.py failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("expected.json")).unwrap())
            .unwrap();
    let max_len = expected["max_len"].as_u64().unwrap() as usize;
    for case in ["cased", "lower"] {
        let folder = dir.path().join(case);
        assert!(!folder.join("tokenizer.json").exists());
        let enc = Encoder::from_model_dir(&folder, max_len).unwrap_or_else(|e| panic!("{e:#}"));
        let want = &expected["cases"][case];
        assert_eq!(
            u64::from(enc.pad_id()),
            want["pad_id"].as_u64().unwrap(),
            "{case}: pad id"
        );
        let rows = want["rows"].as_array().unwrap();
        assert!(rows.len() >= 20);
        for (i, r) in rows.iter().enumerate() {
            let a = r["a"].as_str().unwrap();
            let b = r["b"].as_str();
            let (ids, types) = enc.encode(a, b).unwrap();
            let ids: Vec<u64> = ids.into_iter().map(u64::from).collect();
            let types: Vec<u64> = types.into_iter().map(u64::from).collect();
            let want_ids: Vec<u64> = serde_json::from_value(r["ids"].clone()).unwrap();
            let want_types: Vec<u64> = serde_json::from_value(r["types"].clone()).unwrap();
            assert_eq!(ids, want_ids, "{case} row {i}: ids of {a:?} / {b:?}");
            assert_eq!(
                types, want_types,
                "{case} row {i}: type ids of {a:?} / {b:?}"
            );
        }
    }
}
