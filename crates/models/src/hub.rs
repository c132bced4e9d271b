//! `hub`: a `--model` argument turned into a local model folder: a folder as given, or a Hub
//! repository id (`Qwen/Qwen2.5-0.5B`) downloaded into, and read from, the cache that Python's
//! `huggingface_hub` uses (`models--ORG--NAME/{blobs, snapshots/COMMIT, refs/REVISION}`), so a
//! model downloaded by either is found by the other.
//!
//! The settings come from a [`HubOptions`]: [`HubOptions::from_env`] reads huggingface_hub's
//! variables (`HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN`, `HF_HUB_OFFLINE`,
//! `HF_HUB_DISABLE_PROGRESS_BARS`) once, at the caller; nothing here reads or changes the
//! process environment. Downloads go through the `hf-hub` crate (blocking client, rustls).
//!
//! What is fetched: `config.json`, the weights (`model.safetensors`, or
//! `model.safetensors.index.json` and every shard it names) and the tokenizer and generation
//! files that exist ([`OPTIONAL_FILES`]; one that the Hub answers 404 for is recorded under
//! `.no_exist/COMMIT/` as huggingface_hub does). A cached snapshot that holds the config and the
//! weights is used as it is when the revision is a commit hash (a commit never changes) or with
//! `offline` set; for a branch or tag, one request asks the Hub which commit it names now
//! (`/api/models/REPO/revision/REV`, its `sha`): the same commit uses the cache, a new one is
//! downloaded into its own snapshot (the old one stays), and a Hub that cannot be reached (no
//! connection, a 5xx) leaves the cached commit in use with a warning, as huggingface_hub does.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::weights::{SAFETENSORS_FILE, SAFETENSORS_INDEX};

/// The Hub's address when `HF_ENDPOINT` is not set (huggingface_hub's default).
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The revision when none is given (huggingface_hub's `DEFAULT_REVISION`).
pub const DEFAULT_REVISION: &str = "main";
/// The model's configuration: always required.
pub const CONFIG_FILE: &str = "config.json";
/// Files fetched when the repository has them, and copied into a merged model: the tokenizer
/// in every form transformers reads (fast, WordPiece / BPE vocabularies, SentencePiece models
/// such as DeBERTa-v3's `spm.model`, added tokens), the chat template, generation defaults.
pub const OPTIONAL_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spm.model",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

/// Where and how to reach the Hub. Build it with [`HubOptions::from_env`] (the user's
/// environment) or [`HubOptions::from_vars`] (any lookup: tests, embedding programs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubOptions {
    /// Base URL of the Hub (`HF_ENDPOINT`), without a trailing slash.
    pub endpoint: String,
    /// The hub cache folder holding `models--ORG--NAME` (`HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// Bearer token for private and gated repositories (`HF_TOKEN`, else `$HF_HOME/token`).
    pub token: Option<String>,
    /// Use the cache only, never the network (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Draw a progress bar per downloaded file (on a terminal).
    pub progress: bool,
}

/// huggingface_hub's truthy values of a boolean variable.
fn is_true(v: Option<String>) -> bool {
    v.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

impl HubOptions {
    /// The settings of the process environment, as huggingface_hub reads them.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// The settings from `var` (a variable name to its value), with huggingface_hub's
    /// precedence: cache `HF_HUB_CACHE` > `HUGGINGFACE_HUB_CACHE` > `$HF_HOME/hub`, with
    /// `HF_HOME` defaulting to `$XDG_CACHE_HOME/huggingface` then `~/.cache/huggingface`; token
    /// `HF_TOKEN` > `HUGGING_FACE_HUB_TOKEN` > the file `HF_TOKEN_PATH` > `$HF_HOME/token`;
    /// offline when `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is 1/ON/YES/TRUE.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |k: &str| var(k).filter(|v| !v.is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            cache.join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| hf_home.join("token"));
                std::fs::read_to_string(path).ok()
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        HubOptions {
            endpoint,
            cache_dir,
            token,
            offline: is_true(var("HF_HUB_OFFLINE")) || is_true(var("TRANSFORMERS_OFFLINE")),
            progress: !is_true(var("HF_HUB_DISABLE_PROGRESS_BARS")),
        }
    }

    /// One line for `loraplus info` (the token is never shown).
    pub fn describe(&self) -> String {
        format!(
            "{} (cache {}, token {}{})",
            self.endpoint,
            self.cache_dir.display(),
            if self.token.is_some() {
                "set"
            } else {
                "not set"
            },
            if self.offline { ", offline" } else { "" }
        )
    }
}

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A local folder, used as it is.
    Folder(PathBuf),
    /// A Hub repository at a revision (a branch, tag or commit).
    Hub { repo_id: String, revision: String },
}

/// Is `s` a Hub repository id (`NAME` or `ORG/NAME`) by huggingface_hub's rules: letters,
/// digits, `-`, `_`, `.`; no `--` or `..`; not starting or ending with `-` or `.`; names of at
/// most 96 characters.
pub fn is_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() <= 2
        && !s.contains("--")
        && !s.contains("..")
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 96
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        })
}

impl ModelSource {
    /// A `--model` value: an existing folder is a folder (as transformers' `from_pretrained`,
    /// a local folder wins over a Hub id of the same name); otherwise a Hub repository id.
    /// `revision` is for Hub ids only.
    pub fn parse(model: &Path, revision: Option<&str>) -> Result<Self> {
        if model.is_dir() {
            if let Some(r) = revision {
                bail!(
                    "revision {r} (--revision, or `revision` in the config) is for Hub repository ids, but {} is a local folder",
                    model.display()
                );
            }
            return Ok(ModelSource::Folder(model.to_path_buf()));
        }
        if model.exists() {
            bail!(
                "model {} is a file: give a model folder (config.json, model.safetensors) or a Hub repository id such as Qwen/Qwen2.5-0.5B",
                model.display()
            );
        }
        let id = model.to_string_lossy();
        if !is_repo_id(&id) {
            bail!(
                "model folder {} does not exist (and it is not a Hub repository id such as Qwen/Qwen2.5-0.5B)",
                model.display()
            );
        }
        let revision = revision.unwrap_or(DEFAULT_REVISION);
        if revision.is_empty() {
            bail!("revision (--revision, or `revision` in the config) is empty: give a branch, tag or commit (default {DEFAULT_REVISION})");
        }
        Ok(ModelSource::Hub {
            repo_id: id.into_owned(),
            revision: revision.to_string(),
        })
    }
}

/// The local folder of `model` (a folder, or a Hub id fetched as needed; see the module doc).
pub fn resolve_model(model: &Path, revision: Option<&str>, opts: &HubOptions) -> Result<PathBuf> {
    match ModelSource::parse(model, revision)? {
        ModelSource::Folder(dir) => Ok(dir),
        ModelSource::Hub { repo_id, revision } => snapshot(&repo_id, &revision, opts),
    }
}

/// The snapshot folder of `repo_id` at `revision` holding the model's files: from the cache
/// when it has the config and the weights, else downloaded (unless `opts.offline`).
pub fn snapshot(repo_id: &str, revision: &str, opts: &HubOptions) -> Result<PathBuf> {
    let cache = CachedRepo::new(&opts.cache_dir, repo_id, revision);
    if let Some(dir) = cache.snapshot_dir() {
        if has_model(&dir)? {
            if opts.offline || is_commit_hash(revision) {
                return Ok(dir);
            }
            // A branch or tag may have moved since it was cached.
            let cached = cache.commit().unwrap_or_default();
            match current_commit(repo_id, revision, opts) {
                Ok(now) if now == cached => return Ok(dir),
                Ok(now) => tracing::info!(
                    "{repo_id}: revision {revision} is now commit {now} (cached: {cached}); downloading it"
                ),
                Err(Fetch::Missing(e)) => {
                    tracing::warn!("{e:#}; using the cached commit {cached}");
                    return Ok(dir);
                }
                Err(Fetch::Failed(e)) => return Err(e),
            }
        }
    }
    if opts.offline {
        bail!(
            "{repo_id} (revision {revision}) is not in the Hub cache {} with its config.json and model.safetensors (or all its shards), and HF_HUB_OFFLINE is set: download it once online, or unset HF_HUB_OFFLINE",
            opts.cache_dir.display()
        );
    }
    download(repo_id, revision, opts)
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// The commit `revision` (a branch or tag) names on the Hub now. `Fetch::Missing`: the Hub could
/// not be reached or failed (no connection, a 5xx), so the caller may keep its cached commit;
/// `Fetch::Failed`: the Hub answered that the repository or revision is not there (or denied).
fn current_commit(
    repo_id: &str,
    revision: &str,
    opts: &HubOptions,
) -> std::result::Result<String, Fetch> {
    let api = client(repo_id, opts).map_err(Fetch::Failed)?;
    let spec = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let url = format!("{}/api/{}", opts.endpoint, spec.api_url());
    let repo = api.repo(spec);
    match repo.info() {
        Ok(info) if !info.sha.is_empty() => Ok(info.sha),
        Ok(_) => Err(Fetch::Missing(anyhow!(
            "{repo_id}: the Hub named no commit for revision {revision} ({url})"
        ))),
        Err(e) => match http_status(&e) {
            Some((status, _)) if status < 500 => {
                match describe_error(repo_id, revision, "(revision check)", &url, opts, e) {
                    Fetch::Missing(e) | Fetch::Failed(e) => Err(Fetch::Failed(e)),
                }
            }
            _ => Err(Fetch::Missing(anyhow!(
                "{repo_id}: could not check revision {revision} at {url}: {e}"
            ))),
        },
    }
}

/// A Hub client with `opts`' endpoint, token, cache and progress setting.
fn client(repo_id: &str, opts: &HubOptions) -> Result<hf_hub::api::sync::Api> {
    ApiBuilder::from_cache(Cache::new(opts.cache_dir.clone()))
        .with_endpoint(opts.endpoint.clone())
        .with_token(opts.token.clone())
        .with_progress(opts.progress)
        .with_user_agent("loraplus", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| anyhow!("{repo_id}: setting up the Hub client: {e}"))
}

/// One repository's folder in the cache.
struct CachedRepo {
    root: PathBuf,
    revision: String,
}

impl CachedRepo {
    fn new(cache_dir: &Path, repo_id: &str, revision: &str) -> Self {
        let folder = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.into())
            .folder_name();
        CachedRepo {
            root: cache_dir.join(folder),
            revision: revision.to_string(),
        }
    }

    /// The commit the revision points at in the cache: a full commit hash names itself
    /// (huggingface_hub writes no ref for it), a branch or tag is read from `refs/`.
    fn commit(&self) -> Option<String> {
        if is_commit_hash(&self.revision)
            && self.root.join("snapshots").join(&self.revision).is_dir()
        {
            return Some(self.revision.clone());
        }
        let text = std::fs::read_to_string(self.root.join("refs").join(&self.revision)).ok()?;
        let commit = text.trim().to_string();
        (!commit.is_empty()).then_some(commit)
    }

    fn snapshot_dir(&self) -> Option<PathBuf> {
        let dir = self.root.join("snapshots").join(self.commit()?);
        dir.is_dir().then_some(dir)
    }

    /// huggingface_hub's marker of a file the Hub does not have at `commit`.
    fn no_exist(&self, commit: &str, file: &str) -> PathBuf {
        self.root.join(".no_exist").join(commit).join(file)
    }
}

/// Does `dir` hold a loadable model: `config.json` and `model.safetensors`, or the index and
/// every shard it names? An unreadable index is an error.
fn has_model(dir: &Path) -> Result<bool> {
    if !dir.join(CONFIG_FILE).is_file() {
        return Ok(false);
    }
    if dir.join(SAFETENSORS_FILE).is_file() {
        return Ok(true);
    }
    let index = dir.join(SAFETENSORS_INDEX);
    if !index.is_file() {
        return Ok(false);
    }
    Ok(shard_names(&index)?.iter().all(|s| dir.join(s).is_file()))
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// The distinct shard files named by an index, in order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let idx: ShardIndex = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected {{\"weight_map\": {{..}}}}", index.display()))?;
    let mut names: Vec<String> = idx.weight_map.into_values().collect();
    names.sort();
    names.dedup();
    if let Some(bad) = names
        .iter()
        .find(|n| n.contains("..") || n.starts_with('/') || n.contains('\\'))
    {
        bail!(
            "{}: shard name {bad:?} points outside the repository",
            index.display()
        );
    }
    Ok(names)
}

/// The HTTP status of a failed request, with the Hub's `X-Error-Code` when it sent one.
fn http_status(e: &ApiError) -> Option<(u16, Option<String>)> {
    let ApiError::RequestError(e) = e else {
        return None;
    };
    match e.as_ref() {
        ureq::Error::Status(code, resp) => {
            Some((*code, resp.header("x-error-code").map(str::to_string)))
        }
        ureq::Error::Transport(_) => None,
    }
}

/// How a download failed.
enum Fetch {
    /// The Hub has no such file at this revision (404 on the file).
    Missing(anyhow::Error),
    /// Anything else: no connection, denied, repository or revision not found.
    Failed(anyhow::Error),
}

/// Downloads `repo_id` at `revision` into the cache (see the module doc) and returns its
/// snapshot folder. Files already in the snapshot are not fetched again.
pub fn download(repo_id: &str, revision: &str, opts: &HubOptions) -> Result<PathBuf> {
    let api = client(repo_id, opts)?;
    let repo = api.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let cached = CachedRepo::new(&opts.cache_dir, repo_id, revision);
    let fail = |f: Fetch| match f {
        Fetch::Missing(e) | Fetch::Failed(e) => e,
    };
    tracing::info!(
        "fetching {repo_id} (revision {revision}) from {} into {}",
        opts.endpoint,
        opts.cache_dir.display()
    );
    // config.json first: always asked for, it also tells which commit the revision is now.
    let config = fetch(&repo, repo_id, revision, CONFIG_FILE, opts, None).map_err(fail)?;
    let dir = config
        .parent()
        .ok_or_else(|| anyhow!("{}: no parent folder", config.display()))?
        .to_path_buf();
    let commit = dir
        .file_name()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Small files before the weights: a snapshot with its weights was fetched to the end.
    for file in OPTIONAL_FILES {
        if dir.join(file).is_file() || cached.no_exist(&commit, file).exists() {
            continue;
        }
        match fetch(&repo, repo_id, revision, file, opts, Some(&dir)) {
            Ok(_) => {}
            Err(Fetch::Missing(_)) => {
                let marker = cached.no_exist(&commit, file);
                if let Some(parent) = marker.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                std::fs::write(&marker, b"")
                    .with_context(|| format!("writing {}", marker.display()))?;
            }
            Err(Fetch::Failed(e)) => return Err(e),
        }
    }
    if !dir.join(SAFETENSORS_FILE).is_file() {
        match fetch(&repo, repo_id, revision, SAFETENSORS_FILE, opts, Some(&dir)) {
            Ok(_) => {}
            Err(Fetch::Missing(single)) => {
                let index = if dir.join(SAFETENSORS_INDEX).is_file() {
                    dir.join(SAFETENSORS_INDEX)
                } else {
                    fetch(&repo, repo_id, revision, SAFETENSORS_INDEX, opts, Some(&dir)).map_err(
                        |f| match f {
                            Fetch::Missing(_) => anyhow!(
                                "{single:#}; nor {SAFETENSORS_INDEX}: {repo_id} has no safetensors checkpoint (only safetensors checkpoints are supported)"
                            ),
                            Fetch::Failed(e) => e,
                        },
                    )?
                };
                for shard in shard_names(&index)? {
                    if !dir.join(&shard).is_file() {
                        fetch(&repo, repo_id, revision, &shard, opts, Some(&dir)).map_err(fail)?;
                    }
                }
            }
            Err(Fetch::Failed(e)) => return Err(e),
        }
    }
    Ok(dir)
}

/// How long a download waits for another process downloading the same file.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Downloads one file; `snapshot` (when known) is where it must land: a revision that moved
/// to another commit during the download is an error, not a mixed snapshot.
fn fetch(
    repo: &ApiRepo,
    repo_id: &str,
    revision: &str,
    file: &str,
    opts: &HubOptions,
    snapshot: Option<&Path>,
) -> std::result::Result<PathBuf, Fetch> {
    let url = repo.url(file);
    let started = std::time::Instant::now();
    let path = loop {
        match repo.download(file) {
            Ok(p) => break p,
            // Another process holds the file's lock: wait for its download to land.
            Err(ApiError::LockAcquisition(_)) if started.elapsed() < LOCK_WAIT => {
                if let Some(p) = snapshot.map(|d| d.join(file)).filter(|p| p.is_file()) {
                    break p;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            Err(e) => return Err(describe_error(repo_id, revision, file, &url, opts, e)),
        }
    };
    if let Some(dir) = snapshot {
        if path.parent() != Some(dir) {
            return Err(Fetch::Failed(anyhow!(
                "{repo_id}: revision {revision} moved to another commit while downloading ({} then {}); run again",
                dir.display(),
                path.display()
            )));
        }
    }
    Ok(path)
}

fn describe_error(
    repo_id: &str,
    revision: &str,
    file: &str,
    url: &str,
    opts: &HubOptions,
    e: ApiError,
) -> Fetch {
    match http_status(&e) {
        Some((404, code))
            if code.as_deref() != Some("RepoNotFound")
                && code.as_deref() != Some("RevisionNotFound") =>
        {
            Fetch::Missing(anyhow!(
                "{repo_id}: no file {file} at revision {revision} (HTTP 404 from {url})"
            ))
        }
        Some((404, Some(code))) if code == "RevisionNotFound" => Fetch::Failed(anyhow!(
            "{repo_id}: revision {revision} not found (HTTP 404 from {url})"
        )),
        Some((401 | 403 | 404, _)) => Fetch::Failed(anyhow!(
            "{repo_id}: repository not found or access denied (HTTP {} from {url}){}; no local folder of that name either",
            http_status(&e).map_or(0, |s| s.0),
            if opts.token.is_some() {
                ""
            } else {
                ": for a private or gated repository set HF_TOKEN"
            }
        )),
        Some((status, _)) => Fetch::Failed(anyhow!(
            "{repo_id}: downloading {file} (revision {revision}) failed: HTTP {status} from {url}"
        )),
        None => Fetch::Failed(anyhow!(
            "{repo_id}: downloading {file} (revision {revision}) from {url} failed: {e}; to use the cache {} only, set HF_HUB_OFFLINE=1",
            opts.cache_dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn opts_of(vars: &[(&str, &str)]) -> HubOptions {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubOptions::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn variables_follow_huggingface_hub_precedence() {
        let o = opts_of(&[("HOME", "/home/u")]);
        assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(o.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(!o.offline);
        assert!(o.progress);
        let o = opts_of(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]);
        assert_eq!(o.cache_dir, PathBuf::from("/xdg/huggingface/hub"));
        let o = opts_of(&[("HF_HOME", "/hf"), ("XDG_CACHE_HOME", "/xdg")]);
        assert_eq!(o.cache_dir, PathBuf::from("/hf/hub"));
        let o = opts_of(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]);
        assert_eq!(o.cache_dir, PathBuf::from("/c"));
        let o = opts_of(&[("HUGGINGFACE_HUB_CACHE", "/old"), ("HF_HOME", "/hf")]);
        assert_eq!(o.cache_dir, PathBuf::from("/old"));
        let o = opts_of(&[
            ("HF_ENDPOINT", "http://127.0.0.1:8080/"),
            ("HF_TOKEN", " hf_abc\n"),
            ("HUGGING_FACE_HUB_TOKEN", "hf_old"),
            ("HF_HUB_OFFLINE", "yes"),
            ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ]);
        assert_eq!(o.endpoint, "http://127.0.0.1:8080");
        assert_eq!(o.token.as_deref(), Some("hf_abc"));
        assert!(o.offline);
        assert!(!o.progress);
        assert!(!o.describe().contains("hf_abc"));
        assert!(opts_of(&[("TRANSFORMERS_OFFLINE", "1")]).offline);
        assert!(!opts_of(&[("HF_HUB_OFFLINE", "0")]).offline);
        assert!(!opts_of(&[("HF_HUB_OFFLINE", "")]).offline);
    }

    #[test]
    fn the_token_file_is_read_when_no_variable_names_a_token() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("token"), "hf_file\n").unwrap();
        let h = home.path().to_str().unwrap();
        assert_eq!(opts_of(&[("HF_HOME", h)]).token.as_deref(), Some("hf_file"));
        assert_eq!(
            opts_of(&[("HF_HOME", h), ("HF_TOKEN", "hf_var")])
                .token
                .as_deref(),
            Some("hf_var")
        );
        let other = home.path().join("elsewhere");
        std::fs::write(&other, "hf_path").unwrap();
        assert_eq!(
            opts_of(&[("HF_HOME", h), ("HF_TOKEN_PATH", other.to_str().unwrap())])
                .token
                .as_deref(),
            Some("hf_path")
        );
        assert_eq!(opts_of(&[("HF_HOME", "/nonexistent")]).token, None);
    }

    #[test]
    fn repo_ids_follow_huggingface_hub_rules() {
        for ok in [
            "Qwen/Qwen2.5-0.5B",
            "gpt2",
            "bert-base-uncased",
            "a_b/c.d",
            "sentence-transformers/all-MiniLM-L6-v2",
        ] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in [
            "",
            "/abs/path",
            "./rel",
            "a/b/c",
            "a--b/c",
            "a/b..c",
            "a/-b",
            "a/b.",
            "a b/c",
            "org/",
            &"x".repeat(97),
        ] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_folder_is_a_folder_and_anything_else_must_be_a_repo_id() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ModelSource::parse(dir.path(), None).unwrap(),
            ModelSource::Folder(dir.path().to_path_buf())
        );
        let msg = ModelSource::parse(dir.path(), Some("v1"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(
                "revision v1 (--revision, or `revision` in the config) is for Hub repository ids"
            ),
            "{msg}"
        );
        assert_eq!(
            ModelSource::parse(Path::new("Qwen/Qwen2.5-0.5B"), None).unwrap(),
            ModelSource::Hub {
                repo_id: "Qwen/Qwen2.5-0.5B".into(),
                revision: "main".into()
            }
        );
        let missing = dir.path().join("nope");
        let msg = ModelSource::parse(&missing, None).unwrap_err().to_string();
        assert!(
            msg.contains("does not exist") && msg.contains("not a Hub repository id"),
            "{msg}"
        );
        let file = dir.path().join("config.json");
        std::fs::write(&file, "{}").unwrap();
        let msg = ModelSource::parse(&file, None).unwrap_err().to_string();
        assert!(msg.contains("is a file"), "{msg}");
    }
}
