//! Data-parallel communication for loraplus on PyTorch's own c10d: Gloo on the CPU, NCCL on
//! CUDA, the engine `torch.distributed` runs, reached through a small C++ shim.
//!
//! # How it works
//! The torch wheel's `libtorch_cpu.so` exports c10d's `TCPStore`, `PrefixStore` and
//! `ProcessGroupGloo` (and `libtorch_cuda.so` `ProcessGroupNCCL`). `src/shim.cpp`, compiled by
//! `build.rs` with the `cc` crate against the wheel's headers (with the wheel's C++ ABI, read
//! from `libc10.so`), wraps them in a C ABI: create a store and a group, all-reduce, broadcast,
//! all-gather, barrier, destroy. A `tch::Tensor` is a handle to a `torch::Tensor`, so tensors
//! pass by handle and are reduced in place, without copies.
//!
//! The wheel ships no Gloo headers, which `ProcessGroupGloo.hpp` includes: `make setup`
//! unpacks Debian's `libgloo-dev` into `.deps/gloo` (`apt-get download` + `dpkg-deb -x`, no
//! root; see `fetch-gloo.sh`), or set `LORAPLUS_GLOO_INCLUDE`. Those headers are older than the
//! Gloo compiled into libtorch, so the shim never lays out or calls a Gloo type: every Gloo
//! object in `ProcessGroupGloo` sits behind a `shared_ptr`, and the shim only calls c10d's
//! exported functions: `tests/shim_symbols.rs` checks with `nm` that the archive defines and
//! calls no `gloo::` function, vtable or type info (what remains is
//! `std::vector<std::shared_ptr<gloo::transport::Device>>` and the headers' private
//! constants), and the collective tests would catch a mismatch at run time. The NCCL path is compiled wherever CUDA's runtime headers, `crt/host_config.h`
//! and `nv/target` (PyPI's `nvidia-cuda-crt` and `nvidia-cuda-cccl`, which the torch wheel
//! does not pull in) and `nccl.h` are found in the wheel's `nvidia/*/include` folders or
//! `$LORAPLUS_CUDA_INCLUDE` (feature `nccl` makes their absence a build error).
//!
//! Each rank runs a heartbeat thread that, every second, bumps a counter in the store and
//! publishes how many collectives the rank has issued. When a collective fails (a peer exited:
//! Gloo sees its sockets close at once; or a peer hangs: the collective's timeout), the error
//! names the peer whose heartbeat stopped, or the live peer that lags behind (stuck before the
//! collective), or says the store's owner is gone.
//!
//! # What a user runs
//! - `torchrun --nnodes M --nproc-per-node N --rdzv-endpoint HOST:PORT --no-python loraplus
//!   train ...`: each rank reads the launcher's variables with [`DistEnv::from_env`] (under
//!   torchrun's agent, `TORCHELASTIC_USE_AGENT_STORE=True`, every rank is a store client) and
//!   joins with [`ProcessGroup::from_env`].
//! - One node without torchrun: [`launch_local`] starts N ranks of a program with that contract
//!   (what `loraplus train --nproc-per-node N` is for).
//! - Any launcher setting `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`
//!   works the same; rank 0 then runs the store.
//! - With [`LoraPlusAdamW`](loraplus_optim::LoraPlusAdamW), [`allreduce_hook`] averages each flat
//!   gradient buffer over the ranks in `sync_grads`, before clipping.
//!
//! # What is tested (CPU, loopback; ranks are child processes of the test binary)
//! `tests/collectives.rs`, about 30 s: all-reduce sums of 1 to 10 million elements (f32, i64;
//! f64 and bf16 up to 1 million), checked exactly and in place (10 M f32 take about 0.1 s on
//! loopback), then 400 all-reduces of pseudo-random sizes (1 to 50,000) cycling the dtypes;
//! mean, max, coalesced all-reduce; broadcast; all-gather, equal and ragged; barrier; five
//! groups created and destroyed in turn; two ranks launched by the wheel's `torchrun
//! --no-python`, joining through its agent store; a SIGKILLed rank, and a SIGKILLed store
//! owner, make the peer fail within seconds naming it; a live rank stuck before a collective
//! makes the peer time out naming it; a rank that never arrives fails group creation within the
//! timeout; [`launch_local`] runs two ranks and names the one that was killed; a group of one
//! rank is the identity; bad options and launcher variables are refused by name.
//! `tests/shim_symbols.rs`: no Gloo code in the shim (above).
//! `tests/hook.rs`: 2 ranks x micro-batch b give the LoRA+ AdamW adapters of 1 rank x 2b
//! after 20 steps clipped at norm 0.5 (max difference 1e-7; the test allows 1e-6).

mod env;
mod error;
mod ffi;
mod group;
mod hook;
mod launch;

pub use env::DistEnv;
pub use error::{DistError, Result};
pub use group::{Backend, ProcessGroup, ProcessGroupOptions, DEFAULT_HEARTBEAT, DEFAULT_TIMEOUT};
pub use hook::allreduce_hook;
pub use launch::{launch_local, LocalLaunch};
