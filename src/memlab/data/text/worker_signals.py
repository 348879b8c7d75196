"""Loader workers that outlive a SIGTERM sent to the whole job.

A scheduler (SLURM, say) signals every process of the job. A DataLoader worker killed by it
makes torch raise "worker killed by signal" in the parent at whatever line the parent is on,
even inside the exception checkpoint's save. The training process handles SIGTERM itself and
shuts its workers down; so a worker blocks SIGTERM and exits on it only when its parent sent it
(as multiprocessing does at exit, which then waits for the worker without a timeout).
"""

from __future__ import annotations

import os
import signal
import threading


def exit_on_parents_sigterm_only(worker_id: int) -> None:
    """``worker_init_fn``: block SIGTERM in this worker (threads started later inherit the mask)
    and exit at once on one that comes from the parent."""
    del worker_id
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)

    threading.Thread(target=wait, name="sigterm-from-parent", daemon=True).start()
