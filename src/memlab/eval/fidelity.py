"""Memory-fidelity metrics of MemMamba (arXiv 2510.03279, appendix A.2), for any memlab model.

ETMF (expected token memory fidelity): how close the embedding the model expects is to the
embedding of a real token, cos(t̂_j, E[x]) with t̂_j = Σ_v softmax(logits_j)_v · E[v] (E the
input embedding), averaged over positions. The paper pairs the prediction made at position j
with the token at j ("position"); "next_token" pairs it with the token it predicts, x_{j+1}.
Per layer, the logits are those of the LM head over that layer's output (the last layer's are
the model's own).

ECLMF(G) (expected cross-layer memory fidelity): how well a linear map recovers layer l + G's
output from layer l's, with the ridge decoder W = (XᵀX + λI)⁻¹XᵀY (λ = 1e-4) fitted on the
same tokens: 1 − ‖Y − XW‖_F / (‖X‖_F + 1e-6), per pair of layers (l, l + G).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAIRINGS = ("position", "next_token")
RIDGE = 1e-4


def expected_embedding(logits: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """t̂ = softmax(logits) · E: logits [..., V], embedding [V, D] -> fp32 [..., D]."""
    return logits.float().softmax(dim=-1) @ embedding.float()


def etmf_cosines(
    logits: torch.Tensor, input_ids: torch.Tensor, embedding: torch.Tensor, pairing: str = "position"
) -> torch.Tensor:
    """cos(t̂_j, E[x]) per position: logits [B, T, V], input_ids int64 [B, T], embedding [V, D]
    -> fp32 [B, T] (x = x_j, "position") or [B, T − 1] (x = x_{j+1}, "next_token")."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)} (got {pairing!r})")
    expected = expected_embedding(logits, embedding)
    target = embedding.float()[input_ids]
    if pairing == "next_token":
        expected, target = expected[:, :-1], target[:, 1:]
    return F.cosine_similarity(expected, target, dim=-1)


def eclmf(x: torch.Tensor, y: torch.Tensor, ridge: float = RIDGE) -> float:
    """1 − ‖Y − XW‖_F / (‖X‖_F + 1e-6) with W the ridge fit of Y on X: x, y [N, D] (any float
    dtype; solved in fp64)."""
    x, y = x.double(), y.double()
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    w = torch.linalg.solve(gram, x.T @ y)
    return 1.0 - float(torch.linalg.norm(y - x @ w) / (torch.linalg.norm(x) + 1e-6))


def eclmf_by_layer(hidden: list[torch.Tensor], gap: int, ridge: float = RIDGE) -> list[float]:
    """ECLMF of each pair (l, l + gap): hidden, one [N, D] per layer -> [L − gap] (empty if L <= gap)."""
    return [eclmf(hidden[layer], hidden[layer + gap], ridge) for layer in range(len(hidden) - gap)]
