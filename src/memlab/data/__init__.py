"""Data: LightningDataModules, their samplers, and the synthetic task generators (tasks/)."""

from memlab.data.mqar import MQARDataModule
from memlab.data.step_sampler import StepBatchSampler

__all__ = ["MQARDataModule", "StepBatchSampler"]
