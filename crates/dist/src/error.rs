//! The errors of loraplus-dist: each says which variable, which rank, which collective.

use std::time::Duration;

/// What went wrong, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// An environment variable of the launcher contract is missing or malformed.
    #[error("environment variable {var}: {problem}")]
    Env {
        /// The variable's name (`RANK`, `MASTER_PORT`, ...).
        var: &'static str,
        /// What is wrong with it, with the value found and the value expected.
        problem: String,
    },
    /// A setting given to [`crate::ProcessGroup::new`] is impossible.
    #[error("process group options: {0}")]
    Options(String),
    /// The TCP store at `addr:port` could not be created or reached.
    #[error("rank {rank}: the store at {addr}:{port} ({role}): {message}")]
    Store {
        /// This process's rank.
        rank: usize,
        /// `MASTER_ADDR`.
        addr: String,
        /// `MASTER_PORT`.
        port: u16,
        /// `server on this rank` or `client`.
        role: &'static str,
        /// c10d's message.
        message: String,
    },
    /// The process group could not be formed (a rank never arrived, a bad address, ...).
    #[error(
        "rank {rank} of {world_size}: creating the {backend} process group failed within \
         {timeout:?}: {message}"
    )]
    Create {
        /// This process's rank.
        rank: usize,
        /// The number of ranks.
        world_size: usize,
        /// `gloo` or `nccl`.
        backend: &'static str,
        /// The group's timeout.
        timeout: Duration,
        /// c10d's message.
        message: String,
    },
    /// A tensor given to a collective is unusable (undefined, wrong dtype, not contiguous, ...).
    #[error("rank {rank}: {op}: {problem}")]
    Tensor {
        /// This process's rank.
        rank: usize,
        /// The collective (`all-reduce`, `broadcast`, ...).
        op: &'static str,
        /// What is wrong, with what was expected.
        problem: String,
    },
    /// A collective failed: a peer exited, hung past the timeout, or the ranks disagreed.
    #[error("rank {rank} of {world_size}: {op} failed: {message}; {peers}")]
    Collective {
        /// This process's rank.
        rank: usize,
        /// The number of ranks.
        world_size: usize,
        /// The collective (`all-reduce`, `broadcast`, ...).
        op: &'static str,
        /// c10d's message.
        message: String,
        /// Which peer rank(s) stopped, as far as the store's heartbeats tell.
        peers: String,
    },
    /// A rank started by [`crate::launch_local`] could not start, or the launcher failed.
    #[error("launcher: {0}")]
    Launch(String),
    /// A rank started by [`crate::launch_local`] ended badly (the others were stopped).
    #[error("launcher: rank {rank} of {nproc} {detail}")]
    RankFailed {
        rank: usize,
        nproc: usize,
        /// Its exit status, `None` when a signal ended it.
        code: Option<i32>,
        /// How it ended, and what became of the other ranks.
        detail: String,
    },
}

/// `Result` with [`DistError`].
pub type Result<T, E = DistError> = std::result::Result<T, E>;
