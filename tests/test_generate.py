"""scripts/generate.py on a short text run: streamed and batched continuations equal the model's
own greedy decoding, sampling is seeded, and bad inputs are one ``error:`` line with exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("datasets")

from memlab.data.text.tokenizer import ByteTokenizer
from memlab.errors import ConfigError
from memlab.generate import generate
from memlab.utils.trained_run import load_network
from tests.eval.text_run import train_text_run

from .cli import error_line, run_cli, run_cli_all
from .conftest import compose_config
from .data.text_corpus import documents, write_jsonl, write_parquet

SEQ_LEN = 32


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """A Transformer trained for 2 steps on bytes of local files: its last.ckpt."""
    root = tmp_path_factory.mktemp("generate_run")
    docs = documents(80)
    files = [str(write_parquet(root / "a.parquet", docs[:50])), str(write_jsonl(root / "b.jsonl", docs[50:]))]
    return train_text_run(root, files, "transformer", SEQ_LEN)


def run_generate(ckpt: Path | str, tmp_path: Path, *overrides: str) -> list[str]:
    cfg = compose_config(
        [f"ckpt_path={ckpt}", "device=cpu", "max_new_tokens=8", *overrides], tmp_path / "out", "generate"
    )
    return generate(cfg)


def greedy(ckpt: Path, prompt: str, new_tokens: int = 8) -> str:
    """The network's own greedy continuation of ``prompt`` (bytes), cut at end-of-text."""
    run_cfg = OmegaConf.load(ckpt.parent.parent / ".hydra" / "config.yaml")
    run_cfg.model = OmegaConf.to_container(run_cfg.model, resolve=True)
    net = load_network(run_cfg, str(ckpt), torch.device("cpu"))
    ids = torch.tensor([list(prompt.encode())])
    new = net.generate(ids, new_tokens)[0, ids.shape[1] :].tolist()
    tok = ByteTokenizer()
    return tok.decode(new[: new.index(tok.eos_id)] if tok.eos_id in new else new)


def test_one_prompt_is_streamed_and_equals_greedy_decoding(text_run, tmp_path: Path, capsys) -> None:
    (text,) = run_generate(text_run, tmp_path, "prompt='<d0001>ab'")
    assert text == greedy(text_run, "<d0001>ab")
    out, err = capsys.readouterr()
    assert out == f"<d0001>ab{text}\n"
    assert err.startswith("prefill: 9 tokens in ") and "; decode: " in err and "tokens/s" in err
    (chunked,) = run_generate(text_run, tmp_path, "prompt='<d0001>ab'", "prefill_chunk=2")
    assert chunked == text


def test_a_batch_of_unequal_prompts_keeps_its_order(text_run, tmp_path: Path, capsys) -> None:
    prompts = ["<d0002>", "<d0003>xyz", "<d0004>"]
    file = tmp_path / "prompts.txt"
    file.write_text("\n".join(prompts) + "\n\n")
    texts = run_generate(text_run, tmp_path, f"prompt_file={file}")
    assert texts == [greedy(text_run, p) for p in prompts]
    out, _ = capsys.readouterr()
    assert out == "".join(f"{p}{t}\n\n" for p, t in zip(prompts, texts, strict=True))


def test_ckpt_path_last_and_a_number_as_prompt(text_run, tmp_path: Path, capsys) -> None:
    """``last`` finds the newest training run's last.ckpt under paths.log_dir; prompt=1234 is text."""
    runs = tmp_path / "train" / "runs" / "text"
    runs.mkdir(parents=True)
    (runs / "2026-01-01_00-00-00").symlink_to(text_run.parent.parent, target_is_directory=True)
    (text,) = run_generate("last", tmp_path, "prompt=1234")
    assert text == greedy(text_run, "1234")
    assert capsys.readouterr().out.startswith("1234")


def test_compiled_blocks_decode_as_eager_ones(text_run, tmp_path: Path, fresh_compiler: dict) -> None:
    prompts = "prompt=['<d0001>ab','<d0002>xy']"
    eager = run_generate(text_run, tmp_path, prompts)
    assert fresh_compiler["stats"]["unique_graphs"] == 0
    assert run_generate(text_run, tmp_path, prompts, "compile=true") == eager
    assert fresh_compiler["stats"]["unique_graphs"] > 0


def test_sampling_is_seeded(text_run, tmp_path: Path) -> None:
    sampled = ["prompt=abc", "sampling.temperature=1.5", "sampling.top_k=50", "sampling.top_p=0.95"]
    a = run_generate(text_run, tmp_path, *sampled, "seed=1")
    assert run_generate(text_run, tmp_path, *sampled, "seed=1") == a
    assert run_generate(text_run, tmp_path, *sampled, "seed=2") != a


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["prompt=" + "x" * (SEQ_LEN + 1)], "33 tokens, longer than the Transformer's trained context"),
        (["prompt=a", "prompt_file=p.txt"], "give one of prompt="),
        (["prompt=a", "tokenizer=/no/such/tokenizer.json"], "tokenizer=/no/such/tokenizer.json: no such"),
        (["prompt=a", "sampling.top_p=1.5"], "sampling.top_p must be <= 1 (got 1.5)"),
        (["prompt=a", "sampling.temperature=-1"], "sampling.temperature must be >= 0"),
        (["prompt=a", "max_new_tokens=-1"], "max_new_tokens: expected an integer >= 0"),
        (["prompt=a", "compile=yes"], "compile=yes: expected true or false"),
    ],
)
def test_bad_inputs_are_config_errors(text_run, tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match="^.*" + message.replace("(", r"\(").replace(")", r"\)")):
        run_generate(text_run, tmp_path, *overrides)


def test_cli_streams_and_reports_tokens_per_second(text_run, tmp_path: Path) -> None:
    args = [
        f"ckpt_path={text_run}",
        "prompt=abc",
        "max_new_tokens=4",
        "device=cpu",
        f"paths.log_dir={tmp_path}",
    ]
    res = run_cli(*args, script="generate.py")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("abc") and "tokens/s" in res.stderr


BAD_INPUTS = [
    (["ckpt_path=/no/such.ckpt", "prompt=a"], "error: ckpt_path=/no/such.ckpt: no such file"),
    (["prompt=" + "x" * (SEQ_LEN + 1)], "longer than the Transformer's trained context (data.seq_len=32)"),
    (["prompt=a", "tokenizer=./nowhere"], "error: tokenizer=./nowhere: no such file or folder"),
    (["prompt=a", "sampling.top_k=0"], "error: sampling.top_k must be >= 1 (got 0)"),
]


@pytest.fixture(scope="module")
def bad_input_runs(text_run, tmp_path_factory) -> dict:
    """scripts/generate.py with each of BAD_INPUTS, all started at once."""
    log_dir = tmp_path_factory.mktemp("generate_bad_inputs")
    runs = {}
    for i, (args, _) in enumerate(BAD_INPUTS):
        ckpt = [] if any(a.startswith("ckpt_path=") for a in args) else [f"ckpt_path={text_run}"]
        runs[args[-1]] = (*ckpt, *args, "device=cpu", f"paths.log_dir={log_dir / str(i)}")
    return run_cli_all(runs, script="generate.py")


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_cli_bad_inputs_are_one_error_line_and_exit_2(bad_input_runs, args: list[str], message: str) -> None:
    res = bad_input_runs[args[-1]]
    assert res.returncode == 2, res.stderr[-3000:]
    assert message in error_line(res)
