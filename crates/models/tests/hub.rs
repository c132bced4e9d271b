//! Models from the Hub, against a stand-in Hub on the loopback (`common/hub_server.rs`) serving
//! tiny random checkpoints the tests write: the first resolution downloads into a cache laid
//! out as huggingface_hub's (checked by Python's `huggingface_hub`, `reference/hub_cache.py`),
//! the second reads the cache with the server stopped (offline, and online with no server); a
//! cache laid out by hand as huggingface_hub does loads with no server at all; `--revision`
//! picks a branch, tag or commit; the token reaches the server; sharded checkpoints come
//! through their index; a 404, a missing file or shard, an unknown repository or revision and
//! an unreachable Hub fail naming the repository and the file. Settings are passed as
//! `HubOptions`, never through the process environment.

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use hub_server::{HubServer, Revision};
use loraplus_models::hub::{resolve_model, HubOptions};
use loraplus_models::{Head, LoadOptions, TaskModel};
use tch::{Kind, Tensor};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const COMMIT_V1: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn options(endpoint: &str, cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: endpoint.to_string(),
        cache_dir: cache.to_path_buf(),
        token: None,
        offline: false,
        progress: false,
    }
}

/// A port on the loopback with nothing listening (bound, then released).
fn dead_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// A tiny Llama in `dir`: config.json, model.safetensors, a tokenizer_config.json.
fn tiny_model(dir: &Path) {
    tch::manual_seed(7);
    let (config, tensors) = common::tiny_llama();
    common::write_random_checkpoint(dir, &config, &tensors);
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"model_max_length": 64}"#,
    )
    .unwrap();
}

/// The same checkpoint split in two shards with `model.safetensors.index.json`.
fn sharded_copy(src: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut tensors: Vec<(String, Tensor)> = common::read(&src.join("model.safetensors"))
        .into_iter()
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let half = tensors.len() / 2;
    let mut weight_map = BTreeMap::new();
    for (i, part) in [&tensors[..half], &tensors[half..]].iter().enumerate() {
        let name = format!("model-0000{}-of-00002.safetensors", i + 1);
        let refs: Vec<(&str, &Tensor)> = part.iter().map(|(n, t)| (n.as_str(), t)).collect();
        common::write(&dir.join(&name), &refs);
        for (n, _) in part.iter() {
            weight_map.insert(n.clone(), name.clone());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

/// Logits of the causal LM in `dir` on a fixed batch.
fn logits(dir: &Path) -> Tensor {
    let opts = LoadOptions {
        task: Head::CausalLm,
        ..LoadOptions::default()
    };
    let (model, _lora) = TaskModel::load(dir, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    let ids = Tensor::from_slice(&[3i64, 9, 14, 1, 22, 5, 7, 8]).reshape([2, 4]);
    model
        .forward_t(&ids, &ids.ones_like(), None, false)
        .unwrap()
        .to_kind(Kind::Double)
}

/// Same logits, compared row by row.
fn assert_same_logits(a: &Tensor, b: &Tensor) {
    assert_eq!(a.size(), b.size());
    for i in 0..a.size()[0] {
        let d = (a.get(i) - b.get(i)).abs().max().double_value(&[]);
        assert!(d == 0.0, "row {i}: logits differ by {d}");
    }
}

fn err(r: anyhow::Result<PathBuf>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

/// One repository `repo` at `main` (commit [`COMMIT`]) with the files of `dir`.
fn one_repo(repo: &str, dir: &Path) -> hub_server::Repos {
    let mut revs = BTreeMap::new();
    revs.insert("main".to_string(), Revision::from_dir(COMMIT, dir));
    BTreeMap::from([(repo.to_string(), revs)])
}

/// What Python's huggingface_hub finds in `cache` for `files` (see reference/hub_cache.py).
fn python_view(cache: &Path, repo: &str, revision: &str, files: &[&str]) -> serde_json::Value {
    let script = common::manifest_dir().join("tests/reference/hub_cache.py");
    let out = Command::new(common::python())
        .arg(&script)
        .arg(cache)
        .args([repo, revision])
        .args(files)
        .output()
        .expect("running hub_cache.py");
    assert!(
        out.status.success(),
        "hub_cache.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_sharded_model_downloads_once_then_loads_from_the_cache_offline_and_with_no_server() {
    let work = tempfile::tempdir().unwrap();
    let single = work.path().join("single");
    tiny_model(&single);
    let src = work.path().join("src");
    sharded_copy(&single, &src);
    let cache = work.path().join("cache");
    let repo = "test-org/tiny-llama";
    let server = HubServer::start(one_repo(repo, &src));
    let opts = options(&server.url, &cache);

    let dir = resolve_model(Path::new(repo), None, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    // huggingface_hub's layout: refs/main -> commit, snapshots/COMMIT/* -> ../../blobs/ETAG.
    let root = cache.join("models--test-org--tiny-llama");
    assert_eq!(dir, root.join("snapshots").join(COMMIT));
    assert_eq!(
        std::fs::read_to_string(root.join("refs/main")).unwrap(),
        COMMIT
    );
    let shards = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut files = vec![
        "config.json",
        "tokenizer_config.json",
        "model.safetensors.index.json",
    ];
    files.extend(shards);
    for f in &files {
        let link = std::fs::read_link(dir.join(f)).unwrap();
        assert!(
            link.starts_with("../../blobs"),
            "{f} links to {}",
            link.display()
        );
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }
    // Absent optional files are recorded as huggingface_hub does.
    assert!(root
        .join(".no_exist")
        .join(COMMIT)
        .join("vocab.txt")
        .exists());
    assert!(!dir.join("model.safetensors").exists());
    let first = server.paths();
    for f in &files {
        assert!(
            first.iter().any(|p| p.ends_with(&format!("/{f}"))),
            "{f} never asked for: {first:?}"
        );
    }
    assert_same_logits(&logits(&dir), &logits(&single));

    // Python reads the cache: every file found, absent ones known absent, the snapshot whole.
    let mut asked = files.clone();
    asked.push("vocab.txt");
    let view = python_view(&cache, repo, "main", &asked);
    for f in &files {
        assert_eq!(
            view["files"][f].as_str().map(PathBuf::from),
            Some(dir.join(f)),
            "huggingface_hub: {f}"
        );
    }
    assert_eq!(view["files"]["vocab.txt"], "NO_EXIST");
    assert_eq!(
        view["snapshot"].as_str().map(PathBuf::from),
        Some(dir.clone())
    );

    // Again, online: one request asks which commit `main` names now; it is the cached one, so
    // nothing is fetched.
    assert_eq!(resolve_model(Path::new(repo), None, &opts).unwrap(), dir);
    let again = server.paths();
    assert_eq!(
        &again[first.len()..],
        [format!("/api/models/{repo}/revision/main")],
        "the cached model was fetched again"
    );
    // A commit hash names one snapshot forever: no request at all.
    assert_eq!(
        resolve_model(Path::new(repo), Some(COMMIT), &opts).unwrap(),
        dir
    );
    assert_eq!(
        server.paths().len(),
        again.len(),
        "a cached commit was checked"
    );

    // Offline with the server stopped, and online with nothing listening.
    drop(server);
    let offline = HubOptions {
        offline: true,
        ..opts.clone()
    };
    assert_eq!(resolve_model(Path::new(repo), None, &offline).unwrap(), dir);
    let no_server = options(&dead_endpoint(), &cache);
    assert_eq!(
        resolve_model(Path::new(repo), None, &no_server).unwrap(),
        dir
    );
    assert_same_logits(&logits(&dir), &logits(&single));
}

#[test]
fn a_cache_laid_out_as_huggingface_hub_does_loads_with_no_server() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tiny_model(&src);
    // The layout huggingface_hub writes: blobs by etag, relative links, a ref per branch.
    let root = work.path().join("hub/models--someone--tiny");
    let snap = root.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    for (i, f) in ["config.json", "model.safetensors"].iter().enumerate() {
        let blob = format!("blob{i}");
        std::fs::copy(src.join(f), root.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snap.join(f)).unwrap();
    }
    std::fs::write(root.join("refs/main"), COMMIT).unwrap();
    let opts = options(&dead_endpoint(), &work.path().join("hub"));
    let id = Path::new("someone/tiny");
    assert_eq!(resolve_model(id, None, &opts).unwrap(), snap);
    // A commit hash needs no ref.
    assert_eq!(resolve_model(id, Some(COMMIT), &opts).unwrap(), snap);
    assert_same_logits(&logits(&snap), &logits(&src));
    // A branch the cache does not know, with no Hub to ask: the error says where it looked.
    let msg = err(resolve_model(id, Some("v2"), &opts));
    assert!(
        msg.contains("someone/tiny") && msg.contains("HF_HUB_OFFLINE=1"),
        "{msg}"
    );
    let offline = HubOptions {
        offline: true,
        ..opts
    };
    let msg = err(resolve_model(id, Some("v2"), &offline));
    assert!(
        msg.contains("someone/tiny (revision v2) is not in the Hub cache")
            && msg.contains("HF_HUB_OFFLINE is set"),
        "{msg}"
    );
}

#[test]
fn revisions_pick_their_commit_and_the_token_reaches_the_hub() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tiny_model(&src);
    let main = Revision::from_dir(COMMIT, &src);
    let mut v1 = main.clone();
    v1.commit = COMMIT_V1.to_string();
    v1.files.insert(
        "generation_config.json".into(),
        br#"{"max_new_tokens": 3}"#.to_vec(),
    );
    let repo = "test-org/revs";
    let revs = BTreeMap::from([("main".to_string(), main), ("v1".to_string(), v1)]);
    let server = HubServer::start(BTreeMap::from([(repo.to_string(), revs)]));
    let cache = work.path().join("cache");
    let opts = HubOptions {
        token: Some("hf_secret".into()),
        ..options(&server.url, &cache)
    };
    let root = cache.join("models--test-org--revs");

    let v1_dir = resolve_model(Path::new(repo), Some("v1"), &opts).unwrap();
    assert_eq!(v1_dir, root.join("snapshots").join(COMMIT_V1));
    assert_eq!(
        std::fs::read_to_string(root.join("refs/v1")).unwrap(),
        COMMIT_V1
    );
    assert!(v1_dir.join("generation_config.json").is_file());
    let main_dir = resolve_model(Path::new(repo), None, &opts).unwrap();
    assert_eq!(main_dir, root.join("snapshots").join(COMMIT));
    assert!(!main_dir.join("generation_config.json").exists());
    // A commit hash as the revision.
    let by_hash = resolve_model(Path::new(repo), Some(COMMIT_V1), &opts).unwrap();
    assert_eq!(by_hash, v1_dir);
    let requests = server.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(
            r.authorization.as_deref(),
            Some("Bearer hf_secret"),
            "{}",
            r.path
        );
    }
    assert!(requests.iter().any(|r| r.path.contains("/resolve/v1/")));

    let msg = err(resolve_model(Path::new(repo), Some("nope"), &opts));
    assert!(
        msg.contains("test-org/revs: revision nope not found"),
        "{msg}"
    );
}

/// A branch that moves on the Hub after it was cached: the next online resolution finds the new
/// commit and downloads it (files the new snapshot already has are not asked for); offline, or
/// with the Hub unreachable or failing, the cached commit stays in use; Python's
/// huggingface_hub then reads `main` as the new commit.
#[test]
fn a_cached_branch_that_moved_on_the_hub_is_downloaded_again() {
    let work = tempfile::tempdir().unwrap();
    let old_src = work.path().join("old");
    tiny_model(&old_src);
    let new_src = work.path().join("new");
    tch::manual_seed(8);
    let (config, tensors) = common::tiny_llama();
    common::write_random_checkpoint(&new_src, &config, &tensors);
    std::fs::copy(
        old_src.join("tokenizer_config.json"),
        new_src.join("tokenizer_config.json"),
    )
    .unwrap();
    let repo = "test-org/moving";
    let cache = work.path().join("cache");
    let root = cache.join("models--test-org--moving");
    let serve = |commit: &str, dir: &Path| {
        let revs = BTreeMap::from([("main".to_string(), Revision::from_dir(commit, dir))]);
        HubServer::start(BTreeMap::from([(repo.to_string(), revs)]))
    };

    let server = serve(COMMIT_V1, &old_src);
    let old_dir = resolve_model(Path::new(repo), None, &options(&server.url, &cache)).unwrap();
    assert_eq!(old_dir, root.join("snapshots").join(COMMIT_V1));
    drop(server);

    // The Hub is unreachable, or answers 5xx: the cached commit, with a warning.
    let unreachable = options(&dead_endpoint(), &cache);
    assert_eq!(
        resolve_model(Path::new(repo), None, &unreachable).unwrap(),
        old_dir
    );

    // main moved to COMMIT with other weights.
    let server = serve(COMMIT, &new_src);
    let opts = options(&server.url, &cache);
    let offline = HubOptions {
        offline: true,
        ..opts.clone()
    };
    assert_eq!(
        resolve_model(Path::new(repo), None, &offline).unwrap(),
        old_dir
    );
    assert!(server.paths().is_empty(), "offline asked the Hub");
    let new_dir = resolve_model(Path::new(repo), None, &opts).unwrap();
    assert_eq!(new_dir, root.join("snapshots").join(COMMIT));
    assert_eq!(
        std::fs::read_to_string(root.join("refs/main")).unwrap(),
        COMMIT
    );
    let paths = server.paths();
    assert_eq!(paths[0], format!("/api/models/{repo}/revision/main"));
    assert!(
        paths
            .iter()
            .any(|p| p.ends_with("/resolve/main/model.safetensors")),
        "{paths:?}"
    );
    assert_same_logits(&logits(&new_dir), &logits(&new_src));
    assert!(
        (logits(&new_dir) - logits(&old_src))
            .abs()
            .max()
            .double_value(&[])
            > 0.0,
        "the two commits have the same weights"
    );
    // The old snapshot stays whole (a pinned commit still loads it).
    assert_eq!(
        resolve_model(Path::new(repo), Some(COMMIT_V1), &opts).unwrap(),
        old_dir
    );
    assert_same_logits(&logits(&old_dir), &logits(&old_src));
    // Python reads main as the new commit.
    let view = python_view(&cache, repo, "main", &["config.json", "model.safetensors"]);
    assert_eq!(
        view["snapshot"].as_str().map(PathBuf::from),
        Some(new_dir.clone())
    );
    // Now current: one check, nothing fetched.
    let before = server.paths().len();
    assert_eq!(
        resolve_model(Path::new(repo), None, &opts).unwrap(),
        new_dir
    );
    assert_eq!(server.paths().len(), before + 1);

    // The Hub answers that the repository is not there (deleted, or made private): an error
    // naming it, not a silent fall back to the cache.
    drop(server);
    let empty = HubServer::start(BTreeMap::new());
    let msg = err(resolve_model(
        Path::new(repo),
        None,
        &options(&empty.url, &cache),
    ));
    assert!(
        msg.contains("test-org/moving: repository not found or access denied"),
        "{msg}"
    );
}

#[test]
fn missing_files_unknown_repos_and_no_hub_fail_naming_repo_and_file() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tiny_model(&src);
    // A repository without weights, and one whose index names a shard it lacks.
    let no_weights = work.path().join("no_weights");
    std::fs::create_dir_all(&no_weights).unwrap();
    std::fs::copy(src.join("config.json"), no_weights.join("config.json")).unwrap();
    let lost_shard = work.path().join("lost_shard");
    sharded_copy(&src, &lost_shard);
    std::fs::remove_file(lost_shard.join("model-00002-of-00002.safetensors")).unwrap();
    let no_config = work.path().join("no_config");
    std::fs::create_dir_all(&no_config).unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        no_config.join("model.safetensors"),
    )
    .unwrap();
    let mut repos = one_repo("org/no-weights", &no_weights);
    repos.extend(one_repo("org/lost-shard", &lost_shard));
    repos.extend(one_repo("org/no-config", &no_config));
    let server = HubServer::start(repos);
    let cache = work.path().join("cache");
    let opts = options(&server.url, &cache);

    let msg = err(resolve_model(Path::new("org/no-weights"), None, &opts));
    assert!(
        msg.contains("org/no-weights: no file model.safetensors at revision main (HTTP 404")
            && msg.contains("nor model.safetensors.index.json"),
        "{msg}"
    );
    let msg = err(resolve_model(Path::new("org/lost-shard"), None, &opts));
    assert!(
        msg.contains("org/lost-shard: no file model-00002-of-00002.safetensors at revision main"),
        "{msg}"
    );
    let msg = err(resolve_model(Path::new("org/no-config"), None, &opts));
    assert!(
        msg.contains("org/no-config: no file config.json at revision main"),
        "{msg}"
    );
    let msg = err(resolve_model(Path::new("org/unknown"), None, &opts));
    assert!(
        msg.contains("org/unknown: repository not found or access denied (HTTP 401")
            && msg.contains("set HF_TOKEN")
            && msg.contains("no local folder of that name"),
        "{msg}"
    );
    drop(server);
    let msg = err(resolve_model(
        Path::new("org/unknown"),
        None,
        &options(&dead_endpoint(), &cache),
    ));
    assert!(
        msg.contains("org/unknown: downloading config.json") && msg.contains("HF_HUB_OFFLINE=1"),
        "{msg}"
    );
    // A path that is neither a folder nor a repository id.
    let msg = err(resolve_model(
        &work.path().join("missing/model"),
        None,
        &opts,
    ));
    assert!(msg.contains("does not exist"), "{msg}");
}

#[test]
fn a_local_folder_is_used_as_it_is() {
    let work = tempfile::tempdir().unwrap();
    tiny_model(work.path());
    // No Hub at all, not even an address that answers.
    let opts = options(&dead_endpoint(), &work.path().join("cache"));
    assert_eq!(
        resolve_model(work.path(), None, &opts).unwrap(),
        work.path()
    );
    assert!(!work.path().join("cache").exists());
}
