"""What a memlab network is, read off the network itself: the flat description the conversion
tables compare with a checkpoint's config (keys are memlab's config keys under ``model.``)."""

from __future__ import annotations

from typing import Any

from memlab.models import LanguageModel

# Options that choose how a network runs or trains, not what it computes from its weights.
RUNTIME_KEYS = ("backend", "aux_loss_weight", "dt_min", "dt_max", "dt_init_floor")


def describe(net: LanguageModel) -> dict[str, Any]:
    """{key: value}: ``vocab_size``, ``d_model``, ``n_layers``, ``mlp_hidden`` (the SwiGLU width
    int(mlp_ratio · d_model), 0 without MLP), ``tie_embeddings``, ``norm_eps``, ``mixer`` (the
    mixer's class name) and every mixer option as ``mixer.<key>`` (nested ones as
    ``mixer.<group>.<key>``), with Mamba's ``dt_rank`` and attention's ``head_dim`` resolved."""
    block, mixer = net.layers[0], net.layers[0].mixer
    spec: dict[str, Any] = {
        "vocab_size": net.vocab_size,
        "d_model": net.embed.embedding_dim,
        "n_layers": len(net.layers),
        "mlp_hidden": 0 if block.mlp is None else block.mlp.down.in_features,
        "tie_embeddings": net.lm_head.weight is net.embed.weight,
        "norm_eps": net.norm.eps,
        "mixer": type(mixer).__name__,
    }
    spec.update(flatten(mixer.config.to_dict(), "mixer."))
    spec.pop("mixer.d_model", None)  # attention's copy of d_model
    for key in ("dt_rank", "head_dim"):  # "auto" / None resolved by the layer
        if f"mixer.{key}" in spec and hasattr(mixer, key):
            spec[f"mixer.{key}"] = getattr(mixer, key)
    return spec


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {prefix + "a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_key(key: str) -> str:
    """The config key a description key stands for, as errors name it."""
    return "model.mlp_ratio" if key == "mlp_hidden" else f"model.{key}"


def is_runtime(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in RUNTIME_KEYS
