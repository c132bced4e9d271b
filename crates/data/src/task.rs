//! The GLUE task registry: for each task its files, columns, labels and official metric.
//!
//! Adding a task is one [`TaskSpec`] entry in [`TASKS`]. A [`Task`] is a cheap, copyable handle
//! to one entry; it serializes as its canonical name (`"SST-2"`).
//!
//! Column positions and label lists follow the HuggingFace `transformers` GLUE processors
//! (`transformers/data/processors/glue.py`), which read the classic `download_glue_data.py`
//! layout; the class ids are those of the HuggingFace `glue` dataset (`datasets`' `ClassLabel`
//! names), so a head trained here agrees with one trained by `run_glue.py`.

use std::fmt;
use std::ops::Deref;

use anyhow::{bail, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which field of a tab-separated row holds a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// 0-based position from the start of the row.
    At(usize),
    /// The last field of the row (GLUE puts labels and STS-B scores last).
    Last,
}

impl Column {
    /// The field this column names in a row of `n_fields` fields, if the row is long enough.
    pub fn index(self, n_fields: usize) -> Option<usize> {
        match self {
            Column::At(i) if i < n_fields => Some(i),
            Column::At(_) => None,
            Column::Last => n_fields.checked_sub(1),
        }
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Users count columns from 1, as `cut -f` does.
            Column::At(i) => write!(f, "column {}", i + 1),
            Column::Last => write!(f, "the last column"),
        }
    }
}

/// How one GLUE TSV file is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLayout {
    /// Whether the first line is a header (CoLA train/dev have none).
    pub has_header: bool,
    /// The first (or only) sentence.
    pub text_a: Column,
    /// The second sentence of pair tasks.
    pub text_b: Option<Column>,
    /// The label or score; `None` in test files.
    pub label: Option<Column>,
    /// Rows with fewer fields are malformed.
    pub min_fields: usize,
}

/// A split of a task. MNLI has two dev (and two test) files; other tasks use `Dev`/`Test`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Split {
    Train,
    /// The dev set; for MNLI the matched one (`dev_matched.tsv`).
    Dev,
    /// MNLI's `dev_mismatched.tsv`.
    DevMismatched,
    /// The test set, without labels; for MNLI `test_matched.tsv`.
    Test,
    /// MNLI's `test_mismatched.tsv`.
    TestMismatched,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::DevMismatched => "dev_mismatched",
            Split::Test => "test",
            Split::TestMismatched => "test_mismatched",
        };
        f.write_str(name)
    }
}

/// One file of a task: which split it is, its name in the task folder and its layout.
#[derive(Clone, Copy, Debug)]
pub struct SplitFile {
    pub split: Split,
    pub file: &'static str,
    pub layout: FileLayout,
}

/// The official GLUE metric of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricKind {
    /// Accuracy (SST-2, MNLI, QNLI, RTE, WNLI).
    Accuracy,
    /// Matthews correlation coefficient (CoLA).
    Matthews,
    /// F1 of class 1 and accuracy (MRPC, QQP).
    F1Accuracy,
    /// Pearson and Spearman correlation (STS-B).
    PearsonSpearman,
}

/// Everything the pipeline needs to know about one task.
#[derive(Debug)]
pub struct TaskSpec {
    /// Canonical name, as GLUE writes it (`"SST-2"`).
    pub name: &'static str,
    /// Other accepted names; matching ignores case, `-` and `_` (so `"sst2"`, `"sst_2"` work).
    pub aliases: &'static [&'static str],
    /// The task's folder under the GLUE directory.
    pub folder: &'static str,
    /// Class names exactly as they appear in the label column; class id = position.
    /// Empty for regression.
    pub labels: &'static [&'static str],
    /// The official metric.
    pub metric: MetricKind,
    /// The files of the task, in the order train, dev(s), test(s).
    pub files: &'static [SplitFile],
}

impl TaskSpec {
    /// True for STS-B: the label is a real-valued score.
    pub fn is_regression(&self) -> bool {
        self.labels.is_empty()
    }

    /// Width of the model's output layer: number of classes, or 1 for regression.
    pub fn num_labels(&self) -> usize {
        self.labels.len().max(1)
    }

    /// True when examples have a second sentence.
    pub fn is_pair(&self) -> bool {
        self.files
            .first()
            .is_some_and(|f| f.layout.text_b.is_some())
    }

    /// The file of `split`, if the task has one.
    pub fn file(&self, split: Split) -> Option<&'static SplitFile> {
        self.files.iter().find(|f| f.split == split)
    }

    /// The dev splits that are evaluated (MNLI: matched and mismatched).
    pub fn dev_splits(&self) -> Vec<Split> {
        self.files
            .iter()
            .map(|f| f.split)
            .filter(|s| matches!(s, Split::Dev | Split::DevMismatched))
            .collect()
    }

    /// File names of all splits, for error messages.
    pub fn expected_files(&self) -> Vec<&'static str> {
        self.files.iter().map(|f| f.file).collect()
    }
}

const fn labeled(
    has_header: bool,
    text_a: Column,
    text_b: Option<Column>,
    label: Column,
    min_fields: usize,
) -> FileLayout {
    FileLayout {
        has_header,
        text_a,
        text_b,
        label: Some(label),
        min_fields,
    }
}

const fn unlabeled(text_a: Column, text_b: Option<Column>, min_fields: usize) -> FileLayout {
    FileLayout {
        has_header: true,
        text_a,
        text_b,
        label: None,
        min_fields,
    }
}

use Column::{At, Last};

// Layouts shared by QNLI, RTE and WNLI: `index, sentence1, sentence2[, label]`.
const NLI_LABELED: FileLayout = labeled(true, At(1), Some(At(2)), Last, 4);
const NLI_TEST: FileLayout = unlabeled(At(1), Some(At(2)), 3);
// MNLI: sentence1, sentence2 at 8, 9 (0-based); gold_label last (train has label1, gold_label;
// dev has label1..label5, gold_label).
const MNLI_LABELED: FileLayout = labeled(true, At(8), Some(At(9)), Last, 11);
const MNLI_TEST: FileLayout = unlabeled(At(8), Some(At(9)), 10);

const fn split_file(split: Split, file: &'static str, layout: FileLayout) -> SplitFile {
    SplitFile {
        split,
        file,
        layout,
    }
}

/// The registry. One entry per task.
pub static TASKS: &[TaskSpec] = &[
    TaskSpec {
        name: "CoLA",
        aliases: &["cola"],
        folder: "CoLA",
        labels: &["0", "1"],
        metric: MetricKind::Matthews,
        // train/dev: source, label, original label, sentence; no header.
        files: &[
            split_file(
                Split::Train,
                "train.tsv",
                labeled(false, At(3), None, At(1), 4),
            ),
            split_file(Split::Dev, "dev.tsv", labeled(false, At(3), None, At(1), 4)),
            split_file(Split::Test, "test.tsv", unlabeled(At(1), None, 2)),
        ],
    },
    TaskSpec {
        name: "SST-2",
        aliases: &["sst2", "sst"],
        folder: "SST-2",
        labels: &["0", "1"],
        metric: MetricKind::Accuracy,
        files: &[
            split_file(
                Split::Train,
                "train.tsv",
                labeled(true, At(0), None, At(1), 2),
            ),
            split_file(Split::Dev, "dev.tsv", labeled(true, At(0), None, At(1), 2)),
            split_file(Split::Test, "test.tsv", unlabeled(At(1), None, 2)),
        ],
    },
    TaskSpec {
        name: "MRPC",
        aliases: &["mrpc"],
        folder: "MRPC",
        labels: &["0", "1"],
        metric: MetricKind::F1Accuracy,
        // Quality, #1 ID, #2 ID, #1 String, #2 String (header starts with a UTF-8 BOM).
        files: &[
            split_file(
                Split::Train,
                "train.tsv",
                labeled(true, At(3), Some(At(4)), At(0), 5),
            ),
            split_file(
                Split::Dev,
                "dev.tsv",
                labeled(true, At(3), Some(At(4)), At(0), 5),
            ),
            split_file(Split::Test, "test.tsv", unlabeled(At(3), Some(At(4)), 5)),
        ],
    },
    TaskSpec {
        name: "STS-B",
        aliases: &["stsb", "sts"],
        folder: "STS-B",
        labels: &[],
        metric: MetricKind::PearsonSpearman,
        // index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, score.
        files: &[
            split_file(
                Split::Train,
                "train.tsv",
                labeled(true, At(7), Some(At(8)), Last, 10),
            ),
            split_file(
                Split::Dev,
                "dev.tsv",
                labeled(true, At(7), Some(At(8)), Last, 10),
            ),
            split_file(Split::Test, "test.tsv", unlabeled(At(7), Some(At(8)), 9)),
        ],
    },
    TaskSpec {
        name: "QQP",
        aliases: &["qqp"],
        folder: "QQP",
        labels: &["0", "1"],
        metric: MetricKind::F1Accuracy,
        // id, qid1, qid2, question1, question2, is_duplicate; test: id, question1, question2.
        files: &[
            split_file(
                Split::Train,
                "train.tsv",
                labeled(true, At(3), Some(At(4)), At(5), 6),
            ),
            split_file(
                Split::Dev,
                "dev.tsv",
                labeled(true, At(3), Some(At(4)), At(5), 6),
            ),
            split_file(Split::Test, "test.tsv", unlabeled(At(1), Some(At(2)), 3)),
        ],
    },
    TaskSpec {
        name: "MNLI",
        aliases: &["mnli", "multinli"],
        folder: "MNLI",
        labels: &["entailment", "neutral", "contradiction"],
        metric: MetricKind::Accuracy,
        files: &[
            split_file(Split::Train, "train.tsv", MNLI_LABELED),
            split_file(Split::Dev, "dev_matched.tsv", MNLI_LABELED),
            split_file(Split::DevMismatched, "dev_mismatched.tsv", MNLI_LABELED),
            split_file(Split::Test, "test_matched.tsv", MNLI_TEST),
            split_file(Split::TestMismatched, "test_mismatched.tsv", MNLI_TEST),
        ],
    },
    TaskSpec {
        name: "QNLI",
        aliases: &["qnli"],
        folder: "QNLI",
        labels: &["entailment", "not_entailment"],
        metric: MetricKind::Accuracy,
        files: &[
            split_file(Split::Train, "train.tsv", NLI_LABELED),
            split_file(Split::Dev, "dev.tsv", NLI_LABELED),
            split_file(Split::Test, "test.tsv", NLI_TEST),
        ],
    },
    TaskSpec {
        name: "RTE",
        aliases: &["rte"],
        folder: "RTE",
        labels: &["entailment", "not_entailment"],
        metric: MetricKind::Accuracy,
        files: &[
            split_file(Split::Train, "train.tsv", NLI_LABELED),
            split_file(Split::Dev, "dev.tsv", NLI_LABELED),
            split_file(Split::Test, "test.tsv", NLI_TEST),
        ],
    },
    TaskSpec {
        name: "WNLI",
        aliases: &["wnli"],
        folder: "WNLI",
        // The files hold 0/1; HF names them not_entailment/entailment.
        labels: &["0", "1"],
        metric: MetricKind::Accuracy,
        files: &[
            split_file(Split::Train, "train.tsv", NLI_LABELED),
            split_file(Split::Dev, "dev.tsv", NLI_LABELED),
            split_file(Split::Test, "test.tsv", NLI_TEST),
        ],
    },
];

/// A handle to one registry entry. Derefs to its [`TaskSpec`].
#[derive(Clone, Copy)]
pub struct Task(&'static TaskSpec);

fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '-' | '_' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

impl Task {
    /// Look a task up by name or alias, ignoring case, `-`, `_` and spaces.
    pub fn from_name(name: &str) -> Result<Task> {
        let wanted = normalize(name);
        for spec in TASKS {
            let names = std::iter::once(spec.name)
                .chain(std::iter::once(spec.folder))
                .chain(spec.aliases.iter().copied());
            if names.map(normalize).any(|n| n == wanted) {
                return Ok(Task(spec));
            }
        }
        let valid: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
        bail!(
            "unknown task {name:?}; valid tasks: {} (case, '-' and '_' are ignored)",
            valid.join(", ")
        )
    }

    /// A task over the user's own files (not a GLUE task): its name, class names as they appear
    /// in the label column (class id = position; empty for regression) and metric. It has no
    /// GLUE files; read its data with [`crate::read_csv`] / [`crate::read_jsonl`]. The spec
    /// lives for the rest of the process (a run makes one).
    pub fn user(name: &str, labels: &[String], metric: MetricKind) -> Result<Task> {
        let regression = labels.is_empty();
        match (regression, metric) {
            (true, MetricKind::PearsonSpearman) | (false, MetricKind::Accuracy) => {}
            (false, MetricKind::Matthews | MetricKind::F1Accuracy) if labels.len() == 2 => {}
            (false, MetricKind::Matthews | MetricKind::F1Accuracy) => bail!(
                "{name}: the {metric:?} metric needs exactly 2 classes, found {}",
                labels.len()
            ),
            (true, m) => {
                bail!("{name}: a regression task is scored by Pearson/Spearman, not {m:?}")
            }
            (false, MetricKind::PearsonSpearman) => {
                bail!("{name}: Pearson/Spearman scores a regression task, not classes")
            }
        }
        if labels.len() == 1 {
            bail!(
                "{name}: a classification task needs at least 2 classes, found 1 ({:?})",
                labels[0]
            );
        }
        let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
        let names: Vec<&'static str> = labels.iter().map(|l| leak(l)).collect();
        let spec = TaskSpec {
            name: leak(name),
            aliases: &[],
            folder: leak(name),
            labels: Box::leak(names.into_boxed_slice()),
            metric,
            files: &[],
        };
        Ok(Task(Box::leak(Box::new(spec))))
    }

    /// Every registered task.
    pub fn all() -> impl Iterator<Item = Task> {
        TASKS.iter().map(Task)
    }

    /// The registry entry.
    pub fn spec(self) -> &'static TaskSpec {
        self.0
    }
}

impl Deref for Task {
    type Target = TaskSpec;
    fn deref(&self) -> &TaskSpec {
        self.0
    }
}

impl PartialEq for Task {
    fn eq(&self, other: &Task) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}
impl Eq for Task {}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Task({})", self.0.name)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl std::str::FromStr for Task {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Task> {
        Task::from_name(s)
    }
}

impl Serialize for Task {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name)
    }
}

impl<'de> Deserialize<'de> for Task {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Task, D::Error> {
        let name = String::deserialize(d)?;
        Task::from_name(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_resolve() {
        for (name, canonical) in [
            ("sst2", "SST-2"),
            ("SST-2", "SST-2"),
            ("sst_2", "SST-2"),
            ("STS-B", "STS-B"),
            ("stsb", "STS-B"),
            ("cola", "CoLA"),
            ("MNLI", "MNLI"),
            ("qnli", "QNLI"),
            ("Rte", "RTE"),
            ("wnli", "WNLI"),
            ("qqp", "QQP"),
            ("mrpc", "MRPC"),
        ] {
            assert_eq!(Task::from_name(name).unwrap().name, canonical, "{name}");
        }
    }

    #[test]
    fn unknown_name_lists_valid_tasks() {
        let err = Task::from_name("imdb").unwrap_err().to_string();
        assert!(err.contains("imdb"), "{err}");
        for t in TASKS {
            assert!(err.contains(t.name), "{err} lacks {}", t.name);
        }
    }

    #[test]
    fn registry_is_consistent() {
        assert_eq!(TASKS.len(), 9);
        for t in Task::all() {
            assert!(t.file(Split::Train).is_some(), "{t}");
            assert!(t.file(Split::Dev).is_some(), "{t}");
            assert!(t.file(Split::Test).is_some(), "{t}");
            for f in t.files {
                let l = f.layout;
                assert_eq!(
                    l.label.is_some(),
                    !matches!(f.split, Split::Test | Split::TestMismatched)
                );
                let max_at = [Some(l.text_a), l.text_b, l.label]
                    .into_iter()
                    .flatten()
                    .filter_map(|c| match c {
                        Column::At(i) => Some(i + 1),
                        Column::Last => None,
                    })
                    .max()
                    .unwrap_or(0);
                assert!(max_at <= l.min_fields, "{t} {}", f.file);
                assert_eq!(l.text_b.is_some(), t.is_pair(), "{t} {}", f.file);
            }
        }
        let mnli = Task::from_name("mnli").unwrap();
        assert_eq!(mnli.dev_splits(), vec![Split::Dev, Split::DevMismatched]);
        assert!(Task::from_name("stsb").unwrap().is_regression());
        assert_eq!(Task::from_name("stsb").unwrap().num_labels(), 1);
        assert_eq!(mnli.num_labels(), 3);
    }

    #[test]
    fn task_serializes_as_its_name() {
        let t = Task::from_name("sst2").unwrap();
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(s, "\"SST-2\"");
        let back: Task = serde_json::from_str("\"sst2\"").unwrap();
        assert_eq!(back, t);
        assert!(serde_json::from_str::<Task>("\"nope\"").is_err());
    }

    #[test]
    fn column_index() {
        assert_eq!(Column::At(2).index(3), Some(2));
        assert_eq!(Column::At(3).index(3), None);
        assert_eq!(Column::Last.index(3), Some(2));
        assert_eq!(Column::Last.index(0), None);
    }
}
