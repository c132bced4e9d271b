//! The data-parallel gradient hook for [`LoraPlusAdamW`](loraplus_optim::LoraPlusAdamW).

use std::sync::Arc;

use anyhow::Context;
use loraplus_optim::GradHook;

use crate::group::ProcessGroup;

/// A [`GradHook`] that averages each flat gradient buffer over the ranks of `pg`, in place:
/// install it with `opt.set_grad_hook(allreduce_hook(pg))`. `sync_grads` runs it once per step,
/// before the micro-batch average and clipping, on buffers every rank lays out identically.
pub fn allreduce_hook(pg: Arc<ProcessGroup>) -> GradHook {
    Box::new(move |grad| {
        // A second handle to the same storage: the all-reduce writes into the optimizer's buffer.
        let mut handle = [grad.shallow_clone()];
        pg.allreduce_mean(&mut handle).with_context(|| {
            format!(
                "averaging a gradient buffer of {} elements ({:?}) over {} ranks",
                grad.numel(),
                grad.kind(),
                pg.world_size()
            )
        })
    })
}
