"""Selective scan: the PyTorch twin and the decode step against the fp64 token-by-token reference.

Every test draws fresh random inputs; the seed is printed, so a failure's captured output
says how to reproduce it.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from memlab.kernels.backend import KernelInputError
from memlab.kernels.compare import rel_err
from memlab.kernels.selective_scan import (
    naive_selective_scan,
    selective_scan,
    selective_state_update,
    torch_scan,
)

BATCH, DIM = 2, 8
OPTIONAL = ("D", "z", "delta_bias")


@pytest.fixture
def gen() -> torch.Generator:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


def make_inputs(
    gen: torch.Generator,
    L: int,
    N: int = 16,
    groups_B: int | None = None,
    groups_C: int | None = None,
    softplus: bool = True,
    optional: tuple[str, ...] = OPTIONAL,
    delta_range: tuple[float, float] | None = None,
) -> dict[str, torch.Tensor]:
    """fp64 inputs; delta is positive after bias (and softplus), as in Mamba."""

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    def bc(groups: int | None) -> torch.Tensor:
        return randn(BATCH, N, L) if groups is None else randn(BATCH, groups, N, L)

    if delta_range is not None:
        lo, hi = delta_range
        delta = lo + (hi - lo) * rand(BATCH, DIM, L)
    elif softplus:
        delta = randn(BATCH, DIM, L)
    else:
        delta = 0.5 * rand(BATCH, DIM, L)
    x = {
        "u": randn(BATCH, DIM, L),
        "delta": delta,
        "A": -torch.exp(randn(DIM, N)),
        "B": bc(groups_B),
        "C": bc(groups_C),
        "D": randn(DIM),
        "z": randn(BATCH, DIM, L),
        # Mamba initialises the dt bias to softplus⁻¹ of small step sizes, i.e. negative.
        "delta_bias": randn(DIM) - 3.0 if softplus else 0.1 * rand(DIM),
    }
    return {k: v for k, v in x.items() if k not in OPTIONAL or k in optional}


def run(fn, inputs: dict[str, torch.Tensor], softplus: bool, dtypes: dict[str, torch.dtype] | None = None):
    """Call fn with inputs cast to ``dtypes`` (default: as given) and return y, the last state
    and the gradients of a fixed random functional of both with respect to every input."""
    dtypes = dtypes or {}
    leaves = {k: v.to(dtypes.get(k, v.dtype)).detach().requires_grad_() for k, v in inputs.items()}
    y, state = fn(**leaves, delta_softplus=softplus, return_last_state=True)
    cot = torch.Generator().manual_seed(0)
    gy = torch.randn(y.shape, generator=cot, dtype=torch.float64).to(y.dtype)
    gs = torch.randn(state.shape, generator=cot, dtype=torch.float64).to(state.dtype)
    loss = (y * gy).sum() + (state * gs).sum()
    grads = torch.autograd.grad(loss.float() if loss.dtype != torch.float64 else loss, list(leaves.values()))
    return y, state, dict(zip(leaves, grads, strict=True))


def assert_close(got, ref, tol: float) -> None:
    y, state, grads = got
    y_ref, state_ref, grads_ref = ref
    errors = {"y": rel_err(y, y_ref), "state": rel_err(state, state_ref)}
    errors.update({f"d{k}": rel_err(grads[k], grads_ref[k]) for k in grads_ref})
    bad = {k: e for k, e in errors.items() if not e < tol}
    assert not bad, f"relative errors above {tol}: {bad}"


def reference(inputs: dict[str, torch.Tensor], softplus: bool, dtypes: dict[str, torch.dtype] | None = None):
    """The fp64 reference on exactly the values the kernel sees (rounded to ``dtypes`` first)."""
    dtypes = dtypes or {}
    rounded = {k: v.to(dtypes.get(k, v.dtype)).double() for k, v in inputs.items()}
    return run(naive_selective_scan, rounded, softplus)


@pytest.mark.parametrize("grouped", [False, True], ids=["shared", "groups2"])
@pytest.mark.parametrize("N", [1, 16])
@pytest.mark.parametrize("L", [1, 63, 64, 65, 200])
def test_fp64_matches_reference(gen, L, N, grouped):
    groups = 2 if grouped else None
    x = make_inputs(gen, L, N, groups_B=groups, groups_C=groups)
    assert_close(run(selective_scan, x, True), reference(x, True), tol=1e-8)


@pytest.mark.parametrize(
    ("optional", "softplus"),
    [
        (tuple(k for k, on in zip(OPTIONAL, flags, strict=True) if on), softplus)
        for *flags, softplus in itertools.product([False, True], repeat=4)
    ],
)
def test_optional_inputs(gen, optional, softplus):
    x = make_inputs(gen, 65, softplus=softplus, optional=optional)
    assert_close(run(selective_scan, x, softplus), reference(x, softplus), tol=1e-8)


@pytest.mark.parametrize(("groups_B", "groups_C"), [(2, None), (None, 4), (2, 4), (8, 8)])
def test_mixed_grouping(gen, groups_B, groups_C):
    x = make_inputs(gen, 37, groups_B=groups_B, groups_C=groups_C)
    assert_close(run(selective_scan, x, True), reference(x, True), tol=1e-8)


def test_many_short_chunks(gen, monkeypatch):
    # Force 4-step chunks so the state is carried across many chunk boundaries.
    monkeypatch.setattr(torch_scan, "_MAX_CHUNK", 4)
    x = make_inputs(gen, 67, groups_B=2, groups_C=2)
    assert_close(run(selective_scan, x, True), reference(x, True), tol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("delta_range", "softplus"), [((10.0, 50.0), True), ((0.0, 1e-4), False)], ids=["large", "tiny"]
)
def test_extreme_delta(gen, delta_range, softplus, dtype):
    x = make_inputs(gen, 65, softplus=softplus, delta_range=delta_range)
    if not softplus:
        x["delta_bias"] = torch.zeros_like(x["delta_bias"])
    got = run(selective_scan, x, softplus, dtypes=dict.fromkeys(x, dtype))
    assert all(torch.isfinite(t).all() for t in (got[0], got[1], *got[2].values()))
    assert_close(got, reference(x, softplus), tol=1e-8 if dtype == torch.float64 else 1e-4)


def test_decays_that_underflow_give_finite_gradients(gen):
    # exp(dt·A) = exp(-800) is 0 in fp32: the scan must stay finite, not produce 0·inf.
    x = make_inputs(gen, 40, delta_range=(50.0, 50.0))
    x["A"] = torch.full_like(x["A"], -16.0)
    y, state, grads = run(selective_scan, x, True, dtypes=dict.fromkeys(x, torch.float32))
    assert all(torch.isfinite(t).all() for t in (y, state, *grads.values()))


def test_fp32_matches_fp64_reference(gen):
    x = make_inputs(gen, 200, groups_B=2, groups_C=2)
    dtypes = dict.fromkeys(x, torch.float32)
    got = run(selective_scan, x, True, dtypes)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert_close(got, reference(x, True, dtypes), tol=1e-4)


@pytest.mark.parametrize("params_dtype", [torch.float32, torch.bfloat16], ids=["fp32_params", "bf16_params"])
def test_bf16_inputs(gen, params_dtype):
    x = make_inputs(gen, 130, groups_B=2, groups_C=2)
    dtypes = {k: torch.bfloat16 for k in ("u", "delta", "B", "C", "z")}
    dtypes.update({k: params_dtype for k in ("A", "D", "delta_bias")})
    y, state, grads = got = run(selective_scan, x, True, dtypes)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32  # state kept in fp32
    assert all(grads[k].dtype == dtypes[k] for k in grads)
    assert_close(got, reference(x, True, dtypes), tol=2e-2)


def test_non_contiguous_inputs(gen):
    # Mamba blocks produce u, delta, z as [batch, L, dim] views transposed to [batch, dim, L].
    x = make_inputs(gen, 50)
    views = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if v.dim() == 3 else v) for k, v in x.items()}
    assert not views["u"].is_contiguous()
    y = selective_scan(**views, delta_softplus=True)
    torch.testing.assert_close(y, selective_scan(**x, delta_softplus=True), rtol=1e-12, atol=1e-12)


def decode(
    x: dict[str, torch.Tensor], state: torch.Tensor, start: int, softplus: bool, backend: str | None = None
) -> torch.Tensor:
    """Run selective_state_update over steps start.. of x, updating state; returns [batch, dim, L']."""
    outs = []
    for t in range(start, x["u"].shape[-1]):
        outs.append(
            selective_state_update(
                state,
                x["u"][..., t],
                x["delta"][..., t],
                x["A"],
                x["B"][..., t],
                x["C"][..., t],
                D=x.get("D"),
                z=x["z"][..., t] if "z" in x else None,
                dt_bias=x.get("delta_bias"),
                dt_softplus=softplus,
                backend=backend,
            )
        )
    return torch.stack(outs, dim=-1)


@pytest.mark.parametrize(("optional", "softplus"), [(OPTIONAL, True), ((), False)], ids=["all", "bare"])
@pytest.mark.parametrize("grouped", [False, True], ids=["shared", "groups2"])
def test_state_update_steps_reproduce_scan(gen, grouped, optional, softplus):
    groups = 2 if grouped else None
    x = make_inputs(gen, 33, groups_B=groups, groups_C=groups, softplus=softplus, optional=optional)
    y_ref, state_ref = naive_selective_scan(**x, delta_softplus=softplus, return_last_state=True)
    # The state may be a view into a larger cache: it must be updated where it lives.
    cache = torch.zeros(2, BATCH, DIM, x["A"].shape[1], dtype=torch.float64)
    y = decode(x, cache[1], 0, softplus)
    assert rel_err(y, y_ref) < 1e-12
    assert rel_err(cache[1], state_ref) < 1e-12
    assert not cache[0].any()


@pytest.mark.parametrize("prefix", [1, 63, 64])
def test_scan_prefix_then_decode(gen, prefix):
    x32 = {k: v.float() for k, v in make_inputs(gen, 100, groups_B=2, groups_C=2).items()}
    y_full, state_full = selective_scan(**x32, delta_softplus=True, return_last_state=True)
    head = {k: (v[..., :prefix] if v.dim() >= 3 else v) for k, v in x32.items()}
    y_head, state = selective_scan(**head, delta_softplus=True, return_last_state=True)
    assert state.dtype == torch.float32
    y_tail = decode(x32, state, prefix, True)
    assert y_tail.dtype == torch.float32
    assert rel_err(torch.cat((y_head, y_tail), dim=-1), y_full) < 1e-5
    assert rel_err(state, state_full) < 1e-5


def test_state_update_out_dtype_follows_x(gen):
    x = make_inputs(gen, 1)
    state = torch.zeros(BATCH, DIM, 16)
    out = selective_state_update(
        state,
        x["u"][..., 0].bfloat16(),
        x["delta"][..., 0].bfloat16(),
        x["A"].float(),
        x["B"][..., 0].bfloat16(),
        x["C"][..., 0].bfloat16(),
        dt_softplus=True,
    )
    assert out.dtype == torch.bfloat16 and out.shape == (BATCH, DIM)
    assert state.any()


SCAN_BAD = [
    ("u", lambda x: x.update(u=x["u"][0])),
    ("u", lambda x: x.update(u=x["u"].long())),
    ("u", lambda x: x.update({k: x[k][..., :0] for k in ("u", "delta", "z", "B", "C")})),
    ("delta", lambda x: x.update(delta=x["delta"][..., :-1])),
    ("delta", lambda x: x.update(delta=x["delta"].to("meta"))),
    ("A", lambda x: x.update(A=x["A"][:-1])),
    ("A", lambda x: x.update(A=x["A"].to(torch.complex128))),
    ("B", lambda x: x.update(B=x["B"][:, :-1])),
    ("B", lambda x: x.update(B=x["B"][:, None].expand(-1, 3, -1, -1))),  # 3 groups, dim 8
    ("B", lambda x: x.update(B=x["B"][None])),
    ("B", lambda x: x.update(B=x["B"].tolist())),
    ("C", lambda x: x.update(C=x["C"][..., :-1])),
    ("D", lambda x: x.update(D=x["D"][None])),
    ("z", lambda x: x.update(z=x["z"][:1])),
    ("delta_bias", lambda x: x.update(delta_bias=x["delta_bias"][:-1])),
]


@pytest.mark.parametrize(("name", "corrupt"), SCAN_BAD)
def test_scan_rejects_bad_inputs(gen, name, corrupt):
    x = make_inputs(gen, 5)
    corrupt(x)
    with pytest.raises(KernelInputError, match=rf"^selective_scan: {name} "):
        selective_scan(**x)


def step_inputs(gen: torch.Generator) -> dict[str, torch.Tensor]:
    x = make_inputs(gen, 1, groups_B=2)
    step = {k: (v[..., 0] if v.dim() >= 3 else v) for k, v in x.items()}
    step["x"], step["dt"], step["dt_bias"] = step.pop("u"), step.pop("delta"), step.pop("delta_bias")
    step["state"] = torch.zeros(BATCH, DIM, 16, dtype=torch.float64)
    return step


STEP_BAD = [
    ("state", lambda x: x.update(state=x["state"].bfloat16())),
    ("state", lambda x: x.update(state=x["state"][0])),
    ("x", lambda x: x.update(x=x["x"][:, :-1])),
    ("x", lambda x: x.update(x=x["x"].to("meta"))),
    ("dt", lambda x: x.update(dt=x["dt"][None])),
    ("A", lambda x: x.update(A=x["A"][:, :-1])),
    ("B", lambda x: x.update(B=x["B"][:, :1].expand(-1, 3, -1))),
    ("B", lambda x: x.update(B=x["B"][..., None])),
    ("C", lambda x: x.update(C=x["C"][:, :-1])),
    ("D", lambda x: x.update(D=x["D"].int())),
    ("z", lambda x: x.update(z=x["z"].T)),
    ("dt_bias", lambda x: x.update(dt_bias=x["dt_bias"][:-1])),
    ("dt", lambda x: x.update(dt_proj=torch.zeros(DIM, 3, dtype=torch.float64))),
    ("dt_proj", lambda x: x.update(dt=x["dt"][:, :3], dt_proj=torch.zeros(DIM - 1, 3, dtype=torch.float64))),
    ("give exactly one of A", lambda x: x.update(A_log=x["A"])),
    ("give exactly one of A", lambda x: x.update(A=None)),
]


@pytest.mark.parametrize(("name", "corrupt"), STEP_BAD)
def test_state_update_rejects_bad_inputs(gen, name, corrupt):
    x = step_inputs(gen)
    corrupt(x)
    with pytest.raises(KernelInputError, match=rf"^selective_state_update: {name} "):
        selective_state_update(**x)


def test_state_update_projects_dt_and_takes_a_log(gen):
    # Mamba's step hands over the low-rank dt with dt_proj, and A_log: the same step as with
    # dt · dt_projᵀ and A = −exp(A_log) given
    x = step_inputs(gen)
    low = torch.randn(BATCH, 3, generator=gen, dtype=torch.float64)
    proj = torch.randn(DIM, 3, generator=gen, dtype=torch.float64)
    A_log = torch.randn(DIM, x["A"].shape[1], generator=gen, dtype=torch.float64)
    given = x | {"dt": low @ proj.T, "A": -A_log.exp(), "state": x["state"].clone()}
    fused = x | {"dt": low, "dt_proj": proj, "A": None, "A_log": A_log}
    out = selective_state_update(**fused, dt_softplus=True)
    torch.testing.assert_close(out, selective_state_update(**given, dt_softplus=True))
    torch.testing.assert_close(fused["state"], given["state"])


def test_backend_choice(gen, monkeypatch):
    x = make_inputs(gen, 9)
    x["delta_softplus"] = True
    y = selective_scan(**x)
    torch.testing.assert_close(selective_scan(**x, backend="torch"), y, rtol=0, atol=0)
    torch.testing.assert_close(selective_scan(**x, backend="auto"), y, rtol=0, atol=0)
    with pytest.raises(KernelInputError, match="unknown backend='cuda'"):
        selective_scan(**x, backend="cuda")
    with pytest.raises(KernelInputError, match=r"no Triton kernel|needs TRITON_INTERPRET=1"):
        selective_scan(**x, backend="triton")
    monkeypatch.setenv("MEMLAB_KERNEL_BACKEND", "fast")
    with pytest.raises(KernelInputError, match="MEMLAB_KERNEL_BACKEND='fast'"):
        selective_scan(**x)
    monkeypatch.setenv("MEMLAB_KERNEL_BACKEND", "torch")
    torch.testing.assert_close(selective_scan(**x), y, rtol=0, atol=0)


def test_state_update_backend_choice(gen):
    step = step_inputs(gen)
    with pytest.raises(KernelInputError, match="unknown backend"):
        selective_state_update(**step, backend="numpy")
    with pytest.raises(KernelInputError, match=r"no Triton kernel|needs TRITON_INTERPRET=1"):
        selective_state_update(**step, backend="triton")
    assert not step["state"].any()  # a refused call leaves the state alone
    selective_state_update(**step, backend="torch")
    assert step["state"].any()
