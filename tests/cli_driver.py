"""Run one script many times from one interpreter: its imports once, then a forked child per
argument list, each with its own stdout, stderr and exit code, as if started on its own.

    python tests/cli_driver.py scripts/train.py jobs.json

jobs.json maps a name to {"args": [...], "stdout": path, "stderr": path}; the exit codes are
written to jobs.json's folder as codes.json. The imports (torch, Lightning, Hydra) are most of
a failing start-up's time; a batch of start-up failures shares them.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback
from pathlib import Path


def _child(script: str, job: dict) -> None:
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = [script, *job["args"]]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException:  # as the interpreter would: the traceback, exit status 1
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    script, jobs_path = sys.argv[1], Path(sys.argv[2])
    jobs = json.loads(jobs_path.read_text())
    runpy.run_path(script, run_name="__imports__")  # the module level only: imports, no run
    sys.stdout.flush()
    sys.stderr.flush()
    children = {}
    for name, job in jobs.items():
        pid = os.fork()
        if pid == 0:
            _child(script, job)
        children[name] = pid
    codes = {name: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for name, pid in children.items()}
    (jobs_path.parent / "codes.json").write_text(json.dumps(codes))


if __name__ == "__main__":
    main()
