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

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::task::{Column, FileLayout, Split, SplitFile, Task};

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
struct Fingerprint(Sha256);

impl Fingerprint {
    fn new(kind: &str) -> Fingerprint {
        let mut f = Fingerprint(Sha256::new());
        f.part(b"loraplus-data reader");
        f.part(kind.as_bytes());
        f
    }
    fn part(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }
    fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BOM).unwrap_or(bytes)
}

/// Lines with their 1-based numbers, without `\n`/`\r\n`; trailing newlines at the end of the
/// file make no empty rows.
fn numbered_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
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

fn utf8_line(line: &[u8]) -> std::result::Result<&str, String> {
    std::str::from_utf8(line).map_err(|e| {
        format!(
            "not valid UTF-8 (bad byte at offset {} of the line)",
            e.valid_up_to()
        )
    })
}

/// Collects rows, turning malformed ones into errors or skip records.
struct RowSink<'a> {
    origin: &'a str,
    opts: ReadOptions,
    examples: Vec<Example>,
    skipped: Vec<SkippedRow>,
}

impl<'a> RowSink<'a> {
    fn new(origin: &'a str, opts: ReadOptions) -> RowSink<'a> {
        RowSink {
            origin,
            opts,
            examples: Vec::new(),
            skipped: Vec::new(),
        }
    }

    fn push(&mut self, line: usize, row: std::result::Result<Example, String>) -> Result<()> {
        match row {
            Ok(e) => self.examples.push(e),
            Err(reason) if self.opts.skip_malformed => {
                self.skipped.push(SkippedRow { line, reason });
            }
            Err(reason) => bail!(
                "{}: line {line}: {reason} (pass skip_malformed to skip such rows)",
                self.origin
            ),
        }
        Ok(())
    }

    fn finish(self, fingerprint: [u8; 32]) -> Result<Dataset> {
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
        if !self.skipped.is_empty() {
            tracing::warn!(
                "{}: skipped {} malformed rows (first at line {}: {})",
                self.origin,
                self.skipped.len(),
                self.skipped[0].line,
                self.skipped[0].reason
            );
        }
        Ok(Dataset {
            examples: self.examples,
            origin: self.origin.to_string(),
            fingerprint,
            skipped: self.skipped,
        })
    }
}

fn parse_class(value: &str, names: &[impl AsRef<str>]) -> std::result::Result<usize, String> {
    let v = value.trim();
    names.iter().position(|n| n.as_ref() == v).ok_or_else(|| {
        let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
        format!("label {v:?} is not one of {names:?}")
    })
}

fn parse_score(value: &str) -> std::result::Result<f32, String> {
    let v = value.trim();
    match v.parse::<f32>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!("score {v:?} is not a finite number")),
    }
}

fn describe_layout(layout: &FileLayout) -> String {
    let mut parts = vec![format!("text in {}", layout.text_a)];
    if let Some(b) = layout.text_b {
        parts.push(format!("second text in {b}"));
    }
    if let Some(l) = layout.label {
        parts.push(format!("label in {l}"));
    }
    parts.join(", ")
}

fn tsv_row(
    fields: &[&str],
    layout: &FileLayout,
    labels: &[&str],
) -> std::result::Result<Example, String> {
    let n = fields.len();
    if n < layout.min_fields {
        return Err(format!(
            "expected at least {} tab-separated fields ({}), found {n}",
            layout.min_fields,
            describe_layout(layout)
        ));
    }
    let get = |c: Column| c.index(n).map(|i| fields[i]);
    let text_a = get(layout.text_a).ok_or("text column missing")?;
    let text_b = match layout.text_b {
        Some(c) => Some(get(c).ok_or("second text column missing")?.to_string()),
        None => None,
    };
    let label = match layout.label {
        Some(c) => {
            let v = get(c).ok_or("label column missing")?;
            Some(if labels.is_empty() {
                Label::Score(parse_score(v)?)
            } else {
                Label::Class(parse_class(v, labels)?)
            })
        }
        None => None,
    };
    Ok(Example {
        text_a: text_a.to_string(),
        text_b,
        label,
    })
}

/// Parse the bytes of one GLUE TSV file of `task` laid out as `file` says.
pub fn parse_glue_tsv(
    bytes: &[u8],
    origin: &str,
    task: Task,
    file: &SplitFile,
    opts: ReadOptions,
) -> Result<Dataset> {
    let mut fp = Fingerprint::new("glue-tsv/v1");
    fp.part(task.name.as_bytes());
    fp.part(file.split.to_string().as_bytes());
    fp.part(bytes);

    let layout = &file.layout;
    let mut sink = RowSink::new(origin, opts);
    let mut fields: Vec<&str> = Vec::with_capacity(16);
    for (line_no, raw) in numbered_lines(strip_bom(bytes)) {
        if layout.has_header && line_no == 1 {
            continue;
        }
        let row = utf8_line(raw).and_then(|line| {
            fields.clear();
            fields.extend(line.split('\t'));
            tsv_row(&fields, layout, task.labels)
        });
        sink.push(line_no, row)?;
    }
    sink.finish(fp.finish())
}

/// The folder of `task` under `glue_dir`.
pub fn task_dir(glue_dir: &Path, task: Task) -> PathBuf {
    glue_dir.join(task.folder)
}

/// The path of a split's file, checking that the task has such a split.
pub fn split_path(
    glue_dir: &Path,
    task: Task,
    split: Split,
) -> Result<(PathBuf, &'static SplitFile)> {
    let Some(file) = task.file(split) else {
        let splits: Vec<String> = task.files.iter().map(|f| f.split.to_string()).collect();
        bail!(
            "task {task} has no {split} split; its splits: {}",
            splits.join(", ")
        );
    };
    Ok((task_dir(glue_dir, task).join(file.file), file))
}

/// Read one split of a GLUE task from the classic layout `<glue_dir>/<TASK>/<file>.tsv`.
pub fn read_split(glue_dir: &Path, task: Task, split: Split, opts: ReadOptions) -> Result<Dataset> {
    let (path, file) = split_path(glue_dir, task, split)?;
    let dir = task_dir(glue_dir, task);
    let expected = task.expected_files().join(", ");
    if !dir.is_dir() {
        let hint = if glue_dir.is_dir() {
            format!(
                "{} exists but has no {} folder",
                glue_dir.display(),
                task.folder
            )
        } else {
            format!("{} does not exist", glue_dir.display())
        };
        bail!(
            "GLUE folder of {task} not found: {} ({hint}); expected the files {expected} there. \
             Set GLUE_DIR to the glue_data folder that holds CoLA/, SST-2/, ...",
            dir.display()
        );
    }
    if !path.is_file() {
        let mut present: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        present.sort();
        bail!(
            "{task} {split} file not found: {}; expected the files {expected} in {}, which holds [{}]",
            path.display(),
            dir.display(),
            present.join(", ")
        );
    }
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_glue_tsv(&bytes, &path.display().to_string(), task, file, opts)
}

/// How the label field of a JSONL/CSV file is read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LabelKind {
    /// Class names as they appear in the file (numbers are matched by their decimal text, so
    /// integer labels 0/1 need the names `["0", "1"]`); class id = position.
    Classes(Vec<String>),
    /// A real-valued score (a number, or a string holding one).
    Score,
}

/// The label field and how to read it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelColumn {
    pub name: String,
    pub kind: LabelKind,
}

/// Which fields of a JSONL object / CSV header hold the texts and the label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnMapping {
    pub text_a: String,
    pub text_b: Option<String>,
    /// `None` for unlabeled data.
    pub label: Option<LabelColumn>,
}

impl ColumnMapping {
    /// One text field, no label.
    pub fn single(text_a: &str) -> ColumnMapping {
        ColumnMapping {
            text_a: text_a.to_string(),
            text_b: None,
            label: None,
        }
    }

    /// Two text fields, no label.
    pub fn pair(text_a: &str, text_b: &str) -> ColumnMapping {
        ColumnMapping {
            text_b: Some(text_b.to_string()),
            ..ColumnMapping::single(text_a)
        }
    }

    /// Add a class label field with its class names (id = position).
    pub fn with_classes<S: AsRef<str>>(mut self, field: &str, names: &[S]) -> ColumnMapping {
        let names = names.iter().map(|s| s.as_ref().to_string()).collect();
        self.label = Some(LabelColumn {
            name: field.to_string(),
            kind: LabelKind::Classes(names),
        });
        self
    }

    /// Add a score label field (regression).
    pub fn with_score(mut self, field: &str) -> ColumnMapping {
        self.label = Some(LabelColumn {
            name: field.to_string(),
            kind: LabelKind::Score,
        });
        self
    }

    /// The mapping for a GLUE task's classes, with the given field names.
    pub fn for_task(task: Task, text_a: &str, text_b: Option<&str>, label: &str) -> ColumnMapping {
        let base = ColumnMapping {
            text_a: text_a.to_string(),
            text_b: text_b.map(str::to_string),
            label: None,
        };
        if task.is_regression() {
            base.with_score(label)
        } else {
            base.with_classes(label, task.labels)
        }
    }

    fn fingerprint(&self, kind: &str, extra: &[u8], bytes: &[u8]) -> [u8; 32] {
        let mut fp = Fingerprint::new(kind);
        fp.part(format!("{self:?}").as_bytes());
        fp.part(extra);
        fp.part(bytes);
        fp.finish()
    }
}

fn label_from_text(value: &str, kind: &LabelKind) -> std::result::Result<Label, String> {
    match kind {
        LabelKind::Classes(names) => parse_class(value, names).map(Label::Class),
        LabelKind::Score => parse_score(value).map(Label::Score),
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn json_text(
    obj: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> std::result::Result<String, String> {
    match obj.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!(
            "field {field:?} is {}, expected a string",
            json_type(v)
        )),
        None => Err(format!("missing field {field:?}")),
    }
}

fn json_label(
    obj: &serde_json::Map<String, serde_json::Value>,
    col: &LabelColumn,
) -> std::result::Result<Label, String> {
    let field = &col.name;
    match (obj.get(field), &col.kind) {
        (Some(serde_json::Value::String(s)), kind) => label_from_text(s, kind),
        (Some(serde_json::Value::Number(n)), LabelKind::Score) => match n.as_f64() {
            Some(x) if x.is_finite() && (x as f32).is_finite() => Ok(Label::Score(x as f32)),
            _ => Err(format!("field {field:?}: {n} is not a finite f32 score")),
        },
        (Some(serde_json::Value::Number(n)), kind) => label_from_text(&n.to_string(), kind),
        (Some(serde_json::Value::Bool(b)), kind @ LabelKind::Classes(_)) => {
            label_from_text(&b.to_string(), kind)
        }
        (Some(v), _) => Err(format!(
            "field {field:?} is {}, expected a label",
            json_type(v)
        )),
        (None, _) => Err(format!("missing field {field:?}")),
    }
}

fn json_row(line: &[u8], mapping: &ColumnMapping) -> std::result::Result<Example, String> {
    let obj: serde_json::Map<String, serde_json::Value> = match serde_json::from_slice(line) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(v) => return Err(format!("expected a JSON object, found {}", json_type(&v))),
        Err(e) => return Err(format!("not valid JSON: {e}")),
    };
    let text_a = json_text(&obj, &mapping.text_a)?;
    let text_b = match &mapping.text_b {
        Some(f) => Some(json_text(&obj, f)?),
        None => None,
    };
    let label = match &mapping.label {
        Some(col) => Some(json_label(&obj, col)?),
        None => None,
    };
    Ok(Example {
        text_a,
        text_b,
        label,
    })
}

/// Parse JSON Lines bytes: one JSON object per line; blank lines are ignored.
pub fn parse_jsonl(
    bytes: &[u8],
    origin: &str,
    mapping: &ColumnMapping,
    opts: ReadOptions,
) -> Result<Dataset> {
    let mut sink = RowSink::new(origin, opts);
    for (line_no, raw) in numbered_lines(strip_bom(bytes)) {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        sink.push(line_no, json_row(raw, mapping))?;
    }
    sink.finish(mapping.fingerprint("jsonl/v1", b"", bytes))
}

/// Read a JSON Lines file: one JSON object per line, fields named by `mapping`.
pub fn read_jsonl(path: &Path, mapping: &ColumnMapping, opts: ReadOptions) -> Result<Dataset> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_jsonl(&bytes, &path.display().to_string(), mapping, opts)
}

/// Options of the CSV reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvOptions {
    /// Field delimiter; `b','` by default, `b'\t'` for TSV with quoting.
    pub delimiter: u8,
}

impl Default for CsvOptions {
    fn default() -> CsvOptions {
        CsvOptions { delimiter: b',' }
    }
}

fn csv_column(headers: &[String], name: &str, origin: &str) -> Result<usize> {
    match headers.iter().position(|h| h == name) {
        Some(i) => Ok(i),
        None => bail!("{origin}: line 1: the header has no column {name:?}; it has {headers:?}"),
    }
}

/// Parse CSV bytes (RFC 4180 quoting) whose first record is a header naming the columns.
pub fn parse_csv(
    bytes: &[u8],
    origin: &str,
    mapping: &ColumnMapping,
    csv_opts: CsvOptions,
    opts: ReadOptions,
) -> Result<Dataset> {
    let fingerprint = mapping.fingerprint("csv/v1", &[csv_opts.delimiter], bytes);
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(csv_opts.delimiter)
        .has_headers(true)
        .flexible(true)
        .from_reader(strip_bom(bytes));
    let headers: Vec<String> = rdr
        .byte_headers()
        .with_context(|| format!("{origin}: line 1: reading the CSV header"))?
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect();
    if headers.iter().all(String::is_empty) {
        bail!("{origin}: no examples (empty file or no header)");
    }
    let col_a = csv_column(&headers, &mapping.text_a, origin)?;
    let col_b = match &mapping.text_b {
        Some(n) => Some(csv_column(&headers, n, origin)?),
        None => None,
    };
    let col_label = match &mapping.label {
        Some(l) => Some((csv_column(&headers, &l.name, origin)?, &l.kind)),
        None => None,
    };
    let mut sink = RowSink::new(origin, opts);
    let mut record = csv::ByteRecord::new();
    loop {
        let more = rdr
            .read_byte_record(&mut record)
            .with_context(|| format!("{origin}: reading CSV"))?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line() as usize);
        if record.len() == 1 && record.get(0).is_some_and(<[u8]>::is_empty) {
            continue; // a blank line
        }
        let field = |i: usize, name: &str| -> std::result::Result<&str, String> {
            let raw = record.get(i).ok_or_else(|| {
                format!(
                    "column {name:?} (field {}) missing: the row has {} fields, the header {}",
                    i + 1,
                    record.len(),
                    headers.len()
                )
            })?;
            std::str::from_utf8(raw).map_err(|e| {
                format!(
                    "column {name:?} is not valid UTF-8 (bad byte at offset {})",
                    e.valid_up_to()
                )
            })
        };
        let row = (|| {
            let text_a = field(col_a, &mapping.text_a)?.to_string();
            let text_b = match (col_b, &mapping.text_b) {
                (Some(i), Some(n)) => Some(field(i, n)?.to_string()),
                _ => None,
            };
            let label = match (col_label, &mapping.label) {
                (Some((i, kind)), Some(l)) => Some(label_from_text(field(i, &l.name)?, kind)?),
                _ => None,
            };
            Ok(Example {
                text_a,
                text_b,
                label,
            })
        })();
        sink.push(line, row)?;
    }
    sink.finish(fingerprint)
}

/// Read a CSV file whose header names the columns of `mapping`.
pub fn read_csv(
    path: &Path,
    mapping: &ColumnMapping,
    csv_opts: CsvOptions,
    opts: ReadOptions,
) -> Result<Dataset> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_csv(&bytes, &path.display().to_string(), mapping, csv_opts, opts)
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::Class(c) => write!(f, "class {c}"),
            Label::Score(s) => write!(f, "score {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str) -> Task {
        Task::from_name(name).unwrap()
    }

    fn parse(name: &str, split: Split, text: &str, skip: bool) -> Result<Dataset> {
        let t = task(name);
        let file = t.file(split).unwrap();
        let opts = ReadOptions {
            skip_malformed: skip,
        };
        parse_glue_tsv(text.as_bytes(), "mem.tsv", t, file, opts)
    }

    #[test]
    fn sst2_rows_and_header() {
        let ds = parse(
            "sst2",
            Split::Dev,
            "sentence\tlabel\nnice film \t1\nbad \t0\n",
            false,
        )
        .unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.examples[0].text_a, "nice film ");
        assert_eq!(ds.examples[0].label, Some(Label::Class(1)));
        assert_eq!(ds.examples[1].label, Some(Label::Class(0)));
    }

    #[test]
    fn cola_without_header_or_final_newline() {
        let ds = parse(
            "cola",
            Split::Dev,
            "gj04\t1\t\tA b.\r\ngj04\t0\t*\tC d.",
            false,
        )
        .unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.examples[1].text_a, "C d.");
        assert_eq!(ds.examples[1].label, Some(Label::Class(0)));
    }

    #[test]
    fn bom_header_is_skipped() {
        let text = "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA .\tB .\n";
        let ds = parse("mrpc", Split::Train, text, false).unwrap();
        assert_eq!(ds.len(), 1);
        assert_eq!(ds.examples[0].text_b.as_deref(), Some("B ."));
    }

    #[test]
    fn malformed_row_names_file_line_and_problem() {
        let err = parse(
            "sst2",
            Split::Train,
            "sentence\tlabel\nok\t1\nno label here\n",
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mem.tsv: line 3"), "{err}");
        assert!(err.contains("expected at least 2"), "{err}");
        assert!(err.contains("found 1"), "{err}");

        let err = parse(
            "qnli",
            Split::Dev,
            "i\tq\ts\tlabel\n0\ta\tb\tmaybe\n",
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2") && err.contains("\"maybe\""), "{err}");
        assert!(err.contains("entailment"), "{err}");

        let err = parse(
            "stsb",
            Split::Dev,
            "h\n0\t1\t2\t3\t4\t5\t6\ta\tb\tfive\n",
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("score \"five\""), "{err}");
    }

    #[test]
    fn skip_malformed_counts_rows() {
        let ds = parse(
            "sst2",
            Split::Train,
            "s\tl\nok\t1\nbad\nok2\t7\nok3\t0\n",
            true,
        )
        .unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.skipped.len(), 2);
        assert_eq!(ds.skipped[0].line, 3);
        assert_eq!(ds.skipped[1].line, 4);
    }

    #[test]
    fn empty_split_is_an_error() {
        let err = parse("sst2", Split::Train, "sentence\tlabel\n", false).unwrap_err();
        assert!(err.to_string().contains("no examples"), "{err}");
        assert!(parse("sst2", Split::Train, "", false).is_err());
        let err = parse("sst2", Split::Train, "s\tl\nbad\n", true).unwrap_err();
        assert!(err.to_string().contains("all 1 rows"), "{err}");
    }

    #[test]
    fn blank_line_in_the_middle_is_malformed() {
        assert!(parse("sst2", Split::Train, "s\tl\na\t1\n\nb\t0\n", false).is_err());
        // Trailing newlines are fine.
        assert_eq!(
            parse("sst2", Split::Train, "s\tl\na\t1\n\n\n", false)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let t = task("sst2");
        let bytes = b"s\tl\n\xff\xfe\t1\n";
        let err = parse_glue_tsv(
            bytes,
            "x.tsv",
            t,
            t.file(Split::Train).unwrap(),
            ReadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn test_split_has_no_labels() {
        let ds = parse("sst2", Split::Test, "index\tsentence\n0\tfine .\n", false).unwrap();
        assert_eq!(ds.examples[0].label, None);
        assert_eq!(ds.examples[0].text_a, "fine .");
    }

    #[test]
    fn fingerprint_depends_on_bytes_and_split() {
        let a = parse("sst2", Split::Train, "s\tl\na\t1\n", false).unwrap();
        let b = parse("sst2", Split::Train, "s\tl\na\t0\n", false).unwrap();
        let c = parse("sst2", Split::Dev, "s\tl\na\t1\n", false).unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
        let a2 = parse("sst2", Split::Train, "s\tl\na\t1\n", false).unwrap();
        assert_eq!(a.fingerprint, a2.fingerprint);
    }

    #[test]
    fn jsonl_with_mapping() {
        let m = ColumnMapping::pair("q", "p").with_classes("label", &["no", "yes"]);
        let text = "{\"q\":\"a?\",\"p\":\"b.\",\"label\":\"yes\"}\n\n{\"q\":\"c?\",\"p\":\"d.\",\"label\":\"no\"}\n";
        let ds = parse_jsonl(text.as_bytes(), "x.jsonl", &m, ReadOptions::default()).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.examples[0].label, Some(Label::Class(1)));
        assert_eq!(ds.examples[1].text_b.as_deref(), Some("d."));

        let m = ColumnMapping::single("t").with_classes("y", &["0", "1"]);
        let ds = parse_jsonl(b"{\"t\":\"x\",\"y\":1}", "x", &m, ReadOptions::default()).unwrap();
        assert_eq!(ds.examples[0].label, Some(Label::Class(1)));

        let m = ColumnMapping::single("t").with_score("y");
        let ds = parse_jsonl(
            b"{\"t\":\"x\",\"y\":3.5}\n{\"t\":\"x\",\"y\":\"2\"}",
            "x",
            &m,
            ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(ds.examples[0].label, Some(Label::Score(3.5)));
        assert_eq!(ds.examples[1].label, Some(Label::Score(2.0)));
    }

    #[test]
    fn jsonl_errors_name_line_and_field() {
        let m = ColumnMapping::single("t").with_classes("y", &["0", "1"]);
        let err = parse_jsonl(
            b"{\"t\":\"x\",\"y\":1}\n{\"t\":5,\"y\":1}\n",
            "f.jsonl",
            &m,
            ReadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("f.jsonl: line 2") && err.contains("\"t\" is a number"),
            "{err}"
        );
        let err = parse_jsonl(b"[1]\n", "f.jsonl", &m, ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("an array"), "{err}");
        let err = parse_jsonl(b"{\"t\":\"x\"}", "f.jsonl", &m, ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field \"y\""), "{err}");
    }

    #[test]
    fn csv_with_quotes_and_mapping() {
        let m = ColumnMapping::pair("a", "b").with_classes("label", &["neg", "pos"]);
        let text = "\u{feff}id,a,b,label\n1,\"hello, world\",\"say \"\"hi\"\"\",pos\n2,x,\"multi\nline\",neg\n";
        let ds = parse_csv(
            text.as_bytes(),
            "x.csv",
            &m,
            CsvOptions::default(),
            ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.examples[0].text_a, "hello, world");
        assert_eq!(ds.examples[0].text_b.as_deref(), Some("say \"hi\""));
        assert_eq!(ds.examples[1].text_b.as_deref(), Some("multi\nline"));
        assert_eq!(ds.examples[1].label, Some(Label::Class(0)));
    }

    #[test]
    fn csv_errors() {
        let m = ColumnMapping::single("text").with_score("score");
        let err = parse_csv(
            b"text,y\na,1\n",
            "c.csv",
            &m,
            CsvOptions::default(),
            ReadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no column \"score\""), "{err}");
        let err = parse_csv(
            b"text,score\na,1\nb\n",
            "c.csv",
            &m,
            CsvOptions::default(),
            ReadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("c.csv: line 3") && err.contains("missing"),
            "{err}"
        );
        let ds = parse_csv(
            b"text,score\na,1\nb\nc,2.5\n",
            "c.csv",
            &m,
            CsvOptions::default(),
            ReadOptions {
                skip_malformed: true,
            },
        )
        .unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.skipped.len(), 1);
        assert_eq!(ds.skipped[0].line, 3);
        assert!(parse_csv(
            b"",
            "c.csv",
            &m,
            CsvOptions::default(),
            ReadOptions::default()
        )
        .is_err());
        assert!(parse_csv(
            b"text,score\n",
            "c.csv",
            &m,
            CsvOptions::default(),
            ReadOptions::default()
        )
        .is_err());
    }

    #[test]
    fn missing_folder_lists_expected_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_split(dir.path(), task("rte"), Split::Dev, ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("train.tsv, dev.tsv, test.tsv"), "{err}");
        assert!(err.contains("GLUE_DIR"), "{err}");
        std::fs::create_dir(dir.path().join("RTE")).unwrap();
        std::fs::write(dir.path().join("RTE/train.tsv"), "x").unwrap();
        let err = read_split(dir.path(), task("rte"), Split::Dev, ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dev.tsv") && err.contains("[train.tsv]"),
            "{err}"
        );
        let err = read_split(
            dir.path(),
            task("rte"),
            Split::DevMismatched,
            ReadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no dev_mismatched split"), "{err}");
    }
}
