"""Check the Triton layer ops (causal conv1d, L2 norm, gated RMSNorm, routed combine) on a GPU
against their fp64 references.

For every case: the output and the gradients of every input (from random cotangents), each as
‖got − ref‖/‖ref‖ against the fp64 reference run on exactly the values the kernel saw (inputs
rounded to the kernel's dtype first). Conv cases cover widths 1-4, channel counts that are
and are not multiples of the kernels' tiles, a bias or none, SiLU or none, packed sequences
with empty and length-1 ones, and a strided input; the norms cover head sizes 64-256 and odd
ones (L2 norm with all-zero rows); the combine covers MoM's shape (top-2 plus shared) and rows
no index picks. bf16 and fp32. Prints one row per case with PASS/FAIL and exits
1 if any case fails.

    python scripts/check_gpu_layer_ops.py
"""

from __future__ import annotations

import sys
import time
from functools import partial

import torch

from memlab.kernels import causal_conv1d, combine_routed, gated_rmsnorm, l2norm
from memlab.kernels.causal_conv1d import naive_causal_conv1d
from memlab.kernels.combine_routed import combine_routed_torch
from memlab.kernels.compare import errors_against_reference
from memlab.kernels.gated_rmsnorm import gated_rmsnorm_torch
from memlab.kernels.l2norm import l2norm_torch

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
COLUMNS = ("out", "dx", "do", "dgate", "dvalues", "dweight", "dweights", "dbias")


def check(fn, reference, inputs: dict[str, torch.Tensor | None], dtype: torch.dtype, **kwargs) -> dict:
    """Errors of fn's output and gradients against ``reference`` in fp64, on the same values
    (integer inputs, passed through kwargs, are not differentiated)."""
    inputs = {n: t for n, t in inputs.items() if t is not None}
    errors, outputs = errors_against_reference(
        partial(fn, backend="triton"), reference, inputs, dtype, **kwargs
    )
    finite = all(torch.isfinite(t).all() for t in outputs)
    return {"errors": errors, "pass": bool(finite) and max(errors.values()) < TOL[dtype]}


def cases():
    for dtype in (torch.bfloat16, torch.float32):
        for B, T, C, W, bias, act, offsets in (
            (2, 1, 64, 4, True, "silu", None),
            (2, 1000, 1024, 4, False, "silu", None),
            (3, 333, 200, 3, True, None, None),
            (1, 2000, 1536, 4, True, "silu", None),
            (2, 65, 130, 1, False, "silu", None),
            (1, 700, 256, 4, False, "silu", [0, 1, 1, 65, 300, 300, 699, 700]),
            (1, 129, 96, 2, True, None, [0, 0, 64, 129]),
        ):
            name = f"conv B={B} T={T} C={C} W={W} bias={int(bias)} {act} {'varlen' if offsets else 'rows'}"
            cu = None if offsets is None else torch.tensor(offsets, device="cuda", dtype=torch.int32)
            inputs = {
                "x": torch.randn(B, T, C, device="cuda"),
                "weight": torch.randn(C, W, device="cuda") / W**0.5,
                "bias": torch.randn(C, device="cuda") if bias else None,
            }
            kwargs = {"cu_seqlens": cu, "activation": act}
            yield name, causal_conv1d, naive_causal_conv1d, inputs, dtype, kwargs
        strided = torch.randn(300, 2, 512, device="cuda").transpose(0, 1)  # time the outer stride
        yield (
            "conv strided x B=2 T=300 C=512 W=4",
            causal_conv1d,
            naive_causal_conv1d,
            {"x": strided, "weight": torch.randn(512, 4, device="cuda") / 2},
            dtype,
            {},
        )
        for shape in ((4096, 4, 256), (1000, 16, 128), (77, 3, 64), (513, 2, 100)):
            x = torch.randn(*shape, device="cuda")
            x[:3] = 0  # all-zero rows: finite, zero output and gradient
            yield f"l2norm {list(shape)}", l2norm, l2norm_torch, {"x": x}, dtype, {}
            norm_inputs = {
                "o": x,
                "gate": torch.randn(*shape, device="cuda"),
                "weight": torch.randn(shape[-1], device="cuda"),
            }
            yield (
                f"gated_rmsnorm {list(shape)}",
                gated_rmsnorm,
                gated_rmsnorm_torch,
                norm_inputs,
                dtype,
                {"eps": 1e-5},
            )
        for tokens, S, F, spare in ((32768, 3, 1024, 0), (1000, 2, 100, 77)):
            index = torch.randperm(tokens * S + spare, device="cuda")[: tokens * S].view(tokens, S)
            combine_inputs = {
                "values": torch.randn(tokens * S + spare, F, device="cuda"),
                "weights": torch.rand(tokens, S, device="cuda"),
            }
            name = f"combine tokens={tokens} S={S} F={F} unpicked={spare}"
            yield name, combine_routed, combine_routed_torch, combine_inputs, dtype, {"index": index}


def main() -> int:
    if not torch.cuda.is_available():
        print("error: no CUDA device; this script checks the kernels on a GPU", file=sys.stderr)
        return 2
    seed = int(time.time())
    torch.manual_seed(seed)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, seed {seed}; tolerances {TOL}")
    print("| result | dtype | case | " + " | ".join(COLUMNS) + " |")
    print("|---" * (3 + len(COLUMNS)) + "|")
    passed = total = 0
    for name, fn, reference, inputs, dtype, kwargs in cases():
        try:
            row = check(fn, reference, inputs, dtype, **kwargs)
        except Exception as exc:  # a compile error or crash is a failed case, not the end of the run
            row = {"errors": {}, "pass": False, "crash": repr(exc)[:200]}
        errs = " | ".join(f"{row['errors'][c]:.1e}" if c in row["errors"] else "-" for c in COLUMNS)
        verdict = "PASS" if row["pass"] else "FAIL"
        print(f"| {verdict} | {NAMES[dtype]} | {name} | {errs} |{row.get('crash', '')}", flush=True)
        passed, total = passed + row["pass"], total + 1
    print(f"\n{passed}/{total} cases pass")
    return 0 if passed == total else 1


if __name__ == "__main__":
    sys.exit(main())
