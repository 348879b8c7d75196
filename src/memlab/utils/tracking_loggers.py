"""Weights & Biases and MLflow loggers that name runs as memlab's TensorBoard does: a multirun's
job by its arm (``arm=gdn,head_size=32,seed=1,lr=0.001``), grouped by its sweep.

Both need their optional package (``pip install -e ".[wandb]"`` / ``".[mlflow]"``), imported
only when the logger is built.
"""

from __future__ import annotations

from typing import Any

from memlab.utils.run_names import multirun_arm


def wandb_logger(name: str | None = None, group: str | None = None, **kwargs: Any):
    """Lightning's WandbLogger; a multirun job is named by its arm, in the group
    ``<group>/<sweep folder>``. ``kwargs`` go to WandbLogger (and from there to ``wandb.init``)."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    # an earlier job of a multirun in this process (basic launcher, a reused joblib worker) left
    # its run open, which WandbLogger would otherwise reuse for this job
    if wandb.run is not None:
        wandb.finish()
    arm = multirun_arm()
    if arm is not None:
        name = arm.name
        group = f"{group}/{arm.sweep_dir.name}" if group else arm.sweep_dir.name
    return WandbLogger(name=name, group=group, **kwargs)


def mlflow_logger(run_name: str | None = None, tags: dict[str, Any] | None = None, **kwargs: Any):
    """Lightning's MLFlowLogger; a multirun job is named by its arm and tagged with its sweep
    folder (``sweep``). ``kwargs`` go to MLFlowLogger."""
    from lightning.pytorch.loggers import MLFlowLogger

    arm = multirun_arm()
    if arm is not None:
        run_name = arm.name
        tags = {**(tags or {}), "sweep": str(arm.sweep_dir)}
    return MLFlowLogger(run_name=run_name, tags=tags, **kwargs)
