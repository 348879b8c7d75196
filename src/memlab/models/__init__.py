"""Models: token mixers (layers/), blocks and the language model; no Lightning here."""

from memlab.models.lm import LanguageModel, LMOutput
from memlab.models.mixer import MixerOutput

__all__ = ["LMOutput", "LanguageModel", "MixerOutput"]
