"""The exceptions memlab reports as one ``error: …`` line, each with the exit code a script ends with.

Exit codes: 2 a user's mistake (config, data, checkpoint), 3 training diverged, 143 terminated by
SIGTERM (128 + 15, as a shell reports a process the signal killed). A traceback (exit 1) is a bug.
"""


class ConfigError(ValueError):
    """A user-facing configuration mistake; reported as one line, never a traceback."""

    exit_code = 2


class RunStopped(RuntimeError):
    """A run that ended before its horizon for a reason worth one line (its checkpoints are kept)."""

    exit_code = 1


class NonFiniteError(RunStopped):
    """A non-finite loss, gradient or weight: training stopped before it reached a checkpoint.

    ``loss``: the loss of the step it stopped at, when that was the non-finite part (it never
    reaches the logged metrics, which are published at the end of a step), else None.
    """

    exit_code = 3

    def __init__(self, message: str, loss: float | None = None) -> None:
        super().__init__(message)
        self.loss = loss


class Terminated(RunStopped):
    """The run was asked to stop (SIGTERM) and wrote a checkpoint to resume from."""

    exit_code = 143
