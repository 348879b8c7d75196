"""lm-evaluation-harness for memlab checkpoints: importing this package registers the ``memlab``
model with lm-eval (see ``model.py``); ``scripts/eval.py task=lm_eval`` runs it (see ``task.py``);
``tasks/`` holds the ``recall`` and ``commonsense`` suites."""

from memlab.eval.lm_eval.harness import require_harness

require_harness()

from memlab.eval.lm_eval.model import MemlabLM  # noqa: E402

__all__ = ["MemlabLM"]
