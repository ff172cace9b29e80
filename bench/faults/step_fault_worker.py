"""A Celery worker whose training step raises: the fault injection of worker_raises.py.

With ``DYART_FAULT_RAISE_AT_STEP=N`` in its environment, the N-th call of
``dyart.methods.clean.Clean.step`` in this process raises the error a failing
accelerator gives (``RuntimeError: CUDA error: an illegal memory access ...``);
``DYART_FAULT_TIMES`` (default 1) says how many steps in a row raise, so a
resumed job on the same worker runs clean. With ``DYART_FAULT_HANG_AT_STEP=N``
instead, the N-th call never returns (a hung GPU or data loader). The rest of the
command line is Celery's, as for ``celery``:

    DYART_FAULT_RAISE_AT_STEP=40 python bench/faults/step_fault_worker.py -A worker.app worker
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from dyart.methods.clean import Clean

AT = int(os.environ.get("DYART_FAULT_RAISE_AT_STEP", "0"))
HANG_AT = int(os.environ.get("DYART_FAULT_HANG_AT_STEP", "0"))
TIMES = int(os.environ.get("DYART_FAULT_TIMES", "1"))
_original = Clean.step
_calls = 0


def _step(self: Clean, model: Any, x: Any, y: Any) -> Any:
    global _calls
    _calls += 1
    if _calls == HANG_AT:
        threading.Event().wait()  # forever
    if AT and AT <= _calls < AT + TIMES:
        raise RuntimeError(
            "CUDA error: an illegal memory access was encountered "
            f"(fault injected at step {_calls} of worker process {os.getpid()})"
        )
    return _original(self, model, x, y)


Clean.step = _step

if __name__ == "__main__":
    from celery.__main__ import main

    sys.argv = ["celery", *sys.argv[1:]]
    sys.exit(main())
