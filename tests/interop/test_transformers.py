"""memlab's Mamba and Transformer against transformers' MambaForCausalLM and LlamaForCausalLM on
tiny random models, both ways: a folder the transformers class wrote loads into memlab
(``init_from``), and memlab's export loads into the transformers class (``from_pretrained``);
logits agree within 1e-5 in fp32 and greedy continuations are the same."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from memlab.interop import export_pretrained
from memlab.models import LanguageModel
from memlab.models.layers import Attention, Mamba

transformers = pytest.importorskip("transformers")

VOCAB, WIDTH, LAYERS = 64, 32, 2


def _mamba_pair():
    """transformers' MambaForCausalLM (pure PyTorch on the CPU) and a factory of memlab's twin
    (untied, with biases): ``twin(init_from=...)``."""
    config = transformers.MambaConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS, state_size=8, time_step_rank=4,
        use_bias=True, tie_word_embeddings=False, residual_in_fp32=False,
    )  # fmt: skip
    mixer = functools.partial(Mamba, d_state=8, dt_rank=4, bias=True)
    twin = functools.partial(LanguageModel, VOCAB, WIDTH, LAYERS, mixer, mlp_ratio=0, tie_embeddings=False)
    return transformers.MambaForCausalLM(config), twin


def _llama_pair():
    """transformers' LlamaForCausalLM and a factory of memlab's Transformer, tied embeddings."""
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=48, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )  # fmt: skip
    mixer = functools.partial(Attention, num_heads=4, rope_theta=500.0)
    twin = functools.partial(LanguageModel, VOCAB, WIDTH, LAYERS, mixer, mlp_ratio=1.5, tie_embeddings=True)
    return transformers.LlamaForCausalLM(config), twin


PAIRS = {"mamba": _mamba_pair, "llama": _llama_pair}


def _same_outputs(hf, net) -> None:
    hf.eval(), net.eval()
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net(ids).logits, hf(ids).logits, atol=1e-5, rtol=0)
    no_stop = {"eos_token_id": None, "pad_token_id": None}
    hf.generation_config.update(**no_stop)
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert torch.equal(net.generate(ids, 6), theirs)


@pytest.mark.parametrize("name", PAIRS)
def test_their_checkpoint_loads_into_memlab(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf, twin = PAIRS[name]()
    hf.save_pretrained(tmp_path / "hf")
    _same_outputs(hf, twin(init_from=str(tmp_path / "hf")))


@pytest.mark.parametrize("name", PAIRS)
def test_memlab_export_loads_into_theirs(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf, twin = PAIRS[name]()
    net = twin()
    assert export_pretrained(net, tmp_path / "out") == name
    loaded = type(hf).from_pretrained(tmp_path / "out")
    assert loaded.config.tie_word_embeddings == hf.config.tie_word_embeddings
    _same_outputs(loaded, net)
