"""Tokenizers for streamed text: the built-in byte-level one, or any Hugging Face ``tokenizer.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from memlab.errors import ConfigError

BYTES = "bytes"
# End-of-text spellings of common tokenizers, tried in order when data.eos_token is not given
# and the tokenizer's folder has no tokenizer_config.json naming one.
_EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]")


class TextTokenizer(Protocol):
    """What the text pipeline needs from a tokenizer; ids are int32 numpy arrays."""

    name: str
    vocab_size: int
    eos_id: int

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 and end-of-text as 256: needs no file and no download.

    ``vocab_size`` is 257. Decoding drops ids outside the bytes (the end-of-text id) and
    replaces invalid UTF-8 sequences.
    """

    name = BYTES
    vocab_size = 257
    eos_id = 256

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int32) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (any Hugging Face tokenizer.json); special tokens are not added."""

    def __init__(self, tokenizer: object, name: str, eos_id: int) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self.eos_id = int(eos_id)
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def load_tokenizer(spec: str, eos_token: str | None = None, cache_dir: Path | None = None) -> TextTokenizer:
    """``bytes``, a local tokenizer.json (or a folder holding one), or a Hub repository name.

    The end-of-text token is ``eos_token`` if given, else the ``eos_token`` of a
    tokenizer_config.json next to the tokenizer.json, else the first of the usual spellings
    the vocabulary has. Hub files are cached under ``cache_dir``. Every failure (missing
    file, unknown repository, Hub unreachable, no end-of-text token) is a ConfigError.
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"data.tokenizer: expected `bytes`, a path or a Hub name (got {spec!r})")
    if spec == BYTES:
        return ByteTokenizer()
    path = Path(spec).expanduser()
    if path.exists():
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(f"data.tokenizer={spec}: no tokenizer.json in that folder")
        return _from_file(file, spec, eos_token, file.parent / "tokenizer_config.json")
    if spec.startswith((".", "/", "~")) or spec.endswith(".json") or spec.count("/") > 1:
        raise ConfigError(f"data.tokenizer={spec}: no such file or folder")
    file, config = _download(spec, cache_dir)
    return _from_file(file, spec, eos_token, config)


def _download(repo: str, cache_dir: Path | None) -> tuple[Path, Path | None]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        file = Path(hf_hub_download(repo, "tokenizer.json", cache_dir=cache_dir))
    except GatedRepoError as exc:
        raise ConfigError(
            f"data.tokenizer={repo}: the Hub repository is gated (log in and accept its terms)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ConfigError(f"data.tokenizer={repo}: no such tokenizer on the Hugging Face Hub") from exc
    except LocalEntryNotFoundError as exc:  # a subclass of EntryNotFoundError: test it first
        raise ConfigError(
            f"data.tokenizer={repo}: cannot reach the Hugging Face Hub and it is not cached in {cache_dir}"
        ) from exc
    except EntryNotFoundError as exc:
        raise ConfigError(f"data.tokenizer={repo}: the Hub repository has no tokenizer.json") from exc
    except OSError as exc:
        raise ConfigError(
            f"data.tokenizer={repo}: download failed ({exc.__class__.__name__}: {exc})"
        ) from exc
    try:
        config = Path(hf_hub_download(repo, "tokenizer_config.json", cache_dir=cache_dir))
    except (OSError, ValueError):
        config = None
    return file, config


def _from_file(file: Path, spec: str, eos_token: str | None, config: Path | None) -> HFTokenizer:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:
        raise ConfigError(f"data.tokenizer={spec}: {file} is not a readable tokenizer.json ({exc})") from exc
    candidates = [eos_token] if eos_token else [*_config_eos(config), *_EOS_CANDIDATES]
    for token in candidates:
        eos_id = tokenizer.token_to_id(token)
        if eos_id is not None:
            return HFTokenizer(tokenizer, spec, eos_id)
    if eos_token:
        raise ConfigError(f"data.eos_token={eos_token}: not in the vocabulary of tokenizer {spec}")
    raise ConfigError(f"data.tokenizer={spec}: no end-of-text token found; name it with data.eos_token=...")


def _config_eos(config: Path | None) -> list[str]:
    """The eos_token a tokenizer_config.json names (a string or an AddedToken dict), if any."""
    if config is None or not config.is_file():
        return []
    try:
        eos = json.loads(config.read_text()).get("eos_token")
    except (OSError, ValueError):
        return []
    if isinstance(eos, dict):
        eos = eos.get("content")
    return [eos] if isinstance(eos, str) and eos else []
