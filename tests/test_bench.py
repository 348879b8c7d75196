"""The benchmark suites' measuring code on a CPU at tiny sizes: the GPU runs take the same
paths (only the timer and the memory counter differ), so a broken suite fails here first."""

from __future__ import annotations

import argparse

import pytest
import torch

from memlab.bench import decode, layers
from memlab.bench.cli import positive_int, require_cuda
from memlab.bench.suites import SUITES

TINY_MEMMAMBA = dict(chunk_size=8, pool_size=3, summary_dim=8, num_heads=2, head_dim=8)


def test_new_suites_are_registered() -> None:
    assert SUITES["layers"] is layers.run
    assert SUITES["decode"] is decode.run


def test_layers_rows_and_table() -> None:
    rows = layers.measure(
        d_model=32, lengths=(20, 32), tokens=64, device="cpu", memmamba_kwargs=TINY_MEMMAMBA
    )
    assert [(r["L"], r["layer"]) for r in rows] == [(L, name) for L in (20, 32) for name in layers.LAYERS]
    for r in rows:
        assert r["batch"] == 64 // r["L"] and r["ms"] > 0 and r["peak_mib"] is None
        assert r["tokens_per_s"] == r["batch"] * r["L"] / r["ms"] * 1e3
    assert [r["vs_mamba"] for r in rows if r["layer"] == "mamba"] == [1.0, 1.0]
    table = layers.format_table(rows)
    assert table.count("\n| memmamba |") == 2 and table.count("goal memmamba") == 4


def test_layers_table_marks_out_of_memory() -> None:
    row = dict(
        layer="memmamba",
        d_model=768,
        L=8192,
        batch=4,
        ms=None,
        tokens_per_s=None,
        peak_mib=None,
        vs_mamba=None,
    )
    assert "| memmamba | 8192 | 4 | OOM | OOM | - | - |" in layers.format_table([row])


def test_decode_rows_cache_flat_for_recurrent_models() -> None:
    rows = decode.measure(
        contexts=(16, 40),
        d_model=32,
        n_layers=4,
        vocab_size=64,
        head_dim=16,
        new_tokens=3,
        prefill_chunk=16,
        device="cpu",
        dtype=torch.bfloat16,
    )
    assert [(r["model"], r["context"]) for r in rows] == [(m, n) for m in decode.MODELS for n in (16, 40)]
    cache = {(r["model"], r["context"]): r["cache_mib"] for r in rows}
    for name in decode.RECURRENT:
        assert cache[name, 16] == cache[name, 40] > 0
    # The KV cache holds every token fed: the prompt and the same number of decoded ones.
    per_token = 2 * 4 * 32 * 2 / 2**20  # k and v, 4 layers, 32 channels, bf16
    assert cache["transformer", 40] - cache["transformer", 16] == 24 * per_token
    for r in rows:
        assert not r["oom"] and r["tokens_per_s"] > 0 and r["prefill_s"] > 0 and r["peak_mib"] is None
    table = decode.format_table(rows)
    assert table.count("tok/s at 40 above the Transformer's") == 3


def test_decode_verdicts() -> None:
    def row(model: str, context: int, tok: float | None, peak: float | None) -> dict:
        oom = tok is None
        return dict(
            model=model, context=context, batch=1, new_tokens=64, dtype="bfloat16",
            prefill_s=None if oom else 1.0, tokens_per_s=tok, cache_mib=None if oom else 1.0,
            peak_mib=peak, oom=oom,
        )  # fmt: skip

    rows = [
        row("mamba", 1024, 500.0, 10.0),
        row("mamba", 65536, 490.0, 10.2),
        row("mom", 1024, 300.0, 10.0),
        row("mom", 65536, 100.0, 20.0),
        row("transformer", 1024, 400.0, 20.0),
        row("transformer", 65536, 200.0, 900.0),
    ]
    table = decode.format_table(rows)
    assert "goal mamba decode peak flat 1024->65536: 10.0 -> 10.2 MiB (+2.0%), met" in table
    assert "goal mamba tok/s at 65536 above the Transformer's: 490.0 vs 200.0, met" in table
    assert "goal mom decode peak flat 1024->65536: 10.0 -> 20.0 MiB (+100.0%), missed" in table
    assert "goal mom tok/s at 65536 above the Transformer's: 100.0 vs 200.0, missed" in table
    rows[-1] = row("transformer", 65536, None, None)
    table = decode.format_table(rows)
    assert "| transformer | 65536 | OOM |" in table
    assert "goal mamba tok/s at 65536 above the Transformer's: Transformer OOM, met" in table


def test_command_line_checks(monkeypatch, capsys) -> None:
    assert positive_int("3") == 3
    for bad in ("0", "-2", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        require_cuda()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: no CUDA device; the benchmarks time GPU kernels\n"


def test_train_step_suite_steps_and_reports() -> None:
    from memlab.bench import train_step
    from memlab.models import LanguageModel
    from memlab.models.layers import MoMAttention

    assert SUITES["train_step"] is train_step.run
    model = LanguageModel(64, 32, 2, lambda **kw: MoMAttention(**kw, num_heads=2, head_dim=16))
    before = [p.detach().clone() for p in model.parameters()]
    train_step.train_step(model, 2, 16)()
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)]
    assert all(changed) and all(p.grad is None for p in model.parameters())
    rows = [
        dict(model="transformer", config="transformer_340m", batch=4, T=2048, checkpointing="none",
             ms=92.4, tokens_per_s=88.7e3, mfu=0.19, peak_gib=16.8, vs_transformer=1.0),
        dict(model="gdn", config="gdn_340m", batch=1, T=32768, checkpointing="none",
             ms=None, tokens_per_s=None, mfu=None, peak_gib=None, vs_transformer=None),
        dict(model="gdn", config="gdn_340m", batch=4, T=2048, checkpointing="none", mode="graph",
             ms=105.8, tokens_per_s=77.4e3, mfu=0.18, peak_gib=15.1, vs_transformer=1.07),
        dict(model="gdn", config="gdn_340m", batch=4, T=2048, checkpointing="none", compiled=True,
             ms=183.4, tokens_per_s=44.7e3, mfu=0.105, peak_gib=14.7, vs_transformer=2.71),
    ]  # fmt: skip
    table = train_step.format_table(rows)
    assert "| transformer_340m | 4 × 2048 | none | eager | 92.4 | 88.7k | 19.0 % | 16.8 | 1.00 |" in table
    assert "| gdn_340m | 1 × 32768 | none | eager | OOM |" in table
    assert "| gdn_340m | 4 × 2048 | none | graph | 105.8 |" in table
    assert "| gdn_340m | 4 × 2048 | none | compiled | 183.4 |" in table  # rows of an older record
    assert train_step.parse_shape("4x2048") == (4, 2048)
    with pytest.raises(argparse.ArgumentTypeError):
        train_step.parse_shape("4x")


def test_lightning_step_runs_train_py_and_reads_its_throughput() -> None:
    # the real scripts/train.py on a generated local corpus (a tiny model, on the CPU)
    from memlab.bench import lightning_step

    assert SUITES["lightning_step"] is lightning_step.run
    tiny = ("model.d_model=32", "model.n_layers=1", "trainer.accelerator=cpu", "trainer.precision=32-true")
    tiny += ("data.vocab_size=260", "data.num_workers=0")
    assert lightning_step.lightning_tokens_per_s("gdn", 2, 16, steps=4, skipped=1, extra=tiny) > 0
    rows = [dict(model="gdn", config="gdn_340m", batch=4, T=2048, optimizer="fused", plain_tokens_per_s=45e3,
                 lightning_tokens_per_s=43.2e3, lightning_vs_plain=0.96)]  # fmt: skip
    assert "| gdn_340m | 4 × 2048 | fused | no | 45.0k | 43.2k | 0.960 |" in lightning_step.format_table(rows)


def test_loglikelihood_suite_scores_packed_requests() -> None:
    from memlab.bench import loglikelihood
    from memlab.models import LanguageModel
    from memlab.models.layers import MoMAttention

    assert SUITES["loglikelihood"] is loglikelihood.run
    net = LanguageModel(64, 32, 1, lambda **kw: MoMAttention(**kw, num_heads=2, head_dim=16)).eval()
    pairs = loglikelihood.requests(6, 64)
    assert all(64 <= len(c) <= 1024 and 1 <= len(t) <= 16 for c, t in pairs)
    assert loglikelihood.scoring_tokens_per_s(net, pairs, batch_size=4) > 0
    rows = [dict(model="gdn", config="gdn_340m", requests=256, batch_size=16, adapter_tokens_per_s=80e3,
                 forward_tokens_per_s=200e3, vs_forward=0.4)]  # fmt: skip
    assert "| gdn_340m | 80.0k | 200.0k | 0.40 |" in loglikelihood.format_table(rows)


def test_decode_speed_floor_counts_the_cache_traffic() -> None:
    from memlab.bench.decode_speed import cache_traffic
    from memlab.models import LanguageModel
    from memlab.models.layers import Attention, Mamba

    def model(mixer) -> LanguageModel:
        return LanguageModel(64, 32, 2, lambda d_model, layer_idx: mixer(d_model, layer_idx))

    mamba = model(lambda d, i: Mamba(d, i, d_state=4, d_conv=4, expand=2))
    # per layer: conv tail [B, 64, 3] bf16 and SSM state [B, 64, 4] fp32, read and written
    assert cache_traffic(mamba, 3, 100) == 2 * 2 * 3 * (64 * 3 * 2 + 64 * 4 * 4)
    attention = model(lambda d, i: Attention(d, i, num_heads=2))
    # per layer: preallocated k and v [B, 2, 100, 16] bf16 read once, and the position
    assert cache_traffic(attention, 3, 100) == 2 * (2 * 3 * 2 * 100 * 16 * 2 + 8)


def test_prefill_rows_compare_with_the_forward() -> None:
    from memlab.bench import prefill
    from memlab.models import LanguageModel
    from memlab.models.layers import Attention, Mamba

    mixers = {
        "mamba": lambda d_model, layer_idx: Mamba(d_model, layer_idx, d_state=4, d_conv=4, expand=2),
        "transformer": lambda d_model, layer_idx: Attention(d_model, layer_idx, num_heads=2),
    }
    rows = prefill.measure(
        tuple(mixers),
        (24, 40),
        chunk=16,
        repeats=1,
        build=lambda n: LanguageModel(64, 32, 2, mixers[n]),
        device="cpu",
    )
    assert [(r["model"], r["T"], r["kind"]) for r in rows] == [
        (m, T, k) for m in mixers for T in (24, 40) for k in prefill.KINDS
    ]
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["peak_gib"] is None
        assert r["chunk"] == (16 if r["kind"] == "chunked" else None)
        assert (r["vs_forward"] == 1.0) == (r["kind"] == "forward")
    assert "| mamba_130m | 40 | prefill, chunks of 16 |" in prefill.format_table(rows)


def test_small_step_builds_the_study_arms_and_times_them() -> None:
    from memlab.bench import small_step

    model, batch, length = small_step.study_model("mom8", 32)
    assert (batch, length) == (128, 256) and len(model.layers) == 2
    assert model.layers[0].mixer.num_memories == 8 and model.layers[0].mixer.head_dim == 32

    rows = small_step.measure(("gdn", "transformer"), head_size=16, steps=5, device="cpu", shape=(2, 32))
    assert [(r["arm"], r["mode"]) for r in rows] == [
        (a, m) for a in ("gdn", "transformer") for m in small_step.MODES
    ]
    eager, graph = rows[0], rows[1]
    assert eager["steps_per_s"] > 0 and eager["ms"] == pytest.approx(1e3 / eager["steps_per_s"])
    # off the GPU the step cannot be captured: the row says so rather than failing the suite
    assert graph["steps_per_s"] is None and "CUDA" in graph["note"]
    assert "| gdn | 16 | 2 × 32 | graph | not capturable | - | - |" in small_step.format_table(rows)
