//! [`ProcessGroup`]: a c10d TCP store plus a Gloo (or NCCL) group over it, with the
//! collectives data-parallel training needs, and a heartbeat that names a rank that stopped.

use std::ffi::{c_int, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tch::{Kind, Tensor};

use crate::env::DistEnv;
use crate::error::{DistError, Result};
use crate::ffi::{self, RawGroup, RawStore, RawTensor};

/// torch.distributed's default collective timeout for Gloo (`default_pg_timeout`, 30 min).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How often each rank bumps its heartbeat key in the store. A failed collective then waits
/// three intervals to see whose heartbeat stopped.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

/// Heartbeat intervals without a beat after which a peer counts as stopped.
const HEARTBEAT_MISSES: u32 = 3;

/// Groups created by this process, in order: every rank creates its groups in the same order,
/// so the count names a group identically on all of them (as torch.distributed's group names
/// do), and the keys of a destroyed group never meet those of the next in a shared store.
static GROUPS_CREATED: AtomicU64 = AtomicU64::new(0);

/// The communication library under the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors (what PyTorch uses on the CPU), over TCP.
    Gloo,
    /// NCCL: CUDA tensors, one GPU per rank (put rank r's tensors on `cuda:LOCAL_RANK`).
    /// Built only where CUDA's and NCCL's headers were found (see [`Backend::is_built`]).
    Nccl,
}

impl Backend {
    /// The name torch.distributed uses (`gloo`, `nccl`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }

    /// Whether this build can create a group of this backend (NCCL is built only where the
    /// CUDA and NCCL headers were found).
    pub fn is_built(self) -> bool {
        match self {
            Backend::Gloo => true,
            // SAFETY: a constant query without arguments.
            Backend::Nccl => (unsafe { ffi::lpd_has_nccl() }) != 0,
        }
    }
}

/// How to form a [`ProcessGroup`]. [`Self::from_env`] fills it from the launcher's variables.
#[derive(Debug, Clone)]
pub struct ProcessGroupOptions {
    /// Host of the TCP store (`MASTER_ADDR`).
    pub master_addr: String,
    /// Port of the TCP store (`MASTER_PORT`).
    pub master_port: u16,
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// The number of ranks.
    pub world_size: usize,
    /// Whether this process runs the store's server (rank 0 of a plain launch); otherwise it
    /// connects as a client (every rank under torchrun's agent store).
    pub store_server: bool,
    /// Limit for forming the group and for each collective.
    pub timeout: Duration,
    /// Gloo or NCCL.
    pub backend: Backend,
    /// Namespace of this job's keys in the store.
    pub prefix: String,
    /// The address this rank's Gloo device binds to. `None`: c10d's choice
    /// (`GLOO_SOCKET_IFNAME`, else the host name's address, else loopback).
    pub gloo_hostname: Option<String>,
    /// Heartbeat interval (see [`DEFAULT_HEARTBEAT`]); `None` turns the heartbeat off, and a
    /// failed collective then cannot say which peer stopped.
    pub heartbeat: Option<Duration>,
}

impl ProcessGroupOptions {
    /// Options for `rank` of `world_size` with the store at `master_addr:master_port`, run by
    /// rank 0; loopback addresses keep Gloo on loopback too.
    pub fn new(
        master_addr: impl Into<String>,
        master_port: u16,
        rank: usize,
        world_size: usize,
        backend: Backend,
    ) -> Self {
        let master_addr = master_addr.into();
        let gloo_hostname = is_loopback(&master_addr).then(|| "127.0.0.1".to_string());
        Self {
            master_addr,
            master_port,
            rank,
            world_size,
            store_server: rank == 0,
            timeout: DEFAULT_TIMEOUT,
            backend,
            prefix: "loraplus".to_string(),
            gloo_hostname,
            heartbeat: Some(DEFAULT_HEARTBEAT),
        }
    }

    /// Options from the launcher's environment (see [`DistEnv`]).
    pub fn from_env(env: &DistEnv, backend: Backend) -> Self {
        let mut opts = Self::new(
            env.master_addr.clone(),
            env.master_port,
            env.rank,
            env.world_size,
            backend,
        );
        opts.store_server = env.is_store_server();
        opts.prefix = format!("loraplus/attempt_{}", env.restart_count);
        opts
    }

    fn validate(&self) -> Result<()> {
        if self.world_size == 0 {
            return Err(DistError::Options(
                "world_size is 0, expected >= 1".to_string(),
            ));
        }
        if self.rank >= self.world_size {
            return Err(DistError::Options(format!(
                "rank is {}, expected 0..{} (world_size)",
                self.rank, self.world_size
            )));
        }
        if i32::try_from(self.world_size).is_err() {
            return Err(DistError::Options(format!(
                "world_size {} is too large",
                self.world_size
            )));
        }
        if self.timeout.is_zero() {
            return Err(DistError::Options("timeout is 0".to_string()));
        }
        if self.heartbeat.is_some_and(|h| h.is_zero()) {
            return Err(DistError::Options(
                "heartbeat interval is 0 (use None to turn it off)".to_string(),
            ));
        }
        if !self.backend.is_built() {
            return Err(DistError::Options(format!(
                "backend {} is not in this build (NCCL needs CUDA's and NCCL's headers at build \
                 time; see loraplus-dist's build.rs)",
                self.backend.name()
            )));
        }
        for (what, s) in [("master_addr", &self.master_addr), ("prefix", &self.prefix)] {
            if s.contains('\0') {
                return Err(DistError::Options(format!(
                    "{what} {s:?} contains a NUL byte"
                )));
            }
        }
        Ok(())
    }
}

fn is_loopback(addr: &str) -> bool {
    addr == "localhost"
        || addr == "::1"
        || addr
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// A c10d store connection, freed on drop.
struct StoreHandle(*mut RawStore);

// SAFETY: c10d's TCPStore serializes its client calls with an internal mutex; we also use each
// handle from one thread at a time (the group's lock, or the heartbeat thread's own handle).
unsafe impl Send for StoreHandle {}
unsafe impl Sync for StoreHandle {}

impl Drop for StoreHandle {
    fn drop(&mut self) {
        // SAFETY: created by lpd_store_new, freed once.
        unsafe { ffi::lpd_store_free(self.0) }
    }
}

impl StoreHandle {
    fn connect(opts: &ProcessGroupOptions, server: bool) -> Result<Self, String> {
        let host = cstring(&opts.master_addr)?;
        let prefix = cstring(&opts.prefix)?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid C strings; `raw` is written on success only.
        ffi::check(unsafe {
            ffi::lpd_store_new(
                host.as_ptr(),
                opts.master_port,
                opts.world_size as i64,
                c_int::from(server),
                millis(opts.timeout),
                prefix.as_ptr(),
                &mut raw,
            )
        })?;
        Ok(Self(raw))
    }

    /// Adds `delta` to a counter key and returns its new value (`delta` 0 reads it).
    fn add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let key = cstring(key)?;
        let mut value = 0;
        // SAFETY: a live store and a valid C string.
        ffi::check(unsafe { ffi::lpd_store_add(self.0, key.as_ptr(), delta, &mut value) })?;
        Ok(value)
    }
}

/// The heartbeat thread: every interval, bumps `heartbeat/<rank>` and brings `progress/<rank>`
/// up to the number of collectives this rank has issued, until stopped.
struct Heartbeat {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    fn start(
        store: StoreHandle,
        keys: ProgressKeys,
        issued: Arc<AtomicU64>,
        interval: Duration,
    ) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (lock, cvar) = &*flag;
            let mut published = 0i64;
            loop {
                // The store calls run without the lock, so that stopping never waits on them.
                let now = i64::try_from(issued.load(Ordering::SeqCst)).unwrap_or(i64::MAX);
                let beat = store.add(&keys.heartbeat, 1).and_then(|_| {
                    store.add(&keys.progress, now - published)?;
                    published = now;
                    Ok(())
                });
                if beat.is_err() {
                    // The store is gone (its owner exited): peers find out through their own
                    // collectives, and this thread has nothing left to say.
                    return;
                }
                let Ok(stopped) = lock.lock() else { return };
                if *stopped {
                    return;
                }
                match cvar.wait_timeout_while(stopped, interval, |stopped| !*stopped) {
                    Ok((stopped, _)) if !*stopped => {}
                    _ => return,
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.stop;
        if let Ok(mut stopped) = lock.lock() {
            *stopped = true;
        }
        cvar.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A data-parallel process group: every rank creates one with the same store address and
/// world size, then issues the same collectives in the same order. Tensors pass to c10d by
/// handle (no copies) and are reduced in place. Dropping it destroys the group; call
/// [`Self::barrier`] first when a rank could otherwise leave while others still talk to it.
pub struct ProcessGroup {
    // Field order is drop order: the heartbeat stops before the group and the store go.
    heartbeat: Option<Heartbeat>,
    /// Collectives issued so far (all ranks issue the same ones in the same order).
    issued: Arc<AtomicU64>,
    group: *mut RawGroup,
    store: StoreHandle,
    /// Serializes collectives: c10d matches them across ranks by issue order.
    lock: Mutex<()>,
    opts: ProcessGroupOptions,
    name: String,
}

// SAFETY: the c10d group is only called under `lock`; the store handle is Send + Sync.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("backend", &self.opts.backend)
            .field("rank", &self.opts.rank)
            .field("world_size", &self.opts.world_size)
            .field(
                "store",
                &format!("{}:{}", self.opts.master_addr, self.opts.master_port),
            )
            .field("name", &self.name)
            .finish()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.heartbeat.take();
        // SAFETY: created by lpd_pg_new_*, freed once; no collective runs (we own `self`).
        unsafe { ffi::lpd_pg_free(self.group) }
    }
}

impl ProcessGroup {
    /// Connects to (or, on the store server, starts) the TCP store, then forms the group: waits
    /// up to `opts.timeout` for every rank.
    pub fn new(opts: &ProcessGroupOptions) -> Result<Self> {
        opts.validate()?;
        let store_error = |role: &'static str, message: String| DistError::Store {
            rank: opts.rank,
            addr: opts.master_addr.clone(),
            port: opts.master_port,
            role,
            message,
        };
        let role = if opts.store_server {
            "server on this rank"
        } else {
            "client"
        };
        let store =
            StoreHandle::connect(opts, opts.store_server).map_err(|m| store_error(role, m))?;
        let generation = GROUPS_CREATED.fetch_add(1, Ordering::SeqCst);
        let name = format!("pg{generation}");
        let issued = Arc::new(AtomicU64::new(0));
        let heartbeat = match opts.heartbeat {
            Some(interval) => {
                let beat =
                    StoreHandle::connect(opts, false).map_err(|m| store_error("client", m))?;
                Some(Heartbeat::start(
                    beat,
                    ProgressKeys::new(&name, opts.rank),
                    Arc::clone(&issued),
                    interval,
                ))
            }
            None => None,
        };
        let create_error = |message: String| DistError::Create {
            rank: opts.rank,
            world_size: opts.world_size,
            backend: opts.backend.name(),
            timeout: opts.timeout,
            message,
        };
        let prefix = cstring(&name).map_err(create_error)?;
        let hostname = match &opts.gloo_hostname {
            Some(h) => Some(cstring(h).map_err(create_error)?),
            None => None,
        };
        let mut group = std::ptr::null_mut();
        // Both checked by validate(): rank < world_size <= i32::MAX.
        let (rank, size) = (opts.rank as c_int, opts.world_size as c_int);
        // SAFETY: a live store, valid C strings; `group` is written on success only.
        let ret = unsafe {
            match opts.backend {
                Backend::Gloo => ffi::lpd_pg_new_gloo(
                    store.0,
                    prefix.as_ptr(),
                    rank,
                    size,
                    millis(opts.timeout),
                    hostname.as_ref().map_or(std::ptr::null(), |h| h.as_ptr()),
                    0,
                    &mut group,
                ),
                Backend::Nccl => ffi::lpd_pg_new_nccl(
                    store.0,
                    prefix.as_ptr(),
                    rank,
                    size,
                    millis(opts.timeout),
                    &mut group,
                ),
            }
        };
        ffi::check(ret).map_err(create_error)?;
        Ok(Self {
            heartbeat,
            issued,
            group,
            store,
            lock: Mutex::new(()),
            opts: opts.clone(),
            name,
        })
    }

    /// Joins the job the launcher's environment describes ([`DistEnv::from_env`]).
    pub fn from_env(backend: Backend, timeout: Duration) -> Result<Self> {
        let env = DistEnv::from_env()?;
        let mut opts = ProcessGroupOptions::from_env(&env, backend);
        opts.timeout = timeout;
        Self::new(&opts)
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.opts.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.opts.world_size
    }

    /// Gloo or NCCL.
    pub fn backend(&self) -> Backend {
        self.opts.backend
    }

    /// Sums each tensor over all ranks, in place (one collective per tensor, so shapes and
    /// dtypes may differ between tensors, not between ranks).
    pub fn allreduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        self.allreduce(tensors, ReduceOp::Sum)
    }

    /// Averages each floating-point tensor over all ranks, in place: the sum, divided by the
    /// world size (Gloo has no average op).
    pub fn allreduce_mean(&self, tensors: &mut [Tensor]) -> Result<()> {
        const OP: &str = "all-reduce (mean)";
        for (i, t) in tensors.iter().enumerate() {
            if t.defined() && !is_floating(t.kind()) {
                return Err(self.tensor_error(
                    OP,
                    format!(
                        "tensor {i} has dtype {:?}, expected a floating-point dtype (a mean of \
                         integers would truncate; use allreduce_sum)",
                        t.kind()
                    ),
                ));
            }
        }
        self.allreduce(tensors, ReduceOp::Sum)?;
        let world = self.opts.world_size as f64;
        for t in tensors.iter_mut() {
            let _ = t
                .f_div_scalar_(world)
                .map_err(|e| self.tensor_error(OP, format!("dividing by the world size: {e}")))?;
        }
        Ok(())
    }

    /// The element-wise maximum over all ranks, in place.
    pub fn allreduce_max(&self, tensors: &mut [Tensor]) -> Result<()> {
        self.allreduce(tensors, ReduceOp::Max)
    }

    /// Sums several tensors of one dtype over all ranks in a single collective, in place.
    pub fn allreduce_coalesced_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        const OP: &str = "coalesced all-reduce";
        self.check_tensors(OP, tensors)?;
        if let Some(first) = tensors.first() {
            let kind = first.kind();
            if let Some((i, t)) = tensors.iter().enumerate().find(|(_, t)| t.kind() != kind) {
                return Err(self.tensor_error(
                    OP,
                    format!(
                        "tensor {i} has dtype {:?}, expected {kind:?} like tensor 0",
                        t.kind()
                    ),
                ));
            }
        } else {
            return Ok(());
        }
        let raw = ffi::raw_tensors(tensors);
        let _guard = self.enter();
        // SAFETY: live group and tensor handles, kept alive by `tensors` for the call.
        let ret = unsafe {
            ffi::lpd_pg_allreduce_coalesced(self.group, raw.as_ptr(), raw.len(), self.millis())
        };
        ffi::check(ret).map_err(|m| self.collective_error(OP, m))
    }

    /// Copies `root`'s tensor into every rank's `tensor` (same shape and dtype everywhere).
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        const OP: &str = "broadcast";
        if root >= self.opts.world_size {
            return Err(self.tensor_error(
                OP,
                format!("root rank {root}, expected 0..{}", self.opts.world_size),
            ));
        }
        self.check_tensors(OP, std::slice::from_ref(tensor))?;
        let raw = tensor.as_mut_ptr().cast::<RawTensor>();
        let _guard = self.enter();
        // SAFETY: live group and tensor handle; root < world_size <= i32::MAX.
        let ret = unsafe { ffi::lpd_pg_broadcast(self.group, raw, root as c_int, self.millis()) };
        ffi::check(ret).map_err(|m| self.collective_error(OP, m))
    }

    /// Every rank's `tensor`, in rank order (each rank passes the same shape and dtype).
    pub fn allgather(&self, tensor: &Tensor) -> Result<Vec<Tensor>> {
        const OP: &str = "all-gather";
        self.check_tensors(OP, std::slice::from_ref(tensor))?;
        let mut input = tensor.shallow_clone();
        let mut outputs: Vec<Tensor> = (0..self.opts.world_size)
            .map(|_| tensor.f_empty_like())
            .collect::<Result<_, _>>()
            .map_err(|e| self.tensor_error(OP, format!("allocating the outputs: {e}")))?;
        let raw = ffi::raw_tensors(&mut outputs);
        let input_raw = input.as_mut_ptr().cast::<RawTensor>();
        let _guard = self.enter();
        // SAFETY: live group and tensor handles, kept alive for the call.
        let ret = unsafe {
            ffi::lpd_pg_allgather(
                self.group,
                input_raw,
                raw.as_ptr(),
                raw.len(),
                self.millis(),
            )
        };
        ffi::check(ret).map_err(|m| self.collective_error(OP, m))?;
        Ok(outputs)
    }

    /// Every rank's `tensor` concatenated along dim 0 in rank order, where ranks may hold
    /// different numbers of rows (an evaluation shard): gathers the row counts, pads to the
    /// longest, gathers, and trims.
    pub fn allgather_rows(&self, tensor: &Tensor) -> Result<Tensor> {
        const OP: &str = "all-gather (rows)";
        self.check_tensors(OP, std::slice::from_ref(tensor))?;
        let shape = tensor.size();
        let Some(&rows) = shape.first() else {
            return Err(self.tensor_error(OP, "a 0-dim tensor has no rows".to_string()));
        };
        let tensor_error = |e: tch::TchError| self.tensor_error(OP, e.to_string());
        let count = Tensor::f_from_slice(&[rows]).map_err(tensor_error)?;
        let counts: Vec<i64> = self
            .allgather(&count)?
            .iter()
            .map(|t| t.f_int64_value(&[0]))
            .collect::<Result<_, _>>()
            .map_err(tensor_error)?;
        let longest = counts.iter().copied().max().unwrap_or(0);
        let mut padded_shape = shape.clone();
        padded_shape[0] = longest;
        let padded = Tensor::f_zeros(&padded_shape, (tensor.kind(), tensor.device()))
            .map_err(tensor_error)?;
        if rows > 0 {
            padded
                .f_narrow(0, 0, rows)
                .and_then(|mut head| head.f_copy_(tensor))
                .map_err(tensor_error)?;
        }
        let gathered = self.allgather(&padded)?;
        let parts: Vec<Tensor> = gathered
            .iter()
            .zip(&counts)
            .map(|(t, &n)| t.f_narrow(0, 0, n))
            .collect::<Result<_, _>>()
            .map_err(tensor_error)?;
        Tensor::f_cat(&parts, 0).map_err(tensor_error)
    }

    /// Waits until every rank reaches the barrier.
    pub fn barrier(&self) -> Result<()> {
        let _guard = self.enter();
        // SAFETY: a live group.
        let ret = unsafe { ffi::lpd_pg_barrier(self.group, self.millis()) };
        ffi::check(ret).map_err(|m| self.collective_error("barrier", m))
    }

    fn allreduce(&self, tensors: &mut [Tensor], op: ReduceOp) -> Result<()> {
        let name = op.name();
        self.check_tensors(name, tensors)?;
        if tensors.is_empty() {
            return Ok(());
        }
        let raw = ffi::raw_tensors(tensors);
        let _guard = self.enter();
        // SAFETY: live group and tensor handles, kept alive by `tensors` for the call.
        let ret = unsafe {
            ffi::lpd_pg_allreduce(
                self.group,
                raw.as_ptr(),
                raw.len(),
                op as c_int,
                self.millis(),
            )
        };
        ffi::check(ret).map_err(|m| self.collective_error(name, m))
    }

    /// Takes the collective lock and counts one more collective issued.
    fn enter(&self) -> std::sync::MutexGuard<'_, ()> {
        let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.issued.fetch_add(1, Ordering::SeqCst);
        guard
    }

    fn check_tensors(&self, op: &'static str, tensors: &[Tensor]) -> Result<()> {
        for (i, t) in tensors.iter().enumerate() {
            if !t.defined() {
                return Err(self.tensor_error(op, format!("tensor {i} is undefined")));
            }
            if !t.is_contiguous() {
                return Err(self.tensor_error(
                    op,
                    format!(
                        "tensor {i} (shape {:?}) is not contiguous; c10d reduces dense buffers",
                        t.size()
                    ),
                ));
            }
            let device = t.device();
            let ok = match self.opts.backend {
                Backend::Gloo => true,
                Backend::Nccl => device.is_cuda(),
            };
            if !ok {
                return Err(self.tensor_error(
                    op,
                    format!("tensor {i} is on {device:?}, expected a CUDA device for NCCL"),
                ));
            }
        }
        Ok(())
    }

    fn tensor_error(&self, op: &'static str, problem: String) -> DistError {
        DistError::Tensor {
            rank: self.opts.rank,
            op,
            problem,
        }
    }

    fn collective_error(&self, op: &'static str, message: String) -> DistError {
        DistError::Collective {
            rank: self.opts.rank,
            world_size: self.opts.world_size,
            op,
            message,
            peers: self.diagnose_peers(),
        }
    }

    /// Which peers stopped or lag, from their heartbeats: read every rank's counters, wait
    /// [`HEARTBEAT_MISSES`] intervals, read again. A peer whose heartbeat stood still has
    /// exited (or is frozen); a live peer that issued fewer collectives than this rank is stuck
    /// before the collective that failed here.
    fn diagnose_peers(&self) -> String {
        let Some(interval) = self.opts.heartbeat else {
            return "(heartbeat off: cannot tell which rank stopped)".to_string();
        };
        let store_gone = |e: String| {
            let owner = if self.opts.store_server {
                "this rank"
            } else {
                "rank 0, or torchrun's agent under torchrun"
            };
            format!(
                "the store at {}:{} is unreachable ({e}): its owner ({owner}) has probably exited",
                self.opts.master_addr, self.opts.master_port
            )
        };
        let read = |key: fn(&ProgressKeys) -> &str| -> Result<Vec<i64>, String> {
            (0..self.opts.world_size)
                .map(|r| self.store.add(key(&ProgressKeys::new(&self.name, r)), 0))
                .collect()
        };
        let before = match read(|k| &k.heartbeat) {
            Ok(v) => v,
            Err(e) => return store_gone(e),
        };
        std::thread::sleep(interval * HEARTBEAT_MISSES);
        let (after, progress) =
            match read(|k| &k.heartbeat).and_then(|a| Ok((a, read(|k| &k.progress)?))) {
                Ok(v) => v,
                Err(e) => return store_gone(e),
            };
        let peers = (0..self.opts.world_size).filter(|&r| r != self.opts.rank);
        let stopped: Vec<String> = peers
            .clone()
            .filter(|&r| before[r] == after[r])
            .map(|r| r.to_string())
            .collect();
        if !stopped.is_empty() {
            return format!(
                "peer rank(s) {} stopped (no heartbeat for {:?}): exited, killed or frozen",
                stopped.join(", "),
                interval * HEARTBEAT_MISSES
            );
        }
        let mine = i64::try_from(self.issued.load(Ordering::SeqCst)).unwrap_or(i64::MAX);
        let behind: Vec<String> = peers
            .filter(|&r| progress[r] < mine)
            .map(|r| format!("rank {r} at collective {}", progress[r]))
            .collect();
        if behind.is_empty() {
            "every peer is alive and has issued as many collectives as this rank: the ranks \
             issued different collectives, or the timeout is too short"
                .to_string()
        } else {
            format!(
                "peers alive but behind this rank's collective {mine}: {} (stuck in computation, \
                 or skipped a collective)",
                behind.join(", ")
            )
        }
    }

    fn millis(&self) -> i64 {
        millis(self.opts.timeout)
    }
}

/// The shim's reduce ops (`lpd_pg_allreduce`'s `op`).
#[derive(Debug, Clone, Copy)]
#[repr(i32)]
enum ReduceOp {
    Sum = 0,
    Max = 1,
}

impl ReduceOp {
    fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "all-reduce (sum)",
            ReduceOp::Max => "all-reduce (max)",
        }
    }
}

/// One rank's keys in the store: its heartbeat counter and its count of collectives issued.
struct ProgressKeys {
    heartbeat: String,
    progress: String,
}

impl ProgressKeys {
    fn new(group: &str, rank: usize) -> Self {
        Self {
            heartbeat: format!("{group}/heartbeat/{rank}"),
            progress: format!("{group}/progress/{rank}"),
        }
    }
}

fn is_floating(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Half | Kind::Float | Kind::Double | Kind::BFloat16
    )
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
