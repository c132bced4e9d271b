//! JSON Lines: one JSON object per line, fields named by a [`ColumnMapping`].

use std::path::Path;

use anyhow::{Context, Result};

use super::columns::label_from_text;
use super::{
    numbered_lines, strip_bom, utf8_line, ColumnMapping, Dataset, Example, Label, LabelColumn,
    LabelKind, ReadOptions, RowSink,
};

pub(crate) fn json_type(v: &serde_json::Value) -> &'static str {
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
    let line = utf8_line(line)?;
    let obj: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(line) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
