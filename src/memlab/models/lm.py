"""A causal language model: embeddings, a stack of (mixer + optional SwiGLU) blocks, RMSNorm, LM head."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from memlab.errors import ConfigError
from memlab.models.block import Block
from memlab.models.captured_step import CapturedStep
from memlab.models.chunked import prefill
from memlab.models.modules.autocast_input import autocast_dtype
from memlab.models.modules.linear_cross_entropy import linear_cross_entropy
from memlab.models.sampling import SamplingConfig, sample

# Captured decoding steps are shared by all lengths up to a multiple of this (attention's
# preallocated cache is that long).
GRAPH_LENGTH_BUCKET = 256


@dataclass
class LMOutput:
    """logits: [B, T, vocab_size] (model dtype), None when the model computed the loss itself;
    aux_losses summed over layers; stats: each layer's mixer statistics (MixerOutput.stats),
    one dict per layer; loss (fp32 scalar) and correct (bool [N]): the mean cross-entropy and
    the argmax hits against the ``targets`` given to ``forward``."""

    logits: torch.Tensor | None
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: list[dict[str, torch.Tensor]] = field(default_factory=list)
    loss: torch.Tensor | None = None
    correct: torch.Tensor | None = None


class LanguageModel(nn.Module):
    """Decoder-only LM whose layers differ only in their token mixer.

    Args:
        vocab_size: number of token ids.
        d_model: residual width.
        n_layers: number of blocks.
        mixer: factory called as ``mixer(d_model=d_model, layer_idx=i)`` (a Hydra partial).
        mlp_ratio: SwiGLU hidden width = int(mlp_ratio · d_model); 0 for blocks without an MLP.
        tie_embeddings: share the input embedding with the LM head.
        norm_eps: RMSNorm epsilon.
        activation_checkpointing: "none", "every_block", or n: every n-th block (1, n + 1, ...)
            keeps only its input for the backward pass and runs its forward again there.
        init_from: a checkpoint folder or Hugging Face Hub name whose weights the model starts
            from (``memlab.interop``: transformers', flash-linear-attention's or memlab's format).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        mixer: Callable[..., nn.Module],
        mlp_ratio: float = 4.0,
        tie_embeddings: bool = True,
        norm_eps: float = 1e-5,
        activation_checkpointing: str | int = "none",
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.recomputed = _recomputed_blocks(activation_checkpointing, n_layers)
        for key, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers)):
            if int(value) < 1:
                raise ConfigError(f"model.{key} must be >= 1 (got {value})")
        if mlp_ratio < 0:
            raise ConfigError(f"model.mlp_ratio must be >= 0, 0 for no MLP (got {mlp_ratio})")
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            Block(d_model, mixer(d_model=d_model, layer_idx=i), mlp_ratio, norm_eps) for i in range(n_layers)
        )
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        # Small embeddings keep initial logits O(1) whether or not the head is tied.
        nn.init.normal_(self.embed.weight, std=0.02)
        if tie_embeddings:
            self.lm_head.weight = self.embed.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        if init_from is not None:
            from memlab.interop import load_pretrained  # reads safetensors: an optional dependency

            load_pretrained(self, init_from)

    def compile_blocks(self, **options: Any) -> None:
        """``torch.compile`` each block in place (``options`` go to it): the code between the
        kernels (projections, gates, norms, residuals, the MLP) is fused, while every memlab
        kernel op stays one call (a custom op inside the graph, or a graph break: see
        kernels/backend.py). The blocks share their code, so one compilation serves them all;
        parameter names, and so checkpoints, are unchanged."""
        for layer in self.layers:
            layer.compile(**options)

    def init_states(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, max_len: int | None = None
    ) -> list[Any]:
        """One empty decoding cache per layer; with ``max_len`` (tokens in all) every cache has a
        fixed size, attention's preallocated, as CUDA-graph decoding needs."""
        return [layer.mixer.init_state(batch_size, device, dtype, max_len=max_len) for layer in self.layers]

    def state_size(self, context_length: int) -> int:
        """Elements per sequence of the recurrent states of all layers after ``context_length``
        tokens (the mixers' ``state_size``; attention's KV cache grows with the length)."""
        return sum(layer.mixer.state_size(context_length) for layer in self.layers)

    def schedule_step(self, states: list[Any], position: int) -> None:
        """Tell the mixers whose decoding step skips what the host can foresee (MemMamba: the
        note pool, except where the token ends a chunk) that the next token has ``position``
        tokens before it, in every sequence of the batch."""
        for layer, state in zip(self.layers, states, strict=True):
            schedule = getattr(layer.mixer, "schedule_step", None)
            if schedule is not None:
                schedule(state, position)

    @property
    def step_period(self) -> int:
        """Positions after which every mixer's ``schedule_step`` choice repeats (1: none makes one)."""
        return math.lcm(*(getattr(layer.mixer, "step_period", 1) for layer in self.layers))

    def forward(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        states: list[Any] | None = None,
        logits_mask: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> LMOutput:
        """input_ids: int64 [B, T]; cu_seqlens: int [N+1] for packed documents (B == 1);
        states: per-layer caches from ``init_states``, continued and updated in place;
        logits_mask: bool [B, T] — if given, logits are computed only there, as [N_selected, V]
        (the LM head dominates the cost of tasks with few labelled positions, such as MQAR);
        targets: int64 [N_selected] — if given, the loss against them is computed chunk by
        chunk instead of the logits (``linear_cross_entropy``: the [N, V] logits never exist
        whole, the largest activation of a long-context step)."""
        h = self.embed(input_ids)
        aux: dict[str, torch.Tensor] = {}
        stats: list[dict[str, torch.Tensor]] = []
        # What each layer offers the layers above it in this pass (MixerOutput.memory); only
        # mixers that declare ``reads_layer_memory`` are handed the list.
        memories: list[Any] = []
        for i, layer in enumerate(self.layers):
            # a copy: a block recomputed in the backward pass must see the layers below it only
            reads = getattr(layer.mixer, "reads_layer_memory", False)
            extra = {"layer_memory": list(memories)} if reads else {}
            if i in self.recomputed and states is None and torch.is_grad_enabled():
                # no random numbers are drawn in a forward, so no RNG state to restore (which a
                # training step captured in a CUDA graph could not read)
                out = checkpoint(
                    layer, h, cu_seqlens=cu_seqlens, use_reentrant=False, preserve_rng_state=False, **extra
                )
            else:
                out = layer(h, state=None if states is None else states[i], cu_seqlens=cu_seqlens, **extra)
            memories.append(out.memory)
            h = out.hidden
            for name, value in out.aux_losses.items():
                aux[name] = aux[name] + value if name in aux else value
            stats.append(out.stats)
        if logits_mask is not None:
            h = h[logits_mask]
        if targets is None:
            return LMOutput(self.lm_head(self.norm(h)), aux, stats)
        h = self.norm(h).flatten(0, -2)
        loss, correct = linear_cross_entropy(h, self.lm_head.weight, targets.flatten(), return_correct=True)
        return LMOutput(None, aux, stats, loss, correct)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, max_new_tokens: int, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Continue prompts input_ids [B, T] by ``max_new_tokens`` tokens -> int64 [B, T + new]:
        ``stream``'s pieces (the same further arguments) joined along time."""
        return torch.cat(list(self.stream(input_ids, max_new_tokens, *args, **kwargs)), dim=1)

    @torch.no_grad()
    def stream(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        top_p: float | None = None,
        prefill_chunk: int | None = None,
        cuda_graph: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Continue prompts input_ids [B, T] by ``max_new_tokens`` tokens, one piece at a time:
        the prompt once it is read, then each new token int64 [B, 1] as soon as it is chosen.

        The prompt is read ``prefill_chunk`` tokens at a time (None: in one pass) into the
        per-layer caches, then tokens are decoded one at a time from them. temperature 0 is
        greedy; otherwise sample from the softmax of logits / temperature, restricted to the
        ``top_k`` most likely tokens and to the nucleus of probability ``top_p`` if given
        (``memlab.models.sampling``). ``cuda_graph``: replay the decoding step from a CUDA graph
        (``memlab.models.captured_step``; the same tokens, without the launch overhead).
        """
        SamplingConfig(temperature, top_k, top_p)  # refuses bad values before any work
        param = next(self.parameters())
        B, T = input_ids.shape
        self.prepare_decoding(autocast_dtype(param))
        if cuda_graph:
            step = self.captured_step(B, T + max_new_tokens, param.device, param.dtype)
            step.reset()
            logits = prefill(self, input_ids, prefill_chunk, step.states)
            step.reclaim()
        else:
            states = self.init_states(B, param.device, param.dtype)
            logits = prefill(self, input_ids, prefill_chunk, states)
        yield input_ids
        for i in range(max_new_tokens):
            nxt = sample(logits.float(), temperature, top_k, top_p, generator)
            yield nxt
            if i + 1 == max_new_tokens:
                break
            if cuda_graph:
                step.token.copy_(nxt)
                logits = step.replay(T + i)
            else:
                self.schedule_step(states, T + i)
                logits = self(nxt, states=states).logits[:, -1]

    def prepare_decoding(self, dtype: torch.dtype) -> None:
        """Let every mixer that keeps weights prepared for its decoding step rebuild them from
        the weights as they are now, in ``dtype`` (its projections' dtype): ``stream`` does so
        before each generation, since training may have changed them in place since."""
        for layer in self.layers:
            prepare = getattr(layer.mixer, "prepare_decoding", None)
            if prepare is not None:
                prepare(dtype)

    def captured_step(
        self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> CapturedStep:
        """The decoding step for ``batch_size`` sequences of up to ``max_len`` tokens, captured
        once per (batch size, length bucket, device, dtype) and kept for later calls."""
        max_len = -(-max_len // GRAPH_LENGTH_BUCKET) * GRAPH_LENGTH_BUCKET
        key = (batch_size, max_len, str(device), dtype, self.embed.weight.data_ptr())
        steps = self.__dict__.setdefault("_captured_steps", {})
        if key not in steps:
            steps.clear()  # one at a time: each holds its own caches
            steps[key] = CapturedStep(self, batch_size, max_len, device, dtype)
        return steps[key]


def _recomputed_blocks(policy: str | int, n_layers: int) -> frozenset[int]:
    """The blocks whose activations are recomputed in the backward pass (see LanguageModel)."""
    if policy == "none":
        return frozenset()
    if policy == "every_block":
        return frozenset(range(n_layers))
    if isinstance(policy, int) and not isinstance(policy, bool) and policy >= 1:
        return frozenset(range(0, n_layers, policy))
    raise ConfigError(
        "model.activation_checkpointing must be none, every_block or an integer n >= 1 (every "
        f"n-th block) (got {policy!r})"
    )
