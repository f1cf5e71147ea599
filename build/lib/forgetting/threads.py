"""How many CPU threads torch uses: one unless asked, because the package's models are small.

On a 2-core machine with other jobs running, torch's default of one thread per core made a training
step of the 0.9M-parameter embedded model 8.6x slower than one thread (OpenMP threads spin-wait on each
other when a core is taken), and turned a chapter of about a minute into 880 s. A second thread gains
nothing at this size. ``OMP_NUM_THREADS`` or ``FORGETTING_THREADS`` (for example on a large machine with
a real model) take precedence.
"""

from __future__ import annotations

import os

DEFAULT_THREADS = 1


def wanted_threads() -> int | None:
    """``FORGETTING_THREADS``, else ``None`` when ``OMP_NUM_THREADS`` is set (torch already follows it),
    else ``DEFAULT_THREADS``."""
    if os.environ.get("FORGETTING_THREADS"):
        return max(1, int(os.environ["FORGETTING_THREADS"]))
    return None if os.environ.get("OMP_NUM_THREADS") else DEFAULT_THREADS


def configure_threads() -> None:
    """Set torch's intra-op threads to :func:`wanted_threads` (a no-op when torch should follow
    ``OMP_NUM_THREADS``)."""
    n = wanted_threads()
    if n is not None:
        import torch  # deferred: this module is read by the command line before it needs torch

        torch.set_num_threads(n)


def kernel_threads_env() -> dict[str, str]:
    """The variables that give a chapter's kernel the same thread count (set before torch loads)."""
    n = wanted_threads()
    return {} if n is None else {"OMP_NUM_THREADS": str(n)}
