//! No input makes a reader panic: arbitrary bytes, and lines assembled from the pieces GLUE
//! files are made of (tabs, CR/LF, BOMs, quotes, labels, invalid UTF-8), go through the TSV
//! reader of every task file, the JSONL reader and the CSV reader, strict and skipping. When a
//! reader succeeds, its result is coherent.

use loraplus_data::reader::{parse_csv, parse_glue_tsv, parse_jsonl};
use loraplus_data::{ColumnMapping, CsvOptions, ReadOptions, Task};
use proptest::prelude::*;

const PIECES: &[&[u8]] = &[
    b"\t",
    b"\t",
    b"\t",
    b"\n",
    b"\r\n",
    b"\r",
    b"\xEF\xBB\xBF",
    b"\"",
    b",",
    b"0",
    b"1",
    b"5.000",
    b"-3",
    b"nan",
    b"inf",
    b"entailment",
    b"not_entailment",
    b"neutral",
    b"contradiction",
    b"the film",
    b" ",
    b"",
    b"\xff",
    b"\xc3",
    b"\xc3\xa9",
    b"{",
    b"}",
    b":",
    b"\"t\"",
    b"\"y\"",
    b"null",
    b"[1]",
    b"\\",
    b"\0",
    b"sentence\tlabel\n",
];

fn pieces() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(PIECES), 0..120).prop_map(|v| v.concat())
}

fn json_lines() -> impl Strategy<Value = Vec<u8>> {
    let value = prop::sample::select(vec![
        "\"a b\"", "1", "0", "2.5", "null", "true", "[]", "{}", "\"yes\"", "\"no\"", "1e999", "-0",
    ]);
    let line = (
        prop::option::of(value.clone()),
        prop::option::of(value),
        prop::sample::select(vec!["", "}", "{", "\u{feff}", ","]),
    )
        .prop_map(|(t, y, junk)| {
            let mut fields = Vec::new();
            if let Some(t) = t {
                fields.push(format!("\"t\":{t}"));
            }
            if let Some(y) = y {
                fields.push(format!("\"y\":{y}"));
            }
            format!("{{{}}}{junk}\n", fields.join(","))
        });
    prop::collection::vec(line, 0..20).prop_map(|v| v.concat().into_bytes())
}

fn check_all(bytes: &[u8]) {
    for skip_malformed in [false, true] {
        let opts = ReadOptions { skip_malformed };
        for task in Task::all() {
            for file in task.files {
                if let Ok(ds) = parse_glue_tsv(bytes, "fuzz.tsv", task, file, opts) {
                    assert!(!ds.examples.is_empty());
                    assert!(skip_malformed || ds.skipped.is_empty());
                    for e in &ds.examples {
                        assert_eq!(e.text_b.is_some(), file.layout.text_b.is_some());
                        assert_eq!(e.label.is_some(), file.layout.label.is_some());
                    }
                }
            }
        }
        let mappings = [
            ColumnMapping::single("t").with_classes("y", &["0", "1", "yes"]),
            ColumnMapping::pair("t", "y").with_score("y"),
            ColumnMapping::single("t"),
        ];
        for m in &mappings {
            if let Ok(ds) = parse_jsonl(bytes, "fuzz.jsonl", m, opts) {
                assert!(!ds.examples.is_empty());
            }
            for delimiter in [b',', b'\t'] {
                if let Ok(ds) = parse_csv(bytes, "fuzz.csv", m, CsvOptions { delimiter }, opts) {
                    assert!(!ds.examples.is_empty());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        check_all(&bytes);
    }

    #[test]
    fn glue_like_pieces_never_panic(bytes in pieces()) {
        check_all(&bytes);
    }

    #[test]
    fn json_like_lines_never_panic(bytes in json_lines()) {
        check_all(&bytes);
    }

    /// With skip_malformed, a TSV of k data lines gives k examples + skipped rows.
    #[test]
    fn skipping_accounts_for_every_line(bytes in pieces()) {
        let task = Task::from_name("sst2").unwrap();
        let file = task.files[0];
        let opts = ReadOptions { skip_malformed: true };
        if let Ok(ds) = parse_glue_tsv(&bytes, "fuzz.tsv", task, &file, opts) {
            let body = bytes.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(&bytes);
            let trimmed = {
                let mut end = body.len();
                while end > 0 && matches!(body[end - 1], b'\n' | b'\r') { end -= 1; }
                &body[..end]
            };
            let lines = trimmed.split(|&b| b == b'\n').count();
            prop_assert_eq!(ds.examples.len() + ds.skipped.len(), lines - 1, "header excluded");
        }
    }
}
