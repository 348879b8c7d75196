"""Every token mixer under test, as a small factory: the contract tests run over all of them."""

import functools

from memlab.models.layers import Attention

MIXERS = {
    "attention": functools.partial(Attention, num_heads=2),
}
