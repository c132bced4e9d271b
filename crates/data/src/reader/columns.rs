//! Which fields of a JSONL object or CSV record hold the texts and the label.

use serde::{Deserialize, Serialize};

use super::{parse_class, parse_score, Fingerprint, Label};
use crate::task::Task;

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

    pub(crate) fn fingerprint(&self, kind: &str, extra: &[u8], bytes: &[u8]) -> [u8; 32] {
        let mut fp = Fingerprint::new(kind);
        fp.part(format!("{self:?}").as_bytes());
        fp.part(extra);
        fp.part(bytes);
        fp.finish()
    }
}

pub(crate) fn label_from_text(value: &str, kind: &LabelKind) -> std::result::Result<Label, String> {
    match kind {
        LabelKind::Classes(names) => parse_class(value, names).map(Label::Class),
        LabelKind::Score => parse_score(value).map(Label::Score),
    }
}
