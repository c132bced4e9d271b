//! Attention masks and the call into libtorch's `scaled_dot_product_attention`, shared by the
//! architectures, and the per-layer context every block reads.
//!
//! Masks: bidirectional padding (encoders); causal + padding (decoders), restricted to each
//! document of a packed row when position ids are given ([`decoder_mask`]); and the mask of
//! the new positions of a decoding step over every key so far ([`causal_step_mask`]), whose
//! keys and values a [`KvCache`] keeps per layer.

use tch::{Device, Kind, Tensor};

/// What every layer of a forward pass shares: the attention mask, for Llama the rotary
/// tables, and which positions the layer computes. Built once per forward; holds no gradient.
///
/// A layer's input and output are "rows": `[B, T, H]` when every position is computed, or
/// `[N, H]` (the positions in [`Self::packed`], in order) when padding is skipped. With
/// [`Self::queries`] set, the layer returns only the rows named there, `[B, H]`: what the last
/// layer of a classifier needs, since its head reads one position per sequence.
#[derive(Debug)]
pub struct LayerCtx {
    /// Boolean, `true` where attention is allowed: `[B, 1, 1, T]` (padding) or `[B, 1, T, T]`
    /// (causal and padding).
    pub mask: Tensor,
    /// `(cos, sin)`, `[1, 1, T, head_dim]`, in the model dtype.
    pub rope: Option<(Tensor, Tensor)>,
    /// The tables of the sliding-window layers where their RoPE differs (Gemma 3's local
    /// base); `None`: `rope` serves every layer. See [`LayerCtx::with_local_rope`].
    pub local_rope: Option<(Tensor, Tensor)>,
    pub batch: i64,
    pub seq: i64,
    /// `[N]`, the flat positions `b * T + t` computed, ascending; `None`: all `B * T`.
    pub packed: Option<Tensor>,
    /// Set on a layer whose output is only some rows (one per sequence).
    pub queries: Option<QueryRows>,
}

/// One query row per sequence: which row of the layer input, and its mask and rotary entries.
#[derive(Debug)]
pub struct QueryRows {
    /// `[B]`: row of the layer input (flat `b * T + t` when dense, the packed index otherwise).
    pub rows: Tensor,
    /// `[B, 1, 1, T]`: the keys each of these queries may see.
    pub mask: Tensor,
    /// `(cos, sin)`, `[B, 1, 1, head_dim]`.
    pub rope: Option<(Tensor, Tensor)>,
    /// The same for [`LayerCtx::local_rope`].
    pub local_rope: Option<(Tensor, Tensor)>,
}

fn clone_pair(p: &Option<(Tensor, Tensor)>) -> Option<(Tensor, Tensor)> {
    p.as_ref()
        .map(|(c, s)| (c.shallow_clone(), s.shallow_clone()))
}

impl LayerCtx {
    /// Every position computed, all rows returned.
    pub fn dense(mask: Tensor, rope: Option<(Tensor, Tensor)>, batch: i64, seq: i64) -> Self {
        LayerCtx {
            mask,
            rope,
            local_rope: None,
            batch,
            seq,
            packed: None,
            queries: None,
        }
    }

    /// The same mask, tables and packing, returning only the rows of `queries`.
    pub fn with_queries(&self, queries: QueryRows) -> Self {
        LayerCtx {
            mask: self.mask.shallow_clone(),
            rope: clone_pair(&self.rope),
            local_rope: clone_pair(&self.local_rope),
            batch: self.batch,
            seq: self.seq,
            packed: self.packed.as_ref().map(Tensor::shallow_clone),
            queries: Some(queries),
        }
    }

    /// This context for a layer that takes the local tables ([`LayerCtx::local_rope`]) where
    /// there are any: the same mask, packing and rows (shallow copies).
    pub fn with_local_rope(&self) -> Self {
        let pick = |global: &Option<(Tensor, Tensor)>, local: &Option<(Tensor, Tensor)>| {
            clone_pair(if local.is_some() { local } else { global })
        };
        LayerCtx {
            mask: self.mask.shallow_clone(),
            rope: pick(&self.rope, &self.local_rope),
            local_rope: None,
            batch: self.batch,
            seq: self.seq,
            packed: self.packed.as_ref().map(Tensor::shallow_clone),
            queries: self.queries.as_ref().map(|q| QueryRows {
                rows: q.rows.shallow_clone(),
                mask: q.mask.shallow_clone(),
                rope: pick(&q.rope, &q.local_rope),
                local_rope: None,
            }),
        }
    }

    /// `[B, T, H]` (dense) to rows: itself, or the packed positions `[N, H]`.
    pub fn pack(&self, h: Tensor) -> Tensor {
        match &self.packed {
            None => h,
            Some(index) => {
                let width = h.size().last().copied().unwrap_or(0);
                h.reshape([-1, width]).index_select(0, index)
            }
        }
    }

    /// The rows this layer returns: all of `x`, or the query rows `[B, H]`.
    pub fn query_rows(&self, x: &Tensor) -> Tensor {
        match &self.queries {
            None => x.shallow_clone(),
            Some(q) => {
                let width = x.size().last().copied().unwrap_or(0);
                x.reshape([-1, width]).index_select(0, &q.rows)
            }
        }
    }

    /// Rows of every position (`[B, T, W]` or `[N, W]`) to `[B, T, W]`; skipped positions are
    /// zero (they are only ever keys, and masked). One scatter for all the projections `y` holds.
    pub fn unpack(&self, y: &Tensor) -> Tensor {
        let (b, t) = (self.batch, self.seq);
        match &self.packed {
            None => y.shallow_clone(),
            Some(index) => {
                let w = y.size().last().copied().unwrap_or(0);
                Tensor::zeros([b * t, w], (y.kind(), y.device()))
                    .index_copy(0, index, y)
                    .view([b, t, w])
            }
        }
    }

    /// `[B, T, heads * d]` (a slice of [`Self::unpack`]'s result) to `[B, heads, T, d]`.
    pub fn heads(&self, y: &Tensor, heads: i64, d: i64) -> Tensor {
        y.view([self.batch, self.seq, heads, d]).transpose(1, 2)
    }

    /// A projection of the query rows to `[B, heads, Tq, d]` (`Tq` = T, or 1 with queries).
    pub fn query_heads(&self, y: &Tensor, heads: i64, d: i64) -> Tensor {
        match &self.queries {
            None => self.heads(&self.unpack(y), heads, d),
            Some(_) => y.view([self.batch, 1, heads, d]).transpose(1, 2),
        }
    }

    /// The mask the query rows attend with.
    pub fn query_mask(&self) -> &Tensor {
        match &self.queries {
            None => &self.mask,
            Some(q) => &q.mask,
        }
    }

    /// [`Self::query_mask`] with each query kept to the keys of the last `window` positions of
    /// its row, itself included ([`sliding_window`]): for an architecture whose layers differ in
    /// window (Gemma 2). The query rows of [`Self::queries`] are located through their flat
    /// index (`b * T + t`, through [`Self::packed`] when packed).
    pub fn windowed_query_mask(&self, window: i64) -> Tensor {
        match &self.queries {
            None => sliding_window(&self.mask, window),
            Some(q) => {
                let flat = match &self.packed {
                    Some(index) => index.index_select(0, &q.rows),
                    None => q.rows.shallow_clone(),
                };
                let t = self.seq;
                let at = flat.remainder(t).view([-1, 1]);
                let keys = Tensor::arange(t, (Kind::Int64, flat.device())).view([1, t]);
                let band = keys.gt_tensor(&(at - window));
                q.mask.logical_and(&band.view([-1, 1, 1, t]))
            }
        }
    }

    /// The mask of a layer with `window` ([`Self::windowed_query_mask`]), or without one
    /// ([`Self::query_mask`]).
    pub fn layer_mask(&self, window: Option<i64>) -> Tensor {
        match window {
            Some(w) => self.windowed_query_mask(w),
            None => self.query_mask().shallow_clone(),
        }
    }

    /// [`Self::query_mask`] with each query kept to the keys at most `half` positions away on
    /// either side (a bidirectional encoder's sliding window: ModernBERT's local layers,
    /// transformers' `sliding_window_bidirectional_overlay`). Query rows are located as in
    /// [`Self::windowed_query_mask`].
    pub fn bidirectional_window_query_mask(&self, half: i64) -> Tensor {
        let t = self.seq;
        let keys = Tensor::arange(t, (Kind::Int64, self.mask.device())).view([1, t]);
        match &self.queries {
            None => {
                let band = (&keys - keys.view([t, 1])).abs().le(half);
                self.mask.logical_and(&band.view([1, 1, t, t]))
            }
            Some(q) => {
                let flat = match &self.packed {
                    Some(index) => index.index_select(0, &q.rows),
                    None => q.rows.shallow_clone(),
                };
                let at = flat.remainder(t).view([-1, 1]);
                let band = (&keys - at).abs().le(half);
                q.mask.logical_and(&band.view([-1, 1, 1, t]))
            }
        }
    }

    /// The rotary tables of the queries and of the keys.
    pub fn query_rope(&self) -> Option<(&Tensor, &Tensor)> {
        match &self.queries {
            None => self.rope.as_ref().map(|(c, s)| (c, s)),
            Some(q) => q.rope.as_ref().map(|(c, s)| (c, s)),
        }
    }

    /// Attention output `[B, heads, Tq, d]` back to the query rows' layout.
    pub fn merge_heads(&self, a: &Tensor) -> Tensor {
        let size = a.size();
        let width = size[1] * size[3];
        let a = a.transpose(1, 2);
        match (&self.queries, &self.packed) {
            (Some(_), _) => a.reshape([self.batch, width]),
            (None, None) => a.reshape([self.batch, self.seq, width]),
            (None, Some(index)) => a.reshape([-1, width]).index_select(0, index),
        }
    }
}

/// `[B, T]` mask (1 = token, 0 = padding; any integer, bool or float kind) to the boolean
/// key-padding mask `[B, 1, 1, T]` of a bidirectional encoder.
pub fn padding_mask(attention_mask: &Tensor) -> Tensor {
    let size = attention_mask.size();
    attention_mask.ne(0).view([size[0], 1, 1, size[1]])
}

/// Causal and padding in one boolean mask `[B, 1, T, T]`: query `i` sees key `j <= i` unless
/// `j` is padding. The diagonal is always allowed, so that the query rows of left padding
/// (which would see nothing) stay finite; those rows never reach a non-padding position.
pub fn causal_padding_mask(attention_mask: &Tensor) -> Tensor {
    let t = attention_mask.size()[1];
    causal_step_mask(attention_mask, t)
}

/// The mask of the last `queries` positions of a sequence whose keys are `attention_mask`
/// (`[B, T_k]`, every key so far, as in a decoding step with a KV cache): `[B, 1, queries,
/// T_k]`, query `i` (at position `T_k - queries + i`) sees the non-padding keys up to itself,
/// and always itself. With `queries == T_k`, [`causal_padding_mask`].
pub fn causal_step_mask(attention_mask: &Tensor, queries: i64) -> Tensor {
    let size = attention_mask.size();
    let (b, t) = (size[0], size[1]);
    let past = t - queries;
    let device = attention_mask.device();
    let causal = Tensor::ones([queries, t], (Kind::Bool, device)).tril(past);
    let diagonal = Tensor::eye(queries, (Kind::Bool, device));
    let diagonal = if past > 0 {
        Tensor::cat(
            &[
                Tensor::zeros([queries, past], (Kind::Bool, device)),
                diagonal,
            ],
            1,
        )
    } else {
        diagonal
    };
    let keys = attention_mask.ne(0).view([b, 1, 1, t]);
    causal
        .view([1, 1, queries, t])
        .logical_and(&keys)
        .logical_or(&diagonal.view([1, 1, queries, t]))
}

/// Which document each position of a packed row belongs to, `[B, T]` (0, 1, ... from the
/// left): a document is a maximal run of positions whose `position_ids` (`[B, T]`) increase by
/// exactly one (transformers' `masking_utils.find_packed_sequence_indices`).
pub fn document_ids(position_ids: &Tensor) -> Tensor {
    let size = position_ids.size();
    let (b, t) = (size[0], size[1]);
    let starts = if t > 1 {
        let step = position_ids.narrow(1, 1, t - 1) - position_ids.narrow(1, 0, t - 1);
        Tensor::cat(
            &[
                Tensor::zeros([b, 1], (Kind::Int64, position_ids.device())),
                step.ne(1).to_kind(Kind::Int64),
            ],
            1,
        )
    } else {
        Tensor::zeros([b, t], (Kind::Int64, position_ids.device()))
    };
    starts.cumsum(1, Kind::Int64)
}

/// [`causal_padding_mask`] restricted, with `position_ids`, to keys of the query's own
/// document (see [`document_ids`]): packed rows attend within each document only.
pub fn decoder_mask(attention_mask: &Tensor, position_ids: Option<&Tensor>) -> Tensor {
    let mask = causal_padding_mask(attention_mask);
    match position_ids {
        None => mask,
        Some(pos) => {
            let size = pos.size();
            let (b, t) = (size[0], size[1]);
            let doc = document_ids(pos);
            let same = doc.view([b, 1, t, 1]).eq_tensor(&doc.view([b, 1, 1, t]));
            mask.logical_and(&same)
        }
    }
}

/// `mask` (`[B, 1, Tq, Tk]`, its queries the last `Tq` of the `Tk` positions, as in
/// [`causal_step_mask`]) with each query kept to the keys of the last `window` positions,
/// itself included: key `j` is seen from position `i` only when `j > i - window`
/// (transformers' `sliding_window_overlay`, on positions in the row, not on position ids).
pub fn sliding_window(mask: &Tensor, window: i64) -> Tensor {
    let size = mask.size();
    let (tq, tk) = (size[2], size[3]);
    let device = mask.device();
    let q = Tensor::arange_start(tk - tq, tk, (Kind::Int64, device)).view([tq, 1]);
    let k = Tensor::arange(tk, (Kind::Int64, device)).view([1, tk]);
    let band = k.gt_tensor(&(q - window));
    mask.logical_and(&band.view([1, 1, tq, tk]))
}

/// One layer's keys and values of the positions decoded so far, `[B, H_kv, T, D]` each (keys
/// after rotary embedding); `None` before the first step.
pub type KvCache = Option<(Tensor, Tensor)>;

/// Append this step's keys and values (`[B, H_kv, T_new, D]`) to `cache` and return all of them.
pub fn extend_cache(cache: &mut KvCache, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
    let (k, v) = match cache.take() {
        Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
        None => (k, v),
    };
    *cache = Some((k.shallow_clone(), v.shallow_clone()));
    (k, v)
}

/// `softmax(q k^T * scale + mask) v`; `dropout_p` applies to the attention probabilities
/// only when `train`. `q`: `[B, H, Tq, D]`; `k`, `v`: `[B, H_kv, T, D]` (grouped-query attention
/// when `H_kv < H`). Without dropout, libtorch's fused kernels; with dropout on the CPU in f32,
/// the same arithmetic as libtorch's reference path, with the mask drawn by
/// [`loraplus_core::dropout`] (libtorch's own is a serial loop).
pub fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    dropout_p: f64,
    train: bool,
    scale: Option<f64>,
) -> Tensor {
    let p = if train { dropout_p } else { 0.0 };
    let (hq, hkv) = (q.size()[1], k.size()[1]);
    let gqa = hq != hkv;
    if gqa && q.device() != Device::Cpu {
        // On CUDA the memory-efficient kernel takes a mask but not `enable_gqa`: with both,
        // libtorch falls back to the math kernel, which materialises every score (what
        // transformers' `use_gqa_in_sdpa` avoids the same way). Repeat the key/value heads.
        return sdpa_repeated_kv(q, k, v, mask, p, scale);
    }
    if p == 0.0 || q.device() != Device::Cpu || q.kind() != Kind::Float {
        return Tensor::scaled_dot_product_attention(q, k, v, Some(mask), p, false, scale, gqa);
    }
    let (k, v) = if gqa {
        let rep = hq / hkv;
        (
            k.repeat_interleave_self_int(rep, 1, None),
            v.repeat_interleave_self_int(rep, 1, None),
        )
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let d = q.size()[3];
    let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
    let scores = (q * scale).matmul(&k.transpose(-2, -1));
    let scores = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    // A query row that may see nothing gives zeros, as libtorch's kernels do.
    let probs = scores.softmax(-1, Kind::Float).nan_to_num(0.0, None, None);
    loraplus_core::dropout::dropout(&probs, p, true).matmul(&v)
}

/// [`sdpa`] for grouped-query attention with each key/value head repeated for its queries,
/// so that a masked call can use the fused kernels that do not take `enable_gqa`.
fn sdpa_repeated_kv(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    p: f64,
    scale: Option<f64>,
) -> Tensor {
    let rep = q.size()[1] / k.size()[1];
    let k = k.repeat_interleave_self_int(rep, 1, None);
    let v = v.repeat_interleave_self_int(rep, 1, None);
    Tensor::scaled_dot_product_attention(q, &k, &v, Some(mask), p, false, scale, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repeated-heads call (CUDA's path for masked GQA) gives `enable_gqa`'s values and
    /// gradients.
    #[test]
    fn repeated_kv_heads_equal_enable_gqa() {
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([2, 8, 5, 16], opts).set_requires_grad(true);
        let k = Tensor::randn([2, 2, 5, 16], opts).set_requires_grad(true);
        let v = Tensor::randn([2, 2, 5, 16], opts).set_requires_grad(true);
        let mask =
            causal_padding_mask(&Tensor::from_slice2(&[[1i64, 1, 1, 1, 1], [0, 0, 1, 1, 1]]));
        let mut outs = Vec::new();
        for repeated in [false, true] {
            let y = if repeated {
                sdpa_repeated_kv(&q, &k, &v, &mask, 0.0, None)
            } else {
                Tensor::scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    Some(&mask),
                    0.0,
                    false,
                    None,
                    true,
                )
            };
            y.square().sum(Kind::Float).backward();
            let grads: Vec<Tensor> = [&q, &k, &v].iter().map(|t| t.grad().copy()).collect();
            for t in [&q, &k, &v] {
                let mut g = t.grad();
                let _ = g.zero_();
            }
            outs.push((y.detach(), grads));
        }
        let d = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
        assert!(d(&outs[0].0, &outs[1].0) < 1e-5);
        for (a, b) in outs[0].1.iter().zip(&outs[1].1) {
            assert!(d(a, b) < 1e-4, "gradient off by {}", d(a, b));
        }
    }

    fn rows(t: &Tensor) -> Vec<Vec<i64>> {
        Vec::<Vec<i64>>::try_from(&t.to_kind(Kind::Int64)).unwrap()
    }

    /// transformers' docstring example (documents of 2, 3 and 1 tokens), a row without packing,
    /// and left padding with generation positions (each padding position its own document).
    #[test]
    fn documents_are_runs_of_positions_increasing_by_one() {
        let pos = Tensor::from_slice(&[0i64, 1, 0, 1, 2, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 1, 2])
            .view([3, 6]);
        assert_eq!(
            rows(&document_ids(&pos)),
            [
                vec![0, 0, 1, 1, 1, 2],
                vec![0, 0, 0, 0, 0, 0],
                vec![0, 1, 2, 3, 3, 3]
            ]
        );
    }

    /// Keys seen: causal within the document, never padding (the last key), always the query
    /// itself.
    #[test]
    fn decoder_mask_keeps_queries_to_their_document() {
        let pos = Tensor::from_slice(&[0i64, 1, 0, 1, 2]).view([1, 5]);
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 0]).view([1, 5]);
        let m = decoder_mask(&mask, Some(&pos)).view([5, 5]);
        assert_eq!(
            rows(&m),
            [
                vec![1, 0, 0, 0, 0],
                vec![1, 1, 0, 0, 0],
                vec![0, 0, 1, 0, 0],
                vec![0, 0, 1, 1, 0],
                vec![0, 0, 1, 1, 1]
            ]
        );
    }

    /// A window of 2: each query sees itself and the key before it (within the causal and
    /// padding mask); a decoding step's rows are the last rows of the full mask.
    #[test]
    fn sliding_window_keeps_the_last_keys() {
        let mask = Tensor::from_slice(&[0i64, 1, 1, 1, 1]).view([1, 5]);
        let full = sliding_window(&causal_padding_mask(&mask), 2);
        assert_eq!(
            rows(&full.view([5, 5])),
            [
                vec![1, 0, 0, 0, 0],
                vec![0, 1, 0, 0, 0],
                vec![0, 1, 1, 0, 0],
                vec![0, 0, 1, 1, 0],
                vec![0, 0, 0, 1, 1]
            ]
        );
        let step = sliding_window(&causal_step_mask(&mask, 1), 2);
        assert!(step.equal(&full.narrow(2, 4, 1)));
    }

    /// The last rows of the full causal mask are the mask of a decoding step.
    #[test]
    fn step_mask_is_the_last_rows_of_the_causal_mask() {
        let mask = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1]).view([2, 6]);
        let full = causal_padding_mask(&mask);
        for queries in [1, 2, 6] {
            let step = causal_step_mask(&mask, queries);
            assert_eq!(step.size(), [2, 1, queries, 6]);
            assert!(step.equal(&full.narrow(2, 6 - queries, queries)));
        }
    }

    /// The explicit path (taken with dropout on the CPU) against libtorch's kernel, at a
    /// dropout so small that no element is dropped: outputs and gradients, with a padding mask
    /// (one row fully masked), a causal mask, and grouped-query attention.
    #[test]
    fn explicit_attention_equals_the_kernel() {
        tch::manual_seed(2);
        let cpu = (Kind::Float, Device::Cpu);
        let lengths = Tensor::from_slice(&[5i64, 0, 3]);
        let keep = Tensor::arange(6, (Kind::Int64, Device::Cpu))
            .unsqueeze(0)
            .lt_tensor(&lengths.unsqueeze(1));
        for (mask, kv_heads) in [
            (padding_mask(&keep), 4),
            (causal_padding_mask(&keep), 4),
            (causal_padding_mask(&keep), 2),
        ] {
            let q = Tensor::randn([3, 4, 6, 8], cpu).set_requires_grad(true);
            let k = Tensor::randn([3, kv_heads, 6, 8], cpu).set_requires_grad(true);
            let v = Tensor::randn([3, kv_heads, 6, 8], cpu).set_requires_grad(true);
            let w = Tensor::randn([3, 4, 6, 8], cpu);
            let mut results = Vec::new();
            for p in [1e-12, 0.0] {
                let y = sdpa(&q, &k, &v, &mask, p, true, Some(0.3));
                (&y * &w).sum(Kind::Float).backward();
                let mut r = vec![y.detach()];
                for t in [&q, &k, &v] {
                    r.push(t.grad().copy());
                    let _ = t.grad().zero_();
                }
                results.push(r);
            }
            for (a, b) in results[0].iter().zip(&results[1]) {
                let d = (a - b).abs().max().double_value(&[]);
                assert!(d < 1e-5, "kv heads {kv_heads}: differs by {d:e}");
                assert!(bool::try_from(a.isfinite().all()).unwrap());
            }
        }
    }
}
