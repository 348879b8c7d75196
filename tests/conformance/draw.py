"""Random shapes for the conformance cases, reproducible from (run seed, family, index)."""

from __future__ import annotations

import random
import zlib

import torch

HEAD_DIMS = (1, 8, 15, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256)
LENGTHS = (1, 2, 15, 16, 17, 63, 64, 65, 127, 129, 1000)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def case_seed(run_seed: int, family: str, index: int) -> int:
    """The seed of case ``index`` of ``family`` in the run seeded ``run_seed``."""
    return zlib.crc32(f"{run_seed}/{family}/{index}".encode())


def palette_seed(run_seed: int, family: str, index: int, shapes: int) -> int:
    """The seed of the compiled shape of case ``index``: one of ``shapes`` per family and run,
    so that a run compiles each kernel a bounded number of times (a compilation costs seconds,
    a case milliseconds) while its lengths, documents, batches and gates vary case by case."""
    return case_seed(run_seed, family, index % shapes)


class Draw(random.Random):
    """random.Random with the draws the cases share, in two streams: this one, seeded by
    ``seed``, for what a kernel is compiled for (dtype, head and state sizes, heads, flags);
    one seeded by ``case_seed`` (default ``seed``) for what it is launched with (``length``,
    ``documents``, ``batch``, ``gate_kind``). ``tiny`` keeps shapes small enough for Triton's
    interpreter on a CPU (and leaves out bf16, whose interpreted tl.dot is wrong)."""

    def __init__(self, seed: int, tiny: bool = False, case_seed: int | None = None) -> None:
        super().__init__(seed)
        self.tiny = tiny
        self.launch = random.Random(seed if case_seed is None else case_seed)

    def dtype(self) -> str:
        return self.choice(("fp32", "fp16") if self.tiny else tuple(DTYPES))

    def head_dim(self) -> int:
        return self.choice(tuple(d for d in HEAD_DIMS if d <= 40) if self.tiny else HEAD_DIMS)

    def length(self, cap: int = 1000) -> int:
        """One of LENGTHS (chunk edges, 1, 1000) or, one time in three, any length up to ``cap``."""
        cap = min(cap, 70) if self.tiny else cap
        if self.launch.random() < 1 / 3:
            return self.launch.randint(1, cap)
        return self.launch.choice([t for t in LENGTHS if t <= cap] or [cap])

    def batch(self, most: int) -> int:
        """A batch size from 1 to ``most`` (2 when tiny)."""
        return self.launch.randint(1, min(most, 2) if self.tiny else most)

    def documents(self, total: int) -> list[int]:
        """cu_seqlens offsets of 1 to 6 documents packed into ``total`` tokens, some of them
        empty or one token long where there is room."""
        r = self.launch
        cuts = sorted(r.randint(0, total) for _ in range(r.randint(0, 5)))
        if total >= 2 and r.random() < 0.5:  # a one-token document
            at = r.randint(0, total - 1)
            cuts += [at, at + 1]
        if r.random() < 0.5:  # an empty document
            cuts.append(cuts[0] if cuts and r.random() < 0.5 else r.randint(0, total))
        return [0, *sorted(cuts), total]

    def gate_kind(self) -> str:
        return self.launch.choice(("mixed", "mixed", "uniform", "strong", "zero"))


def gates(kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Log decays in [−20, 0], float64, from torch's generator: all zero, all strong (≈ −20),
    uniform, or mixed (exactly 0, exactly −20 and logsigmoid values in between)."""
    if kind == "zero":
        return torch.zeros(shape, dtype=torch.float64)
    if kind == "strong":
        return -20 + torch.rand(shape, dtype=torch.float64)
    if kind == "uniform":
        return -20 * torch.rand(shape, dtype=torch.float64)
    g = torch.nn.functional.logsigmoid(3 * torch.randn(shape, dtype=torch.float64))
    pick = torch.randint(0, 3, shape)
    return torch.where(pick == 0, 0.0, torch.where(pick == 1, -20.0, g))
