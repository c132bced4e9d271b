//! The GLUE readers on the real files in `$GLUE_DIR` (default `../shared/glue`): every file
//! present has the official number of rows and label counts, and the known quirks (BOM, no
//! header, no final newline, string labels, score in the last column) are read right. Tasks
//! whose files are absent here (MNLI, QQP, RTE) are read from small files in the exact GLUE
//! format, written by the tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use loraplus_data::paths::glue_dir;
use loraplus_data::reader::{read_split, split_path};
use loraplus_data::{Label, ReadOptions, Split, Task};

/// Official sizes (data rows, without header) of every GLUE file, as HuggingFace's `glue`
/// dataset and `shared/glue/SOURCES.md` give them.
const OFFICIAL_ROWS: &[(&str, Split, usize)] = &[
    ("CoLA", Split::Train, 8_551),
    ("CoLA", Split::Dev, 1_043),
    ("CoLA", Split::Test, 1_063),
    ("SST-2", Split::Train, 67_349),
    ("SST-2", Split::Dev, 872),
    ("SST-2", Split::Test, 1_821),
    ("MRPC", Split::Train, 3_668),
    ("MRPC", Split::Dev, 408),
    ("MRPC", Split::Test, 1_725),
    ("STS-B", Split::Train, 5_749),
    ("STS-B", Split::Dev, 1_500),
    ("STS-B", Split::Test, 1_379),
    ("QQP", Split::Train, 363_846),
    ("QQP", Split::Dev, 40_430),
    ("QQP", Split::Test, 390_965),
    ("MNLI", Split::Train, 392_702),
    ("MNLI", Split::Dev, 9_815),
    ("MNLI", Split::DevMismatched, 9_832),
    ("MNLI", Split::Test, 9_796),
    ("MNLI", Split::TestMismatched, 9_847),
    ("QNLI", Split::Train, 104_743),
    ("QNLI", Split::Dev, 5_463),
    ("QNLI", Split::Test, 5_463),
    ("RTE", Split::Train, 2_490),
    ("RTE", Split::Dev, 277),
    ("RTE", Split::Test, 3_000),
    ("WNLI", Split::Train, 635),
    ("WNLI", Split::Dev, 71),
    ("WNLI", Split::Test, 146),
];

/// Label counts from `shared/glue/SOURCES.md`: (task, split, [count of class 0, class 1, ...]).
const LABEL_COUNTS: &[(&str, Split, &[usize])] = &[
    ("SST-2", Split::Train, &[29_780, 37_569]),
    ("SST-2", Split::Dev, &[428, 444]),
    ("MRPC", Split::Train, &[1_194, 2_474]),
    ("MRPC", Split::Dev, &[129, 279]),
    ("CoLA", Split::Train, &[2_528, 6_023]),
    ("CoLA", Split::Dev, &[322, 721]),
    // entailment = 0, not_entailment = 1.
    ("QNLI", Split::Dev, &[2_702, 2_761]),
    ("WNLI", Split::Train, &[323, 312]),
    ("WNLI", Split::Dev, &[40, 31]),
];

fn glue() -> PathBuf {
    let dir = glue_dir();
    assert!(
        dir.join("SST-2").is_dir(),
        "GLUE data not found at {} (set GLUE_DIR)",
        dir.display()
    );
    dir
}

fn task(name: &str) -> Task {
    Task::from_name(name).unwrap()
}

fn strict() -> ReadOptions {
    ReadOptions::default()
}

#[test]
fn every_present_file_has_the_official_row_count() {
    let dir = glue();
    let mut checked = Vec::new();
    for &(name, split, rows) in OFFICIAL_ROWS {
        let t = task(name);
        let (path, _) = split_path(&dir, t, split).unwrap();
        if !path.exists() {
            continue;
        }
        let ds = read_split(&dir, t, split, strict()).unwrap();
        assert_eq!(ds.len(), rows, "{}", path.display());
        assert!(ds.skipped.is_empty());
        let labeled = !matches!(split, Split::Test | Split::TestMismatched);
        assert!(
            ds.examples.iter().all(|e| e.label.is_some() == labeled),
            "{}",
            path.display()
        );
        assert!(
            ds.examples
                .iter()
                .all(|e| e.text_b.is_some() == t.is_pair()),
            "{}",
            path.display()
        );
        checked.push(format!("{name}/{split}"));
    }
    // What shared/glue holds today (SOURCES.md): all of CoLA, SST-2, MRPC, STS-B, WNLI, and QNLI
    // dev and test. More files may come; fewer would mean the data went missing.
    assert!(
        checked.len() >= 17,
        "only {} files checked: {checked:?}",
        checked.len()
    );

    // Every split file in the GLUE folder is one the table knows.
    for t in Task::all() {
        let tdir = dir.join(t.folder);
        let Ok(entries) = std::fs::read_dir(&tdir) else {
            continue;
        };
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(f) = t.files.iter().find(|f| f.file == file) {
                assert!(
                    checked.contains(&format!("{}/{}", t.name, f.split)),
                    "{file} of {t} unchecked"
                );
            }
        }
    }
}

#[test]
fn label_counts_match_the_sources() {
    let dir = glue();
    for &(name, split, want) in LABEL_COUNTS {
        let ds = read_split(&dir, task(name), split, strict()).unwrap();
        let mut counts = vec![0usize; want.len()];
        for e in &ds.examples {
            match e.label {
                Some(Label::Class(c)) => counts[c] += 1,
                other => panic!("{name} {split}: label {other:?}"),
            }
        }
        assert_eq!(counts, want, "{name} {split}");
    }
}

#[test]
fn quirks_of_the_real_files() {
    let dir = glue();
    // MRPC: the header starts with a BOM; first row of dev.
    let mrpc = read_split(&dir, task("mrpc"), Split::Dev, strict()).unwrap();
    let first = &mrpc.examples[0];
    assert!(first
        .text_a
        .starts_with("He said the foodservice pie business"));
    assert!(first
        .text_b
        .as_deref()
        .unwrap()
        .starts_with("\" The foodservice pie business"));
    assert_eq!(first.label, Some(Label::Class(1)));

    // CoLA: no header (the first line is a row) and no final newline (the last row is whole).
    let cola = read_split(&dir, task("cola"), Split::Dev, strict()).unwrap();
    assert_eq!(
        cola.examples[0].text_a,
        "The sailors rode the breeze clear of the rocks."
    );
    let raw = std::fs::read_to_string(dir.join("CoLA/dev.tsv")).unwrap();
    assert!(!raw.ends_with('\n'));
    let last_line = raw.lines().last().unwrap();
    assert_eq!(
        cola.examples.last().unwrap().text_a,
        last_line.split('\t').nth(3).unwrap()
    );
    // CoLA test has a header: index, sentence.
    let cola_test = read_split(&dir, task("cola"), Split::Test, strict()).unwrap();
    assert_eq!(
        cola_test.examples[0].text_a,
        "Bill whistled past the house."
    );

    // SST-2: the sentence keeps its trailing space (the tokenizer drops it, as in HF).
    let sst2 = read_split(&dir, task("sst2"), Split::Dev, strict()).unwrap();
    assert_eq!(
        sst2.examples[0].text_a,
        "it 's a charming and often affecting journey . "
    );

    // STS-B: the score is the last of 10 columns.
    let stsb = read_split(&dir, task("stsb"), Split::Dev, strict()).unwrap();
    assert_eq!(stsb.examples[0].label, Some(Label::Score(5.0)));
    assert_eq!(stsb.examples[1].label, Some(Label::Score(4.75)));
    assert_eq!(
        stsb.examples[0].text_b.as_deref(),
        Some("A man wearing a hard hat is dancing.")
    );

    // QNLI: string labels.
    let qnli = read_split(&dir, task("qnli"), Split::Dev, strict()).unwrap();
    assert_eq!(qnli.examples[0].label, Some(Label::Class(0)), "entailment");
    assert_eq!(
        qnli.examples[1].label,
        Some(Label::Class(1)),
        "not_entailment"
    );
    assert_eq!(
        qnli.examples[0].text_a,
        "What came into force after the new constitution was herald?"
    );

    // The fingerprint is a function of the bytes and the split.
    let again = read_split(&dir, task("sst2"), Split::Dev, strict()).unwrap();
    assert_eq!(again.fingerprint, sst2.fingerprint);
}

#[test]
fn missing_files_are_explained() {
    let dir = glue();
    // MNLI is absent from shared/glue: the error names the folder and the files expected.
    if !dir.join("MNLI").exists() {
        let err = read_split(&dir, task("mnli"), Split::Dev, strict())
            .unwrap_err()
            .to_string();
        assert!(err.contains("MNLI"), "{err}");
        assert!(
            err.contains("dev_matched.tsv") && err.contains("dev_mismatched.tsv"),
            "{err}"
        );
    }
    // QNLI has no train.tsv here: the error lists what the folder holds.
    if !dir.join("QNLI/train.tsv").exists() {
        let err = read_split(&dir, task("qnli"), Split::Train, strict())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train.tsv") && err.contains("[dev.tsv, test.tsv]"),
            "{err}"
        );
    }
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const MNLI_TRAIN_HEADER: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n";
const MNLI_DEV_HEADER: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n";
const MNLI_TEST_HEADER: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\n";

fn mnli_row(i: usize, genre: &str, s1: &str, s2: &str, labels: &[&str]) -> String {
    let parse = |s: &str| format!("( {s} )");
    let mut f = vec![
        i.to_string(),
        format!("{}", 1000 + i),
        format!("{}e", 1000 + i),
        genre.to_string(),
        parse(s1),
        parse(s2),
        format!("(ROOT {s1})"),
        format!("(ROOT {s2})"),
        s1.to_string(),
        s2.to_string(),
    ];
    f.extend(labels.iter().map(|s| s.to_string()));
    f.join("\t") + "\n"
}

#[test]
fn mnli_in_the_glue_format() {
    let dir = tempfile::tempdir().unwrap();
    let train = String::from(MNLI_TRAIN_HEADER)
        + &mnli_row(
            0,
            "government",
            "Conceptually cream skimming has two dimensions.",
            "Product and geography are what make cream skimming work.",
            &["neutral", "neutral"],
        )
        + &mnli_row(
            1,
            "telephone",
            "you know during the season",
            "You lose the things to the following level.",
            &["entailment", "entailment"],
        )
        + &mnli_row(
            2,
            "fiction",
            "One of our number will carry out your instructions.",
            "A member of my team will execute your orders.",
            &["entailment", "contradiction"],
        );
    write(dir.path(), "MNLI/train.tsv", &train);
    let dev_m = String::from(MNLI_DEV_HEADER)
        + &mnli_row(
            0,
            "fiction",
            "The new rights are nice enough",
            "Everyone really likes the newest benefits",
            &[
                "neutral",
                "entailment",
                "neutral",
                "neutral",
                "neutral",
                "neutral",
            ],
        )
        + &mnli_row(
            1,
            "government",
            "This site includes a list.",
            "The site has no list.",
            &[
                "contradiction",
                "contradiction",
                "contradiction",
                "contradiction",
                "contradiction",
                "contradiction",
            ],
        );
    write(dir.path(), "MNLI/dev_matched.tsv", &dev_m);
    let dev_mm = String::from(MNLI_DEV_HEADER)
        + &mnli_row(
            0,
            "letters",
            "Your gift is appreciated.",
            "Hundreds of students will benefit.",
            &[
                "neutral",
                "neutral",
                "neutral",
                "entailment",
                "neutral",
                "neutral",
            ],
        )
        + &mnli_row(
            1,
            "verbatim",
            "Yes, we did.",
            "We did.",
            &[
                "entailment",
                "entailment",
                "entailment",
                "entailment",
                "entailment",
                "entailment",
            ],
        )
        + &mnli_row(
            2,
            "oup",
            "It is cold.",
            "It is hot.",
            &[
                "contradiction",
                "neutral",
                "contradiction",
                "contradiction",
                "contradiction",
                "contradiction",
            ],
        );
    write(dir.path(), "MNLI/dev_mismatched.tsv", &dev_mm);
    write(
        dir.path(),
        "MNLI/test_matched.tsv",
        &(String::from(MNLI_TEST_HEADER) + &mnli_row(0, "fiction", "A.", "B.", &[])),
    );
    write(
        dir.path(),
        "MNLI/test_mismatched.tsv",
        &(String::from(MNLI_TEST_HEADER) + &mnli_row(0, "letters", "C.", "D.", &[])),
    );

    let t = task("mnli");
    let tr = read_split(dir.path(), t, Split::Train, strict()).unwrap();
    let labels: Vec<_> = tr.examples.iter().map(|e| e.label).collect();
    // entailment 0, neutral 1, contradiction 2; gold_label is the last column.
    assert_eq!(
        labels,
        vec![
            Some(Label::Class(1)),
            Some(Label::Class(0)),
            Some(Label::Class(2))
        ]
    );
    assert_eq!(
        tr.examples[0].text_a,
        "Conceptually cream skimming has two dimensions."
    );
    assert_eq!(
        tr.examples[0].text_b.as_deref(),
        Some("Product and geography are what make cream skimming work.")
    );
    let m = read_split(dir.path(), t, Split::Dev, strict()).unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m.examples[0].label, Some(Label::Class(1)));
    let mm = read_split(dir.path(), t, Split::DevMismatched, strict()).unwrap();
    assert_eq!(mm.len(), 3);
    assert_eq!(mm.examples[2].label, Some(Label::Class(2)));
    assert_ne!(m.fingerprint, mm.fingerprint);
    let test = read_split(dir.path(), t, Split::Test, strict()).unwrap();
    assert_eq!(test.examples[0].label, None);
    assert_eq!(test.examples[0].text_b.as_deref(), Some("B."));
    let test_mm = read_split(dir.path(), t, Split::TestMismatched, strict()).unwrap();
    assert_eq!(test_mm.examples[0].text_a, "C.");

    // An unknown gold label ("-" in the raw SNLI-style files) is an error with its line.
    write(
        dir.path(),
        "MNLI/train.tsv",
        &(String::from(MNLI_TRAIN_HEADER) + &mnli_row(0, "g", "a", "b", &["neutral", "-"])),
    );
    let err = read_split(dir.path(), t, Split::Train, strict())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.tsv: line 2") && err.contains("\"-\""),
        "{err}"
    );
}

#[test]
fn qqp_in_the_glue_format() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "QQP/train.tsv",
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n\
         133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration is enough?\t0\n\
         402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n\
         360472\t364011\t490273\tWhat causes stool color to change?\n",
    );
    write(
        dir.path(),
        "QQP/test.tsv",
        "id\tquestion1\tquestion2\n0\tWhy am I mentally very lonely?\tFind the remainder?\n",
    );
    let t = task("qqp");
    // The third row lacks fields: an error by default, skipped and counted on request.
    let err = read_split(dir.path(), t, Split::Train, strict())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 4") && err.contains("expected at least 6"),
        "{err}"
    );
    let ds = read_split(
        dir.path(),
        t,
        Split::Train,
        ReadOptions {
            skip_malformed: true,
        },
    )
    .unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.skipped.len(), 1);
    assert_eq!(ds.skipped[0].line, 4);
    assert_eq!(ds.examples[1].label, Some(Label::Class(1)));
    assert_eq!(
        ds.examples[1].text_b.as_deref(),
        Some("How do you control your horniness?")
    );
    let test = read_split(dir.path(), t, Split::Test, strict()).unwrap();
    assert_eq!(test.examples[0].text_a, "Why am I mentally very lonely?");
    assert_eq!(
        test.examples[0].text_b.as_deref(),
        Some("Find the remainder?")
    );
}

#[test]
fn rte_in_the_glue_format() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "RTE/dev.tsv",
        "index\tsentence1\tsentence2\tlabel\r\n\
         0\tDana Reeve, the widow of the actor, died.\tChristopher Reeve had an accident.\tnot_entailment\r\n\
         1\tYet, we now are discovering that antibiotics are losing their effectiveness.\tBacteria is winning the war against antibiotics.\tentailment\r\n",
    );
    let ds = read_split(dir.path(), task("rte"), Split::Dev, strict()).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.examples[0].label, Some(Label::Class(1)));
    assert_eq!(ds.examples[1].label, Some(Label::Class(0)));
    // \r\n line ends leave no \r in the label or text.
    assert_eq!(
        ds.examples[1].text_b.as_deref(),
        Some("Bacteria is winning the war against antibiotics.")
    );

    write(
        dir.path(),
        "RTE/train.tsv",
        "index\tsentence1\tsentence2\tlabel\n",
    );
    let err = read_split(dir.path(), task("rte"), Split::Train, strict())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no examples"), "{err}");
}

#[test]
fn label_spaces_per_task() {
    let mut by_task = BTreeMap::new();
    for t in Task::all() {
        by_task.insert(t.name, (t.num_labels(), t.is_pair(), t.metric));
    }
    use loraplus_data::MetricKind::*;
    assert_eq!(by_task["CoLA"], (2, false, Matthews));
    assert_eq!(by_task["SST-2"], (2, false, Accuracy));
    assert_eq!(by_task["MRPC"], (2, true, F1Accuracy));
    assert_eq!(by_task["STS-B"], (1, true, PearsonSpearman));
    assert_eq!(by_task["QQP"], (2, true, F1Accuracy));
    assert_eq!(by_task["MNLI"], (3, true, Accuracy));
    assert_eq!(by_task["QNLI"], (2, true, Accuracy));
    assert_eq!(by_task["RTE"], (2, true, Accuracy));
    assert_eq!(by_task["WNLI"], (2, true, Accuracy));
}
