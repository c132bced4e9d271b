//! Readers: GLUE TSV files (with their quirks) and users' own JSONL/CSV files, into a [`Dataset`].
//!
//! - [`read_split`] reads `<glue_dir>/<TASK>/<file>.tsv` for a [`Task`] and [`Split`]: tab split
//!   with no quoting, as the `transformers` GLUE processors read it (`csv.reader(delimiter="\t",
//!   quotechar=None)`). It handles a UTF-8 byte-order mark (MRPC), files without a header (CoLA
//!   train/dev), a missing final newline (CoLA dev), `\r\n` line ends, and test files without
//!   labels.
//! - [`read_jsonl`] and [`read_csv`] read one example per JSON object / CSV record, with a
//!   [`ColumnMapping`] that names the text and label fields.
//!
//! A malformed row is an error naming the file, the 1-based line and what was expected and found;
//! with [`ReadOptions::skip_malformed`] it is skipped instead and listed in
//! [`Dataset::skipped`]. A split without examples is an error. No input makes a reader panic
//! (see the property tests in `tests/reader_fuzz.rs`). The `parse_*` functions do the same work
//! on bytes already in memory.
//!
//! One file per format: `glue_tsv.rs` (GLUE), `jsonl.rs` (JSON Lines), `csv.rs` (RFC 4180 CSV);
//! `columns.rs` holds the [`ColumnMapping`] the last two read with. This file has what they
//! share: the example and dataset types, line numbering, row collection and fingerprints.

mod columns;
mod csv;
mod glue_tsv;
mod jsonl;

pub use columns::{ColumnMapping, LabelColumn, LabelKind};
pub use csv::{parse_csv, read_csv, CsvOptions};
pub use glue_tsv::{parse_glue_tsv, read_split, split_path, task_dir};
pub(crate) use jsonl::json_type;
pub use jsonl::{parse_jsonl, read_jsonl};

use std::fmt;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
/// The gold answer of an example.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Label {
    /// Class id: position in the task's label list.
    Class(usize),
    /// Real-valued score (STS-B: 0 to 5).
    Score(f32),
}

/// One example: a sentence or a sentence pair, with its label when the split has labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub text_a: String,
    pub text_b: Option<String>,
    pub label: Option<Label>,
}

/// A row that was skipped under [`ReadOptions::skip_malformed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedRow {
    /// 1-based line number in the file.
    pub line: usize,
    /// What was wrong with it.
    pub reason: String,
}

/// The examples of one file.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// Where they came from (a path or a name given by the caller), for messages.
    pub origin: String,
    /// sha256 of the file's bytes and of how it was read (task and split, or the column
    /// mapping); the tokenization cache is keyed by it.
    pub fingerprint: [u8; 32],
    /// Rows skipped as malformed (only with [`ReadOptions::skip_malformed`]).
    pub skipped: Vec<SkippedRow>,
}

impl Dataset {
    /// Build a dataset from examples made in memory; the fingerprint hashes the examples.
    pub fn from_examples(origin: &str, examples: Vec<Example>) -> Result<Dataset> {
        if examples.is_empty() {
            bail!("{origin}: no examples");
        }
        let mut h = Fingerprint::new("in-memory/v1");
        for e in &examples {
            h.part(e.text_a.as_bytes());
            match &e.text_b {
                Some(b) => h.part(b.as_bytes()),
                None => h.part(b"\0none"),
            }
            h.part(format!("{:?}", e.label).as_bytes());
        }
        Ok(Dataset {
            examples,
            origin: origin.to_string(),
            fingerprint: h.finish(),
            skipped: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }
}

/// How strict a reader is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOptions {
    /// Skip malformed rows (and list them in [`Dataset::skipped`]) instead of failing.
    /// Default false: a bad row is an error.
    pub skip_malformed: bool,
}

/// Length-prefixed sha256, so that ("ab","c") and ("a","bc") differ.
pub(crate) struct Fingerprint(Sha256);

impl Fingerprint {
    pub(crate) fn new(kind: &str) -> Fingerprint {
        let mut f = Fingerprint(Sha256::new());
        f.part(b"loraplus-data reader");
        f.part(kind.as_bytes());
        f
    }
    pub(crate) fn part(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }
    pub(crate) fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// `bytes` without a leading UTF-8 byte-order mark (as editors on Windows write one).
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BOM).unwrap_or(bytes)
}

/// Lines with their 1-based numbers, without `\n`/`\r\n`; trailing newlines at the end of the
/// file make no empty rows.
pub(crate) fn numbered_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let body = &bytes[..end];
    let empty = body.is_empty();
    body.split(|&b| b == b'\n')
        .filter(move |_| !empty)
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

pub(crate) fn utf8_line(line: &[u8]) -> std::result::Result<&str, String> {
    std::str::from_utf8(line).map_err(|e| {
        format!(
            "not valid UTF-8 (bad byte at offset {} of the line)",
            e.valid_up_to()
        )
    })
}

/// Collects rows, turning malformed ones into errors or skip records.
pub(crate) struct RowSink<'a> {
    origin: &'a str,
    opts: ReadOptions,
    examples: Vec<Example>,
    skipped: Vec<SkippedRow>,
}

impl<'a> RowSink<'a> {
    pub(crate) fn new(origin: &'a str, opts: ReadOptions) -> RowSink<'a> {
        RowSink {
            origin,
            opts,
            examples: Vec::new(),
            skipped: Vec::new(),
        }
    }

    pub(crate) fn push(
        &mut self,
        line: usize,
        row: std::result::Result<Example, String>,
    ) -> Result<()> {
        match row {
            Ok(e) => self.examples.push(e),
            Err(reason) if self.opts.skip_malformed => {
                self.skipped.push(SkippedRow { line, reason });
            }
            Err(reason) => bail!(
                "{}: line {line}: {reason} (skip_malformed skips such rows)",
                self.origin
            ),
        }
        Ok(())
    }

    pub(crate) fn finish(self, fingerprint: [u8; 32]) -> Result<Dataset> {
        if self.examples.is_empty() {
            match self.skipped.first() {
                Some(first) => bail!(
                    "{}: no examples: all {} rows were malformed and skipped; first, line {}: {}",
                    self.origin,
                    self.skipped.len(),
                    first.line,
                    first.reason
                ),
                None => bail!("{}: no examples (empty file or header only)", self.origin),
            }
        }
        // The skipped rows are the caller's to report (`Dataset::skipped`), once.
        Ok(Dataset {
            examples: self.examples,
            origin: self.origin.to_string(),
            fingerprint,
            skipped: self.skipped,
        })
    }
}

pub(crate) fn parse_class(
    value: &str,
    names: &[impl AsRef<str>],
) -> std::result::Result<usize, String> {
    let v = value.trim();
    names.iter().position(|n| n.as_ref() == v).ok_or_else(|| {
        let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
        format!("label {v:?} is not one of {names:?}")
    })
}

pub(crate) fn parse_score(value: &str) -> std::result::Result<f32, String> {
    let v = value.trim();
    match v.parse::<f32>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!("score {v:?} is not a finite number")),
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::Class(c) => write!(f, "class {c}"),
            Label::Score(s) => write!(f, "score {s}"),
        }
    }
}
