"""The length × depth accuracy heatmap of retrieval tasks (passkey), as a PNG and a figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_heatmap(
    accuracy: Sequence[Sequence[float]],
    lengths: Sequence[int],
    depths: Sequence[float],
    title: str,
    path: Path | None = None,
) -> Any:
    """Draw accuracy [len(lengths)][len(depths)] in [0, 1] as a heatmap: one row per context
    length (tokens), one column per needle depth (fraction 0..1 of the context).

    Writes a PNG to ``path`` if given and returns the matplotlib Figure (still open, so a
    caller can hand it to TensorBoard's ``add_figure``, which closes it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(depths), 1.2 + 0.4 * len(lengths)))
    image = ax.imshow(accuracy, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
    ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_xlabel("needle depth")
    ax.set_ylabel("context length (tokens)")
    ax.set_title(title)
    for i, row in enumerate(accuracy):
        for j, value in enumerate(row):
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if value > 0.5 else "white",
            )
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
