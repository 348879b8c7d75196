"""Check the Triton selective scan and decode step on a GPU against the fp64 reference.

For every case: y, the last state and the gradients of every input (from a random
functional of y and the last state), each as ‖got − ref‖/‖ref‖ against the token-by-token
fp64 reference run on exactly the values the kernel saw (inputs rounded to the kernel's
dtype first). Prints one table row per case with PASS/FAIL and exits 1 if any case fails.

    python scripts/check_gpu_scan.py [--shard K/N] [--json PATH]

``--shard K/N`` runs every N-th case from the K-th (0-based), so that N processes can share
the GPU: the fp64 reference loops over time from Python and leaves the GPU mostly idle.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator

import torch

from memlab.kernels.compare import rel_err
from memlab.kernels.selective_scan import naive_selective_scan, selective_scan, selective_state_update

BATCH, DIM = 2, 48
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
GRADS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(
    L: int,
    N: int,
    groups: int | None,
    optional: bool,
    softplus: bool,
    delta_range: tuple[float, float] | None,
    channels_last: bool = False,
) -> dict[str, torch.Tensor]:
    """fp64 CUDA inputs, Mamba-like (negative A, negative delta_bias under softplus); with
    ``channels_last``, u, delta and z stored as [batch, L, dim], as a Mamba layer holds them."""

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", dtype=torch.float64)

    if delta_range is not None:
        lo, hi = delta_range
        delta = lo + (hi - lo) * torch.rand(BATCH, DIM, L, device="cuda", dtype=torch.float64)
    else:
        delta = randn(BATCH, DIM, L) if softplus else 0.5 * torch.rand_like(randn(BATCH, DIM, L))
    bc_shape = (BATCH, N, L) if groups is None else (BATCH, groups, N, L)
    x = {"u": randn(BATCH, DIM, L), "delta": delta, "A": -torch.exp(randn(DIM, N))}
    x["B"], x["C"] = randn(*bc_shape), randn(*bc_shape)
    if optional:
        x["D"], x["z"] = randn(DIM), randn(BATCH, DIM, L)
        x["delta_bias"] = randn(DIM) - 3.0 if softplus else 0.1 * torch.rand_like(randn(DIM))
        if delta_range is not None and not softplus:
            x["delta_bias"].zero_()  # delta alone sets dt: keep it in the requested range
    if channels_last:
        x |= {k: x[k].mT.contiguous().mT for k in ("u", "delta", "z") if k in x}
    return x


def run_scan(
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    x: dict[str, torch.Tensor],
    softplus: bool,
    dtype: torch.dtype | None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """y, last state and the gradient of every input; params (A, D, delta_bias) in fp32."""
    leaves = {}
    for k, v in x.items():
        cast = v if dtype is None else v.to(torch.float32 if k in ("A", "D", "delta_bias") else dtype)
        leaves[k] = cast.detach().requires_grad_()
    y, state = fn(**leaves, delta_softplus=softplus, return_last_state=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    gy = torch.randn(y.shape, generator=gen, device="cuda", dtype=torch.float64)
    gs = torch.randn(state.shape, generator=gen, device="cuda", dtype=torch.float64)
    loss = (y.double() * gy).sum() + (state.double() * gs).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return leaves, y, state, dict(zip(leaves, grads, strict=True))


def triton_scan(**kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    return selective_scan(**kwargs, backend="triton")


def check_scan(
    L: int,
    N: int,
    dtype: torch.dtype,
    groups: int | None = None,
    optional: bool = True,
    softplus: bool = True,
    delta_range: tuple[float, float] | None = None,
    channels_last: bool = False,
) -> tuple[dict[str, float], bool]:
    """Errors of y, the last state and every gradient; and whether all of them are finite."""
    x = make_inputs(L, N, groups, optional, softplus, delta_range, channels_last)
    leaves, y, state, grads = run_scan(triton_scan, x, softplus, dtype)
    seen = {k: v.detach().double() for k, v in leaves.items()}
    _, y_ref, state_ref, grads_ref = run_scan(naive_selective_scan, seen, softplus, None)
    errs = {"y": rel_err(y, y_ref), "state": rel_err(state, state_ref)}
    errs.update({f"d{k}": rel_err(grads[k], grads_ref[k]) for k in grads_ref})
    finite = all(torch.isfinite(t).all() for t in (y, state, *grads.values()))
    return errs, finite


def check_decode(
    N: int, dtype: torch.dtype, prefix: int = 63, steps: int = 10
) -> tuple[dict[str, float], bool]:
    """Scan a prefix with the Triton scan, decode the rest with the Triton step."""
    x = make_inputs(prefix + steps, N, 2, True, True, None)
    seen = {k: v.to(torch.float32 if k in ("A", "D", "delta_bias") else dtype) for k, v in x.items()}
    y_ref, state_ref = naive_selective_scan(
        **{k: v.double() for k, v in seen.items()}, delta_softplus=True, return_last_state=True
    )
    head = {k: (v[..., :prefix] if v.dim() >= 3 else v) for k, v in seen.items()}
    y_head, state = selective_scan(**head, delta_softplus=True, return_last_state=True, backend="triton")
    outs = []
    for t in range(prefix, prefix + steps):
        step = {k: v[..., t] for k, v in seen.items() if k in ("u", "delta", "B", "C", "z")}
        outs.append(
            selective_state_update(
                state, step["u"], step["delta"], seen["A"], step["B"], step["C"], D=seen["D"], z=step["z"],
                dt_bias=seen["delta_bias"], dt_softplus=True, backend="triton",
            )
        )  # fmt: skip
    y = torch.cat((y_head, torch.stack(outs, dim=-1)), dim=-1)
    errs = {"y": rel_err(y, y_ref), "state": rel_err(state, state_ref)}
    return errs, bool(torch.isfinite(y).all() and torch.isfinite(state).all())


def cases() -> Iterator[tuple[str, torch.dtype, Callable[[], tuple[dict[str, float], bool]]]]:
    """(label, callable) for every check."""
    for dtype in (torch.float32, torch.bfloat16):
        for L in (1, 63, 64, 65, 2000):
            for i, N in enumerate((1, 16, 64)):
                groups = (None, 2, 4)[i]
                label = f"{NAMES[dtype]} L={L} N={N} groups={groups or 1}"
                yield label, dtype, lambda L=L, N=N, dtype=dtype, g=groups: check_scan(L, N, dtype, g)
        # 100 steps end part-way through the forward's 16-step chunks; N = 5 and 128: states
        # on lanes with some unused, and 32 states per lane.
        yield f"{NAMES[dtype]} L=100 N=16 groups=2", dtype, lambda dtype=dtype: check_scan(100, 16, dtype, 2)
        yield f"{NAMES[dtype]} L=100 N=5 groups=1", dtype, lambda dtype=dtype: check_scan(100, 5, dtype)
        yield f"{NAMES[dtype]} L=65 N=128 groups=2", dtype, lambda dtype=dtype: check_scan(65, 128, dtype, 2)
        for L in (65, 2000):
            label = f"{NAMES[dtype]} L={L} N=16 channels-last [batch, L, dim]"
            yield label, dtype, lambda L=L, dtype=dtype: check_scan(L, 16, dtype, channels_last=True)
        for L in (65, 2000):
            variants = {
                "bare (no D/z/bias, no softplus)": dict(optional=False, softplus=False),
                "delta large 10..50": dict(delta_range=(10.0, 50.0)),
                "delta tiny 0..1e-4 no softplus": dict(delta_range=(0.0, 1e-4), softplus=False),
                "softplus(delta -30..-20)": dict(delta_range=(-30.0, -20.0)),
            }
            for name, kw in variants.items():
                label = f"{NAMES[dtype]} L={L} N=16 {name}"
                yield label, dtype, lambda L=L, dtype=dtype, kw=kw: check_scan(L, 16, dtype, **kw)
        for N in (16, 64):
            label = f"{NAMES[dtype]} decode 63+10 steps N={N}"
            yield label, dtype, lambda N=N, dtype=dtype: check_decode(N, dtype)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard", default="0/1", help="K/N: every N-th case from the K-th")
    parser.add_argument("--json", help="also write every case's errors to this file")
    args = parser.parse_args()
    shard, _, n_shards = args.shard.partition("/")
    if not (shard.isdigit() and n_shards.isdigit() and int(shard) < int(n_shards)):
        parser.error(f"--shard takes K/N with 0 <= K < N, got {args.shard!r}")
    shard, n_shards = int(shard), int(n_shards)
    if not torch.cuda.is_available():
        print("error: no CUDA device; this script checks the kernels on a GPU", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    cols = ("y", "state", *(f"d{k}" for k in GRADS))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    header = f"| case | {' | '.join(cols)} | max | tol | result |"
    lines = [header, "|" + "---|" * (len(cols) + 4)]
    results, failed = [], 0
    for index, (label, dtype, check) in enumerate(cases()):
        if index % n_shards != shard:
            continue
        try:
            errs, finite = check()
        except Exception as exc:  # a crash is a failed case, reported with the others
            errs, finite = {"error": f"{type(exc).__name__}: {exc}"}, False
        numeric = [v for v in errs.values() if isinstance(v, float)]
        worst = max(numeric) if numeric else float("nan")
        ok = finite and bool(numeric) and worst < TOL[dtype]
        failed += not ok
        results.append({"case": label, "errors": errs, "finite": finite, "tol": TOL[dtype], "pass": ok})
        cells = [f"{errs[c]:.1e}" if c in errs else "-" for c in cols]
        verdict = "PASS" if ok else "FAIL"
        line = f"| {label} | {' | '.join(cells)} | {worst:.1e} | {TOL[dtype]:g} | {verdict} |"
        if "error" in errs:
            line += f" {errs['error'][:200]}"
        lines.append(line)
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print("\n" + "\n".join(lines))
    print(f"\n{len(results) - failed}/{len(results)} cases pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
