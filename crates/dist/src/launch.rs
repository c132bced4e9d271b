//! [`launch_local`]: start N ranks of a program on this node with the launcher contract
//! (`loraplus train --nproc-per-node N`), the way `torchrun --standalone` would.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{DistError, Result};

/// How often the launcher looks at its ranks.
const POLL: Duration = Duration::from_millis(100);

/// What [`launch_local`] starts.
#[derive(Debug, Clone)]
pub struct LocalLaunch {
    /// The program each rank runs (usually `std::env::current_exe()`).
    pub program: PathBuf,
    /// Its arguments, the same for every rank.
    pub args: Vec<OsString>,
    /// Ranks to start (`--nproc-per-node`).
    pub nproc: usize,
    /// The store's port; `None` takes a free one.
    pub master_port: Option<u16>,
    /// `OMP_NUM_THREADS` of each rank (its share of the cores); `None` leaves it unset.
    pub threads_per_rank: Option<usize>,
    /// Where each rank's output goes: `None` shares the launcher's terminal; a folder gets
    /// `rank<r>.log` per rank, stdout and stderr together (torchrun's `--log-dir` with
    /// `--redirects 3`).
    pub log_dir: Option<PathBuf>,
    /// Extra environment variables of every rank.
    pub env: Vec<(OsString, OsString)>,
    /// After the first rank fails, how long the others get to fail on their own (their
    /// collectives notice the dead peer) before they are stopped.
    pub grace: Duration,
    /// Interrupts the launcher received (its caller's SIGINT/SIGTERM handler counts them):
    /// each new one is passed to every rank as a SIGINT. With it, the ranks run in a process
    /// group of their own, so that a terminal's Ctrl-C reaches them once, through the
    /// launcher, and a signal sent to the launcher alone (`kill`, `timeout`, a scheduler)
    /// reaches them too; they get SIGTERM if the launcher dies. `None`: the ranks share the
    /// launcher's process group and its terminal's signals.
    pub interrupts: Option<Arc<AtomicUsize>>,
}

impl LocalLaunch {
    /// `nproc` ranks of `program args`, a free port, a 30 s grace.
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>, nproc: usize) -> Self {
        Self {
            program: program.into(),
            args,
            nproc,
            master_port: None,
            threads_per_rank: None,
            log_dir: None,
            env: Vec::new(),
            grace: Duration::from_secs(30),
            interrupts: None,
        }
    }
}

/// Starts the ranks (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` =
/// loopback, `MASTER_PORT`), waits for all of them, and fails naming the first rank that
/// exited non-zero or was killed. Interrupts: see [`LocalLaunch::interrupts`] (without it, a
/// Ctrl-C in the terminal reaches every rank, one process group, and the caller should catch
/// it too so that the launcher stays to collect them).
pub fn launch_local(cfg: &LocalLaunch) -> Result<()> {
    if cfg.nproc == 0 {
        return Err(DistError::Launch("nproc is 0, expected >= 1".to_string()));
    }
    let port = match cfg.master_port {
        Some(p) => p,
        None => free_port()?,
    };
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(cfg.nproc);
    for rank in 0..cfg.nproc {
        let mut cmd = Command::new(&cfg.program);
        cmd.args(&cfg.args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", cfg.nproc.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", cfg.nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE");
        cmd.envs(cfg.env.iter().map(|(k, v)| (k, v)));
        if let Some(threads) = cfg.threads_per_rank {
            cmd.env("OMP_NUM_THREADS", threads.to_string());
        }
        if cfg.interrupts.is_some() {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
            // SAFETY: prctl is async-signal-safe; it only sets this child's death signal.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        if let Some(dir) = &cfg.log_dir {
            let path = dir.join(format!("rank{rank}.log"));
            let redirect = std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::File::create(&path))
                .and_then(|f| Ok((f.try_clone()?, f)));
            match redirect {
                Ok((out, err)) => {
                    cmd.stdout(out).stderr(err);
                }
                Err(e) => {
                    stop(&mut children);
                    return Err(DistError::Launch(format!(
                        "rank {rank}'s log {}: {e}",
                        path.display()
                    )));
                }
            }
        }
        match cmd.spawn() {
            Ok(child) => children.push((rank, child)),
            Err(e) => {
                stop(&mut children);
                return Err(DistError::Launch(format!(
                    "starting rank {rank} ({}): {e}",
                    cfg.program.display()
                )));
            }
        }
    }
    // The first rank that failed, how, and when.
    let mut failure: Option<(usize, ExitStatus, Instant)> = None;
    let mut forwarded = 0;
    while !children.is_empty() {
        if let Some(n) = cfg.interrupts.as_ref().map(|c| c.load(Ordering::SeqCst)) {
            while forwarded < n {
                for (_, child) in children.iter() {
                    // SAFETY: our own child, by pid.
                    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
                }
                forwarded += 1;
            }
        }
        let mut i = 0;
        while i < children.len() {
            match children[i].1.try_wait() {
                Ok(Some(status)) => {
                    let (rank, _) = children.remove(i);
                    if !status.success() && failure.is_none() {
                        failure = Some((rank, status, Instant::now()));
                    }
                }
                Ok(None) => i += 1,
                Err(e) => {
                    let rank = children[i].0;
                    stop(&mut children);
                    return Err(DistError::Launch(format!("waiting for rank {rank}: {e}")));
                }
            }
        }
        if let Some((rank, status, _)) = failure.filter(|f| f.2.elapsed() > cfg.grace) {
            let left: Vec<String> = children.iter().map(|(r, _)| r.to_string()).collect();
            stop(&mut children);
            return Err(DistError::RankFailed {
                rank,
                nproc: cfg.nproc,
                code: status.code(),
                detail: format!(
                    "{}; rank(s) {} still running {:?} later were stopped",
                    describe(status),
                    left.join(", "),
                    cfg.grace
                ),
            });
        }
        if !children.is_empty() {
            std::thread::sleep(POLL);
        }
    }
    match failure {
        None => Ok(()),
        Some((rank, status, _)) => Err(DistError::RankFailed {
            rank,
            nproc: cfg.nproc,
            code: status.code(),
            detail: describe(status),
        }),
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended with {status}"),
    }
}

/// Stops the remaining ranks: SIGTERM (they may checkpoint), then SIGKILL after a moment.
fn stop(children: &mut Vec<(usize, Child)>) {
    const TERM_WAIT: Duration = Duration::from_secs(5);
    for (_, child) in children.iter() {
        // SAFETY: our own child, by pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    }
    let start = Instant::now();
    while start.elapsed() < TERM_WAIT {
        children.retain_mut(|(_, c)| !matches!(c.try_wait(), Ok(Some(_))));
        if children.is_empty() {
            return;
        }
        std::thread::sleep(POLL);
    }
    for (_, child) in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    children.clear();
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DistError::Launch(format!("finding a free loopback port: {e}")))
}
