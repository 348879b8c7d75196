"""transformers' formats: memlab's Mamba ↔ MambaForCausalLM, the Transformer ↔ LlamaForCausalLM.
Differences in meaning: docs/interop.md."""

from __future__ import annotations

import math

from memlab.interop.table import Config, Field, Format, Param, Refusal, Rule, accepts_only, lm_fields


def _time_step_rank(config: Config) -> int:
    rank = config.get("time_step_rank", "auto")
    return math.ceil(config["hidden_size"] / 16) if rank == "auto" else rank


_MAMBA_LAYER = "backbone.layers.{i}.mixer."
MAMBA = Format(
    name="mamba",
    target="transformers' MambaForCausalLM",
    architecture="MambaForCausalLM",
    mixer="Mamba",
    matches=lambda spec: spec["mixer"] == "Mamba",
    fields=(
        *lm_fields(Field("norm_eps", "layer_norm_epsilon")),
        Field("mlp_hidden", "", read=lambda config: 0),  # a Mamba block has no MLP
        Field("mixer.d_state", "state_size"),
        Field("mixer.d_conv", "conv_kernel"),
        # an integer where it is one: MambaConfig declares expand an int
        Field("mixer.expand", "expand", write=lambda e: int(e) if float(e).is_integer() else e),
        Field("mixer.dt_rank", "time_step_rank", read=_time_step_rank),
        Field("mixer.conv_bias", "use_conv_bias"),
        Field("mixer.bias", "use_bias"),
        Field("mixer.dt_min", "time_step_min", checked=False),
        Field("mixer.dt_max", "time_step_max", checked=False),
        Field("mixer.dt_init_floor", "time_step_floor", checked=False),
    ),
    rules=(
        Rule("hidden_act", "silu", accepts_only("silu"), "silu"),
        # memlab adds each block's output to a residual in the model dtype
        Rule("residual_in_fp32", False, lambda value, config: True, "any"),
    ),
    refusals=(Refusal("mlp_hidden", lambda spec: spec["mlp_hidden"] == 0, "0: a Mamba block has no MLP"),),
    params=(
        Param("embed.weight", ("backbone.embeddings.weight",)),
        Param("layers.{i}.mixer_norm.weight", ("backbone.layers.{i}.norm.weight",)),
        *(
            Param(f"layers.{{i}}.mixer.{name}", (_MAMBA_LAYER + name,))
            for name in (
                "in_proj.weight",
                "in_proj.bias",
                "conv1d.weight",
                "conv1d.bias",
                "x_proj.weight",
                "dt_proj.weight",
                "dt_proj.bias",
                "A_log",
                "D",
                "out_proj.weight",
                "out_proj.bias",
            )
        ),
        Param("norm.weight", ("backbone.norm_f.weight",)),
        Param("lm_head.weight", ("lm_head.weight",)),
    ),
    defaults={
        "tie_word_embeddings": True,
        "layer_norm_epsilon": 1e-5,
        "state_size": 16,
        "conv_kernel": 4,
        "expand": 2,
        "use_conv_bias": True,
        "use_bias": False,
        "hidden_act": "silu",
    },
)

# --- transformers' Llama ------------------------------------------------------------------------


def _head_dim(config: Config) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _rope(config: Config) -> dict:
    """rope_parameters (transformers 5), or the older top-level rope_theta / rope_scaling."""
    rope = dict(config.get("rope_parameters") or {})
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    rope.setdefault("rope_type", (config.get("rope_scaling") or {}).get("rope_type", "default"))
    return rope


_LLAMA_LAYER = "model.layers.{i}."
LLAMA = Format(
    name="llama",
    target="transformers' LlamaForCausalLM",
    architecture="LlamaForCausalLM",
    mixer="Attention",
    matches=lambda spec: spec["mixer"] == "Attention",
    fields=(
        *lm_fields(Field("norm_eps", "rms_norm_eps")),
        Field("mlp_hidden", "intermediate_size"),
        Field("mixer.num_heads", "num_attention_heads"),
        Field("mixer.head_dim", "head_dim", read=_head_dim),
        Field(
            "mixer.rope_theta",
            "rope_parameters",
            read=lambda config: _rope(config)["rope_theta"],
            write=lambda theta: {"rope_type": "default", "rope_theta": theta},
        ),
    ),
    rules=(
        Rule(
            "num_key_value_heads",
            lambda spec: spec["mixer.num_heads"],
            lambda value, config: value in (None, config["num_attention_heads"]),
            "num_attention_heads (memlab's attention has no grouped keys and values)",
        ),
        # what transformers 4 reads (5 reads rope_parameters, and an import reads that first)
        Rule("rope_theta", lambda spec: spec["mixer.rope_theta"], lambda value, config: True, "any"),
        Rule("hidden_act", "silu", accepts_only("silu"), "silu"),
        Rule("attention_bias", False, accepts_only(False), "false"),
        Rule("mlp_bias", False, accepts_only(False), "false"),
        Rule(
            "rope_scaling",
            None,
            lambda value, config: _rope(config)["rope_type"] == "default",
            "null (memlab's RoPE is the default one)",
        ),
    ),
    refusals=(Refusal("mlp_hidden", lambda spec: spec["mlp_hidden"] > 0, "> 0: a Llama block has an MLP"),),
    params=(
        Param("embed.weight", ("model.embed_tokens.weight",)),
        Param("layers.{i}.mixer_norm.weight", (_LLAMA_LAYER + "input_layernorm.weight",)),
        Param(
            "layers.{i}.mixer.qkv.weight",
            tuple(_LLAMA_LAYER + f"self_attn.{p}_proj.weight" for p in "qkv"),
            "cat",
        ),
        Param("layers.{i}.mixer.out.weight", (_LLAMA_LAYER + "self_attn.o_proj.weight",)),
        Param("layers.{i}.mlp_norm.weight", (_LLAMA_LAYER + "post_attention_layernorm.weight",)),
        Param(
            "layers.{i}.mlp.gate_up.weight",
            (_LLAMA_LAYER + "mlp.gate_proj.weight", _LLAMA_LAYER + "mlp.up_proj.weight"),
            "cat",
        ),
        Param("layers.{i}.mlp.down.weight", (_LLAMA_LAYER + "mlp.down_proj.weight",)),
        Param("norm.weight", ("model.norm.weight",)),
        Param("lm_head.weight", ("lm_head.weight",)),
    ),
    defaults={
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
    },
)
