"""PyTorch twin of the selective scan: a chunked parallel scan built from differentiable torch ops.

The diagonal recurrence h_t = exp(dt_t A) ⊙ h_{t-1} + x_t (x_t = dt_t B_t u_t) is solved in
chunks of a few steps, carried from chunk to chunk. Inside a chunk a pairwise tree covers
all steps at once: two consecutive steps compose into one step of a half-length scan
(decay e_0·e_1, input e_1·x_0 + x_1); once that scan has given the state before every
pair, one update gives the state inside it. Recursing gives log2(T) levels and O(T) work;
there is no Python loop over time steps, only over chunks, and autograd differentiates
everything.

Why a tree rather than a closed form per chunk: Mamba-1's decay differs per (channel,
state) pair, so a closed form over T steps needs a T×T decay matrix per (batch, channel,
state) triple, O(L·T·N) work per channel against the tree's O(L·N); on a CPU it ran several
times slower than the tree (docs/kernel-design.md).

Numerics: the only exponentials are exp(dt·A) of single steps; longer spans are products
of those decays, never a quotient or a difference, so with dt·A ≤ 0 (softplus delta,
negative A) nothing can overflow, and decays that underflow to 0 give exact 0 gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from memlab.kernels.precision import compute_dtype

# Chunk length (time steps, a power of two) is chosen so one chunk's [batch, T, dim, N]
# tensors hold about this many elements. On a CPU 2^18 fp32 = 1 MiB, about one core's L2
# cache: longer chunks spill out of it, shorter ones pay more per-op overhead. On a GPU each
# op is a kernel launch, so fewer, larger chunks win.
_CHUNK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 22}
_MIN_CHUNK, _MAX_CHUNK = 4, 64


def _chunk_len(per_step: int, device: torch.device) -> int:
    """Steps per chunk for per-step tensors of ``per_step`` elements (always even)."""
    budget = _CHUNK_ELEMENTS.get(device.type, _CHUNK_ELEMENTS["cpu"])
    fit = max(budget // max(per_step, 1), 1)
    return min(max(1 << (fit.bit_length() - 1), _MIN_CHUNK), _MAX_CHUNK)


def _pad_to_even(t: torch.Tensor) -> torch.Tensor:
    """Append one all-zero step along dim 1 when its length is odd. The padded step is
    always the last one, so no real state depends on it; at the top level its dt = 0
    (decay 1) and zero input also leave the final state unchanged."""
    if t.shape[1] % 2 == 0:
        return t
    return torch.cat((t, t.new_zeros(t.shape[0], 1, *t.shape[2:])), dim=1)


def _halves(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split dim 1 (even length) into the even and the odd steps."""
    even, odd = t.unflatten(1, (-1, 2)).unbind(2)
    return even, odd


def _interleave(even: torch.Tensor, odd: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_halves``."""
    return torch.stack((even, odd), dim=2).flatten(1, 2)


def _states_before(e: torch.Tensor, x: torch.Tensor, h_init: torch.Tensor | None) -> torch.Tensor:
    """Exclusive scan along dim 1: the state before each step of h_t = e_t ⊙ h_{t-1} + x_t.

    e, x: [batch, n, ...] (decays e in [0, 1]); h_init: [batch, ...], the state before the
    first step, None for zero. Returns p with p_0 = h_init and p_t = h_{t-1}, like x.
    """
    n = x.shape[1]
    if n == 1:
        return torch.zeros_like(x) if h_init is None else h_init.unsqueeze(1)
    e0, e1 = _halves(_pad_to_even(e))
    x0, x1 = _halves(_pad_to_even(x))
    # Two steps compose into one with decay e0·e1 and input e1·x0 + x1; the state before
    # each pair is the state before its even step, and one update gives the state before
    # its odd step.
    p = _states_before(e0 * e1, torch.addcmul(x1, e1, x0), h_init)
    return _interleave(p, torch.addcmul(x0, e0, p))[:, :n]


def _chunk(
    dt: torch.Tensor,
    v: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    A: torch.Tensor,
    h_init: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan one chunk of an even number T of steps.

    dt, v (= dt·u): [batch, T, G, 1, dg]; B: [batch, T, G, N, 1]; C: [batch, T, G, 1, N];
    A: [G, N, dg]; h_init: [batch, G, N, dg] or None for zero.
    Returns y [batch, T, G, 1, dg] (without the D term) and the last state [batch, G, N, dg].
    """
    e0, e1 = _halves(torch.exp(dt * A))
    x0, x1 = _halves(v * B)
    C0, C1 = _halves(C)
    # The top level of the tree is unrolled so that y is read off the even and odd states
    # separately: the full-length state sequence is never interleaved into time order.
    p = _states_before(e0 * e1, torch.addcmul(x1, e1, x0), h_init)
    h0 = torch.addcmul(x0, e0, p)
    h1 = torch.addcmul(x1, e1, h0)
    return _interleave(C0 @ h0, C1 @ h1), h1[:, -1]


def _grouped(BC: torch.Tensor, groups: int) -> torch.Tensor:
    """[batch, N, L] or [batch, g, N, L] -> [batch, groups, N, L], groups a multiple of g."""
    if BC.dim() == 3:
        BC = BC.unsqueeze(1)
    return BC.repeat_interleave(groups // BC.shape[1], dim=1) if BC.shape[1] != groups else BC


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan (Mamba-1 convention) as a parallel scan in plain PyTorch.

    Shapes: u, delta, z: [batch, dim, L]; A: [dim, N]; B, C: [batch, N, L] or
    [batch, groups, N, L] (groups divides dim; channel d uses group d // (dim / groups));
    D, delta_bias: [dim]. Any floating input dtype; the state and all accumulation are
    float32 (float64 if any input is float64). Returns y [batch, dim, L] in u's dtype and,
    with ``return_last_state``, the last state [batch, dim, N] in the compute dtype.
    Differentiable in every tensor input. Inputs are assumed valid (``selective_scan``
    checks them).
    """
    batch, dim, L = u.shape
    N = A.shape[1]
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)

    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    u_c = u.to(dtype)

    # Factor dim into (groups, channels per group) so B and C broadcast over the channels
    # of their group instead of being copied to every channel. B and C may be grouped
    # differently; the least common multiple of their group counts refines both.
    groups = math.lcm(1 if B.dim() == 3 else B.shape[1], 1 if C.dim() == 3 else C.shape[1])
    dg = dim // groups

    # Layout [batch, time, G, N, dg]: time on dim 1 makes the even/odd halves of every tree
    # level runs of contiguous blocks; channels last keep the broadcasts of dt·A and v·B
    # vectorised over dg, and turn y = C·h into a [1, N] @ [N, dg] product.
    def time_major(t: torch.Tensor) -> torch.Tensor:  # [b, dim, L] -> [b, L, G, 1, dg]
        return _pad_to_even(t.transpose(1, 2).reshape(batch, L, groups, 1, dg).contiguous())

    # Everything is made contiguous in this layout: elementwise ops allocate their output
    # in the stride order of their inputs, so one transposed operand (A, or B and C coming
    # as [..., N, L]) would leave the state tensors in a scattered layout and every later
    # op several times slower.
    dt_t = time_major(dt)
    v_t = time_major(dt * u_c)
    B_t = _pad_to_even(_grouped(B.to(dtype), groups).permute(0, 3, 1, 2).unsqueeze(4).contiguous())
    C_t = _pad_to_even(_grouped(C.to(dtype), groups).permute(0, 3, 1, 2).unsqueeze(3).contiguous())
    A_t = A.to(dtype).reshape(groups, dg, N).transpose(1, 2).contiguous()  # [G, N, dg]

    # Chunks run one after another, carrying the state; within a chunk the tree runs over
    # all steps at once. Short chunks keep the working set in cache, which on CPU matters
    # more than the few extra Python-level ops per chunk.
    T = _chunk_len(batch * dim * N, u.device)
    ys = []
    h = None
    # split() rather than slicing in the loop: each slice's backward would zero-fill a
    # full-length gradient, making the backward quadratic in the number of chunks.
    for dt_c, v_c, B_c, C_c in zip(*(t.split(T, dim=1) for t in (dt_t, v_t, B_t, C_t)), strict=True):
        y_c, h = _chunk(dt_c, v_c, B_c, C_c, A_t, h)
        ys.append(y_c)
    y = torch.cat(ys, dim=1)[:, :L].reshape(batch, L, dim).transpose(1, 2)

    if D is not None:
        y = y + D.to(dtype)[:, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(u.dtype)
    if not return_last_state:
        return y
    # With odd L the padded final step (dt = 0, no input) leaves the state unchanged.
    return y, h.transpose(-1, -2).reshape(batch, dim, N)
