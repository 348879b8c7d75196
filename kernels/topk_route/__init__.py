"""Top-k routing of single tokens (a decoding step): router logits, softmax, top-k and the
renormalised mixing weights of every memory in one op."""

from memlab.kernels.topk_route.route import topk_route, topk_route_torch

__all__ = ["topk_route", "topk_route_torch"]
