"""TensorBoard as a researcher reads it: a real server over a real (tiny) multirun's logs."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from tensorboard import program

from memlab.lit.callbacks.throughput import peak_flops
from memlab.lit.stat_tags import layer_charts, router_load_matrix, stat_tags
from memlab.models.flops import active_parameters
from memlab.utils.hparams import metric_columns
from memlab.utils.run_names import arm_name, swept_keys

from .cli import tiny_run

ARMS = {"shared_mem=true", "shared_mem=false"}
# beside the arms, the sweep's comparison table and plot (memlab.utils.sweep_tensorboard)
RUNS = ARMS | {"summary"}


def test_swept_keys_come_from_the_sweeper_and_the_command_line() -> None:
    params = {"model.mixer.shared_mem": "true,false", "seed": 0}
    overrides = [
        "experiment=ablate_shared",
        "optimizer.lr=1e-3,3e-3",
        "+extra=range(2)",
        "trainer.max_steps=12",
    ]
    assert swept_keys(params, overrides) == {"model.mixer.shared_mem", "optimizer.lr", "extra"}


def test_arm_names_are_short_keys_and_lower_case_booleans() -> None:
    assert arm_name({"model.mixer.shared_mem": False, "seed": 1}) == "shared_mem=false,seed=1"
    # a last component two keys share stays whole
    assert arm_name({"model.d_model": 64, "data.d_model": 8}) == "model.d_model=64,data.d_model=8"
    assert arm_name({"data.path": "a/b"}) == "path=a_b"


def test_router_load_becomes_a_matrix_and_one_chart_per_layer() -> None:
    load = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    tags = stat_tags([{"router_load": load[0]}, {"router_load": load[1], "pool_fill": torch.tensor(0.5)}])
    torch.testing.assert_close(router_load_matrix(tags), load)
    assert router_load_matrix({"train/loss": 1.0}) is None
    layout = layer_charts(tags)
    assert list(layout) == ["router load", "pool"]
    assert list(layout["router load"]) == ["layer 0", "layer 1"] and list(layout["pool"]) == ["layer 1"]
    (regex,) = layout["router load"]["layer 1"][1]
    assert {t for t in tags if re.match(regex, t)} == {f"router/load/layer1/mem{e}" for e in range(4)}
    assert metric_columns(["perf/mfu", "train/loss", "router/load/layer0/mem0", "test/acc", "val/acc"]) == [
        "val/acc",
        "test/acc",
        "train/loss",
        "perf/mfu",
    ]


def test_mfu_counts_the_matmul_parameters_and_needs_a_known_peak() -> None:
    tied = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    untied = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))
    assert active_parameters(tied) == 40 and active_parameters(untied) == 15
    assert peak_flops(torch.device("cpu")) is None  # no perf/mfu where the peak is unknown


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """TensorBoard on 127.0.0.1 over the sweep folder of `experiment=ablate_shared`, shrunk to two
    arms (seed fixed) of four CPU steps with a validation every two."""
    logs = tmp_path_factory.mktemp("logs")
    sweep = logs / "sweep"
    res = tiny_run(
        "experiment=ablate_shared",
        "hydra.sweeper.params.seed=0",
        f"hydra.sweep.dir={sweep}",
        f"paths.log_dir={logs}",
        "data.val_segments=[{seq_len:32,num_kv_pairs:4,num_examples:32}]",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    tb = program.TensorBoard()
    tb.configure(logdir=str(sweep), host="127.0.0.1", port=0, load_fast="false", reload_interval=1)
    url = tb.launch().rstrip("/")
    deadline = time.monotonic() + 120
    while set(_get(url, "/data/runs")) != RUNS and time.monotonic() < deadline:
        time.sleep(0.5)
    return url, sweep


def _get(url: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url + path, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_runs_are_named_by_their_arm_and_jobs_keep_their_folders(server) -> None:
    url, sweep = server
    assert set(_get(url, "/data/runs")) == RUNS
    for job in ("0", "1"):
        assert (sweep / job / "metrics.json").is_file() and (
            sweep / job / "checkpoints" / "last.ckpt"
        ).is_file()
        assert not (sweep / job / "tensorboard").exists()


def test_hparams_lead_with_the_swept_key_and_hold_the_final_metrics(server) -> None:
    url, _ = server
    experiment = _get(url, "/data/plugin/hparams/experiment", {"experimentName": ""})
    names = [h["name"] for h in experiment["hparamInfos"]]
    assert names[0] == "model.mixer.shared_mem", names
    assert {
        "model",
        "data",
        "model.d_model",
        "optimizer.lr",
        "trainer.max_steps",
        "seed",
        "model/state_size",
    } <= set(names)
    assert len(names) < 15 and "data.num_workers" not in names  # not every flattened key
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics[:2] == ["val/acc", "val/acc_by_pairs/4"] and "test/acc" in metrics
    assert not [m for m in metrics if m.startswith(("router/", "pool/", "final/"))]


def test_time_series_opens_on_perf_without_epoch_or_final_copies(server) -> None:
    url, _ = server
    for run, tags in _get(url, "/data/plugin/scalars/tags").items():
        assert not [t for t in tags if t == "epoch" or t.startswith("final/")], run
        groups = sorted({t.split("/", 1)[0] for t in tags})
        assert groups[0] == "perf", groups
        assert {"train/lr/pg1", "router/load/layer1/mem3"} <= set(tags)


def test_custom_scalars_chart_router_load_per_layer(server) -> None:
    url, _ = server
    layout = _get(url, "/data/plugin/custom_scalars/layout")
    categories = {c["title"]: c["chart"] for c in layout["category"]}
    assert layout["category"][0]["title"] == "perf"
    charts = {c["title"]: c["multiline"]["tag"] for c in categories["router load"]}
    assert list(charts) == ["layer 0", "layer 1"]
    tags = next(iter(_get(url, "/data/plugin/scalars/tags").values()))
    for layer, (regex,) in enumerate(charts.values()):
        assert {t for t in tags if re.match(regex, t)} == {
            f"router/load/layer{layer}/mem{e}" for e in range(4)
        }


def test_router_load_heatmap_is_an_image_every_validation(server) -> None:
    url, _ = server
    images = _get(url, "/data/plugin/images/tags")
    assert set(images) == RUNS
    for run in ARMS:
        assert "router/load_heatmap" in images[run], run
        steps = _get(url, f"/data/plugin/images/images?run={urllib.parse.quote(run)}&tag=router/load_heatmap")
        assert [s["step"] for s in steps] == [2, 4]


def test_the_sweep_summary_is_a_run_of_its_own(server) -> None:
    url, _ = server
    images = _get(url, "/data/plugin/images/tags")["summary"]
    assert set(images) == {"summary/summary", "summary/summary_curves"}
    assert set(_get(url, "/data/plugin/text/tags")["summary"]) == {"summary/table"}
