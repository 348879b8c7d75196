"""The benchmark JSON's stamp and the page generator (scripts/bench_page.py): no GPU needed."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest
import torch

from memlab.bench import page
from memlab.bench.stamp import git_commit, stamp, write_results
from memlab.bench.table import report

ROOT = Path(__file__).resolve().parent.parent


def _bench_page(*argv: str) -> int:
    """Run scripts/bench_page.py's main with these arguments; its exit status."""
    return runpy.run_path(str(ROOT / "scripts" / "bench_page.py"))["main"](list(argv))


def test_stamp_names_gpu_commit_and_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    s = stamp()
    assert s["source"] == "measured" and s["gpu"] == "cpu"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", s["date"])
    assert re.fullmatch(r"[0-9a-f]{12}(-dirty)?|unknown", s["commit"])
    assert s["torch"] == torch.__version__
    assert git_commit(Path("/")) == "unknown"


def test_written_results_load_stamped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = [{"op": "fwd", "T": 64, "ms": 0.5}]
    path = tmp_path / "run.json"
    write_results(str(path), {"gated_delta_rule": rows})
    loaded = page.load(path)
    assert loaded.suites == {"gated_delta_rule": rows} and loaded.stamp["source"] == "measured"
    # A suite run alone writes the same document, under its own name.
    report("layers", rows, "the table", str(path))
    assert capsys.readouterr().out == "the table\n"
    assert page.load(path).suites == {"layers": rows}


def test_page_has_a_stamped_table_per_suite_and_file(tmp_path: Path) -> None:
    measured = {
        "stamp": {"source": "measured", "gpu": "GPU-A", "commit": "abc123", "date": "2026-01-02T03:04:05Z"},
        "suites": {
            "mom": [{"T": 2048, "impl": "mom", "ms": 18.25}, {"T": 2048, "impl": "gdn", "ms": None, "x": 3}],
            "decode": [{"model": "mamba", "tokens_per_s": 2.5e7, "peak": {"a": 0.5, "b": 1200.0}}],
        },
    }
    recorded = {
        "stamp": {
            "source": "recorded",
            "gpu": "GPU-B",
            "commit": "def456",
            "date": "2025-01-01",
            "note": "old",
        },
        "suites": {"mom": [{"T": 8192, "impl": "mom", "ms": 0.0421}]},
        "notes": {"mom": "three memories per token"},
    }
    paths = []
    for name, doc in (("a.json", measured), ("b.json", recorded)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(doc))
    text = page.render([page.load(p) for p in paths], tmp_path)
    assert text.index("## decode") < text.index("## mom")
    mom = text[text.index("## mom") :]
    assert mom.count("**GPU-A** · commit `abc123` · 2026-01-02T03:04:05Z · measured — `a.json`") == 1
    assert "**GPU-B** · commit `def456` · 2025-01-01 · recorded — `b.json`\n\n*old*" in mom
    header = "| T | impl | ms | x |\n|---|---|---|---|\n"
    assert header + "| 2048 | mom | 18.25 |  |\n| 2048 | gdn | - | 3 |" in mom
    assert "| 8192 | mom | 0.042 |\n\nthree memories per token" in mom
    assert "| mamba | 25 M | a 0.500, b 1200 |" in text
    assert "## decode" in text and text.count("GPU-B") == 1


def test_unstamped_and_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"layers": [{"layer": "mamba", "ms": 1.5}]}))
    loaded = page.load(legacy)
    assert loaded.stamp == {} and "**unstamped**" in page.render([loaded])
    bad = tmp_path / "bad.json"
    cases = (("{", "not a readable JSON file"), ('{"suites": {"x": [1]}}', "list of row objects"))
    for content, why in cases:
        bad.write_text(content)
        with pytest.raises(page.PageError, match=why):
            page.load(bad)
    out = tmp_path / "page.md"
    assert _bench_page(str(bad), "--out", str(out)) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not out.exists()
    assert _bench_page(str(legacy), "--out", str(out)) == 0
    assert out.read_text().startswith("# Benchmarks")


def test_committed_page_matches_its_json_files() -> None:
    """docs/benchmarks.md is what scripts/bench_page.py makes of docs/benchmarks/*.json."""
    files = sorted((ROOT / "docs" / "benchmarks").glob("*.json"))
    assert files
    results = [page.load(f) for f in files]
    assert all(r.stamp.get("gpu") and r.stamp.get("commit") and r.stamp.get("date") for r in results)
    expected = page.render(results, ROOT)
    assert (ROOT / "docs" / "benchmarks.md").read_text() == expected, "run python scripts/bench_page.py"
