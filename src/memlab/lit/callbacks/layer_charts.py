"""Per-layer statistics as TensorBoard shows them best: grouped charts and a heatmap."""

from __future__ import annotations

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from memlab.lit.stat_tags import ROUTER_GROUP, layer_charts, router_load_matrix

PERF_CHARTS = {
    "tokens/s": "perf/tokens_per_s",
    "peak memory (GiB)": "perf/peak_mem_gib",
    "MFU": "perf/mfu",
}
HEATMAP_TAG = f"{ROUTER_GROUP}/load_heatmap"


class LayerCharts(Callback):
    """TensorBoard's CUSTOM SCALARS layout and the router's heatmap.

    The layout (written at the first validation, when every tag has been logged) leads with
    ``perf`` (one chart per ``perf/*`` tag), then ``router load`` and ``pool`` with one
    multi-line chart per layer (``memlab.lit.stat_tags.layer_charts``). Every validation adds
    the image ``router/load_heatmap``: layers × memories, the router load averaged over the
    training steps since the previous validation. Loggers other than TensorBoard get nothing.
    """

    def __init__(self) -> None:
        self._layout_written = False
        self._load_sum: torch.Tensor | None = None
        self._steps = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        load = router_load_matrix(trainer.callback_metrics)
        if load is None:
            return
        if self._load_sum is None or self._load_sum.shape != load.shape:
            self._load_sum, self._steps = torch.zeros_like(load), 0
        self._load_sum += load
        self._steps += 1

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers:
            return
        if not self._layout_written:
            self._write_layout(writers, list(trainer.callback_metrics))
        if self._steps:
            load = (self._load_sum / self._steps).cpu()
            for writer in writers:
                writer.add_figure(HEATMAP_TAG, _heatmap(load), global_step=trainer.global_step)
            self._load_sum, self._steps = None, 0

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._layout_written and trainer.is_global_zero:
            writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
            self._write_layout(writers, list(trainer.callback_metrics))

    def _write_layout(self, writers: list, tags: list[str]) -> None:
        perf = {title: ["Multiline", [f"^{tag}$"]] for title, tag in PERF_CHARTS.items() if tag in tags}
        layout = ({"perf": perf} if perf else {}) | layer_charts(tags)
        for writer in writers:
            writer.add_custom_scalars(layout)
        self._layout_written = True


def _heatmap(load: torch.Tensor):
    """A matplotlib Figure of load [layers, memories] (shares of routed slots; NaN = no router)."""
    from matplotlib.figure import Figure

    layers, memories = load.shape
    fig = Figure(figsize=(1.6 + 0.55 * memories, 1.2 + 0.3 * layers))
    ax = fig.add_subplot()
    image = ax.imshow(load.numpy(), vmin=0.0, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(memories), [str(e) for e in range(memories)])
    ax.set_yticks(range(layers), [str(i) for i in range(layers)])
    ax.set_xlabel("memory")
    ax.set_ylabel("layer")
    ax.set_title("router load")
    fig.colorbar(image, ax=ax, label="share of routed slots")
    fig.tight_layout()
    return fig
