//! The launcher's environment contract (torchrun, `torch.distributed.launch`, or loraplus's own
//! `--nproc-per-node`): `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, and
//! torchrun's `TORCHELASTIC_USE_AGENT_STORE` / `TORCHELASTIC_RESTART_COUNT`.

use crate::error::{DistError, Result};

/// Where this process sits in a data-parallel job, as the launcher told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// `RANK`: this process's global rank, `0..world_size`.
    pub rank: usize,
    /// `WORLD_SIZE`: the number of processes in the job.
    pub world_size: usize,
    /// `LOCAL_RANK`: the rank on this node (picks the GPU); `rank` when unset and
    /// `LOCAL_WORLD_SIZE` is unset too (one node).
    pub local_rank: usize,
    /// `LOCAL_WORLD_SIZE`: the processes on this node, when the launcher says.
    pub local_world_size: Option<usize>,
    /// `MASTER_ADDR`: the host of the TCP store.
    pub master_addr: String,
    /// `MASTER_PORT`: the port of the TCP store.
    pub master_port: u16,
    /// `TORCHELASTIC_USE_AGENT_STORE=True`: torchrun's agent already runs the store; every rank,
    /// rank 0 included, connects to it as a client.
    pub use_agent_store: bool,
    /// `TORCHELASTIC_RESTART_COUNT`: how many times torchrun restarted the group (0 at first);
    /// keys of different attempts stay apart in a store that outlives them.
    pub restart_count: u64,
}

impl DistEnv {
    /// Reads the contract from the process environment. Errors name the variable that is
    /// missing or malformed; see [`Self::is_present`] to tell a distributed launch first.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Whether a launcher set `RANK` or `WORLD_SIZE` (a distributed run was asked for).
    pub fn is_present() -> bool {
        ["RANK", "WORLD_SIZE"]
            .iter()
            .any(|v| std::env::var_os(v).is_some())
    }

    /// As [`Self::from_env`], from any lookup (tests, or a launcher building a child's env).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |var: &'static str| -> Result<String> {
            lookup(var).ok_or_else(|| DistError::Env {
                var,
                problem: "not set (a launcher such as torchrun sets RANK, WORLD_SIZE, \
                          MASTER_ADDR and MASTER_PORT)"
                    .to_string(),
            })
        };
        let world_size: usize = parse(&get("WORLD_SIZE")?, "WORLD_SIZE", "a positive integer")?;
        if world_size == 0 {
            return Err(DistError::Env {
                var: "WORLD_SIZE",
                problem: "is 0, expected a positive integer".to_string(),
            });
        }
        let rank: usize = parse(&get("RANK")?, "RANK", "an integer")?;
        if rank >= world_size {
            return Err(DistError::Env {
                var: "RANK",
                problem: format!("is {rank}, expected 0..{world_size} (WORLD_SIZE={world_size})"),
            });
        }
        let local_world_size = match lookup("LOCAL_WORLD_SIZE") {
            Some(v) => Some(parse::<usize>(
                &v,
                "LOCAL_WORLD_SIZE",
                "a positive integer",
            )?),
            None => None,
        };
        let local_rank = match lookup("LOCAL_RANK") {
            Some(v) => parse(&v, "LOCAL_RANK", "an integer")?,
            None => rank,
        };
        if let Some(lws) = local_world_size {
            if local_rank >= lws {
                return Err(DistError::Env {
                    var: "LOCAL_RANK",
                    problem: format!("is {local_rank}, expected 0..{lws} (LOCAL_WORLD_SIZE={lws})"),
                });
            }
        }
        let master_addr = get("MASTER_ADDR")?;
        if master_addr.trim().is_empty() {
            return Err(DistError::Env {
                var: "MASTER_ADDR",
                problem: "is empty, expected a host name or address".to_string(),
            });
        }
        let master_port: u16 = parse(&get("MASTER_PORT")?, "MASTER_PORT", "a port 1..65535")?;
        if master_port == 0 {
            return Err(DistError::Env {
                var: "MASTER_PORT",
                problem: "is 0, expected a port 1..65535".to_string(),
            });
        }
        let use_agent_store = match lookup("TORCHELASTIC_USE_AGENT_STORE") {
            // torch.distributed compares with str(True); accept the usual spellings.
            Some(v) => match v.trim() {
                "True" | "true" | "1" => true,
                "False" | "false" | "0" | "" => false,
                other => {
                    return Err(DistError::Env {
                        var: "TORCHELASTIC_USE_AGENT_STORE",
                        problem: format!("is {other:?}, expected True or False"),
                    })
                }
            },
            None => false,
        };
        let restart_count = match lookup("TORCHELASTIC_RESTART_COUNT") {
            Some(v) => parse(&v, "TORCHELASTIC_RESTART_COUNT", "an integer")?,
            None => 0,
        };
        Ok(Self {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr: master_addr.trim().to_string(),
            master_port,
            use_agent_store,
            restart_count,
        })
    }

    /// Whether this process runs the TCP store's server: rank 0, unless torchrun's agent does.
    pub fn is_store_server(&self) -> bool {
        !self.use_agent_store && self.rank == 0
    }
}

fn parse<T: std::str::FromStr>(value: &str, var: &'static str, expected: &str) -> Result<T> {
    value.trim().parse().map_err(|_| DistError::Env {
        var,
        problem: format!("is {value:?}, expected {expected}"),
    })
}
