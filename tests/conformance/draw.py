"""Random shapes for the conformance cases, reproducible from (run seed, family, index)."""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
import zlib

import torch

HEAD_DIMS = (1, 8, 15, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256)
LENGTHS = (1, 2, 15, 16, 17, 63, 64, 65, 127, 129, 1000)
# The selective scan's forward walks chunks of 16 steps, its backward blocks of 16 or 32: a
# length class's lengths nearest these on either side are drawn as often as LENGTHS are
EDGES = (16, 32, 64, 128, 256, 512, 1024)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def case_seed(run_seed: int, family: str, index: int) -> int:
    """The seed of case ``index`` of ``family`` in the run seeded ``run_seed``."""
    return zlib.crc32(f"{run_seed}/{family}/{index}".encode())


def palette_seed(run_seed: int, family: str, index: int, shapes: int) -> int:
    """The seed of the compiled shape of case ``index``: one of ``shapes`` per family and run,
    so that a run compiles each kernel a bounded number of times (a compilation costs seconds,
    a case milliseconds) while its lengths, documents, batches and gates vary case by case."""
    return case_seed(run_seed, family, index % shapes)


def palette_slot(run_seed: int, family: str, index: int, shapes: int) -> int:
    """The number of the compiled shape of case ``index`` among the ``shapes`` of its family,
    counted from an offset the run's seed sets: the shapes take the scan's length classes in
    turn (``Draw.scan_class``), each class its share of them, in every run."""
    return zlib.crc32(f"{run_seed}/{family}/slots".encode()) + index % shapes


def length_class(length: int) -> str:
    """What the selective scan's kernels (kernels/selective_scan/triton_scan.py) are compiled
    for beyond a shape, given the length L of one scan: L_UNIT = gcd(L, 16) and STATE_EVERY
    (16 when L <= 16, else 32) are constexprs of theirs. Each class of a shape is a compilation
    (tens of seconds at N = 64): L1s (L = 1), L2s, L4s, L8s, L16s (the other lengths up to 16
    by gcd(L, 16)) and L1, L2, L4, L8, L16 (beyond 16)."""
    return f"L{math.gcd(length, 16)}" + "s" * (length <= 16)


@functools.cache
def _class_members(cls: str) -> tuple[int, ...]:
    """The lengths up to 1024 in length class ``cls``, ascending."""
    return tuple(t for t in range(1, 1025) if length_class(t) == cls)


def class_lengths(cls: str, cap: int) -> tuple[int, ...]:
    """The lengths up to ``cap`` (at most 1024) in length class ``cls``, ascending."""
    members = _class_members(cls)
    return members[: bisect.bisect_right(members, cap)]


@functools.cache
def length_classes(cap: int) -> tuple[str, ...]:
    """The length classes with a length up to ``cap``, by their shortest length."""
    return tuple(dict.fromkeys(length_class(t) for t in range(1, cap + 1)))


@functools.cache
def marked_lengths(cls: str, cap: int) -> tuple[int, ...]:
    """The lengths of class ``cls`` up to ``cap`` drawn as often as LENGTHS are: those of
    LENGTHS, and those nearest each of EDGES on either side."""
    members = class_lengths(cls, cap)
    marked = {t for t in LENGTHS if t in members}
    for edge in EDGES:
        at = bisect.bisect_left(members, edge)
        marked |= {members[i] for i in (at - 1, at) if 0 <= i < len(members)}
        if at < len(members) and members[at] == edge and at + 1 < len(members):
            marked.add(members[at + 1])
    return tuple(sorted(marked))


class Draw(random.Random):
    """random.Random with the draws the cases share, in two streams: this one, seeded by
    ``seed``, for what a kernel is compiled for (dtype, head and state sizes, heads, flags, the
    scan's ``scan_class``); one seeded by ``case_seed`` (default ``seed``) for what it is
    launched with (``length``, ``documents``, ``batch``, ``gate_kind``). ``slot``: the shape's
    ``palette_slot``, if drawn for a palette. ``tiny`` keeps shapes small enough for Triton's
    interpreter on a CPU (and leaves out bf16, whose interpreted tl.dot is wrong)."""

    def __init__(
        self, seed: int, tiny: bool = False, case_seed: int | None = None, slot: int | None = None
    ) -> None:
        super().__init__(seed)
        self.tiny = tiny
        self.slot = slot
        self.launch = random.Random(seed if case_seed is None else case_seed)

    def dtype(self) -> str:
        return self.choice(("fp32", "fp16") if self.tiny else tuple(DTYPES))

    def head_dim(self) -> int:
        return self.choice(tuple(d for d in HEAD_DIMS if d <= 40) if self.tiny else HEAD_DIMS)

    def length(self, cap: int = 1000, within: str | None = None) -> int:
        """One of LENGTHS (chunk edges, 1, 1000) or, one time in three, any length up to ``cap``;
        ``within`` a length class (``scan_class``), one of its ``marked_lengths`` or, one time
        in three, any of its lengths up to ``cap`` (at least its shortest)."""
        cap = min(cap, 70) if self.tiny else cap
        if within is not None:
            wild = self.launch.random() < 1 / 3
            return self.launch.choice(class_lengths(within, cap) if wild else marked_lengths(within, cap))
        if self.launch.random() < 1 / 3:
            return self.launch.randint(1, cap)
        return self.launch.choice([t for t in LENGTHS if t <= cap] or [cap])

    def scan_class(self, cap: int = 1000) -> str:
        """The length class (``length_class``) of every scan of a shape, of those with a length
        up to ``cap``: the shapes of a palette take them in turn (by ``slot``), others one at
        random. The selective scan compiles once per class and shape."""
        classes = length_classes(min(cap, 70) if self.tiny else cap)
        return classes[self.slot % len(classes)] if self.slot is not None else self.choice(classes)

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

    def class_documents(self, within: str, cap: int) -> list[int]:
        """cu_seqlens offsets of 1 to 6 documents, up to ``cap`` tokens in all, each of a
        length of class ``within`` (``length``), and half the time one or two empty ones among
        them: a layer that scans its documents one by one compiles the scan for one class. A
        one-token document is of class L1su, in which every document has one token."""
        r = self.launch
        cap = min(cap, 70) if self.tiny else cap
        least = class_lengths(within, cap)[0]
        count = r.randint(1, min(6, cap // least))
        lengths: list[int] = []
        for k in range(count):  # room left for the documents after this one
            lengths.append(self.length(cap - sum(lengths) - least * (count - 1 - k), within))
        if r.random() < 0.5:
            for _ in range(r.randint(1, 2)):
                lengths.insert(r.randint(0, len(lengths)), 0)
        return [0, *itertools.accumulate(lengths)]

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
