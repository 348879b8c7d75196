"""``scripts/eval.py task=fidelity``: ETMF and ECLMF (memlab.eval.fidelity) of a trained model on
blocks of a text corpus' documents, per layer and averaged, with a table and a plot."""

from __future__ import annotations

import logging
import math
import numbers
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from memlab.errors import ConfigError
from memlab.eval.fidelity import PAIRINGS, eclmf_by_layer, etmf_cosines
from memlab.eval.text_task import TextTask

log = logging.getLogger(__name__)


@dataclass
class FidelityResult:
    """etmf: per layer (the last is the model's output); eclmf: {G: per pair (l, l + G)}."""

    pairing: str
    tokens: int
    etmf: list[float] = field(default_factory=list)
    eclmf: dict[int, list[float]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """``fidelity/etmf/layer<l>``, ``fidelity/etmf/mean``, ``fidelity/eclmf/g<G>/layer<l>``
        and ``fidelity/eclmf/g<G>/mean`` (NaN where the model has no G + 1 layers)."""
        out = {f"fidelity/etmf/layer{i}": v for i, v in enumerate(self.etmf)}
        out["fidelity/etmf/mean"] = _mean(self.etmf)
        for gap, scores in self.eclmf.items():
            out |= {f"fidelity/eclmf/g{gap}/layer{i}": v for i, v in enumerate(scores)}
            out[f"fidelity/eclmf/g{gap}/mean"] = _mean(scores)
        return out

    def table(self) -> str:
        gaps = list(self.eclmf)
        rows = [f"ETMF pairing: {self.pairing}; {self.tokens} tokens", ""]
        rows += ["| layer | ETMF | " + " | ".join(f"ECLMF G={g}" for g in gaps) + " |"]
        rows += ["|---:|---:|" + "---:|" * len(gaps)]
        for i, value in enumerate(self.etmf):
            cells = [f"{self.eclmf[g][i]:.4f}" if i < len(self.eclmf[g]) else "" for g in gaps]
            rows.append(f"| {i} | {value:.4f} | " + " | ".join(cells) + " |")
        means = [f"{_mean(self.eclmf[g]):.4f}" for g in gaps]
        rows.append(f"| mean | {_mean(self.etmf):.4f} | " + " | ".join(means) + " |")
        return "\n".join(rows) + "\n"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@torch.no_grad()
def evaluate_fidelity(
    net: nn.Module,
    tokens: np.ndarray,
    length: int,
    max_blocks: int,
    gaps: list[int],
    pairing: str = "position",
    amp: torch.dtype | None = None,
) -> FidelityResult:
    """ETMF and ECLMF over up to ``max_blocks`` consecutive blocks of ``length`` tokens of
    ``tokens`` (int [N]); the layers' outputs of every block are kept (fp32, on the CPU) for
    the ridge fits."""
    blocks = min(max_blocks, len(tokens) // length)
    if blocks < 1:
        raise ConfigError(
            f"fidelity: the documents hold {len(tokens)} tokens, fewer than fidelity.length={length}"
        )
    param = next(net.parameters())
    ids = torch.as_tensor(tokens[: blocks * length].astype(np.int64), device=param.device).view(
        blocks, length
    )
    hidden: list[list[torch.Tensor]] = [[] for _ in net.layers]
    sums, count = torch.zeros(len(net.layers), dtype=torch.float64), 0
    hooks = [
        layer.register_forward_hook(lambda _m, _a, out, i=i: hidden[i].append(out.hidden))
        for i, layer in enumerate(net.layers)
    ]
    autocast = torch.autocast(param.device.type, amp) if amp is not None else nullcontext()
    try:
        for block in ids:
            with autocast:
                net(block[None])
                for i, outputs in enumerate(hidden):
                    logits = net.lm_head(net.norm(outputs[-1]))
                    cos = etmf_cosines(logits, block[None], net.embed.weight, pairing)
                    sums[i] += cos.double().sum().cpu()
                    outputs[-1] = outputs[-1][0].float().cpu()
            count += cos.numel()
    finally:
        for hook in hooks:
            hook.remove()
    states = [torch.cat(outputs) for outputs in hidden]
    eclmf = {gap: eclmf_by_layer(states, gap) for gap in gaps}
    log.info("fidelity: ETMF pairs each prediction with %s", _PAIRING_TEXT[pairing])
    return FidelityResult(pairing, blocks * length, (sums / count).tolist(), eclmf)


_PAIRING_TEXT = {
    "position": "the token at its own position (the paper's pairing)",
    "next_token": "the next token, the one it predicts",
}


def plot_fidelity(result: FidelityResult, title: str, path: Path) -> Any:
    """ETMF and ECLMF(G) against the layer: the figure, also saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(len(result.etmf)), result.etmf, marker="o", label=f"ETMF ({result.pairing})")
    for gap, scores in result.eclmf.items():
        ax.plot(range(len(scores)), scores, marker=".", label=f"ECLMF G={gap} (layer l → l+{gap})")
    ax.set_xlabel("layer l")
    ax.set_ylabel("fidelity")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def fidelity_options(opts: DictConfig) -> dict[str, Any]:
    """The ``fidelity.*`` options, checked before anything is loaded."""
    if opts.pairing not in PAIRINGS:
        raise ConfigError(f"fidelity.pairing={opts.pairing}: expected one of {', '.join(PAIRINGS)}")
    if opts.split not in ("val", "test"):
        raise ConfigError(f"fidelity.split={opts.split}: expected val or test")
    return {
        "split": opts.split,
        "pairing": opts.pairing,
        "length": _positive("fidelity.length", opts.length),
        "max_blocks": _positive("fidelity.max_blocks", opts.max_blocks),
        "gaps": [_positive("fidelity.gaps", g) for g in opts.gaps],
    }


def _positive(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{key}: expected an integer >= 1 (got {value!r})")
    return int(value)


def run_fidelity(task: TextTask) -> tuple[dict[str, float], Any, str]:
    """The task on the corpus' ``split`` documents: (metrics, figure, markdown table)."""
    opts = task.options
    tokens = task.tokens(opts["max_blocks"] * opts["length"])
    result = evaluate_fidelity(
        task.net, tokens, opts["length"], opts["max_blocks"], opts["gaps"], opts["pairing"], task.amp
    )
    return task.outputs(result, "fidelity", plot_fidelity)
