//! Users' own classification/regression files (JSONL, CSV): every error names the file and the
//! line, for a missing column, a label outside the label list, invalid UTF-8 and a field of the
//! wrong JSON type.

use std::path::{Path, PathBuf};

use loraplus_data::{read_csv, read_jsonl, ColumnMapping, CsvOptions, ReadOptions};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn mapping() -> ColumnMapping {
    ColumnMapping::single("sentence").with_classes("label", &["neg", "pos"])
}

fn jsonl_err(dir: &Path, bytes: &[u8]) -> (String, String) {
    let p = write(dir, "data.jsonl", bytes);
    let err = read_jsonl(&p, &mapping(), ReadOptions::default()).unwrap_err();
    (format!("{err:#}"), p.display().to_string())
}

fn csv_err(dir: &Path, bytes: &[u8]) -> (String, String) {
    let p = write(dir, "data.csv", bytes);
    let err = read_csv(
        &p,
        &mapping(),
        CsvOptions::default(),
        ReadOptions::default(),
    )
    .unwrap_err();
    (format!("{err:#}"), p.display().to_string())
}

fn assert_has(err: &str, needles: &[&str]) {
    for n in needles {
        assert!(err.contains(n), "{err} should contain {n:?}");
    }
}

#[test]
fn jsonl_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = b"{\"sentence\": \"fine\", \"label\": \"pos\"}\n";
    let cases: Vec<(Vec<u8>, Vec<&str>)> = vec![
        (
            [&ok[..], b"{\"label\": \"neg\"}\n"].concat(),
            vec!["line 2", "missing field \"sentence\""],
        ),
        (
            [&ok[..], b"{\"sentence\": \"x\", \"label\": \"meh\"}\n"].concat(),
            vec!["line 2", "label \"meh\" is not one of [\"neg\", \"pos\"]"],
        ),
        (
            [&ok[..], b"{\"sentence\": \"\xff\", \"label\": \"pos\"}\n"].concat(),
            vec!["line 2", "not valid UTF-8"],
        ),
        (
            [&ok[..], b"{\"sentence\": [\"x\"], \"label\": \"pos\"}\n"].concat(),
            vec!["line 2", "\"sentence\" is an array, expected a string"],
        ),
        (
            [&ok[..], b"{\"sentence\": \"x\", \"label\": {\"v\": 1}}\n"].concat(),
            vec!["line 2", "\"label\" is an object, expected a label"],
        ),
    ];
    for (bytes, needles) in cases {
        let (err, path) = jsonl_err(d, &bytes);
        assert_has(&err, &[&format!("{path}: line")]);
        assert_has(&err, &needles);
    }
}

#[test]
fn csv_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(&[u8], Vec<&str>)> = vec![
        (
            b"text,label\nfine,pos\n",
            vec!["line 1", "no column \"sentence\""],
        ),
        (
            b"sentence,label\nfine,pos\nbad,meh\n",
            vec!["line 3", "label \"meh\" is not one of"],
        ),
        (
            b"sentence,label\nfine,pos\n\xff\xfe,neg\n",
            vec!["line 3", "\"sentence\" is not valid UTF-8"],
        ),
        (
            b"sentence,lab\xffel\nfine,pos\n",
            vec!["line 1", "header field 2 is not valid UTF-8"],
        ),
        (
            b"sentence,label\nfine,pos\nshort\n",
            vec!["line 3", "column \"label\" (field 2) missing"],
        ),
    ];
    for (bytes, needles) in cases {
        let (err, path) = csv_err(d, bytes);
        assert_has(&err, &[&format!("{path}: line")]);
        assert_has(&err, &needles);
    }
}
