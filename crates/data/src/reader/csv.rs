//! CSV with RFC 4180 quoting, for users' own data; the first record is a header.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::columns::label_from_text;
use super::{strip_bom, ColumnMapping, Dataset, Example, ReadOptions, RowSink};

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
    let mut at = headers.iter().enumerate().filter(|(_, h)| *h == name);
    match (at.next(), at.next()) {
        (Some((i, _)), None) => Ok(i),
        (Some((i, _)), Some((j, _))) => bail!(
            "{origin}: line 1: the header names column {name:?} twice (fields {} and {}): rename one",
            i + 1,
            j + 1
        ),
        (None, _) => {
            bail!("{origin}: line 1: the header has no column {name:?}; it has {headers:?}")
        }
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
    let mut rdr = ::csv::ReaderBuilder::new()
        .delimiter(csv_opts.delimiter)
        .has_headers(true)
        .flexible(true)
        .from_reader(strip_bom(bytes));
    // Line numbers come from byte offsets: the reader's own count goes wrong with CRLF line
    // endings (and its offset may point at the previous line's `\n`).
    let body = strip_bom(bytes);
    let (mut counted_to, mut line_at) = (0usize, 1usize);
    let headers: Vec<String> = rdr
        .byte_headers()
        .with_context(|| format!("{origin}: line 1: reading the CSV header"))?
        .iter()
        .enumerate()
        .map(|(i, h)| match std::str::from_utf8(h) {
            Ok(name) => Ok(name.trim().to_string()),
            Err(e) => bail!(
                "{origin}: line 1: header field {} is not valid UTF-8 (bad byte at offset {})",
                i + 1,
                e.valid_up_to()
            ),
        })
        .collect::<Result<_>>()?;
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
    let mut record = ::csv::ByteRecord::new();
    // TSV rows holding a field that spans lines: a quote opened a field (RFC 4180), most
    // likely by accident in a TSV, and the lines up to the closing quote became one row.
    let mut multi_line: Vec<usize> = Vec::new();
    loop {
        let more = rdr
            .read_byte_record(&mut record)
            .with_context(|| format!("{origin}: reading CSV"))?;
        if !more {
            break;
        }
        let mut start = record
            .position()
            .map_or(counted_to, |p| (p.byte() as usize).min(body.len()));
        while body.get(start).is_some_and(|b| matches!(b, b'\r' | b'\n')) {
            start += 1;
        }
        if start >= counted_to {
            line_at += body[counted_to..start]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            counted_to = start;
        }
        let line = line_at;
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
        let spans_lines = record.iter().any(|f| f.contains(&b'\n'));
        // A quote that opens a field and never closes takes the rest of the file into that
        // field: the record ends at the end of the file holding an odd number of quotes.
        let rest = &body[start.min(body.len())..];
        let count = |byte: u8| rest.iter().filter(|&&b| b == byte).count();
        if spans_lines && rdr.position().byte() as usize >= body.len() && count(b'"') % 2 == 1 {
            // The record's lines, but for the file's final newline.
            let last = line_at + count(b'\n') - usize::from(rest.ends_with(b"\n"));
            bail!(
                "{origin}: line {line}: a quoted field opened on this line is never closed: a \" at the start of a field runs to the next \", here to the end of the file, so lines {line}-{last} became one row; close the quote (a quote inside a quoted field is written \"\") or remove it"
            );
        }
        if csv_opts.delimiter == b'\t' && spans_lines {
            multi_line.push(line);
        }
        let row = (|| {
            if record.len() > headers.len()
                && record.iter().skip(headers.len()).any(|f| !f.is_empty())
            {
                return Err(format!(
                    "the row has {} fields, the header {} (a delimiter inside an unquoted field?)",
                    record.len(),
                    headers.len()
                ));
            }
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
    if let Some(first) = multi_line.first() {
        tracing::warn!(
            "{origin}: {} row(s) hold a quoted field spanning several lines (first at line {first}): a \" at the start of a field opens a quoted field that runs to the next \", so those lines became one example; remove the quote or quote the field",
            multi_line.len()
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::Label;

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

    /// A quote that opens a field and never closes would take every later line into that
    /// field: refused, skip_malformed or not, naming the line it opened on and the lines lost.
    /// A quote inside an unquoted field, and a closed quoted field over two lines, are text.
    #[test]
    fn an_unterminated_quote_is_refused_naming_its_line() {
        let m = ColumnMapping::single("text").with_classes("label", &["neg", "pos"]);
        for skip_malformed in [false, true] {
            let opts = ReadOptions { skip_malformed };
            let text = "text,label\na 5\" screen,pos\n\"b unclosed,neg\nc,pos\nd,neg\n";
            let err = parse_csv(text.as_bytes(), "q.csv", &m, CsvOptions::default(), opts)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("q.csv: line 3: a quoted field opened on this line is never closed")
                    && err.contains("lines 3-5 became one row"),
                "{err}"
            );
        }
        let ok = "text,label\na 5\" screen,pos\n\"two\nlines\",neg\n";
        let ds = parse_csv(
            ok.as_bytes(),
            "q.csv",
            &m,
            CsvOptions::default(),
            ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(ds.examples[0].text_a, "a 5\" screen");
        assert_eq!(ds.examples[1].text_a, "two\nlines");
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
        // The same lines counted the same with CRLF endings, a BOM, a quoted field across two
        // lines and a blank line before the bad row.
        let ds = parse_csv(
            "\u{feff}text,score\r\n\"a\r\nb\",1\r\n\r\nc\r\nd,2.5\r\ne\r\n".as_bytes(),
            "c.csv",
            &m,
            CsvOptions::default(),
            ReadOptions {
                skip_malformed: true,
            },
        )
        .unwrap();
        assert_eq!(ds.len(), 2);
        let lines: Vec<usize> = ds.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [5, 7]);
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

    /// A row with more fields than the header (an unquoted comma in the text) is malformed,
    /// not read from its first fields; empty trailing fields are fine. A used column named
    /// twice in the header is refused.
    #[test]
    fn extra_fields_and_duplicate_columns_are_refused() {
        let m = ColumnMapping::single("text").with_classes("label", &["neg", "pos"]);
        let read = |text: &str| {
            parse_csv(
                text.as_bytes(),
                "c.csv",
                &m,
                CsvOptions::default(),
                ReadOptions::default(),
            )
        };
        let err = format!(
            "{:#}",
            read("label,text\npos,hello, world and more\n").unwrap_err()
        );
        assert!(
            err.contains("line 2") && err.contains("the row has 3 fields, the header 2"),
            "{err}"
        );
        assert_eq!(read("label,text\npos,hello,,\n").unwrap().len(), 1);
        let err = format!("{:#}", read("text,label,text\na,pos,b\n").unwrap_err());
        assert!(
            err.contains("names column \"text\" twice (fields 1 and 3)"),
            "{err}"
        );
    }
}
