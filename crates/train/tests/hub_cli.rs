//! `--model ORG/NAME` through the `loraplus` binary, against a stand-in Hub on the loopback
//! (`crates/models/tests/common/hub_server.rs`) serving the tiny Llama (tokenizer and ChatML
//! template included) that transformers writes for the causal-LM tests: the `HF_*` variables
//! of the command's environment are honoured (endpoint, cache, token, offline); `generate`
//! from the Hub prints what it prints from the folder, then again offline with the server
//! stopped; `train` records the Hub id as the adapter's base model; `info` shows the settings;
//! errors name the repository. Each command runs in its own process with its own environment.

#[path = "../../models/tests/common/hub_server.rs"]
mod hub_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hub_server::{HubServer, Revision};

const REPO: &str = "test-org/tiny-llama";
const COMMIT: &str = "00112233445566778899aabbccddeeff00112233";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The tiny Llama of `causal_lm_ref.py fixture` in `out/llama`.
fn fixture(out: &Path) -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run `make setup`",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/causal_lm_ref.py");
    let o = Command::new(python)
        .arg(script)
        .args(["fixture", s(out)])
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.join("llama")
}

/// `loraplus ARGS` with the Hub settings of `hub` (endpoint, cache, offline), and none
/// inherited from the test's environment.
fn run(args: &[&str], hub: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraplus"));
    for k in [
        "HF_ENDPOINT",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
    ] {
        c.env_remove(k);
    }
    c.env("LORAPLUS_LOG", "warn")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .envs(hub.iter().copied())
        .args(args)
        .output()
        .expect("running loraplus")
}

fn ok(args: &[&str], hub: &[(&str, &str)]) -> String {
    let o = run(args, hub);
    assert!(
        o.status.success(),
        "loraplus {args:?} failed ({:?}):\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn generate_args(model: &str) -> Vec<&str> {
    vec![
        "generate",
        "--model",
        model,
        "--chat",
        "--prompt",
        "tell me about the cat",
        "--max-new-tokens",
        "8",
    ]
}

#[test]
fn a_hub_id_downloads_with_the_hf_variables_then_runs_offline() {
    let work = tempfile::tempdir().unwrap();
    let llama = fixture(work.path());
    let cache = work.path().join("hf/hub");
    let server = HubServer::start(BTreeMap::from([(
        REPO.to_string(),
        BTreeMap::from([("main".to_string(), Revision::from_dir(COMMIT, &llama))]),
    )]));
    let online = [
        ("HF_ENDPOINT", server.url.as_str()),
        ("HF_HUB_CACHE", s(&cache)),
        ("HF_TOKEN", "hf_from_env"),
    ];

    let info = ok(&["info"], &online);
    assert!(
        info.contains(&format!(
            "Hugging Face Hub: {} (cache {}, token set)",
            server.url,
            cache.display()
        )),
        "{info}"
    );
    assert!(!info.contains("hf_from_env"), "{info}");

    let from_folder = ok(&generate_args(s(&llama)), &[]);
    assert!(!from_folder.trim().is_empty());
    let from_hub = ok(&generate_args(REPO), &online);
    assert_eq!(from_hub, from_folder);
    let snapshot = cache
        .join("models--test-org--tiny-llama/snapshots")
        .join(COMMIT);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(
            snapshot.join(f).is_file(),
            "{f} not in {}",
            snapshot.display()
        );
    }
    let requests = server.requests();
    assert!(requests
        .iter()
        .any(|r| r.path.ends_with("/model.safetensors")));
    assert!(requests
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer hf_from_env")));

    // A short training run names the Hub id as the adapter's base model.
    let train = work.path().join("train.jsonl");
    let rows: String = (0..8)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"text": format!("the cat {i} runs over the hill")})
            )
        })
        .collect();
    std::fs::write(&train, rows).unwrap();
    let out = work.path().join("run");
    ok(
        &[
            "train",
            "--task",
            "causal-lm",
            "--model",
            REPO,
            "--train-file",
            s(&train),
            "--output-dir",
            s(&out),
            "--batch-size",
            "4",
            "--max-seq-len",
            "32",
            "--max-steps",
            "2",
            "--threads",
            "1",
            "--no-progress",
        ],
        &online,
    );
    let adapter_cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(adapter_cfg["base_model_name_or_path"], REPO);
    let seen = server.requests().len();

    // The server stopped: offline, the cache answers.
    drop(server);
    let offline = [("HF_HUB_CACHE", s(&cache)), ("HF_HUB_OFFLINE", "1")];
    assert_eq!(ok(&generate_args(REPO), &offline), from_folder);
    assert!(seen > 0);

    // Not in the cache, offline: the error names the repository and the setting.
    let o = run(&generate_args("test-org/other"), &offline);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("test-org/other (revision main) is not in the Hub cache")
            && err.contains("HF_HUB_OFFLINE is set"),
        "{err}"
    );
    // --revision is for Hub ids only.
    let mut args = generate_args(s(&llama));
    args.extend(["--revision", "v1"]);
    let o = run(&args, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "revision v1 (--revision, or `revision` in the config) is for Hub repository ids"
        ),
        "{err}"
    );
}
