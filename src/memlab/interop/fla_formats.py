"""flash-linear-attention's formats: memlab's GDN ↔ GatedDeltaNetForCausalLM, MoM ↔
MomForCausalLM. Differences in meaning (MoM's q convolution, its load-balancing loss): docs/interop.md."""

from __future__ import annotations

from memlab.interop.table import Config, Field, Format, Param, Refusal, Rule, Spec, accepts_only, lm_fields


def _fla_mlp_width(config: Config) -> int:
    """GatedMLP's width: intermediate_size, else 2/3 · hidden_ratio · hidden_size rounded up to 256."""
    if config.get("intermediate_size"):
        return config["intermediate_size"]
    width = int(config["hidden_size"] * (config.get("hidden_ratio") or 4) * 2 / 3)
    return 256 * ((width + 255) // 256)


def _fla_fields(*mixer: Field) -> tuple[Field, ...]:
    return (
        # one norm_eps for the block norms and the gated output norm
        *lm_fields(Field("norm_eps", "norm_eps"), Field("mixer.norm_eps", "norm_eps")),
        Field("mlp_hidden", "intermediate_size", read=_fla_mlp_width),
        Field("mixer.num_heads", "num_heads"),
        Field("mixer.head_dim", "head_dim"),
        Field("mixer.expand_v", "expand_v"),
        Field("mixer.conv_size", "conv_size"),
        *mixer,
    )


_FLA_RULES = (
    Rule("hidden_act", "swish", accepts_only("swish"), "swish"),
    Rule("use_short_conv", True, accepts_only(True), "true"),
    Rule("attn", None, accepts_only(None), "null (no softmax-attention layers)"),
    Rule("attnres_block_size", None, accepts_only(None), "null"),
)
_FLA_REFUSALS = (
    Refusal("mlp_hidden", lambda spec: spec["mlp_hidden"] > 0, "> 0: its blocks have an MLP"),
    Refusal(
        "mixer.norm_eps",
        lambda spec: spec["mixer.norm_eps"] == spec["norm_eps"],
        "equal to model.norm_eps: one norm_eps serves the block norms and the output norm",
    ),
)
_ATTN = "model.layers.{i}.attn."


def _fla_params(*mixer: Param) -> tuple[Param, ...]:
    return (
        Param("embed.weight", ("model.embeddings.weight",)),
        Param("layers.{i}.mixer_norm.weight", ("model.layers.{i}.attn_norm.weight",)),
        Param("layers.{i}.mixer.q_proj.weight", (_ATTN + "q_proj.weight",)),
        *mixer,
        Param("layers.{i}.mixer.A_log", (_ATTN + "A_log",)),
        Param("layers.{i}.mixer.dt_bias", (_ATTN + "dt_bias",)),
        *(
            Param(f"layers.{{i}}.mixer.{c}_conv.weight", (f"{_ATTN}{c}_conv1d.weight",), "conv")
            for c in "qkv"
        ),
        Param("layers.{i}.mixer.gate_proj.weight", (_ATTN + "g_proj.weight",)),
        Param("layers.{i}.mixer.norm.weight", (_ATTN + "o_norm.weight",)),
        Param("layers.{i}.mixer.o_proj.weight", (_ATTN + "o_proj.weight",)),
        Param("layers.{i}.mlp_norm.weight", ("model.layers.{i}.mlp_norm.weight",)),
        Param(
            "layers.{i}.mlp.gate_up.weight",
            ("model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
            "cat",
        ),
        Param("layers.{i}.mlp.down.weight", ("model.layers.{i}.mlp.down_proj.weight",)),
        Param("norm.weight", ("model.norm.weight",)),
        Param("lm_head.weight", ("lm_head.weight",)),
    )


def _single_memory(spec: Spec) -> bool:
    return spec["mixer.num_memories"] == 1 and not spec["mixer.shared_mem"]


GATED_DELTANET = Format(
    name="gated_deltanet",
    target="flash-linear-attention's GatedDeltaNetForCausalLM",
    architecture="GatedDeltaNetForCausalLM",
    mixer="MoMAttention",
    matches=lambda spec: spec["mixer"] == "MoMAttention" and _single_memory(spec),
    fields=_fla_fields(
        Field("mixer.num_memories", "", read=lambda config: 1),
        Field("mixer.topk", "", read=lambda config: 1),
        Field("mixer.shared_mem", "", read=lambda config: False),
    ),
    rules=(
        *_FLA_RULES,
        Rule("use_gate", True, accepts_only(True), "true"),
        Rule("allow_neg_eigval", False, accepts_only(False), "false"),
        Rule("num_v_heads", None, lambda value, config: value in (None, config["num_heads"]), "null"),
        Rule("output_gate_activation", "swish", accepts_only("swish", "silu"), "swish"),
    ),
    refusals=_FLA_REFUSALS,
    params=_fla_params(
        Param(
            "layers.{i}.mixer.memory_proj",
            lambda spec: [tuple(_ATTN + f"{p}_proj.weight" for p in "kvba")],
            "rows",
        )
    ),
    defaults={
        "tie_word_embeddings": False,
        "norm_eps": 1e-6,
        "num_heads": 6,
        "head_dim": 256,
        "expand_v": 2.0,
        "conv_size": 4,
        "hidden_act": "swish",
        "use_short_conv": True,
        "use_gate": True,
        "output_gate_activation": "swish",
    },
)


def _mom_rows(spec: Spec) -> list[tuple[str, ...]]:
    """memory_proj's rows: the routed memories' k, v, β and decay projections, then the shared one's."""
    rows = [tuple(_ATTN + f"{p}_proj.{m}.weight" for p in "kvba") for m in range(spec["mixer.num_memories"])]
    if spec["mixer.shared_mem"]:
        rows.append(tuple(_ATTN + f"shared_{p}.weight" for p in "kvba"))
    return rows


MOM = Format(
    name="mom",
    target="flash-linear-attention's MomForCausalLM",
    architecture="MomForCausalLM",
    mixer="MoMAttention",
    matches=lambda spec: spec["mixer"] == "MoMAttention" and not _single_memory(spec),
    fields=_fla_fields(
        Field("mixer.num_memories", "num_memories"),
        Field("mixer.topk", "topk"),
        Field("mixer.shared_mem", "shared_mem"),
        # a training setting, and a different loss: docs/interop.md
        Field("mixer.aux_loss_weight", "aux_loss_scale", checked=False),
    ),
    rules=(
        *_FLA_RULES,
        Rule("mom_backend", "gated_deltanet", accepts_only("gated_deltanet"), "gated_deltanet"),
        Rule("single_kv_proj", False, accepts_only(False), "false"),
        Rule("use_output_gate", True, accepts_only(True), "true"),
        Rule("capacity", 1.0, lambda value, config: True, "any"),
        Rule("use_layer_wise_balance", True, lambda value, config: True, "any"),
    ),
    refusals=_FLA_REFUSALS,
    params=_fla_params(
        Param("layers.{i}.mixer.router.weight", (_ATTN + "gate.weight",)),
        Param("layers.{i}.mixer.memory_proj", _mom_rows, "rows"),
    ),
    defaults={
        "tie_word_embeddings": False,
        "norm_eps": 1e-6,
        "num_heads": 4,
        "head_dim": 256,
        "expand_v": 1.0,
        "conv_size": 4,
        "num_memories": 4,
        "topk": 2,
        "shared_mem": True,
        "hidden_act": "swish",
        "use_short_conv": True,
        "mom_backend": "gated_deltanet",
        "single_kv_proj": False,
        "use_output_gate": True,
    },
    # one memory needs no router, but MomForCausalLM has one: zeros give it a constant softmax
    zeros=lambda spec: (
        {_ATTN + "gate.weight": (1, spec["d_model"])} if spec["mixer.num_memories"] == 1 else {}
    ),
)
