//! GLUE TSV files: tab split with no quoting, as the `transformers` GLUE processors read them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{
    numbered_lines, parse_class, parse_score, strip_bom, utf8_line, Dataset, Example, Fingerprint,
    Label, ReadOptions, RowSink,
};
use crate::task::{Column, FileLayout, Split, SplitFile, Task};

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
        } else if glue_dir.exists() {
            format!("{} is a file, not a folder", glue_dir.display())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::ReadOptions;

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
    fn a_missing_glue_folder_says_what_is_there_instead() {
        let dir = tempfile::tempdir().unwrap();
        let read = |glue: &Path| {
            read_split(glue, task("sst2"), Split::Train, ReadOptions::default())
                .unwrap_err()
                .to_string()
        };
        let err = read(&dir.path().join("nothere"));
        assert!(err.contains("nothere does not exist"), "{err}");
        let file = dir.path().join("glue.tsv");
        std::fs::write(&file, "x").unwrap();
        let err = read(&file);
        assert!(err.contains("glue.tsv is a file, not a folder"), "{err}");
        let err = read(dir.path());
        assert!(err.contains("exists but has no SST-2 folder"), "{err}");
        std::fs::create_dir(dir.path().join("SST-2")).unwrap();
        let err = read(dir.path());
        assert!(err.contains("train.tsv"), "{err}");
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
