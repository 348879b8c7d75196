"""memlab checkpoints as an lm-evaluation-harness model: ``lm_eval.simple_evaluate(model="memlab",
model_args="checkpoint=<path to .ckpt>")`` after ``import memlab.eval.lm_eval``.

model_args: ``checkpoint`` (a text run's .ckpt, next to its run's .hydra/config.yaml),
``batch_size`` (requests scored per packed forward pass), ``max_length`` (tokens a request keeps
from its end; default: the run's data.seq_len), ``chunk_size`` (prompts and documents are read
this many tokens at a time with carried state; default: max_length), ``device``, ``amp_dtype``
(bfloat16 | float16 | none; on cuda only).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from torch import nn

from memlab.data.text.tokenizer import TextTokenizer
from memlab.errors import ConfigError
from memlab.eval.chunked import token_nll
from memlab.eval.lm_eval.decoding import generate_until
from memlab.eval.lm_eval.loading import load_text_model, run_config
from memlab.eval.packing import score_packed

log = logging.getLogger(__name__)
_AMP = {"bfloat16": torch.bfloat16, "float16": torch.float16, "none": None, None: None}
DEFAULT_LENGTH = 2048
DEFAULT_GEN_TOKENS = 256


@register_model("memlab")
class MemlabLM(LM):
    """An lm-eval LM over a memlab network and its tokenizer (pass ``checkpoint``, or ``net``
    and ``tokenizer`` already loaded)."""

    def __init__(
        self,
        checkpoint: str | None = None,
        batch_size: int | str = 16,
        max_length: int | None = None,
        chunk_size: int | None = None,
        device: str | None = None,
        amp_dtype: str | None = "bfloat16",
        net: nn.Module | None = None,
        tokenizer: TextTokenizer | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        seq_len = None
        if net is None:
            if checkpoint is None:
                raise ConfigError("model memlab: give model_args checkpoint=<path to .ckpt>")
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            net, tokenizer, seq_len = load_text_model(
                run_config(checkpoint), checkpoint, torch.device(device)
            )
        if str(amp_dtype).lower() not in _AMP and amp_dtype is not None:
            raise ConfigError(f"amp_dtype={amp_dtype}: expected bfloat16, float16 or none")
        self.net, self.tokenizer = net, tokenizer
        self.batch_size = _positive("batch_size", batch_size)
        self.max_length = _positive("max_length", max_length or seq_len or DEFAULT_LENGTH)
        self.chunk_size = _positive("chunk_size", chunk_size or self.max_length)
        param = next(net.parameters())
        amp = _AMP[None if amp_dtype is None else str(amp_dtype).lower()]
        self.amp = amp if param.device.type == "cuda" else None
        if unused.get("max_batch_size") is not None:
            log.info("memlab: max_batch_size is not used (batch_size requests are packed per pass)")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_batch([text])[0].tolist() if text else []

    def _autocast(self) -> torch.autocast:
        device = next(self.net.parameters()).device.type
        return torch.autocast(device, dtype=self.amp, enabled=self.amp is not None)

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of a (context, continuation) request, split as lm-eval's own models split
        them: the context's trailing spaces go with the continuation, the pair is encoded
        whole; an empty context is the end-of-text token; the oldest tokens beyond
        max_length + 1 are dropped (a continuation keeps its last max_length at most)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, ctx = self._encode(context + continuation), self._encode(context)
        cont = whole[len(ctx) :]
        # the last max_length + 1 tokens, at least one of them before the scored ones
        window = [*(ctx or [self.tokenizer.eos_id]), *cont][-(self.max_length + 1) :]
        scored = min(len(cont), self.max_length)
        return window[: len(window) - scored], window[len(window) - scored :]

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is greedy) per request; longest first, batch_size
        requests per packed forward pass."""
        pairs = [self._pair(*r.args) for r in requests]
        order = sorted(range(len(pairs)), key=lambda i: -sum(map(len, pairs[i])))
        out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            scored = [i for i in batch if pairs[i][1]]  # an empty continuation has log p = 0
            with self._autocast():
                results = score_packed(self.net, [pairs[i] for i in scored]) if scored else []
            for i, result in zip(scored, results, strict=True):
                out[i] = result
                self.cache_hook.add_partial("loglikelihood", requests[i].args, result)
        return out

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """log p(text) of whole documents: end-of-text, then the text, read chunk_size tokens at a
        time with carried state (attention keeps its whole KV cache)."""
        device = next(self.net.parameters()).device
        out = []
        for request in requests:
            (text,) = request.args
            ids = torch.tensor([[self.tokenizer.eos_id, *self._encode(text)]], device=device)
            with self._autocast():
                logp = -float(token_nll(self.net, ids, self.chunk_size).sum())
            out.append(logp)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), logp)
        return out

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations; ``until`` stop strings, ``max_gen_toks`` new tokens at most."""
        out = []
        for request in requests:
            context, kwargs = request.args
            until, max_new = _generation_options(kwargs)
            keep = max(self.max_length - max_new, 1)
            prompt = (self._encode(context) or [self.tokenizer.eos_id])[-keep:]
            with self._autocast():
                text = generate_until(
                    self.net,
                    prompt,
                    self.tokenizer.decode,
                    until,
                    max_new,
                    self.tokenizer.eos_id,
                    self.chunk_size,
                )
            out.append(text)
            self.cache_hook.add_partial("generate_until", request.args, text)
        return out


def _generation_options(kwargs: dict[str, Any]) -> tuple[list[str], int]:
    """(stop strings, max new tokens) from a request's generation kwargs; decoding is greedy."""
    kwargs = dict(kwargs or {})
    until = kwargs.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    max_new = int(kwargs.pop("max_gen_toks", DEFAULT_GEN_TOKENS))
    if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0:
        log.warning("memlab: decoding is greedy; do_sample/temperature are ignored")
    return until, max_new


def _positive(key: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or isinstance(value, bool) or (isinstance(value, float) and value != number):
        raise ConfigError(f"lm_eval.{key}: expected an integer >= 1 (got {value!r})")
    return number
