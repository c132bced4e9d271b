//! Data parallelism in the trainer, on `loraplus-dist` (PyTorch's c10d: Gloo on the CPU, NCCL
//! on CUDA). A run is data-parallel when a launcher set the env contract (`RANK`, `WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT`: torchrun, or `loraplus train --nproc-per-node N`) with a world
//! of 2 or more.
//!
//! Semantics, so that N ranks train what one process with the same global batch trains:
//! - `batch_size` is the global batch of an optimizer step: `grad_accum` micro-batches of
//!   `batch_size / grad_accum` examples, each split into `world` contiguous row blocks, one per
//!   rank (so a rank holds `batch_size / (grad_accum x world)`). Every rank draws the same
//!   epoch order from the seed (as DistributedSampler does), and the last short batch of an
//!   epoch is dropped.
//! - Each rank's loss is weighted by its share of the micro-batch's items (examples, or target
//!   tokens for a causal LM), and the gradients are averaged over the ranks in
//!   `LoraPlusAdamW::sync_grads` (one all-reduce per flat buffer, before clipping): the
//!   gradient is the one of the whole micro-batch's mean loss, as in one process.
//! - Rank 0's initial adapters and head are broadcast to every rank (after a resume too).
//! - One small all-reduce per step sums the weighted losses (the logged loss, the non-finite
//!   check) and any rank's interrupt flag, so every rank stops at the same step.
//! - Evaluation is sharded by whole evaluation batches: rank r scores batches r, r + world,
//!   ... of the single-process batch plan (file order, `eval_batch_size`), so each batch is the
//!   very batch one process scores; the per-batch outputs (logits, loss sums and token counts,
//!   as f64) are all-gathered, put back in batch order, and every rank computes the metrics once
//!   from the whole set: the single-process numbers, bitwise on the CPU. Uneven shards (and
//!   ranks with no batch) are fine.
//! - Only rank 0 writes checkpoints, metrics, plots and the adapter; the others wait at a
//!   barrier. A rank that dies makes the others fail naming it (see loraplus-dist).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use loraplus_core::LoraModel;
use loraplus_data::Batch;
use loraplus_dist::{allreduce_hook, Backend, DistEnv, ProcessGroup};
use loraplus_models::IGNORE_INDEX;

use crate::model::Optimizer;

/// This process's place in a data-parallel run.
pub struct DataParallel {
    pub pg: Arc<ProcessGroup>,
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    /// Nanoseconds spent in the gradient all-reduce so far.
    comm_nanos: Arc<AtomicU64>,
}

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataParallel(rank {} of {})", self.rank, self.world)
    }
}

impl DataParallel {
    /// The run's group when a launcher started this process in a world of 2 or more (or of
    /// one, with a backend named explicitly); `None` otherwise. `backend` is the config's
    /// `dist_backend`: `auto` picks NCCL on CUDA where it is built, else Gloo; `none` gives
    /// `None` without reading the environment.
    pub fn from_env(
        device: Device,
        backend: &str,
        timeout: Duration,
    ) -> Result<Option<DataParallel>> {
        if backend == "none" || !DistEnv::is_present() {
            return Ok(None);
        }
        let env = DistEnv::from_env()?;
        let backend = match (backend, device) {
            ("auto", _) if env.world_size < 2 => return Ok(None),
            ("auto", Device::Cuda(_)) if Backend::Nccl.is_built() => Backend::Nccl,
            ("auto" | "gloo", _) => Backend::Gloo,
            ("nccl", Device::Cuda(_)) if Backend::Nccl.is_built() => Backend::Nccl,
            ("nccl", Device::Cuda(_)) => bail!(
                "dist_backend is nccl but this build of loraplus has no NCCL path (it needs CUDA's \
                 and NCCL's headers at build time: `make setup` installs them); use gloo"
            ),
            ("nccl", other) => {
                bail!("dist_backend is nccl, which reduces CUDA tensors; the device is {other:?}")
            }
            (other, _) => {
                bail!("dist_backend must be auto, gloo, nccl or none, found {other:?}")
            }
        };
        let pg = ProcessGroup::from_env(backend, timeout).with_context(|| {
            format!(
                "joining the data-parallel group as rank {} of {} ({}:{})",
                env.rank, env.world_size, env.master_addr, env.master_port
            )
        })?;
        Ok(Some(DataParallel {
            pg: Arc::new(pg),
            rank: env.rank,
            world: env.world_size,
            local_rank: env.local_rank,
            comm_nanos: Arc::new(AtomicU64::new(0)),
        }))
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Gradients averaged over the ranks in the optimizer's `sync_grads` (timed: see
    /// [`Self::comm_seconds`]).
    pub fn attach(&self, opt: &mut Optimizer) {
        let mut inner = allreduce_hook(self.pg.clone());
        let spent = self.comm_nanos.clone();
        opt.0.set_grad_hook(Box::new(move |grad| {
            let t = Instant::now();
            let r = inner(grad);
            spent.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            r
        }));
    }

    /// Seconds this rank has spent in the gradient all-reduce (waiting for the slower ranks
    /// included).
    pub fn comm_seconds(&self) -> f64 {
        self.comm_nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// Rank 0's trainable tensors (adapters, head) on every rank.
    pub fn broadcast_params(&self, lora: &LoraModel) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for p in lora.trainable_params() {
            let mut t = p.tensor.shallow_clone();
            self.pg
                .broadcast(&mut t, 0)
                .with_context(|| format!("broadcasting {} from rank 0", p.name))?;
        }
        Ok(())
    }

    /// This rank's rows of a global micro-batch and their items (see the module docs).
    pub fn shard(&self, batch: &Batch) -> Result<(Batch, f64)> {
        let n = batch.size();
        if n < self.world {
            bail!(
                "a micro-batch of {n} examples cannot be split over {} ranks: raise batch_size",
                self.world
            );
        }
        let (start, end) = (n * self.rank / self.world, n * (self.rank + 1) / self.world);
        // The rows, and only the columns they use: padded to their own longest, as a batch of
        // just these rows would be (the same shapes as one process accumulating them).
        let mask = batch
            .attention_mask
            .narrow(0, start as i64, (end - start) as i64);
        let width = mask.size()[1];
        let used = mask
            .sum_dim_intlist(1, false, Kind::Int64)
            .max()
            .int64_value(&[]);
        let left = mask.select(1, 0).min().int64_value(&[]) == 0;
        let cols = if left { width - used } else { 0 };
        let rows = |t: &Tensor| {
            let r = t.narrow(0, start as i64, (end - start) as i64);
            if t.dim() == 2 {
                r.narrow(1, cols, used)
            } else {
                r
            }
        };
        let local = Batch {
            input_ids: rows(&batch.input_ids),
            attention_mask: rows(&batch.attention_mask),
            token_type_ids: rows(&batch.token_type_ids),
            labels: batch.labels.as_ref().map(rows),
            position_ids: batch.position_ids.as_ref().map(rows),
            indices: batch.indices[start..end].to_vec(),
            position: batch.position,
        };
        let mine = items(&local);
        Ok((local, mine))
    }

    /// Where this group's collectives take their tensors: the rank's GPU for NCCL, else the CPU.
    pub fn comm_device(&self) -> Device {
        match self.pg.backend() {
            Backend::Nccl => {
                Device::Cuda(self.local_rank % tch::Cuda::device_count().max(1) as usize)
            }
            Backend::Gloo => Device::Cpu,
        }
    }

    /// Element-wise sum over the ranks of a few f64 values.
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        let mut t = [Tensor::from_slice(values).to_device(self.comm_device())];
        self.pg.allreduce_sum(&mut t)?;
        Ok(Vec::<f64>::try_from(&t[0].to_device(Device::Cpu))?)
    }

    /// The outputs of all `batches` evaluation batches, in batch order, on every rank; `mine`
    /// holds this rank's, for the batches of [`eval_shard`] in order.
    pub fn gather_eval(&self, batches: usize, mine: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
        let expected = eval_shard(batches, self.rank, self.world).count();
        if mine.len() != expected {
            bail!(
                "rank {}: {} evaluation outputs for a shard of {expected} batches (of {batches})",
                self.rank,
                mine.len()
            );
        }
        if batches == 0 {
            // Every rank holds the same (empty) set: nothing to gather.
            return Ok(Vec::new());
        }
        let packed = Tensor::from_slice(&pack_outputs(mine)).to_device(self.comm_device());
        let all = self.pg.allgather_rows(&packed).with_context(|| {
            format!(
                "gathering the evaluation outputs of {batches} batches from {} ranks",
                self.world
            )
        })?;
        let flat = Vec::<f64>::try_from(&all.to_device(Device::Cpu))?;
        unpack_outputs(&flat, batches, self.world)
    }

    pub fn barrier(&self) -> Result<()> {
        Ok(self.pg.barrier()?)
    }
}

/// The evaluation batches (indices into the batch plan) that `rank` of `world` scores: every
/// `world`-th from `rank`, as DistributedSampler strides examples, but over whole batches.
pub fn eval_shard(batches: usize, rank: usize, world: usize) -> impl Iterator<Item = usize> {
    (rank..batches).step_by(world.max(1))
}

/// One rank's evaluation outputs as one buffer: for each batch, its number of values, then the
/// values.
pub fn pack_outputs(outputs: &[Vec<f64>]) -> Vec<f64> {
    let mut buf = Vec::with_capacity(outputs.iter().map(|o| o.len() + 1).sum());
    for o in outputs {
        buf.push(o.len() as f64);
        buf.extend_from_slice(o);
    }
    buf
}

/// Every batch's outputs in batch order, from the [`pack_outputs`] buffers of the `world`
/// ranks concatenated in rank order (rank r holding the batches of [`eval_shard`]).
pub fn unpack_outputs(gathered: &[f64], batches: usize, world: usize) -> Result<Vec<Vec<f64>>> {
    let mut out: Vec<Option<Vec<f64>>> = vec![None; batches];
    let mut at = 0usize;
    for rank in 0..world {
        for b in eval_shard(batches, rank, world) {
            let len = *gathered.get(at).with_context(|| {
                format!(
                    "the gathered evaluation outputs end at value {at}, before batch {b} of rank {rank} ({batches} batches, {world} ranks)"
                )
            })?;
            if !(len >= 0.0 && len.fract() == 0.0) {
                bail!("the gathered evaluation outputs hold {len} as the length of batch {b} (rank {rank})");
            }
            let (start, end) = (at + 1, at + 1 + len as usize);
            let values = gathered.get(start..end).with_context(|| {
                format!(
                    "batch {b} of rank {rank}: {len} values past the end of the gathered evaluation outputs ({} values)",
                    gathered.len()
                )
            })?;
            out[b] = Some(values.to_vec());
            at = end;
        }
    }
    if at != gathered.len() {
        bail!(
            "the gathered evaluation outputs hold {} values, {at} expected for {batches} batches over {world} ranks",
            gathered.len()
        );
    }
    out.into_iter()
        .enumerate()
        .map(|(b, o)| o.with_context(|| format!("no rank scored evaluation batch {b}")))
        .collect()
}

/// What a batch's mean loss averages over: target tokens of token labels (`[B, T]`, position
/// t predicting t + 1), else examples.
pub fn items(batch: &Batch) -> f64 {
    match &batch.labels {
        Some(l) if l.dim() == 2 && l.size()[1] > 1 => l
            .narrow(1, 1, l.size()[1] - 1)
            .ne(IGNORE_INDEX)
            .sum(Kind::Int64)
            .int64_value(&[]) as f64,
        _ => batch.size() as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_shards_cover_every_batch_once_uneven_and_empty_shards_included() {
        for (batches, world) in [(5, 2), (4, 2), (1, 3), (0, 2), (7, 3)] {
            let mut seen: Vec<usize> = (0..world)
                .flat_map(|r| eval_shard(batches, r, world))
                .collect();
            seen.sort_unstable();
            assert_eq!(
                seen,
                (0..batches).collect::<Vec<_>>(),
                "{batches} over {world}"
            );
        }
        assert_eq!(eval_shard(5, 0, 2).collect::<Vec<_>>(), vec![0, 2, 4]);
        assert_eq!(eval_shard(5, 1, 2).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(eval_shard(1, 2, 3).count(), 0);
    }

    #[test]
    fn gathered_outputs_come_back_in_batch_order() {
        // 5 batches over 2 ranks: rank 0 scored 0, 2, 4; rank 1 scored 1, 3 (of other lengths).
        let batch =
            |b: usize| -> Vec<f64> { (0..b + 1).map(|i| (10 * b + i) as f64 + 0.5).collect() };
        let rank0 = pack_outputs(&[batch(0), batch(2), batch(4)]);
        let rank1 = pack_outputs(&[batch(1), batch(3)]);
        let gathered: Vec<f64> = rank0.iter().chain(&rank1).copied().collect();
        let out = unpack_outputs(&gathered, 5, 2).unwrap();
        for (b, o) in out.iter().enumerate() {
            assert_eq!(o, &batch(b), "batch {b}");
        }
        // A rank with no batch (1 batch, 3 ranks) and empty outputs.
        let out = unpack_outputs(&pack_outputs(&[vec![]]), 1, 3).unwrap();
        assert_eq!(out, vec![Vec::<f64>::new()]);
    }

    #[test]
    fn malformed_gathered_outputs_are_refused_by_batch_and_rank() {
        let e = unpack_outputs(&[1.0, 2.0], 2, 2).unwrap_err().to_string();
        assert!(e.contains("before batch 1 of rank 1"), "{e}");
        let e = unpack_outputs(&[3.0, 2.0], 1, 1).unwrap_err().to_string();
        assert!(e.contains("batch 0 of rank 0"), "{e}");
        let e = unpack_outputs(&[0.0, 0.0, 9.0], 2, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 values, 2 expected"), "{e}");
        let e = unpack_outputs(&[1.5], 1, 1).unwrap_err().to_string();
        assert!(e.contains("1.5 as the length"), "{e}");
    }
}
