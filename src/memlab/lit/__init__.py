"""Lightning side of memlab: LightningModules, callbacks and metrics. Knows nothing of Hydra."""

from memlab.lit.causal_lm import CausalLMModule

__all__ = ["CausalLMModule"]
