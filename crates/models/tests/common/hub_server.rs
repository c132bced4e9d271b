//! A stand-in for the Hub on the loopback, for the download tests: it serves files the test
//! wrote at `/{repo}/resolve/{revision}/{file}` the way the Hub answers `hf-hub`'s requests:
//! `X-Repo-Commit`, an `ETag` (`X-Linked-Etag` with the sha256 for `*.safetensors`, as for LFS
//! files), `Range` requests answered 206 with `Content-Range`, 404 with
//! `X-Error-Code: EntryNotFound` for a missing file, `RevisionNotFound` for an unknown
//! revision and 401 `RepoNotFound` for an unknown repository; and `/api/models/{repo}/revision/{rev}`
//! with the revision's `sha` and files. Every request is logged (path and
//! `Authorization` header). Stopped when dropped.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// One revision of a repository: its commit and its files (name -> bytes).
#[derive(Clone, Default)]
pub struct Revision {
    pub commit: String,
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Revision {
    /// Every file of `dir` (not recursive), under `commit`.
    pub fn from_dir(commit: &str, dir: &Path) -> Revision {
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                files.insert(
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
        Revision {
            commit: commit.to_string(),
            files,
        }
    }
}

/// repo id -> revision name (branch, tag, or the commit itself) -> revision.
pub type Repos = BTreeMap<String, BTreeMap<String, Revision>>;

/// One request the server saw.
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub authorization: Option<String>,
}

pub struct HubServer {
    pub url: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Request>>>,
    thread: Option<JoinHandle<()>>,
    addr: std::net::SocketAddr,
}

impl HubServer {
    /// Serve `repos` on 127.0.0.1 at a free port. A commit hash also works as a revision.
    pub fn start(repos: Repos) -> HubServer {
        let mut repos = repos;
        for revs in repos.values_mut() {
            let by_commit: Vec<(String, Revision)> = revs
                .values()
                .map(|r| (r.commit.clone(), r.clone()))
                .collect();
            revs.extend(by_commit);
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stop2, log2) = (stop.clone(), log.clone());
        let repos = Arc::new(repos);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (repos, log) = (repos.clone(), log2.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &repos, &log);
                });
            }
        });
        HubServer {
            url: format!("http://{addr}"),
            stop,
            log,
            thread: Some(thread),
            addr,
        }
    }

    /// The requests seen so far.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    /// The request paths seen so far.
    pub fn paths(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.path).collect()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn serve(mut stream: TcpStream, repos: &Repos, log: &Mutex<Vec<Request>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut range = None;
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v),
                "authorization" => authorization = Some(v),
                _ => {}
            }
        }
    }
    if method.is_empty() {
        return Ok(()); // the wake-up connection of Drop
    }
    log.lock().unwrap().push(Request {
        path: target.to_string(),
        authorization,
    });
    let respond =
        |stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]| {
            let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            stream.write_all(head.as_bytes())?;
            if method != "HEAD" {
                stream.write_all(body)?;
            }
            stream.flush()?;
            let _ = stream.shutdown(Shutdown::Write);
            // Drain what the client may still send, so the close is clean.
            let mut sink = [0u8; 256];
            let _ = stream.read(&mut sink);
            Ok(())
        };
    let error = |code: &str| vec![("X-Error-Code".to_string(), code.to_string())];
    // /api/models/{org}/{name}/revision/{revision}: the commit the revision names, and its files.
    if let Some(rest) = target.strip_prefix("/api/models/") {
        let Some((repo_id, rev)) = rest.split_once("/revision/") else {
            return respond(&mut stream, "404 Not Found", &[], b"not found");
        };
        let Some(revs) = repos.get(repo_id) else {
            return respond(
                &mut stream,
                "401 Unauthorized",
                &error("RepoNotFound"),
                b"Repository not found",
            );
        };
        let Some(revision) = revs.get(&rev.replace("%2F", "/")) else {
            return respond(
                &mut stream,
                "404 Not Found",
                &error("RevisionNotFound"),
                b"Invalid rev id",
            );
        };
        let siblings: Vec<serde_json::Value> = revision
            .files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "sha": revision.commit, "siblings": siblings }).to_string();
        let json = vec![("Content-Type".to_string(), "application/json".to_string())];
        return respond(&mut stream, "200 OK", &json, body.as_bytes());
    }
    // /{org}/{name}/resolve/{revision}/{file} (or /{name}/resolve/...)
    let Some((repo_id, rest)) = target.trim_start_matches('/').split_once("/resolve/") else {
        return respond(&mut stream, "404 Not Found", &[], b"not found");
    };
    let Some(revs) = repos.get(repo_id) else {
        return respond(
            &mut stream,
            "401 Unauthorized",
            &error("RepoNotFound"),
            b"Repository not found",
        );
    };
    let Some((rev, file)) = rest.split_once('/') else {
        return respond(&mut stream, "404 Not Found", &[], b"not found");
    };
    let rev = rev.replace("%2F", "/");
    let Some(revision) = revs.get(&rev) else {
        return respond(
            &mut stream,
            "404 Not Found",
            &error("RevisionNotFound"),
            b"Invalid rev id",
        );
    };
    let commit = ("X-Repo-Commit".to_string(), revision.commit.clone());
    let Some(body) = revision.files.get(file) else {
        let mut h = error("EntryNotFound");
        h.push(commit);
        return respond(&mut stream, "404 Not Found", &h, b"Entry not found");
    };
    let sha = hex(&Sha256::digest(body));
    let etag = if file.ends_with(".safetensors") {
        ("X-Linked-Etag".to_string(), format!("\"{sha}\""))
    } else {
        ("ETag".to_string(), format!("\"{}\"", &sha[..40]))
    };
    let mut headers = vec![commit, etag];
    let n = body.len();
    match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let start: usize = a.parse().unwrap_or(0).min(n);
            let end: usize = if b.is_empty() {
                n.saturating_sub(1)
            } else {
                b.parse::<usize>().unwrap_or(n).min(n.saturating_sub(1))
            };
            let slice = if start <= end && start < n {
                &body[start..=end]
            } else {
                &body[0..0]
            };
            headers.push((
                "Content-Range".to_string(),
                format!("bytes {start}-{end}/{n}"),
            ));
            respond(&mut stream, "206 Partial Content", &headers, slice)
        }
        None => respond(&mut stream, "200 OK", &headers, body),
    }
}
