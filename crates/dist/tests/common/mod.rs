//! Launching ranks for the tests: each rank is a child process running this test binary's
//! `worker` test, with the launcher's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
//! and the scenario to play in `LORAPLUS_DIST_SCENARIO`.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The variable naming the scenario a child rank plays; unset in the parent.
pub const SCENARIO: &str = "LORAPLUS_DIST_SCENARIO";

/// A port that was free a moment ago (the OS's pick), for one test's store.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    listener.local_addr().expect("local address").port()
}

/// What one rank did.
#[derive(Debug)]
pub struct RankRun {
    pub rank: usize,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl RankRun {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `world` ranks of `scenario` (plus `extra` variables) and waits for all of them, at most
/// `limit`: a rank still running then is killed and the test fails (never hangs).
pub fn run_ranks(
    scenario: &str,
    world: usize,
    extra: &[(&str, String)],
    limit: Duration,
) -> Vec<RankRun> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let port = free_port();
    let (tx, rx) = mpsc::channel();
    let mut pids = Vec::new();
    for rank in 0..world {
        let mut cmd = Command::new(&exe);
        cmd.args(["worker", "--exact", "--nocapture", "--test-threads=1"])
            .env(SCENARIO, scenario)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning a rank");
        pids.push(child.id());
        let tx = tx.clone();
        std::thread::spawn(move || {
            let out = child.wait_with_output();
            let _ = tx.send((rank, out));
        });
    }
    drop(tx);
    let deadline = Instant::now() + limit;
    let mut runs: Vec<RankRun> = Vec::new();
    while runs.len() < world {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((rank, out)) => {
                let out: Output = out.expect("waiting for a rank");
                runs.push(RankRun {
                    rank,
                    code: out.status.code(),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            Err(_) => {
                for pid in &pids {
                    // SAFETY: our own children, by pid; a finished one is simply not found.
                    unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
                }
                panic!(
                    "scenario {scenario}: ranks still running after {limit:?} (a hang); \
                     finished: {runs:#?}"
                );
            }
        }
    }
    runs.sort_by_key(|r| r.rank);
    runs
}

/// Fails the test with every rank's output unless all ranks exited 0.
pub fn assert_all_ok(scenario: &str, runs: &[RankRun]) {
    if runs.iter().any(|r| !r.ok()) {
        panic!("scenario {scenario}: a rank failed: {runs:#?}");
    }
}

/// Waits for `child` at most `limit`; past it, stops it (SIGTERM, which torchrun forwards to its
/// workers, then SIGKILL) and fails the test.
pub fn wait_or_kill(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    let pid = child.id() as libc::pid_t;
    // Drain the pipes in threads so that a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
        buf
    });
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            return Output {
                status,
                stdout: out_thread.join().unwrap_or_default(),
                stderr: err_thread.join().unwrap_or_default(),
            };
        }
        if Instant::now() >= deadline {
            // SAFETY: our own child, by pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?} (a hang): stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
