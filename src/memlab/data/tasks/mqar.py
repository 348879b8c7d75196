"""Multi-query associative recall (MQAR), generated with the Zoology protocol.

An example of length L with P pairs over a vocabulary of V tokens::

    k1 v1 k2 v2 ... kP vP | x  x  k2 x  k1 x  x  x  kP x ...
    <----- 2P tokens ----> <------ L - 2P tokens ------------>

Keys come from [1, V/2), values from [V/2, V), both distinct within an example. Every key
is queried exactly once, at an even offset of the query region; the offsets are drawn
without replacement from p(i) ∝ i^(a-1) over the gap index i = 1, 2, ..., so with the
standard a = 0.01 most queries sit close to the pairs. Slots that hold neither a pair
nor a query get random tokens from [0, V). The only supervised positions are the query
keys, whose target is the paired value.
"""

from __future__ import annotations

import numpy as np

from memlab.data.labels import IGNORE_INDEX

# Caps the scratch matrix of the random-key subset sampler (elements per chunk of rows).
_SCRATCH_ELEMENTS = 1 << 22


def make_mqar(
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int = 8192,
    power_a: float = 0.01,
    *,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``num_examples`` MQAR examples.

    Returns ``(input_ids, labels)``, both int64 of shape [num_examples, seq_len]. Labels
    are aligned next-token targets: ``labels[n, t]`` is what a model should predict after
    reading ``input_ids[n, :t + 1]``; it is the paired value at each of the
    ``num_kv_pairs`` query positions and ``IGNORE_INDEX`` (-100) everywhere else.

    The result is a pure function of the arguments and the state of ``rng``.
    Raises ValueError when the sizes cannot hold the task (needs
    ``seq_len >= 4 * num_kv_pairs`` and ``vocab_size >= 2 * num_kv_pairs + 2``).
    """
    _check_arguments(num_examples, seq_len, num_kv_pairs, vocab_size, power_a)
    n, pairs = num_examples, num_kv_pairs
    half = vocab_size // 2
    prefix = 2 * pairs

    keys = _distinct_integers(rng, n, 1, half, pairs)
    values = _distinct_integers(rng, n, half, vocab_size, pairs)

    # Query j may sit at offset 2*g for g in [0, slots); the i-th drawn gap goes to key i.
    slots = (seq_len - prefix) // 2
    log_weight = (power_a - 1.0) * np.log(np.arange(1, slots + 1, dtype=np.float64))
    gaps = _weighted_draws_without_replacement(rng, n, log_weight, pairs)
    query_pos = prefix + 2 * gaps

    input_ids = rng.integers(0, vocab_size, size=(n, seq_len), dtype=np.int64)
    input_ids[:, 0:prefix:2] = keys
    input_ids[:, 1:prefix:2] = values
    np.put_along_axis(input_ids, query_pos, keys, axis=1)

    labels = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(labels, query_pos, values, axis=1)
    return input_ids, labels


def _check_arguments(
    num_examples: int, seq_len: int, num_kv_pairs: int, vocab_size: int, power_a: float
) -> None:
    if num_examples < 0:
        raise ValueError(f"make_mqar: num_examples must be >= 0 (got {num_examples})")
    if num_kv_pairs < 1:
        raise ValueError(f"make_mqar: num_kv_pairs must be >= 1 (got {num_kv_pairs})")
    if seq_len < 4 * num_kv_pairs:
        raise ValueError(
            f"make_mqar: num_kv_pairs={num_kv_pairs} needs seq_len >= {4 * num_kv_pairs} (got {seq_len})"
        )
    if vocab_size < 2 * num_kv_pairs + 2:
        raise ValueError(
            f"make_mqar: num_kv_pairs={num_kv_pairs} needs vocab_size >= {2 * num_kv_pairs + 2} "
            f"(got {vocab_size})"
        )
    if not (np.isfinite(power_a) and power_a > 0):
        raise ValueError(f"make_mqar: power_a must be a finite number > 0 (got {power_a})")


def _distinct_integers(rng: np.random.Generator, n: int, low: int, high: int, k: int) -> np.ndarray:
    """[n, k] int64: each row holds k distinct integers drawn uniformly from [low, high), in
    uniformly random order."""
    population = high - low
    out = np.empty((n, k), dtype=np.int64)
    if k * k <= 2 * population:
        # Floyd's algorithm: k draws per row, each checked against the row's earlier picks;
        # cheapest when k is small next to the population (the usual MQAR case).
        for j, top in enumerate(range(population - k, population)):
            pick = rng.integers(0, top + 1, size=n)
            taken = (out[:, :j] == pick[:, None]).any(axis=1)
            out[:, j] = np.where(taken, top, pick)
    else:
        # Random keys: the k smallest of `population` uniform scores; linear in the
        # population, so it wins once k^2 outgrows it. Chunked to bound scratch memory.
        rows = max(1, _SCRATCH_ELEMENTS // population)
        for start in range(0, n, rows):
            scores = rng.random((min(rows, n - start), population))
            out[start : start + rows] = np.argpartition(scores, k - 1, axis=1)[:, :k]
    # Neither method leaves the picks in random order.
    return rng.permuted(out, axis=1) + low


def _weighted_draws_without_replacement(
    rng: np.random.Generator, n: int, log_weight: np.ndarray, k: int
) -> np.ndarray:
    """[n, k] int64 indices into ``log_weight``, distributed like k successive draws without
    replacement with probability ∝ exp(log_weight), listed in draw order.

    Gumbel top-k: perturbing log-weights with Gumbel noise and sorting by the perturbed
    score yields exactly that sequential-draw distribution, with no per-row loop.
    """
    scores = log_weight[None, :] + rng.gumbel(size=(n, log_weight.shape[0]))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)
