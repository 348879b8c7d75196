"""The lm-evaluation-harness adapter on tiny local tasks (lm-eval YAMLs over local JSON files,
nothing downloaded): scores equal the model's own cross-entropy, packing changes nothing,
generation honours stop strings, and scripts/eval.py writes and reports the results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

pytest.importorskip("lm_eval")
pytest.importorskip("datasets")

from lm_eval.api.instance import Instance

import memlab.eval.lm_eval  # noqa: F401  (registers the `memlab` model)
from memlab.data.text.tokenizer import ByteTokenizer
from memlab.eval.chunked import token_nll
from memlab.eval.lm_eval.model import MemlabLM
from memlab.evaluate import evaluate
from tests.eval.text_run import train_text_run

from ..cli import error_line, run_cli, run_cli_all
from ..conftest import compose_config
from ..data.text_corpus import documents, write_jsonl

TEXTS = ["The sky is blue.", "A", "Grass is green and the sun is yellow today.", "xyz", "Here we go again."]


def tiny_net(model: str) -> torch.nn.Module:
    cfg = compose_config(
        ["data=text_files", f"model={model}", "model.d_model=32", "model.n_layers=2"], Path("/tmp/unused")
    )
    torch.manual_seed(0)
    return instantiate(cfg.model, _convert_="all").eval()


def adapter(net: torch.nn.Module, batch_size: int = 8) -> MemlabLM:
    return MemlabLM(net=net, tokenizer=ByteTokenizer(), batch_size=batch_size, max_length=512, amp_dtype=None)


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@pytest.mark.parametrize("model", ["mom", "gdn", "transformer"])
def test_loglikelihood_is_the_models_cross_entropy(model: str) -> None:
    net = tiny_net(model)
    lm = adapter(net)
    pairs = [(t[: len(t) // 3], t[len(t) // 3 :]) for t in TEXTS if len(t) > 3]
    got = lm.loglikelihood([request("loglikelihood", c, x) for c, x in pairs])
    for (context, continuation), (logp, _) in zip(pairs, got, strict=True):
        ids = torch.tensor([list((context + continuation).encode())])
        # as in lm-eval's own models, a context's trailing spaces are scored with the continuation
        expected = -token_nll(net, ids)[0, len(context.rstrip()) - 1 :].sum()
        torch.testing.assert_close(torch.tensor(logp), expected, rtol=1e-4, atol=1e-4)
    # an empty context is the end-of-text token
    ((logp, _),) = lm.loglikelihood([request("loglikelihood", "", "abc")])
    ids = torch.tensor([[ByteTokenizer.eos_id, *b"abc"]])
    torch.testing.assert_close(torch.tensor(logp), -token_nll(net, ids)[0].sum(), rtol=1e-4, atol=1e-4)
    # rolling: the whole text after end-of-text, read in chunks with carried state
    (rolling,) = adapter(net).loglikelihood_rolling([request("loglikelihood_rolling", TEXTS[2])])
    ids = torch.tensor([[ByteTokenizer.eos_id, *TEXTS[2].encode()]])
    torch.testing.assert_close(torch.tensor(rolling), -token_nll(net, ids)[0].sum(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", ["mom", "mamba", "transformer"])
def test_packed_requests_score_as_one_by_one(model: str) -> None:
    net = tiny_net(model)
    requests = [request("loglikelihood", t[:2], t[2:] or "!") for t in TEXTS] + [
        request("loglikelihood", "The sky is", " green."),
    ]
    packed = adapter(net, batch_size=len(requests)).loglikelihood(requests)
    alone = adapter(net, batch_size=1).loglikelihood(requests)
    torch.testing.assert_close(torch.tensor([p for p, _ in packed]), torch.tensor([p for p, _ in alone]))
    assert [g for _, g in packed] == [g for _, g in alone]


def test_long_requests_keep_their_last_max_length_tokens() -> None:
    net = tiny_net("gdn")
    lm = MemlabLM(net=net, tokenizer=ByteTokenizer(), batch_size=4, max_length=8, amp_dtype=None)
    text = TEXTS[2]
    window = torch.tensor([list(text.encode())[-9:]])
    for split in (31, 2):  # the context cut, then the continuation too
        ((logp, _),) = lm.loglikelihood([request("loglikelihood", text[:split], text[split:])])
        scored = min(len(text) - split, 8)
        expected = -token_nll(net, window)[0, -scored:].sum()
        torch.testing.assert_close(torch.tensor(logp), expected, rtol=1e-4, atol=1e-4)


def test_generate_until_stops_at_stop_strings_and_max_tokens() -> None:
    net = tiny_net("mom")
    lm = adapter(net)
    prompt = "The pass key is"
    (free,) = lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 12})])
    # the decoding caches give the same greedy tokens as the model's own generate
    ids = net.generate(torch.tensor([list(prompt.encode())]), 12)[0, len(prompt) :].tolist()
    assert free == ByteTokenizer().decode([i for i in ids if i != ByteTokenizer.eos_id][: len(free)])
    (short,) = lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 3})])
    assert free.startswith(short) and len(short) <= 3  # a byte decodes to one character at most
    # an untrained model's bytes: stop at one that is a whole character, past the first two
    stop = next(ch for ch in free[2:] if ch != "\ufffd")
    (cut,) = lm.generate_until(
        [request("generate_until", prompt, {"until": ["\n", stop], "max_gen_toks": 12})]
    )
    assert cut == free[: free.find(stop)]


# --- the harness over a trained checkpoint and local task files ------------------------------


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """A MoM trained for 2 steps on local text files, with its run config: its last.ckpt."""
    root = tmp_path_factory.mktemp("lm_eval_run")
    files = str(write_jsonl(root / "a.jsonl", documents(40)))
    return train_text_run(root, [files], "mom", 64, "data.val_documents=4")


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory) -> Path:
    """Three tasks in lm-eval's YAML format over local JSON files, one per request type, and a
    group of them."""
    root = tmp_path_factory.mktemp("tasks")
    docs = {
        "choice": [{"q": "The sky is", "choices": [" blue.", " green."], "label": 0}] * 3,
        "answer": [{"q": "Colour of the sky:", "a": "blue"}] * 2,
        "text": [{"text": "The grass is green. The sky is blue."}] * 2,
    }
    for name, rows in docs.items():
        (root / f"{name}.json").write_text(json.dumps(rows))
    common = "dataset_path: json\nvalidation_split: validation\n"
    files = lambda name: f"dataset_kwargs:\n  data_files:\n    validation: {root / name}.json\n"  # noqa: E731
    (root / "tiny_choice.yaml").write_text(
        f"task: tiny_choice\n{common}{files('choice')}output_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )
    (root / "tiny_answer.yaml").write_text(
        f"task: tiny_answer\n{common}{files('answer')}output_type: generate_until\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    (root / "tiny_text.yaml").write_text(
        f"task: tiny_text\n{common}{files('text')}output_type: loglikelihood_rolling\n"
        "doc_to_text: ''\ndoc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n"
        "  - metric: bits_per_byte\n"
    )
    (root / "tiny_suite.yaml").write_text("group: tiny_suite\ntask: [tiny_choice, tiny_answer, tiny_text]\n")
    return root


@pytest.fixture(autouse=True)
def offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_simple_evaluate_with_a_checkpoint(text_run: Path, local_tasks: Path) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="memlab",
        model_args=f"checkpoint={text_run},batch_size=4,amp_dtype=none",
        tasks=["tiny_choice", "tiny_text"],
        task_manager=TaskManager(include_path=str(local_tasks)),
        log_samples=False,
    )
    assert 0.0 <= results["results"]["tiny_choice"]["acc,none"] <= 1.0
    assert results["results"]["tiny_text"]["bits_per_byte,none"] > 0


def test_eval_script_task_writes_json_table_and_events(text_run: Path, local_tasks: Path, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "e"
    cfg = compose_config(
        [
            f"ckpt_path={text_run}",
            "task=lm_eval",
            "lm_eval.tasks=[tiny_suite]",
            f"lm_eval.include_path={local_tasks}",
            "lm_eval.limit=2",
            "lm_eval.batch_size=3",
            "extras.print_config=false",
        ],
        out,
        config_name="eval",
    )
    metrics = evaluate(cfg)
    assert {
        "lm_eval/tiny_choice/acc",
        "lm_eval/tiny_answer/exact_match",
        "lm_eval/tiny_text/bits_per_byte",
    } <= set(metrics)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert json.loads((out / "lm_eval.json").read_text())["results"]["tiny_choice"]["alias"]
    assert "tiny_answer" in (out / "lm_eval.md").read_text()
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert "lm_eval/tiny_choice/acc" in events.Tags()["scalars"]


def test_the_suites_resolve_to_tasks_with_the_papers_protocol() -> None:
    from lm_eval.tasks._yaml_loader import load_yaml

    from memlab.eval.lm_eval.task import task_manager

    manager = task_manager(None)
    for suite in ("recall", "commonsense"):
        config = load_yaml(manager.task_index[suite].yaml_path)
        assert config["task"] and all(name in manager.all_tasks for name in config["task"]), suite
    for name in ("based_nq", "based_triviaqa", "based_drop"):
        config = load_yaml(manager.task_index[name].yaml_path)
        assert config["dataset_path"].startswith("hazyresearch/based_") and config["num_fewshot"] == 0
        assert config["generation_kwargs"] == {"until": ["\n"], "max_gen_toks": 48, "do_sample": False}
        doc = {
            "context": "[PAR] Paris is in France. Where is Paris?",
            "question": "Where is Paris?",
            "answers": ["FRANCE"],
        }
        assert config["doc_to_text"](doc) == "Paris is in France. Where is Paris?"
        assert config["process_results"](doc, ["it is in France\n"]) == {"contains": 1.0}


# --- mistakes end in one `error:` line --------------------------------------------------------


def test_unknown_task_and_missing_checkpoint_are_one_line(text_run: Path, tmp_path) -> None:
    runs = {
        "task": (f"ckpt_path={text_run}", "task=lm_eval", "lm_eval.tasks=[no_such_task]"),
        "ckpt": (f"ckpt_path={tmp_path / 'none.ckpt'}", "task=lm_eval"),
    }
    runs = {name: (*args, f"paths.log_dir={tmp_path / name}") for name, args in runs.items()}
    res = run_cli_all(runs, script="eval.py")
    assert res["task"].returncode != 0 and "unknown task no_such_task" in error_line(res["task"])
    assert res["ckpt"].returncode != 0 and "none.ckpt" in error_line(res["ckpt"])


def test_lm_eval_not_installed_is_one_line(text_run: Path, tmp_path, monkeypatch) -> None:
    # a package of that name that fails to import stands for the missing one
    (tmp_path / "lm_eval").mkdir()
    (tmp_path / "lm_eval" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'lm_eval'\")\n"
    )
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    )
    res = run_cli(f"ckpt_path={text_run}", "task=lm_eval", f"paths.log_dir={tmp_path}", script="eval.py")
    assert res.returncode != 0 and "pip install 'memlab[eval]'" in error_line(res)
