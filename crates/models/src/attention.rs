//! Attention masks and the call into libtorch's `scaled_dot_product_attention`, shared by the
//! architectures, and the per-layer context every block reads.

use tch::{Kind, Tensor};

/// What every layer of a forward pass shares: the attention mask and, for Llama, the rotary
/// tables. Built once per forward; holds no gradient.
#[derive(Debug)]
pub struct LayerCtx {
    /// Boolean, `true` where attention is allowed: `[B, 1, 1, T]` (padding) or `[B, 1, T, T]`
    /// (causal and padding).
    pub mask: Tensor,
    /// `(cos, sin)`, `[1, 1, T, head_dim]`, in the model dtype.
    pub rope: Option<(Tensor, Tensor)>,
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
    let size = attention_mask.size();
    let (b, t) = (size[0], size[1]);
    let device = attention_mask.device();
    let causal = Tensor::ones([t, t], (Kind::Bool, device)).tril(0);
    let eye = Tensor::eye(t, (Kind::Bool, device));
    let keys = attention_mask.ne(0).view([b, 1, 1, t]);
    causal
        .view([1, 1, t, t])
        .logical_and(&keys)
        .logical_or(&eye.view([1, 1, t, t]))
}

/// `softmax(q k^T * scale + mask) v` through libtorch's fused kernels; `dropout_p` applies only
/// when `train`. `q`: `[B, H, T, D]`; `k`, `v`: `[B, H_kv, T, D]` (grouped-query attention when
/// `H_kv < H`).
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
    let gqa = q.size()[1] != k.size()[1];
    Tensor::scaled_dot_product_attention(q, k, v, Some(mask), p, false, scale, gqa)
}

/// Dropout that is a no-op outside training or at p = 0.
pub fn dropout(x: Tensor, p: f64, train: bool) -> Tensor {
    if train && p > 0.0 {
        x.dropout(p, true)
    } else {
        x
    }
}
