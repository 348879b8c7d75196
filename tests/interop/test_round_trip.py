"""Export -> import is the identity on every mixer; what a format cannot express, or a checkpoint
that does not match the model, is one error line naming the key."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from memlab.errors import ConfigError
from memlab.interop import export_pretrained
from memlab.models import LanguageModel
from memlab.models.layers import MemMamba
from tests.models.mixers import MIXERS

# the format each mixer exports to; no MLP in a Mamba block (transformers' MambaForCausalLM)
FORMATS = {
    "attention": "llama",
    "mom": "mom",
    "mom_noshared": "mom",
    "gdn": "gated_deltanet",
    "mamba": "mamba",
    "memmamba": "memlab",
}


def _net(name: str, seed: int, **options) -> LanguageModel:
    torch.manual_seed(seed)
    options.setdefault("mlp_ratio", 0 if name == "mamba" else 2)
    return LanguageModel(64, 32, 2, MIXERS[name], **options)


@pytest.mark.parametrize("fmt", ["auto", "memlab"])
@pytest.mark.parametrize("name", MIXERS)
def test_round_trip_is_the_identity(name: str, fmt: str, tmp_path: Path) -> None:
    net = _net(name, seed=0, tie_embeddings=name != "gdn")
    written = export_pretrained(net, tmp_path, fmt)
    assert written == (FORMATS[name] if fmt == "auto" else "memlab")
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == written
    loaded = _net(name, seed=1, tie_embeddings=name != "gdn", init_from=str(tmp_path))
    theirs, ours = loaded.state_dict(), net.state_dict()
    assert theirs.keys() == ours.keys()
    for key, value in ours.items():
        assert torch.equal(theirs[key], value), key
    assert (loaded.lm_head.weight is loaded.embed.weight) == (name != "gdn")


def test_a_setting_the_target_lacks_refuses_the_export(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^model\.mlp_ratio=2 \(an MLP 64 wide\): .*ForCausalLM needs 0"):
        export_pretrained(_net("mamba", 0, mlp_ratio=2), tmp_path)
    eps = functools.partial(MIXERS["gdn"], norm_eps=1e-6)
    net = LanguageModel(64, 32, 1, eps, mlp_ratio=2)
    with pytest.raises(ConfigError, match=r"^model\.mixer\.norm_eps=1e-06: .* equal to model\.norm_eps"):
        export_pretrained(net, tmp_path)
    with pytest.raises(ConfigError, match=r"^format=llama: a Mamba network exports as one of: auto, memla"):
        export_pretrained(_net("mamba", 0), tmp_path, "llama")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"d_model": 48}, r"^model\.d_model=48 does not match model\.init_from=.*: hidden_size=32$"),
        ({"mlp_ratio": 3}, r"^model\.mlp_ratio=3 \(an MLP 96 wide\) does not .*: intermediate_size=64$"),
        ({"tie_embeddings": False}, r"^model\.tie_embeddings=False does not .*: tie_word_embeddings=True$"),
        ({"norm_eps": 1e-6}, r"^model\.norm_eps=1e-06 does not match .*: norm_eps=1e-05$"),
        ({"mixer": MIXERS["mom_noshared"]}, r"^model\.mixer\.shared_mem=False does not .*: shared_mem=True$"),
        ({"mixer": MIXERS["gdn"]}, r"^model\.mixer\.num_memories=1 does not match .*: num_memories=3$"),
        ({"mixer": MIXERS["mamba"]}, r"^model\.mixer: .* MomForCausalLM model, whose layers are memlab's"),
    ],
)
def test_a_checkpoint_of_another_shape_is_refused(change: dict, error: str, tmp_path: Path) -> None:
    export_pretrained(_net("mom", 0), tmp_path)
    options = {"d_model": 32, "mixer": MIXERS["mom"], "mlp_ratio": 2, **change}
    with pytest.raises(ConfigError, match=error):
        LanguageModel(64, options.pop("d_model"), 2, options.pop("mixer"), **options, init_from=str(tmp_path))


def test_memlab_format_names_the_differing_key(tmp_path: Path) -> None:
    export_pretrained(_net("memmamba", 0), tmp_path)
    other = functools.partial(
        MemMamba,
        chunk_size=8,
        pool_size=5,
        summary_dim=8,
        num_heads=2,
        head_dim=8,
        cross_layer_period=2,
        backbone={"d_state": 4},
    )
    with pytest.raises(ConfigError, match=r"^model\.mixer\.pool_size=5 does not match model\.init_from="):
        LanguageModel(64, 32, 2, other, mlp_ratio=2, init_from=str(tmp_path))


def test_a_missing_folder_or_unknown_format_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^model\.init_from=\./nowhere: no such folder"):
        _net("mamba", 0, init_from="./nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rwkv7"}))
    with pytest.raises(ConfigError, match=r"model_type='rwkv7' is not one memlab reads \(mamba, llama, "):
        _net("mamba", 0, init_from=str(tmp_path))


# flash-linear-attention's names for layer 0 of a GatedDeltaNetForCausalLM and of a MomForCausalLM
# with 3 memories and the shared one (as its classes list them; the slow test below checks them)
_FLA_ATTN = ["A_log", "dt_bias", "q_proj.weight", "g_proj.weight", "o_norm.weight", "o_proj.weight"]
_FLA_ATTN += [f"{p}_conv1d.weight" for p in "qkv"]
FLA_LAYER0 = {
    "gated_deltanet": _FLA_ATTN + [f"{p}_proj.weight" for p in "kvab"],
    "mom": _FLA_ATTN
    + ["gate.weight"]
    + [f"{p}_proj.{m}.weight" for p in "kvab" for m in range(3)]
    + [f"shared_{p}.weight" for p in "kvab"],
}


@pytest.mark.parametrize(("name", "fmt"), [("gdn", "gated_deltanet"), ("mom", "mom")])
def test_the_export_has_flash_linear_attention_names(name: str, fmt: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    export_pretrained(_net(name, 0, tie_embeddings=False), tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    ends = ["attn_norm.weight", "mlp_norm.weight"] + [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    layer0 = {f"model.layers.0.attn.{k}" for k in FLA_LAYER0[fmt]} | {f"model.layers.0.{k}" for k in ends}
    assert {k for k in keys if k.startswith("model.layers.0.")} == layer0
    assert {k for k in keys if not k.startswith("model.layers.")} == {
        "model.embeddings.weight",
        "model.norm.weight",
        "lm_head.weight",
    }


@pytest.mark.slow  # imports flash-linear-attention (seconds); the test above checks the same names
def test_the_flash_linear_attention_classes_load_the_export(tmp_path: Path) -> None:
    """GDN and MoM exports load into flash-linear-attention's classes with every key in place (no
    forward: its kernels need a GPU, tests/gpu/test_interop.py compares the outputs)."""
    fla = pytest.importorskip("fla.models", reason="flash-linear-attention is not installed")
    for name, cls in (("gdn", fla.GatedDeltaNetForCausalLM), ("mom", fla.MomForCausalLM)):
        net = _net(name, 0)
        export_pretrained(net, tmp_path / name)
        model, info = cls.from_pretrained(tmp_path / name, output_loading_info=True)
        assert not any(info.values()), info
        theirs = model.state_dict()
        assert torch.equal(theirs["model.layers.1.attn.o_norm.weight"], net.layers[1].mixer.norm.weight)
        # per layer, memory_proj is 4 tensors per memory, gate_up 2
        assert len(theirs) == len(net.state_dict()) + 2 * (4 if name == "gdn" else 16)
