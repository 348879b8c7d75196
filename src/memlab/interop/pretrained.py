"""Export a memlab network to a Hugging Face checkpoint folder, and initialise one from such a
folder (``model.init_from``): the config checked against the network's, the weights converted
by the format's table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from memlab.errors import ConfigError
from memlab.interop import folder as files
from memlab.interop.convert import from_target, to_target
from memlab.interop.formats import FORMATS
from memlab.interop.spec import config_key, describe, is_runtime
from memlab.interop.table import Format
from memlab.models import LanguageModel

MEMLAB = "memlab"  # memlab's own format: its description and its parameter names


def choose_format(spec: dict[str, Any], name: str = "auto") -> Format | None:
    """The format ``name`` (auto: the one of the network's architecture); None for memlab's own."""
    natural = next((fmt for fmt in FORMATS if fmt.matches(spec)), None)
    if name == MEMLAB or (name == "auto" and natural is None):
        return None
    if name != "auto" and (natural is None or name != natural.name):
        options = ["auto", MEMLAB, *([natural.name] if natural else [])]
        raise ConfigError(f"format={name}: a {spec['mixer']} network exports as one of: {', '.join(options)}")
    return natural


@torch.no_grad()
def export_pretrained(net: LanguageModel, out_dir: str | Path, format: str = "auto") -> str:
    """Write ``net`` as ``out_dir``/config.json + model.safetensors in ``format`` -> its name.
    ConfigError naming the memlab key the target cannot express."""
    spec = describe(net)
    fmt = choose_format(spec, format)
    state = {name: t.detach().cpu() for name, t in net.state_dict().items()}
    dtype = str(state["embed.weight"].dtype).removeprefix("torch.")
    if fmt is None:
        if spec["tie_embeddings"]:
            del state["lm_head.weight"]
        config = {"model_type": MEMLAB, "architectures": ["LanguageModel"], "memlab": spec, "dtype": dtype}
        files.write(Path(out_dir), config, {name: t.contiguous() for name, t in state.items()})
        return MEMLAB
    for refusal in fmt.refusals:
        if not refusal.ok(spec):
            raise ConfigError(
                f"{config_key(refusal.ours)}={_show(refusal.ours, spec)}: {fmt.target} needs {refusal.rule} "
                "(format=memlab keeps memlab's own)"
            )
    config: dict[str, Any] = {"model_type": fmt.name, "architectures": [fmt.architecture], "dtype": dtype}
    for field in fmt.fields:
        if field.theirs:
            value = spec[field.ours]
            config[field.theirs] = field.write(value) if field.write else value
    for rule in fmt.rules:
        config[rule.theirs] = rule.value(spec) if callable(rule.value) else rule.value
    files.write(Path(out_dir), config, to_target(state, spec, fmt))
    return fmt.name


@torch.no_grad()
def load_pretrained(net: LanguageModel, source: str) -> None:
    """Load the weights of ``source`` (a checkpoint folder, or a Hub name) into ``net``, after
    checking that its config.json describes this network; ConfigError (one line, naming the
    key) otherwise."""
    source = str(source)  # what Hydra read as a number is a folder name too
    where = f"model.init_from={source}"
    folder = files.resolve(source)
    config = files.read_config(folder, where)
    spec = describe(net)
    names = set(net.state_dict())
    if config.get("model_type") == MEMLAB:
        _check_memlab(config.get("memlab", {}), spec, where)
        state = files.read_tensors(folder, where)
        if spec["tie_embeddings"]:
            state["lm_head.weight"] = state["embed.weight"]
    else:
        fmt = _format_of(config, where)
        _check_config(fmt, config, spec, where)
        state = from_target(files.read_tensors(folder, where), spec, fmt, names, where)
    here = net.state_dict()
    for name in sorted(names):
        if name not in state:
            raise ConfigError(f"{where}: the checkpoint has no weights for memlab's {name}")
        if tuple(state[name].shape) != tuple(here[name].shape):
            shapes = f"{list(state[name].shape)} in the checkpoint, {list(here[name].shape)} here"
            raise ConfigError(f"{where}: {name} is {shapes}")
    net.load_state_dict(state, strict=True)


def _format_of(config: dict[str, Any], where: str) -> Format:
    model_type = config.get("model_type")
    for fmt in FORMATS:
        if fmt.name == model_type:
            return fmt
    known = ", ".join([fmt.name for fmt in FORMATS] + [MEMLAB])
    raise ConfigError(f"{where}: model_type={model_type!r} is not one memlab reads ({known})")


def _check_config(fmt: Format, config: dict[str, Any], spec: dict[str, Any], where: str) -> None:
    if spec["mixer"] != fmt.mixer:
        raise ConfigError(
            f"model.mixer: {where} holds a {fmt.target} model, whose layers are memlab's {fmt.mixer}; "
            f"this model's are {spec['mixer']}"
        )
    for field in fmt.fields:
        if not field.checked:
            continue
        theirs = field.read(config) if field.read else fmt.value(config, field.theirs)
        if not _same(spec[field.ours], theirs):
            their_key = field.theirs or f"{fmt.architecture}'s {field.ours.removeprefix('mixer.')}"
            raise ConfigError(
                f"{config_key(field.ours)}={_show(field.ours, spec)} does not match {where}: "
                f"{their_key}={theirs!r}"
            )
    for rule in fmt.rules:
        value = fmt.value(config, rule.theirs)
        if not rule.accepts(value, config):
            raise ConfigError(f"{where}: {rule.theirs}={value!r}: memlab reads only {rule.rule}")


def _check_memlab(saved: dict[str, Any], spec: dict[str, Any], where: str) -> None:
    for key in sorted(set(saved) | set(spec)):
        if not is_runtime(key) and not _same(spec.get(key), saved.get(key)):
            raise ConfigError(
                f"{config_key(key)}={spec.get(key)!r} does not match {where}: {saved.get(key)!r}"
            )


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, bool) or isinstance(theirs, bool) or ours is None or theirs is None:
        return ours == theirs
    if isinstance(ours, int | float) and isinstance(theirs, int | float):
        return math.isclose(ours, theirs, rel_tol=1e-9)
    return ours == theirs


def _show(key: str, spec: dict[str, Any]) -> str:
    """A description value as the config key shows it (mlp_ratio: the MLP width it gives)."""
    if key == "mlp_hidden":
        return f"{spec['mlp_hidden'] / spec['d_model']:g} (an MLP {spec['mlp_hidden']} wide)"
    return repr(spec[key])
