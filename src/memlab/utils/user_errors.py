"""Turn a user's mistake, or a run's reasoned stop, into one readable line and a non-zero exit;
let real bugs raise."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any

import torch
from hydra.errors import HydraException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import OmegaConfBaseException

from memlab.errors import ConfigError, RunStopped

USER_ERRORS = (ConfigError, HydraException, OmegaConfBaseException, MisconfigurationException)
# Files and folders the user pointed memlab at that it cannot use (no permission, a folder that is
# a file, a read-only or full disk): the path and the reason say it all.
_FILE_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENOSPC,
    errno.EDQUOT,
}
# Lines of OmegaConf/Hydra messages that locate the error but repeat what the first line says.
_NOISE = ("full_key:", "object_type=", "reference_type=", "Set the environment variable HYDRA_FULL_ERROR")
# Where a message turns from what went wrong to where Hydra looked.
_TAIL = ("Config search path:",)
_WORKER_TRACEBACK = "Original Traceback"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def user_error(exc: BaseException) -> BaseException | None:
    """The exception to report for a user's mistake anywhere in exc's cause chain, else None."""
    chain = _chain(exc)
    for cause in chain:
        if isinstance(cause, ConfigError | RunStopped):
            return cause
    for cause in chain:
        if isinstance(cause, USER_ERRORS):
            return cause
    for cause in chain:
        if isinstance(cause, OSError) and cause.errno in _FILE_ERRNOS and cause.filename:
            return ConfigError(f"{cause.filename}: {cause.strerror}")
    for cause in chain:
        if isinstance(cause, torch.OutOfMemoryError):
            # a size the user chose that the device cannot hold: say how much, and what to turn
            sentences = [part.strip() for part in str(cause).split(". ") if part.strip()]
            detail = "; ".join(sentences[:2]) or "out of memory"
            return ConfigError(
                f"{detail}. Lower data.batch_size or data.seq_len, or move batch into "
                "trainer.accumulate_grad_batches (a crashed run keeps its last checkpoint)"
            )
    return None


def one_line(exc: BaseException) -> str:
    """A multi-line library message squeezed to its meaningful lines, joined on one line."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    if any(ln.startswith(_WORKER_TRACEBACK) for ln in lines):
        # Raised in a DataLoader worker: PyTorch re-raises it with the worker's traceback as the
        # message, whose last line is "<module>.<Class>: <the original message>".
        last = next(ln for ln in reversed(lines) if ln)
        return last.split(": ", 1)[1] if f"{exc.__class__.__name__}: " in last else last
    kept = [ln for ln in lines if ln and not ln.startswith(_NOISE)]
    text = " ".join(kept)
    for marker in _TAIL:
        text = text.split(marker)[0].strip()
    return text or exc.__class__.__name__


def exit_on_user_error(main: Callable[[], Any]) -> None:
    """Run a Hydra entry point; report a user error or a stopped run as ``error: <one line>`` and
    exit with its code (2 for a user's mistake; see ``memlab.errors``).

    Hydra must let exceptions through (``HYDRA_FULL_ERROR=1``) for this to see them.
    """
    stderr = sys.stderr
    sys.stderr = _Without(stderr, "Error executing job with overrides")
    try:
        main()
    except Exception as exc:
        sys.stderr = stderr
        reported = user_error(exc)
        if reported is None:
            raise
        print(f"error: {one_line(reported)}", file=sys.stderr)
        sys.exit(getattr(reported, "exit_code", 2))
    finally:
        sys.stderr = stderr


class _Without:
    """A text stream that drops writes starting with ``prefix`` (Hydra writes one such line to
    stderr before re-raising a job's exception, which is then reported on its own line)."""

    def __init__(self, stream: Any, prefix: str) -> None:
        self._stream, self._prefix = stream, prefix

    def write(self, text: str) -> int:
        return len(text) if text.startswith(self._prefix) else self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
