"""Triton selective scan (Mamba-1): forward and backward kernels and their autograd Function.

Every program owns a block of channels of one batch element, with all N states of each
channel in fp32 registers, and walks the sequence; programs never exchange a state. u, delta,
z, y and their gradients are [batch, dim, L] tensors stored either as such (time contiguous) or
as [batch, L, dim] (CHANNELS_LAST: a Mamba layer's activations, which it keeps in that layout);
the tiles below are the same in both, only their addresses differ.

Forward: walks the sequence in chunks of BLOCK_T steps. The chunk's u, delta and z arrive as
tiles read along time; the gate and the D term are computed once per step and channel, dt once
per step on each lane of the channel (see _FWD_STATE_LANES). A channel's N states are spread
over a few lanes, each of which holds the chunk's steps in registers and runs its states
through them one after another: exp2(dt·A) once per (step, channel, state), the recurrence
h_t = e_t ⊙ h_{t-1} + x_t and y_t += C_t·h_t in the thread, then one sum of y over the
channel's lanes per chunk. With gradients needed it also
writes the state before every STATE_EVERY-th step ([batch, n_blocks, N, dim], N/STATE_EVERY
floats per step and channel) and, when z needs a gradient, y before the gate for dz (one more
[batch, dim, L] activation in u's dtype, as mamba-ssm keeps; reading it back is cheaper than
accumulating y over the states again), and nothing else.

Backward: walks those blocks of STATE_EVERY steps last to first, as [STATE_EVERY, BLOCK_D]
tiles read along time like the forward's, and visits the N states one at a time: the
block's states h_t = e_t ⊙ h_{t-1} + x_t (e_t = exp(dt_t A), x_t = dt_t u_t B_t) from an
associative scan seeded with the stored state, the adjoint dh_t = e_{t+1} ⊙ dh_{t+1} + C_t dy_t
from a reverse scan seeded with the gradient carried from the block after, then that state's
terms of every gradient. Nothing is rebuilt or kept beyond one block. dB and dC sum over the
channels sharing a group: every program adds its [STATE_EVERY] partial sums per state with
relaxed fp32 atomics. dA, dD and d(delta_bias) sum over batch and time: every program sums its
time steps in registers and adds the result once, also atomically. So the backward's sums vary
in their last bits from run to run (their order does).

Numerics: the only exponentials are exp2(dt·A·log2 e) of single steps (dt ≥ 0 and A ≤ 0
give decays in [0, 1]); the backward needs e_t ⊙ h_{t-1}, which it takes as h_t − x_t rather
than dividing by a decay that may underflow to 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from memlab.kernels import buffers

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
# The forward unrolls its loop over a lane's state slots up to this many (N <= 64 at 4 lanes):
# unrolled, its code grows with the square of the slots (minutes of compilation at N = 256).
MAX_UNROLLED_SLOTS: tl.constexpr = tl.constexpr(16)

# The forward stores the state before every _STATE_EVERY-th step for the backward, whose blocks
# of that many steps are tiles of at least 16 (for short sequences too: the GPU compiler
# rejects the backward's scans over a single step).
_STATE_EVERY = 32
# Forward: chunks of _FWD_CHUNK_T steps, a channel's states on _FWD_STATE_LANES lanes, each lane
# running its states through the chunk's steps in registers (one exp2 and four multiply-adds per
# step and state); the fastest layout measured on an H100, see docs/kernel-design.md.
_FWD_BLOCK_D, _FWD_WARPS, _FWD_CHUNK_T, _FWD_STAGES, _FWD_STATE_LANES = 8, 1, 16, 3, 4
# Backward: channels per program and warps (a program walks blocks of _STATE_EVERY steps). 8 on
# 1 warp with blocks of 32 steps keeps one wave of 12 warps per SM while leaving each state enough
# work; the alternatives measured and the cost of [batch, L, dim] inputs: docs/kernel-design.md.
_BWD_BLOCK_D, _BWD_WARPS = 8, 1


@triton.jit
def _linear_combine(a1, b1, a2, b2):
    """Compose two steps of h ← a ⊙ h + b (first (a1, b1), then (a2, b2))."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def program_channels(dg, BLOCK_D: tl.constexpr):
    """The channels of a program of a (cdiv(dg, BLOCK_D), groups, batch) grid, dg channels per
    group: (group g, batch element b as int64, channels d [BLOCK_D] as int64, their mask)."""
    g = tl.program_id(1)
    i = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    return g, tl.program_id(2).to(tl.int64), (g * dg + i).to(tl.int64), i < dg


@triton.jit
def _tile(b, d, t, dim, L, CHANNELS_LAST: tl.constexpr):
    """Offsets [len(t), len(d)] of the steps t and channels d of batch element b in a
    [batch, dim, L] tensor stored as such (time contiguous) or, with CHANNELS_LAST, as
    [batch, L, dim] (channels contiguous: a Mamba layer's activations, read without a
    transposing copy)."""
    if CHANNELS_LAST:
        return (b * L + t)[:, None] * dim + d[None, :]
    return (b * dim + d)[None, :] * L + t[:, None]


@triton.jit
def _softplus_poly(x):
    """softplus(x) = max(x, 0) + log1p(e^-|x|) without log or division, for the scan kernels
    (libdevice's log and a division take about 45 instructions, this about 15), accurate for
    very negative x: log1p(w) = w + w²·q(w) for w = e^-|x| in (0, 1], q the degree-8 Chebyshev
    interpolant of (log1p(w)/w − 1)/w on [0, 1] (log1p within 3 ulp)."""
    w = tl.exp2(-tl.abs(x) * LOG2E)
    q = -0.004466211423277855 * w + 0.025224054232239723
    q = q * w - 0.06675772368907928
    q = q * w + 0.11561845242977142
    q = q * w - 0.15847565233707428
    q = q * w + 0.198541060090065
    q = q * w - 0.24986526370048523
    q = q * w + 0.3333284258842468
    q = q * w - 0.4999999701976776
    return tl.maximum(x, 0.0) + (w * q * w + w)


@triton.jit
def _load_dt(delta_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """dt = softplus(delta + bias) (or delta + bias) in fp32 at [time, channel] ``offs``, 0
    where ``mask`` is off, so padded steps have decay 1 and no input."""
    dt = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt = dt + bias[None, :]
    if SOFTPLUS:
        dt = _softplus_poly(dt)
    return tl.where(mask, dt, 0.0)


@triton.jit
def _slot_chunk(
    k,
    h,
    y_lanes,
    A_ptr,
    B_rows,
    C_rows,
    d,
    d_mask,
    dt,
    dtu,
    t0,
    L_BC,
    N,
    LANES: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """One slot's states (n = k·LANES + lane) through one chunk of the forward: h [SLOTS, LANES,
    BLOCK_D] (the states carried into the chunk) and y_lanes [BLOCK_T, LANES, BLOCK_D] (the
    partial ys) are returned with slot k's part advanced. Unrolled over a static k, the slot
    selects fold into register moves; over a runtime k they are SLOTS-wide selects."""
    tt = tl.arange(0, BLOCK_T)
    lane = tl.arange(0, LANES)
    slot = tl.arange(0, h.shape[0])
    n = k * LANES + lane
    n_mask = n < N
    A_k = tl.load(A_ptr + d[None, :] * N + n[:, None], mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    B_k = tl.load(B_rows + n[None, :] * L_BC + t0 + tt[:, None], mask=n_mask[None, :], other=0.0)
    C_k = tl.load(C_rows + n[None, :] * L_BC + t0 + tt[:, None], mask=n_mask[None, :], other=0.0)
    decay = tl.exp2(dt[:, None, :] * (A_k.to(tl.float32) * LOG2E)[None, :, :])
    x = dtu[:, None, :] * B_k[:, :, None]
    # The carried state enters through the chunk's first input; time is in registers, so these
    # selects (and the one of the last step) cost nothing.
    h_k = tl.sum(tl.where(slot[:, None, None] == k, h, 0.0), axis=0)
    x = tl.where(tt[:, None, None] == 0, decay * h_k[None, :, :] + x, x)
    # Along an axis that one thread holds, the scan is the plain recurrence, in order.
    _, hs = tl.associative_scan((decay, x), 0, _linear_combine)
    y_lanes += hs * C_k[:, :, None]
    h_last = tl.sum(tl.where(tt[:, None, None] == BLOCK_T - 1, hs, 0.0), axis=0)
    return tl.where(slot[:, None, None] == k, h_last[None, :, :], h), y_lanes


@triton.jit(do_not_specialize=["L_units", "n_blocks"])
def _scan_fwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    y_ptr,
    last_ptr,
    states_ptr,
    ypre_ptr,
    dim,
    L_units,
    L_BC,
    dg,
    gB,
    gC,
    B_div,
    C_div,
    n_blocks,
    L_UNIT: tl.constexpr,
    N: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    STORE_STATES: tl.constexpr,
    STORE_Y: tl.constexpr,
    STATE_EVERY: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_T: tl.constexpr,
    LANES: tl.constexpr,
    STAGES: tl.constexpr,
):
    """Grid (cdiv(dg, BLOCK_D), G, batch); chunks of BLOCK_T steps (BLOCK_T divides
    STATE_EVERY) are visited first to last, the loop software-pipelined over STAGES stages (the
    next chunks' tiles and B and C rows arrive by cp.async while the current one is computed).
    A channel's states are spread over LANES lanes, SLOTS = BLOCK_N / LANES states per lane
    (state n = slot·LANES + lane; 4 lanes of 8 channels fill a warp at the default config), each
    lane holding the chunk's BLOCK_T steps in registers. u, delta and z move as
    [BLOCK_T, BLOCK_D] tiles read along time; the D term and the gate are computed once per step
    and channel, dt and dt·u on the lanes that use them. Per slot, every lane runs its state
    through the chunk (seeded with the carried state; padded steps have decay 1 and no input)
    and adds C_t·h_t to its partial y; the partial ys are summed over the lanes once per chunk.
    B and C come in fp32 as [batch, groups, N, L_BC], rows zero-padded to whole chunks so that
    they load without masks. With STORE_Y, y before the z gate also goes to ypre_ptr (laid out
    as y). The last state leaves as [batch, dim, N].

    L = L_units·L_UNIT, L_UNIT the largest power of two up to 16 dividing L: it tells Triton how
    far rows are aligned, which bounds the vector loads (L_units tells nothing more, so Triton
    does not specialise on it: a compilation per length class is enough)."""
    SLOTS: tl.constexpr = BLOCK_N // LANES
    L = L_units * L_UNIT
    g, b, d, d_mask = program_channels(dg, BLOCK_D)
    tt = tl.arange(0, BLOCK_T)
    slot = tl.arange(0, SLOTS)
    lane = tl.arange(0, LANES)
    n3 = slot[:, None, None] * LANES + lane[None, :, None]  # [SLOTS, LANES, 1]
    nd_mask = (n3 < N) & d_mask[None, None, :]

    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS else None
    Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_D else None
    B_rows = B_ptr + (b * gB + g // B_div) * N * L_BC
    C_rows = C_ptr + (b * gC + g // C_div) * N * L_BC
    h = tl.zeros((SLOTS, LANES, BLOCK_D), dtype=tl.float32)
    for t0 in tl.range(0, L, BLOCK_T, num_stages=STAGES):
        if STORE_STATES and t0 % STATE_EVERY == 0:
            s_offs = ((b * n_blocks + t0 // STATE_EVERY) * N + n3) * dim + d[None, None, :]
            tl.store(states_ptr + s_offs, h, mask=nd_mask)
        offs = _tile(b, d, t0 + tt, dim, L, CHANNELS_LAST)
        mask = (t0 + tt < L)[:, None] & d_mask[None, :]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        zt = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32) if HAS_Z else None
        dt = _load_dt(delta_ptr, offs, mask, bias, HAS_BIAS, SOFTPLUS)  # padded steps: no input
        dtu = dt * u
        y_lanes = tl.zeros((BLOCK_T, LANES, BLOCK_D), dtype=tl.float32)
        if SLOTS <= MAX_UNROLLED_SLOTS:
            for k in tl.static_range(SLOTS):
                h, y_lanes = _slot_chunk(
                    k, h, y_lanes, A_ptr, B_rows, C_rows, d, d_mask, dt, dtu, t0, L_BC, N, LANES, BLOCK_T
                )
        else:
            for k in tl.range(SLOTS):
                h, y_lanes = _slot_chunk(
                    k, h, y_lanes, A_ptr, B_rows, C_rows, d, d_mask, dt, dtu, t0, L_BC, N, LANES, BLOCK_T
                )
        y = tl.sum(y_lanes, axis=1)
        if HAS_D:
            y += Dv[None, :] * u
        if HAS_Z:
            if STORE_Y:
                tl.store(ypre_ptr + offs, y.to(ypre_ptr.dtype.element_ty), mask=mask)
            # z·sigmoid(z) = z / s with s = 1 + e^-z ≥ 1, and 1/s as rsqrt(s)²: no division
            # (s = inf gives 0).
            r = tl.math.rsqrt(1.0 + tl.exp2(-zt * LOG2E))
            y *= zt * r * r
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    tl.store(last_ptr + (b * dim + d[None, None, :]) * N + n3, h, mask=nd_mask)


@triton.jit(do_not_specialize=["L_units", "n_blocks"])
def _scan_bwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    states_ptr,
    ypre_ptr,
    dout_ptr,
    dlast_ptr,
    du_ptr,
    ddelta_ptr,
    dz_ptr,
    dB_ptr,
    dC_ptr,
    dA_ptr,
    dD_ptr,
    dbias_ptr,
    dim,
    L_units,
    N,
    dg,
    gB,
    gC,
    B_div,
    C_div,
    n_blocks,
    L_UNIT: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_DOUT: tl.constexpr,
    HAS_DLAST: tl.constexpr,
    HAS_DZ: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Same grid as the forward. The blocks of BLOCK_T (= STATE_EVERY) steps between stored
    states are visited last to first, their u, delta, z and dy as [BLOCK_T, BLOCK_D] tiles
    read along time (as in the forward), and inside a block the N states one at a
    time: the block's states from an associative scan seeded with the stored state, the
    adjoint from a reverse scan seeded with the gradient carried from the next block, then
    every gradient term of that state. With HAS_DZ, dz comes from y before the gate, read from
    ypre_ptr. L = L_units·L_UNIT as in the forward."""
    L = L_units * L_UNIT
    g, b, d, d_mask = program_channels(dg, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    tt = tl.arange(0, BLOCK_T)
    nd_mask = (n < N)[:, None] & d_mask[None, :]

    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS else None
    Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_D else None
    B_off = (b * gB + g // B_div) * N * L  # row k of this program's B (and dB) at B_off + k·L
    C_off = (b * gC + g // C_div) * N * L
    state_offs = (b * dim + d)[None, :] * N + n[:, None]  # [BLOCK_N, BLOCK_D] into [batch, dim, N]

    # The gradient of the state at the first step of the block after the current one. The
    # last state's gradient enters at t = L-1 (and passes unchanged through the padded steps,
    # which have decay 1).
    if HAS_DLAST:
        dh_carry = tl.load(dlast_ptr + state_offs, mask=nd_mask, other=0.0).to(tl.float32)
    else:
        dh_carry = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)

    for kb in range(0, n_blocks):
        blk = n_blocks - 1 - kb
        t = blk * BLOCK_T + tt
        t_mask = t < L
        mask = t_mask[:, None] & d_mask[None, :]
        offs = _tile(b, d, t, dim, L, CHANNELS_LAST)
        # Only what the loop over the states needs stays in registers through it (u, the
        # softplus input and the gate's derivative are read again after it, from cache): with
        # them kept, the kernel spills.
        dt = _load_dt(delta_ptr, offs, mask, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        # dt of the following step: its decay carries dh_{t+1} back to step t.
        next_mask = (t + 1 < L)[:, None] & d_mask[None, :]
        offs_next = _tile(b, d, t + 1, dim, L, CHANNELS_LAST)
        dt_next = _load_dt(delta_ptr, offs_next, next_mask, bias, HAS_BIAS, SOFTPLUS)
        if HAS_DOUT:
            dy = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            dy = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        if HAS_Z:
            zt = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dy = dy * zt * tl.sigmoid(zt)
        h0_ptr = states_ptr + (b * n_blocks + blk) * N * dim + d  # the block's first state, k = 0
        # Σ_n A_n (dh_n ⊙ e_n h_n,t-1) and Σ_n B_n,t dh_n
        ddt = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        dBu = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        for k in range(0, N):
            sel = n[:, None] == k
            A_k = tl.load(A_ptr + d * N + k, mask=d_mask, other=0.0).to(tl.float32)
            B_k = tl.load(B_ptr + B_off + k * L + t, mask=t_mask, other=0.0).to(tl.float32)
            C_k = tl.load(C_ptr + C_off + k * L + t, mask=t_mask, other=0.0).to(tl.float32)
            decay = tl.exp2(dt * (A_k * LOG2E)[None, :])
            x = dtu * B_k[:, None]
            # Read per state, not as one [BLOCK_N, BLOCK_D] tile: a tile read along channels
            # would give the forward scan its layout (time across lanes, many shuffles).
            h0_k = tl.load(h0_ptr + k * dim, mask=d_mask, other=0.0)
            _, hs = tl.associative_scan(
                (decay, tl.where(tt[:, None] == 0, decay * h0_k[None, :] + x, x)), 0, _linear_combine
            )
            # Adjoint: dh_t = C_t dy_t + e_{t+1} dh_{t+1}, run backwards over the block.
            decay_next = tl.exp2(dt_next * (A_k * LOG2E)[None, :])
            r = C_k[:, None] * dy
            dh_k = tl.sum(tl.where(sel, dh_carry, 0.0), axis=0)
            r = tl.where(tt[:, None] == BLOCK_T - 1, decay_next * dh_k[None, :] + r, r)
            # A reverse scan as a forward one between flips: Triton lowers reverse=True with
            # five times the lane shuffles of the three flips (252 against 48 per state, in an
            # sm_90 build of 64-step blocks).
            _, dh = tl.associative_scan((tl.flip(decay_next, 0), tl.flip(r, 0)), 0, _linear_combine)
            dh = tl.flip(dh, 0)
            dh_first = tl.sum(tl.where(tt[:, None] == 0, dh, 0.0), axis=0)
            dh_carry = tl.where(sel, dh_first[None, :], dh_carry)

            # dB and dC sum over the channels of a group: this program's partial sums, added
            # (relaxed: a sum needs no ordering, and acq_rel would fence every add).
            tl.atomic_add(dC_ptr + C_off + k * L + t, tl.sum(hs * dy, axis=1), mask=t_mask, sem="relaxed")
            tl.atomic_add(dB_ptr + B_off + k * L + t, tl.sum(dh * dtu, axis=1), mask=t_mask, sem="relaxed")
            # e_t ⊙ h_{t-1} = h_t − x_t; q is the gradient through the decay, times it.
            q = dh * (hs - x)
            ddt += q * A_k[None, :]
            dBu += dh * B_k[:, None]
            dA_acc = tl.where(sel, dA_acc + tl.sum(q * dt, axis=0)[None, :], dA_acc)

        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        du = dt * dBu
        ddt += u * dBu
        if HAS_D:
            du += dy * Dv[None, :]
            dD_acc += tl.sum(dy * u, axis=0)
        if SOFTPLUS:
            pre = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                pre = pre + bias[None, :]
            ddt = ddt * tl.sigmoid(pre)
        ddt = tl.where(mask, ddt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddt, axis=0)
        if HAS_DZ:
            y = tl.load(ypre_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # before the gate
            dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32) if HAS_DOUT else 0.0
            zt = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(zt)
            dz = dout * sig * (1.0 + zt * (1.0 - sig)) * y
            tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
        tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(ddelta_ptr + offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)

    # Summed over the batch's programs in place: one launch fewer per gradient than partial
    # sums reduced in PyTorch.
    tl.atomic_add(dA_ptr + d[None, :] * N + n[:, None], dA_acc, mask=nd_mask, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + d, dD_acc, mask=d_mask, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + d, dbias_acc, mask=d_mask, sem="relaxed")


def _block_d(dg: int, block_d: int) -> int:
    """Channels per program: ``block_d``, or the power of two covering a smaller group."""
    return min(block_d, triton.next_power_of_2(dg))


def _channels_last(u: torch.Tensor) -> bool:
    """Whether u [batch, dim, L] is stored as [batch, L, dim] (and not also as itself, which a
    tensor with dim or L of 1 can be)."""
    return u.mT.is_contiguous() and not u.is_contiguous()


def _in_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """t [batch, dim, L] stored time-contiguous, or with ``channels_last`` as [batch, L, dim]:
    t itself if it is, else a copy."""
    if channels_last:
        return t if t.mT.is_contiguous() else t.mT.contiguous().mT
    return t.contiguous()


def _empty(u: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An uninitialised tensor of u's shape [batch, dim, L] and dtype, stored in the layout
    ``channels_last`` names."""
    return (
        buffers.empty(u.shape[0], u.shape[2], u.shape[1], dtype=u.dtype, device=u.device).mT
        if channels_last
        else buffers.empty(*u.shape, dtype=u.dtype, device=u.device)
    )


def _grouped(BC: torch.Tensor) -> torch.Tensor:
    """[batch, N, L] or [batch, groups, N, L] -> contiguous [batch, groups, N, L]."""
    return (BC.unsqueeze(1) if BC.dim() == 3 else BC).contiguous()


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, need_grad):
        batch, dim, L = u.shape
        N = A.shape[1]
        Bg, Cg = _grouped(B), _grouped(C)
        gB, gC = Bg.shape[1], Cg.shape[1]
        G = math.lcm(gB, gC)  # the finest grouping; each program sits inside one group
        dg = dim // G
        # u, delta and z (and y and the gradients) share one layout: u's, if it is one of the
        # two the kernels read.
        cl = _channels_last(u)
        u, delta, A = _in_layout(u, cl), _in_layout(delta, cl), A.contiguous()
        z = _in_layout(z, cl) if z is not None else None

        state_every = min(_STATE_EVERY, max(16, triton.next_power_of_2(L)))
        n_blocks = triton.cdiv(L, state_every)
        y = _empty(u, cl)
        last = buffers.empty(batch, dim, N, dtype=torch.float32, device=u.device)
        states = (
            buffers.empty(batch, n_blocks, N, dim, dtype=torch.float32, device=u.device)
            if need_grad
            else last
        )
        # y before the z gate, for dz (as mamba-ssm keeps it): reading it back is cheaper than
        # accumulating it again over the states in the backward.
        keep_y = need_grad and z is not None and ctx.needs_input_grad[6]
        y_pre = _empty(u, cl) if keep_y else y
        flags = dict(
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=delta_softplus, STORE_STATES=need_grad, STORE_Y=keep_y, STATE_EVERY=state_every,
            CHANNELS_LAST=cl, BLOCK_N=triton.next_power_of_2(N),
        )  # fmt: skip
        L_unit = math.gcd(L, 16)
        block_d = _block_d(dg, _FWD_BLOCK_D)
        block_t = min(_FWD_CHUNK_T, state_every)
        # fp32 B and C: a bf16 value costs the kernel up to two instructions to widen, on every
        # (step, state) of every channel; rows are zero-padded to whole chunks (and to 16 steps,
        # for aligned vector loads) so that they load without masks.
        L_BC = triton.cdiv(L, max(block_t, 16)) * max(block_t, 16)
        B32, C32 = (F.pad(BC.float(), (0, L_BC - L)) if L_BC > L else BC.float() for BC in (Bg, Cg))
        _scan_fwd_kernel[(triton.cdiv(dg, block_d), G, batch)](
            u, delta, A, B32, C32, D, z, delta_bias, y, last, states, y_pre,
            dim, L // L_unit, L_BC, dg, gB, gC, G // gB, G // gC, n_blocks,
            L_UNIT=L_unit, N=N, BLOCK_D=block_d, BLOCK_T=block_t,
            LANES=min(_FWD_STATE_LANES, flags["BLOCK_N"]), STAGES=_FWD_STAGES,
            num_warps=_FWD_WARPS, **flags,
        )  # fmt: skip
        if need_grad:
            ctx.save_for_backward(u, delta, A, Bg, Cg, D, z, delta_bias, states, y_pre if keep_y else None)
            ctx.meta = (B.shape, C.shape, G, dg, state_every, n_blocks, L_unit, delta_softplus, cl)
            ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, Bg, Cg, D, z, delta_bias, states, y_pre = ctx.saved_tensors
        B_shape, C_shape, G, dg, state_every, n_blocks, L_unit, delta_softplus, cl = ctx.meta
        batch, dim, L = u.shape
        N = A.shape[1]
        gB, gC = Bg.shape[1], Cg.shape[1]
        block_d = _block_d(dg, _BWD_BLOCK_D)
        grid = (triton.cdiv(dg, block_d), G, batch)

        du, ddelta = _empty(u, cl), _empty(delta, cl)
        dz = _empty(z, cl) if y_pre is not None else None
        # The gradients the kernel sums with atomics, zeroed in two buffers (one memset each):
        # dB and dC (which flow on through the graph), and the parameters' dA, dD and
        # d(delta_bias), which become .grad views of a buffer no larger than themselves.
        dB, dC = u.new_zeros(Bg.numel() + Cg.numel(), dtype=torch.float32).split([Bg.numel(), Cg.numel()])
        dA, dD, dbias = u.new_zeros(dim * (N + 2), dtype=torch.float32).split([dim * N, dim, dim])
        dy = _in_layout(dy, cl) if dy is not None else None
        dlast = dlast.contiguous() if dlast is not None else None
        _scan_bwd_kernel[grid](
            u, delta, A, Bg, Cg, D, z, delta_bias, states, y_pre, dy, dlast,
            du, ddelta, dz, dB, dC, dA, dD, dbias,
            dim, L // L_unit, N, dg, gB, gC, G // gB, G // gC, n_blocks,
            L_UNIT=L_unit, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=delta_softplus, HAS_DOUT=dy is not None, HAS_DLAST=dlast is not None,
            HAS_DZ=dz is not None, CHANNELS_LAST=cl, BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(N),
            BLOCK_T=state_every,
            num_warps=_BWD_WARPS,
        )  # fmt: skip
        dA = dA.view(A.shape).to(A.dtype)
        dD = dD.to(D.dtype) if D is not None else None
        dbias = dbias.to(delta_bias.dtype) if delta_bias is not None else None
        dB, dC = dB.to(Bg.dtype).reshape(B_shape), dC.to(Cg.dtype).reshape(C_shape)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, None


def selective_scan_triton(
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
    """Selective scan (Mamba-1 convention) with the Triton kernels.

    Shapes as ``selective_scan``: u, delta, z: [batch, dim, L]; A: [dim, N]; B, C:
    [batch, N, L] or [batch, groups, N, L]; D, delta_bias: [dim]. Inputs float16, bfloat16
    or float32 (float64 is refused by the caller); all arithmetic in fp32. Returns y
    [batch, dim, L] in u's dtype and, with ``return_last_state``, the last state
    [batch, dim, N] in fp32. Differentiable in every tensor input; inputs are assumed
    valid (``selective_scan`` checks them).
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, last = _SelectiveScan.apply(*tensors, delta_softplus, need_grad)
    return (y, last) if return_last_state else y
