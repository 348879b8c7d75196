"""memlab's GDN and MoM against flash-linear-attention's GatedDeltaNetForCausalLM and MomForCausalLM
on the same weights (memlab's export loaded with ``from_pretrained``), each under its own Triton
kernels. Skipped where flash-linear-attention is not installed.

MoM convolves q over the whole sequence in memlab and over each memory's tokens in
flash-linear-attention (docs/interop.md): their logits agree where every memory sees every token
(topk = num_memories); with fewer, the first layer's routing of every token must agree.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

# memlab before flash-linear-attention (and so transformers): it keeps the name `kernels`
# for the PyPI package transformers imports
from memlab.interop import export_pretrained
from memlab.kernels.compare import rel_err
from memlab.models import LanguageModel
from memlab.models.layers import MoMAttention
from memlab.models.layers.mom.routing import route

if not torch.cuda.is_available():  # before importing flash-linear-attention, seconds on a CPU
    pytest.skip("needs a CUDA device (run with `make test-gpu` on a GPU)", allow_module_level=True)
fla = pytest.importorskip("fla.models", reason="flash-linear-attention is not installed")

DEVICE = "cuda"
VOCAB, WIDTH, LAYERS = 256, 128, 2
# relative error of the logits: the two libraries' chunked kernels round differently (TF32 dots)
TOLERANCE = {torch.float32: 5e-3, torch.bfloat16: 3e-2}
CASES = {
    "gdn": dict(num_memories=1, topk=1, shared_mem=False),
    "mom_all_memories": dict(num_memories=2, topk=2, shared_mem=True),
    "mom_all_memories_noshared": dict(num_memories=3, topk=3, shared_mem=False),
}


def _pair(tmp_path: Path, **mixer) -> tuple[LanguageModel, torch.nn.Module]:
    """A memlab GDN or MoM (flash-linear-attention's norm eps 1e-6 throughout) and the
    flash-linear-attention model its export loads into, both fp32 on the GPU, in eval mode."""
    torch.manual_seed(0)
    layer = functools.partial(MoMAttention, num_heads=2, head_dim=64, norm_eps=1e-6, **mixer)
    net = LanguageModel(VOCAB, WIDTH, LAYERS, layer, mlp_ratio=2, norm_eps=1e-6, tie_embeddings=False)
    written = export_pretrained(net, tmp_path)
    cls = fla.GatedDeltaNetForCausalLM if written == "gated_deltanet" else fla.MomForCausalLM
    theirs = cls.from_pretrained(tmp_path)
    return net.to(DEVICE).eval(), theirs.to(DEVICE).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("length", [40, 300], ids=["recurrent", "chunked"])
@pytest.mark.parametrize("case", CASES)
def test_logits_match_fla(case: str, length: int, dtype: torch.dtype, tmp_path: Path) -> None:
    """Same weights, same logits within the dtype's tolerance; 40 tokens take
    flash-linear-attention's fused-recurrent path in inference, 300 its chunked one."""
    net, theirs = _pair(tmp_path, **CASES[case])
    net, theirs = net.to(dtype), theirs.to(dtype)
    ids = torch.randint(VOCAB, (2, length), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1))
    with torch.no_grad():
        ours = net(ids).logits.float()
        expected = theirs(input_ids=ids, use_cache=False).logits.float()
    assert torch.isfinite(ours).all()
    assert rel_err(ours, expected) < TOLERANCE[dtype]


def test_first_layer_routes_every_token_alike(tmp_path: Path) -> None:
    """MoM with top-2 of 4 memories, fp32: every token of the first layer goes to the same two
    memories (the layers above see outputs that the q convolution makes differ)."""
    net, theirs = _pair(tmp_path, num_memories=4, topk=2, shared_mem=True)
    ids = torch.randint(VOCAB, (2, 300), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(2))
    with torch.no_grad():
        x = net.layers[0].mixer_norm(net.embed(ids))
        mixer = net.layers[0].mixer
        ours = route(x, mixer.router, 4, 2, True, torch.float32).chosen[..., :2]
        logits = theirs(input_ids=ids, use_cache=False).router_logits[0].float()
    expected = logits.softmax(-1).topk(2, dim=-1).indices.view(2, 300, 2)
    assert torch.equal(ours.sort(-1).values, expected.sort(-1).values)
