"""What a text task of ``scripts/eval.py`` (ppl_by_length, passkey, fidelity) is given: the
trained network, the corpus, the task's checked options and where its outputs go."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from memlab.data.text import TextDataModule


class TaskResult(Protocol):
    """A task's result: its metrics and its markdown table."""

    def metrics(self) -> dict[str, float]: ...

    def table(self) -> str: ...


@dataclass
class TextTask:
    """One text task's inputs. net: the trained LanguageModel; datamodule: the corpus, whose
    tokenizer the network was trained with; options: the task's checked options; amp: the
    autocast dtype (None: no autocast); title: the figure's; output_dir: where its files go."""

    net: nn.Module
    datamodule: TextDataModule
    options: dict[str, Any]
    amp: torch.dtype | None
    title: str
    output_dir: Path

    def tokens(self, needed: int) -> np.ndarray:
        """The tokens of the ``options["split"]`` documents, each followed by end-of-text, until
        ``needed`` tokens (or the documents run out): int32 [<= needed]."""
        from memlab.eval.ppl_by_length import concatenated_tokens

        documents = (text for _, text in self.datamodule.eval_documents(self.options["split"]))
        return concatenated_tokens(documents, self.datamodule.tokenizer, needed)

    def outputs(
        self, result: TaskResult, name: str, plot: Callable[[Any, str, Path], Any]
    ) -> tuple[dict[str, float], Any, str]:
        """(metrics, figure, markdown table) of ``result``: the table also written to
        ``<name>.md`` and the figure, ``plot(result, title, path)``, saved to ``<name>.png``."""
        table = result.table()
        (self.output_dir / f"{name}.md").write_text(table)
        figure = plot(result, self.title, self.output_dir / f"{name}.png")
        return result.metrics(), figure, table
