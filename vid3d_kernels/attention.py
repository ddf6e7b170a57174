"""Attention of one set of queries over several key/value sources, each with an additive log-weight.

For query i and key j of source s the logit is ``scale * q_i . k_j + log_weight_s[j]``, and one
softmax runs over the keys of all sources together:

    out = softmax([Q K_1^T * scale + w_1, ..., Q K_n^T * scale + w_n]) [V_1; ...; V_n]

The video-diffusion stabilizers attend to local window tokens, anchor-frame tokens and a
cross-step K/V cache whose logits are down-weighted by ``log(decay ** steps_since_cached)``.
Concatenating those sources costs a copy of every K and V per call (and batch-1 anchors would
have to be materialised for the whole batch). No maintained library does this: FlashAttention and
torch's SDPA need one concatenated K/V, and SDPA's additive mask is a dense [B, H, Lq, Lk] tensor
(or a broadcast one that most fused backends refuse). So the Triton kernel here walks the sources
in place, with a flash-attention online softmax, and adds each source's log-weight to its logits.

``multi_source_attention_reference`` is the PyTorch definition (SDPA over the concatenation, the
log-weights as a float mask); it is differentiable. The Triton kernel is forward only.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: the reference runs anywhere
    triton = None

Source = tuple[Tensor, Tensor, float | Tensor]  # (key, value, log_weight)

# Sources fused into one kernel launch. Each source is its own set of kernel arguments (Triton has
# no arrays of pointers) and a constexpr count prunes the unused ones; the stabilizers use three.
# More sources run as further launches whose partial results merge exactly by log-sum-exp.
MAX_SOURCES = 4
BLOCK_M = 64  # query rows per program
BLOCK_N = 64  # keys per inner step


def multi_source_attention(
    query: Tensor, sources: list[Source], scale: float | None = None, use_triton: bool | None = None
) -> Tensor:
    """Attention of query [B, H, Lq, D] over all sources' keys at once; output [B, H, Lq, D].

    use_triton=None takes the Triton kernel when the query is on CUDA, Triton imports and no input
    needs a gradient; otherwise the differentiable reference. use_triton=True forces the kernel
    (on CPU only under TRITON_INTERPRET=1, set before triton is imported).
    """
    if use_triton is None:
        use_triton = triton is not None and query.is_cuda and not _needs_grad(query, sources)
    if not use_triton:
        return multi_source_attention_reference(query, sources, scale)
    if triton is None:
        raise RuntimeError("use_triton=True but triton is not installed")
    if _needs_grad(query, sources):
        raise RuntimeError("the Triton kernel has no backward: use use_triton=None or torch.no_grad()")
    return triton_multi_source_attention(query, sources, scale)


def multi_source_attention_reference(query: Tensor, sources: list[Source], scale: float | None = None) -> Tensor:
    """SDPA over the concatenated sources with the log-weights as a float mask (no mask if all are 0.0)."""
    batch, heads, lq, _ = query.shape
    _check(query, sources)
    keys = torch.cat([k.expand(batch, heads, -1, -1) for k, _, _ in sources], dim=2)
    values = torch.cat([v.expand(batch, heads, -1, -1) for _, v, _ in sources], dim=2)
    mask = None
    if not all(_is_number(w) and w == 0 for _, _, w in sources):
        weights = torch.cat([_weight_vector(w, k.shape[2], query) for k, _, w in sources]).to(query.dtype)
        mask = weights.expand(batch, heads, lq, -1)
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale)


def triton_multi_source_attention(
    query: Tensor, sources: list[Source], scale: float | None = None, block_m: int = BLOCK_M, block_n: int = BLOCK_N
) -> Tensor:
    """The Triton path, forward only; block sizes are parameters so tests can run tiny tiles."""
    _check(query, sources)
    for key, value, _ in sources:
        if key.dtype != query.dtype or value.dtype != query.dtype:
            raise ValueError(f"keys and values must have the query's dtype {query.dtype}")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    sources = [s for s in sources if s[0].shape[2] > 0]
    groups = [sources[i : i + MAX_SOURCES] for i in range(0, len(sources), MAX_SOURCES)]
    if len(groups) == 1:
        out, _ = _launch(query, groups[0], scale, query.dtype, block_m, block_n)
        return out
    partial = [_launch(query, group, scale, torch.float32, block_m, block_n) for group in groups]
    lse = torch.stack([l for _, l in partial])  # [groups, B, H, Lq]
    share = torch.softmax(lse, dim=0).unsqueeze(-1)  # each group's part of the total softmax mass
    return sum(s * o for s, (o, _) in zip(share, partial)).to(query.dtype)


def _launch(
    query: Tensor, sources: list[Source], scale: float, out_dtype: torch.dtype, block_m: int, block_n: int
) -> tuple[Tensor, Tensor]:
    """One kernel launch over up to MAX_SOURCES sources: (normalised output, log-sum-exp of logits)."""
    batch, heads, lq, dim = query.shape
    out = torch.empty(query.shape, dtype=out_dtype, device=query.device)
    lse = torch.empty((batch, heads, lq), dtype=torch.float32, device=query.device)
    per_source = [_source_args(s, query) for s in sources]
    per_source += per_source[:1] * (MAX_SOURCES - len(sources))  # unused slots: pruned by NUM_SOURCES
    args = [a for source_args in per_source for a in source_args]
    grid = (triton.cdiv(lq, block_m), batch * heads)
    _multi_source_kernel[grid](
        query,
        out,
        lse,
        *query.stride(),
        *out.stride(),
        *lse.stride(),
        heads,
        lq,
        dim,
        scale * LOG2E,
        *args,
        NUM_SOURCES=len(sources),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),
        PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=4 if dim <= 64 else 8,
        num_stages=2,
    )
    return out, lse


def _source_args(source: Source, query: Tensor) -> list:
    """A source's kernel arguments: key, value, log-weights (fp32), length, then their strides."""
    key, value, weight = source
    lk = key.shape[2]
    weights = _weight_vector(weight, lk, query).float()  # a float becomes a stride-0 view
    key_strides = _batch_strides(key)
    value_strides = _batch_strides(value)
    return [key, value, weights, lk, *key_strides, *value_strides, weights.stride(0)]


def _batch_strides(x: Tensor) -> tuple[int, ...]:
    """Strides with batch stride 0 for a batch-1 tensor, so it broadcasts over the query's batch."""
    b, h, n, d = x.stride()
    return (0 if x.shape[0] == 1 else b), h, n, d


def _weight_vector(weight, lk: int, query: Tensor) -> Tensor:
    if _is_number(weight):
        return torch.tensor(float(weight), dtype=torch.float32, device=query.device).expand(lk)
    return weight.to(query.device)


def _is_number(weight) -> bool:
    return isinstance(weight, (int, float))


def _needs_grad(query: Tensor, sources: list[Source]) -> bool:
    tensors = [query] + [t for s in sources for t in s if isinstance(t, Tensor)]
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _check(query: Tensor, sources: list[Source]) -> None:
    if query.dim() != 4:
        raise ValueError(f"query must be [B, H, Lq, D], got {tuple(query.shape)}")
    if not sources:
        raise ValueError("need at least one source")
    batch, heads, _, dim = query.shape
    for i, (key, value, weight) in enumerate(sources):
        if (
            key.shape != value.shape
            or key.dim() != 4
            or key.shape[0] not in (1, batch)
            or key.shape[1] != heads
            or key.shape[3] != dim
        ):
            raise ValueError(
                f"source {i}: key {tuple(key.shape)} and value {tuple(value.shape)} must both be "
                f"[{batch} or 1, {heads}, Lk, {dim}]"
            )
        if not _is_number(weight) and weight.shape != (key.shape[2],):
            raise ValueError(f"source {i}: log_weight must be a float or a 1-D tensor of length {key.shape[2]}")


LOG2E = math.log2(math.e)  # the kernel works in base 2 (exp2 is the fast instruction)

if triton is not None:
    _LOG2E = tl.constexpr(LOG2E)  # the same number, as jitted code reads a global

    @triton.jit
    def _attend_source(
        acc,
        m_i,
        l_i,
        q,
        b,
        h,
        offs_d,
        d_mask,
        qk_scale,
        k_ptr,
        v_ptr,
        w_ptr,
        lk,
        skb,
        skh,
        skn,
        skd,
        svb,
        svh,
        svn,
        svd,
        sw,
        BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """Fold one source's keys into the running (output sum, row max, row sum), base-2 logits."""
        k_base = k_ptr + b.to(tl.int64) * skb + h.to(tl.int64) * skh
        v_base = v_ptr + b.to(tl.int64) * svb + h.to(tl.int64) * svh
        for start in range(0, lk, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            n_mask = offs_n < lk
            kt = tl.load(
                k_base + offs_n[None, :] * skn + offs_d[:, None] * skd,
                mask=n_mask[None, :] & d_mask[:, None],
                other=0.0,
            )  # [D, N]
            # keys past the end get log-weight -inf, which masks them out of the softmax
            w = tl.load(w_ptr + offs_n * sw, mask=n_mask, other=-float("inf"))
            s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale + w[None, :] * _LOG2E
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(
                v_base + offs_n[:, None] * svn + offs_d[None, :] * svd,
                mask=n_mask[:, None] & d_mask[None, :],
                other=0.0,
            )  # [N, D]
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        return acc, m_i, l_i

    @triton.jit
    def _multi_source_kernel(
        q_ptr,
        o_ptr,
        lse_ptr,
        sqb,
        sqh,
        sqm,
        sqd,
        sob,
        soh,
        som,
        sod,
        slb,
        slh,
        slm,
        heads,
        lq,
        dim,
        qk_scale,
        k0,
        v0,
        w0,
        lk0,
        sk0b,
        sk0h,
        sk0n,
        sk0d,
        sv0b,
        sv0h,
        sv0n,
        sv0d,
        sw0,
        k1,
        v1,
        w1,
        lk1,
        sk1b,
        sk1h,
        sk1n,
        sk1d,
        sv1b,
        sv1h,
        sv1n,
        sv1d,
        sw1,
        k2,
        v2,
        w2,
        lk2,
        sk2b,
        sk2h,
        sk2n,
        sk2d,
        sv2b,
        sv2h,
        sv2n,
        sv2d,
        sw2,
        k3,
        v3,
        w3,
        lk3,
        sk3b,
        sk3h,
        sk3n,
        sk3d,
        sv3b,
        sv3h,
        sv3n,
        sv3d,
        sw3,
        NUM_SOURCES: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // heads
        h = bh % heads
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < lq
        d_mask = offs_d < dim
        q_base = q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        q = tl.load(
            q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=m_mask[:, None] & d_mask[None, :], other=0.0
        )
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        # finite start: a block whose log-weights are all -inf must not compute exp2(-inf - -inf)
        m_i = tl.full((BLOCK_M,), -1e30, dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc, m_i, l_i = _attend_source(
            acc,
            m_i,
            l_i,
            q,
            b,
            h,
            offs_d,
            d_mask,
            qk_scale,
            k0,
            v0,
            w0,
            lk0,
            sk0b,
            sk0h,
            sk0n,
            sk0d,
            sv0b,
            sv0h,
            sv0n,
            sv0d,
            sw0,
            BLOCK_N,
            PRECISION,
        )
        if NUM_SOURCES > 1:
            acc, m_i, l_i = _attend_source(
                acc,
                m_i,
                l_i,
                q,
                b,
                h,
                offs_d,
                d_mask,
                qk_scale,
                k1,
                v1,
                w1,
                lk1,
                sk1b,
                sk1h,
                sk1n,
                sk1d,
                sv1b,
                sv1h,
                sv1n,
                sv1d,
                sw1,
                BLOCK_N,
                PRECISION,
            )
        if NUM_SOURCES > 2:
            acc, m_i, l_i = _attend_source(
                acc,
                m_i,
                l_i,
                q,
                b,
                h,
                offs_d,
                d_mask,
                qk_scale,
                k2,
                v2,
                w2,
                lk2,
                sk2b,
                sk2h,
                sk2n,
                sk2d,
                sv2b,
                sv2h,
                sv2n,
                sv2d,
                sw2,
                BLOCK_N,
                PRECISION,
            )
        if NUM_SOURCES > 3:
            acc, m_i, l_i = _attend_source(
                acc,
                m_i,
                l_i,
                q,
                b,
                h,
                offs_d,
                d_mask,
                qk_scale,
                k3,
                v3,
                w3,
                lk3,
                sk3b,
                sk3h,
                sk3n,
                sk3d,
                sv3b,
                sv3h,
                sv3n,
                sv3d,
                sw3,
                BLOCK_N,
                PRECISION,
            )
        o_base = o_ptr + b.to(tl.int64) * sob + h.to(tl.int64) * soh
        out = (acc / l_i[:, None]).to(o_ptr.dtype.element_ty)
        tl.store(o_base + offs_m[:, None] * som + offs_d[None, :] * sod, out, mask=m_mask[:, None] & d_mask[None, :])
        # natural-log LSE of the logits, to merge launches when there are more than MAX_SOURCES sources
        lse = (m_i + tl.math.log2(l_i)) / _LOG2E
        tl.store(lse_ptr + b * slb + h * slh + offs_m * slm, lse, mask=m_mask)
