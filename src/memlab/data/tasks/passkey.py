"""Token-level passkey retrieval: a few digit tokens hidden in random filler, asked for at the end.

An example of length L with a needle of n digits at depth d::

    f f f … f  NEEDLE a1 … an  f f … f  QUERY  a1 … a(n-1)
    <------------- L − n tokens: the context ----------->  <- n−1 ->

Token ids: 0 = NEEDLE (opens the needle), 1 = QUERY (asks for it), 2..11 = the ten digits,
12..V−1 = filler, drawn uniformly. The needle block (NEEDLE and n digits) starts after
round(d · F) filler tokens, F = L − 2n − 1 the number of filler tokens: depth 0 puts it first,
depth 1 right before QUERY. The labels are the answer digits, aligned as next-token targets:
``labels[L−n+i] = a(i+1)`` (after QUERY comes a1, after a1 comes a2, …), −100 elsewhere.
Teacher-forced accuracy on those positions is per digit; the headline metric is the exact match
of a greedy continuation of the first L − n + 1 tokens (up to QUERY) with the n digits.
"""

from __future__ import annotations

import numpy as np

from memlab.data.labels import IGNORE_INDEX

NEEDLE, QUERY = 0, 1
FIRST_DIGIT, NUM_DIGITS = 2, 10
FIRST_FILLER = FIRST_DIGIT + NUM_DIGITS
MIN_VOCAB = FIRST_FILLER + 1


def min_passkey_length(needle_len: int) -> int:
    """The shortest example that holds a needle of ``needle_len`` digits (no filler)."""
    return 2 * needle_len + 1


def make_passkey(
    num_examples: int,
    seq_len: int,
    needle_len: int = 5,
    vocab_size: int = 64,
    depth: float | None = None,
    *,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``num_examples`` passkey examples.

    depth: the needle's depth in [0, 1] for every example, or None for uniform random depths.
    Returns ``(input_ids, labels, depths)``: int64 [num_examples, seq_len] twice (labels are
    the aligned targets described in the module docstring) and float64 [num_examples], the
    depth each needle actually sits at (start / filler length; 0 without filler).

    The result is a pure function of the arguments and the state of ``rng``. Raises
    ValueError when the sizes cannot hold the task.
    """
    _check_arguments(num_examples, seq_len, needle_len, vocab_size, depth)
    n, k = num_examples, needle_len
    filler = seq_len - min_passkey_length(k)
    depths = rng.random(n) if depth is None else np.full(n, float(depth))
    start = np.rint(depths * filler).astype(np.int64)  # filler tokens before the needle
    digits = rng.integers(FIRST_DIGIT, FIRST_FILLER, size=(n, k), dtype=np.int64)

    input_ids = rng.integers(FIRST_FILLER, vocab_size, size=(n, seq_len), dtype=np.int64)
    rows = np.arange(n)[:, None]
    input_ids[rows[:, 0], start] = NEEDLE
    input_ids[rows, start[:, None] + 1 + np.arange(k)] = digits
    query = seq_len - k
    input_ids[:, query] = QUERY
    input_ids[:, query + 1 :] = digits[:, :-1]

    labels = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    labels[:, query:] = digits
    return input_ids, labels, start / max(filler, 1)


def _check_arguments(
    num_examples: int, seq_len: int, needle_len: int, vocab_size: int, depth: float | None
) -> None:
    if num_examples < 0:
        raise ValueError(f"make_passkey: num_examples must be >= 0 (got {num_examples})")
    if needle_len < 1:
        raise ValueError(f"make_passkey: needle_len must be >= 1 (got {needle_len})")
    if seq_len < min_passkey_length(needle_len):
        raise ValueError(
            f"make_passkey: needle_len={needle_len} needs seq_len >= {min_passkey_length(needle_len)} "
            f"(got {seq_len})"
        )
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"make_passkey: vocab_size must be >= {MIN_VOCAB} (got {vocab_size})")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"make_passkey: depth must be in [0, 1] or None (got {depth})")
