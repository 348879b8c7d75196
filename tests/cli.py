"""Run scripts/train.py and scripts/eval.py as a user would: a real subprocess, real exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .conftest import ROOT, TINY


def run_cli(*args: str, script: str = "train.py", timeout: float = 300) -> subprocess.CompletedProcess:
    """The script run with ``args`` from the repository root, as a user runs it: without Triton's
    interpreter, and with ``tests`` importable (for the callbacks some tests add with
    ``+callbacks.<name>._target_=tests.faults....``)."""
    return subprocess.run(_command(script, args), capture_output=True, text=True, timeout=timeout, **_how())


def run_cli_all(
    runs: dict[str, tuple[str, ...]], script: str = "train.py", timeout: float = 300
) -> dict[str, subprocess.CompletedProcess]:
    """run_cli for each named argument list, side by side, each a child forked from one
    interpreter that imported the script once (tests/cli_driver.py): for batches of start-up
    failures, which spend most of their time importing."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jobs = {
            name: {"args": list(args), "stdout": str(folder / f"{i}.out"), "stderr": str(folder / f"{i}.err")}
            for i, (name, args) in enumerate(runs.items())
        }
        (folder / "jobs.json").write_text(json.dumps(jobs))
        command = [sys.executable, str(ROOT / "tests" / "cli_driver.py"), str(ROOT / "scripts" / script)]
        driver = subprocess.run(
            [*command, str(folder / "jobs.json")], capture_output=True, text=True, timeout=timeout, **_how()
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        codes = json.loads((folder / "codes.json").read_text())
        return {
            name: subprocess.CompletedProcess(
                [*_command(script, runs[name])],
                codes[name],
                Path(job["stdout"]).read_text(),
                Path(job["stderr"]).read_text(),
            )
            for name, job in jobs.items()
        }


def start_cli(*args: str, script: str = "train.py") -> subprocess.Popen:
    """As run_cli, started in the background in a process group of its own (a shell's job), which
    a test can signal as a scheduler signals a job: ``os.killpg(process.pid, ...)``."""
    command = _command(script, args)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **_how())


def _command(script: str, args: tuple[str, ...]) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / script), *args]


def _how() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {"cwd": ROOT, "env": env, "start_new_session": True}


def tiny_run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """scripts/train.py at the TINY size, without the progress bar and model summary."""
    quiet = ["callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]
    return run_cli(*TINY, *quiet, *args, **kwargs)


def error_line(res: subprocess.CompletedProcess) -> str:
    """The one ``error: …`` line a failed run ends with; asserts there is no traceback and no other
    error line (the run's own log lines may precede it)."""
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert res.stderr.rstrip().endswith(errors[0]), res.stderr[-3000:]
    return errors[0]
