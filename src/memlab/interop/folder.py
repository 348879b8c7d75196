"""A Hugging Face checkpoint folder: config.json and the weights beside it, read and written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from memlab.errors import ConfigError

WEIGHTS = "model.safetensors"
# what a Hub download fetches: the config and the weights, in any of the layouts read below
_HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]


def resolve(source: str) -> Path:
    """``model.init_from``'s folder: ``source`` itself where it is a local folder, else the Hub
    repository of that name, downloaded (or found in the cache) by huggingface_hub."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ConfigError(
            f"model.init_from={source}: no such folder (a Hugging Face Hub name reads <owner>/<name>)"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ConfigError(
            f"model.init_from={source}: not a local folder, and reading the Hub needs huggingface_hub "
            "(pip install 'memlab[interop]')"
        ) from exc
    try:
        return Path(snapshot_download(source, allow_patterns=_HUB_FILES))
    except Exception as exc:  # offline, unknown repository, gated model: all one line
        message = f"model.init_from={source}: not a local folder, and the Hub download failed: {exc}"
        raise ConfigError(message) from exc


def read_config(folder: Path, source: str) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{source}: no config.json in {folder}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: {path} is not JSON ({exc})") from exc


def read_tensors(folder: Path, source: str) -> dict[str, torch.Tensor]:
    """The weights of ``folder``: model.safetensors, its shards (model.safetensors.index.json) or
    pytorch_model.bin (loaded as tensors only)."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if (folder / WEIGHTS).is_file():
        return load_file(folder / WEIGHTS)
    if index.is_file():
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            tensors.update(load_file(folder / shard))
        return tensors
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ConfigError(f"{source}: no {WEIGHTS}, sharded safetensors or pytorch_model.bin in {folder}")


def write(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """config.json and model.safetensors into ``folder`` (created)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
