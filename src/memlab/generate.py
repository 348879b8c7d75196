"""Text generation behind ``scripts/generate.py``: a trained checkpoint and prompts in, their
continuations out (streamed for a single prompt), with prefill and decode tokens/s."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from memlab.data.text.tokenizer import TextTokenizer, load_tokenizer
from memlab.errors import ConfigError
from memlab.models.captured_step import NotCapturable
from memlab.models.layers import Attention
from memlab.models.sampling import SamplingConfig
from memlab.utils.trained_run import AMP_DTYPES, load_network, torch_device, trained_run, whole_number

_TEXT_DATA = "memlab.data.text.TextDataModule"


@dataclass
class Timing:
    """Tokens read (prompts) and written (new tokens), and the seconds each took."""

    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0

    def line(self) -> str:
        def rate(n: int, s: float) -> str:
            return f"{n} tokens in {s:.3f} s ({n / s if s > 0 else float('inf'):,.1f} tokens/s)"

        prefill, decode = rate(self.prefill_tokens, self.prefill_s), rate(self.decode_tokens, self.decode_s)
        return f"prefill: {prefill}; decode: {decode}"


@dataclass(frozen=True)
class Options:
    """What scripts/generate.py does, checked before the checkpoint is opened."""

    prompts: list[str]
    sampling: SamplingConfig
    max_new_tokens: int
    prefill_chunk: int | None
    seed: int
    device: torch.device
    amp: torch.dtype | None
    cuda_graph: bool | None  # None: where the device and the model allow
    compile: bool  # torch.compile the network's blocks before decoding

    @classmethod
    def of(cls, cfg: DictConfig) -> Options:
        if cfg.get("amp_dtype") not in AMP_DTYPES:
            raise ConfigError(f"amp_dtype={cfg.get('amp_dtype')}: expected bfloat16, float16 or null")
        device = torch_device(cfg.get("device", "auto"))
        graph = cfg.get("cuda_graph", "auto")
        if graph not in ("auto", True, False):
            raise ConfigError(f"cuda_graph={graph}: expected auto, true or false")
        if graph is True and device.type != "cuda":
            raise ConfigError(f"cuda_graph=true needs a CUDA device (device={device})")
        if not isinstance(cfg.get("compile", False), bool):
            raise ConfigError(f"compile={cfg.get('compile')}: expected true or false")
        return cls(
            prompts=_prompts(cfg),
            sampling=SamplingConfig.build(OmegaConf.to_container(cfg.sampling, resolve=True)),
            max_new_tokens=whole_number("max_new_tokens", cfg.max_new_tokens, minimum=0),
            prefill_chunk=whole_number("prefill_chunk", cfg.prefill_chunk, optional=True),
            seed=whole_number("seed", cfg.seed, minimum=0),
            device=device,
            amp=AMP_DTYPES[cfg.get("amp_dtype")] if device.type == "cuda" else None,
            cuda_graph=None if graph == "auto" else graph,
            compile=cfg.get("compile", False),
        )


def generate(cfg: DictConfig) -> list[str]:
    """Continue ``cfg.prompt`` (a string or a list) or the lines of ``cfg.prompt_file`` with the
    network of ``cfg.ckpt_path`` -> the continuations, in the prompts' order."""
    opts = Options.of(cfg)
    ckpt_path, run_cfg = trained_run(cfg)
    tokenizer = _tokenizer(cfg.get("tokenizer"), run_cfg)
    ids = [[int(t) for t in row] for row in tokenizer.encode_batch(opts.prompts)]
    _check_lengths(ids, opts.prompts, run_cfg, opts.max_new_tokens)
    net = load_network(run_cfg, ckpt_path, opts.device)
    if tokenizer.vocab_size > net.vocab_size:
        raise ConfigError(
            f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens, more than the model's "
            f"vocabulary ({net.vocab_size})"
        )
    if opts.compile:
        net.compile_blocks()
    generator = torch.Generator(opts.device).manual_seed(opts.seed)
    timing = Timing()
    stream = _Streamer(tokenizer) if len(opts.prompts) == 1 else None
    if stream is not None:
        print(opts.prompts[0], end="", flush=True)
    outputs: dict[int, list[int]] = {}
    with torch.autocast(opts.device.type, dtype=opts.amp) if opts.amp else contextlib.nullcontext():
        # prompts of one length form one batch: the models take no padding
        for length in sorted({len(row) for row in ids}):
            group = [i for i, row in enumerate(ids) if len(row) == length]
            batch = torch.tensor([ids[i] for i in group], dtype=torch.long, device=opts.device)
            new = _decode(net, batch, opts, generator, tokenizer.eos_id, timing, stream)
            outputs.update(zip(group, new, strict=True))
    texts = [tokenizer.decode(outputs[i]) for i in range(len(opts.prompts))]
    if stream is None:
        for prompt, text in zip(opts.prompts, texts, strict=True):
            print(f"{prompt}{text}\n", flush=True)
    else:
        stream.show(texts[0])
        print(flush=True)
    print(timing.line(), file=sys.stderr, flush=True)
    return texts


def _decode(
    net: torch.nn.Module,
    batch: torch.Tensor,
    opts: Options,
    generator: torch.Generator,
    eos_id: int,
    timing: Timing,
    on_token: Callable[[list[int]], None] | None,
) -> list[list[int]]:
    """New token ids of each prompt of batch int64 [B, T], each cut before its end-of-text token;
    decoding stops once every row has ended. ``on_token`` sees row 0's ids after each token."""
    sync = torch.cuda.synchronize if batch.is_cuda else lambda: None
    graph = batch.is_cuda if opts.cuda_graph is None else opts.cuda_graph
    start = time.perf_counter()
    try:
        steps = _stream(net, batch, opts, generator, graph)
    except NotCapturable as err:
        if opts.cuda_graph:
            raise ConfigError(f"cuda_graph=true: {err}") from None
        print(f"note: decoding eagerly: {err}", file=sys.stderr)
        start = time.perf_counter()
        steps = _stream(net, batch, opts, generator, False)
    sync()
    prefilled = time.perf_counter()
    timing.prefill_tokens += batch.numel()
    timing.prefill_s += prefilled - start
    new: list[list[int]] = [[] for _ in range(batch.shape[0])]
    ended = [False] * batch.shape[0]
    for token in steps:
        for row, t in enumerate(token[:, 0].tolist()):
            ended[row] = ended[row] or t == eos_id
            if not ended[row]:
                new[row].append(t)
        timing.decode_tokens += batch.shape[0]
        if on_token is not None:
            on_token(new[0])
        if all(ended):
            break
    timing.decode_s += time.perf_counter() - prefilled
    return new


def _stream(
    net: torch.nn.Module, batch: torch.Tensor, opts: Options, generator: torch.Generator, graph: bool
) -> Iterator[torch.Tensor]:
    """``net.stream`` past the prompt (which is where a CUDA graph is captured)."""
    steps = net.stream(
        batch,
        opts.max_new_tokens,
        generator=generator,
        prefill_chunk=opts.prefill_chunk,
        cuda_graph=graph,
        **opts.sampling.to_dict(),
    )
    next(steps)
    return steps


class _Streamer:
    """Prints the text of the growing ids of one sequence as it grows; a character split between
    tokens (or bytes that are not yet valid UTF-8) is held back until it is whole or at the end."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer, self.shown = tokenizer, ""

    def __call__(self, ids: list[int]) -> None:
        text = self.tokenizer.decode(ids)
        if text.startswith(self.shown) and not text.endswith("\ufffd"):
            self.show(text)

    def show(self, text: str) -> None:
        """Print what ``text`` adds to the text shown so far (all of it if it differs)."""
        new = text[len(self.shown) :] if text.startswith(self.shown) else "\n" + text
        print(new, end="", flush=True)
        self.shown = text


def _prompts(cfg: DictConfig) -> list[str]:
    """The prompts of ``prompt`` (a string or a list) or ``prompt_file`` (one per line)."""
    prompt, file = cfg.get("prompt"), cfg.get("prompt_file")
    if (prompt is None) == (file is None):
        raise ConfigError('give one of prompt="..." or prompt_file=<path> (one prompt per line)')
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"prompt_file={file}: no such file")
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    else:
        prompts = list(prompt) if isinstance(prompt, ListConfig | list) else [prompt]
        # what Hydra reads as a number or a boolean was meant as text: prompt=1234
        prompts = [str(p) if isinstance(p, int | float) else p for p in prompts]
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ConfigError(f"prompt: expected one or more non-empty strings (got {prompts!r})")
    return prompts


def _tokenizer(spec: str | None, run_cfg: DictConfig) -> TextTokenizer:
    """The ``tokenizer=`` override, else the training run's own."""
    if spec is not None:
        try:
            return load_tokenizer(str(spec))
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("data.tokenizer=", "tokenizer=", 1)) from exc
    if run_cfg.data.get("_target_") != _TEXT_DATA:
        raise ConfigError(
            f"the run trained on {run_cfg.data.get('_target_')}, not on text: name a tokenizer "
            "with tokenizer=bytes|<tokenizer.json>|<Hub name>"
        )
    return instantiate(run_cfg.data, _convert_="all").tokenizer


def _check_lengths(
    ids: Sequence[Sequence[int]], prompts: Sequence[str], run_cfg: DictConfig, max_new: int
) -> None:
    """A Transformer cannot read past the context it was trained on (its positions beyond are
    untrained); the recurrent mixers carry a state and have no such limit."""
    mixer = str(run_cfg.model.get("mixer", {}).get("_target_", ""))
    context = run_cfg.data.get("seq_len")
    if mixer.rsplit(".", 1)[-1] != Attention.__name__ or context is None:
        return
    for prompt, row in zip(prompts, ids, strict=True):
        if len(row) > context:
            raise ConfigError(
                f"prompt {prompt[:30]!r}... is {len(row)} tokens, longer than the Transformer's "
                f"trained context (data.seq_len={context})"
            )
    if max(len(row) for row in ids) + max_new > context:
        print(
            f"warning: prompt + max_new_tokens={max_new} runs past the Transformer's trained context "
            f"(data.seq_len={context}); the tokens beyond it are at untrained positions",
            file=sys.stderr,
        )
