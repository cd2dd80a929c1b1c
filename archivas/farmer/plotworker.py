"""Child process that runs chiapos' plotter (its C++ progress output goes to our stdout).

Usage: python -m archivas.farmer.plotworker TMPDIR FINALDIR FILENAME K MEMO_HEX PLOT_ID_HEX

The worker dies with its parent: SIGINT and SIGTERM end it at once (chiapos runs in C++
for minutes, where a Python handler would only run at the end), and on Linux the kernel
sends it SIGKILL when the process that started it goes away, so it never writes on into
a folder that its parent has removed. The parent (archivas.farmer.plotter) names itself in
ARCHIVAS_PLOTTER_PID so a worker whose parent died before that was armed exits too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_ENV = "ARCHIVAS_PLOTTER_PID"
MAX_STRIPE = 65536  # chiapos' default, for large k
LARGE_BUFFER_MIB = 3389  # chia's default buffer for k >= 21 (little of it is touched below k=25)
LARGE_BUCKETS = 128


def max_table_bytes(k: int) -> float:
    """chiapos' largest phase-1 table: 1.3 * 2^k entries of (6k + 17) bits, byte aligned."""
    return 1.3 * (1 << k) * (-(-(6 * k + 17) // 8))


def plotter_settings(k: int) -> tuple[int, int, int]:
    """(buffer MiB, buckets, stripe size). chiapos refuses a stripe above
    max_table_bytes / buckets / 30 ("Stripe size too large"), so the stripe is the largest
    power of two under that bound up to 65536: 8192 at k=21, 16384 at 22, 32768 at 23,
    65536 from k=24 up."""
    if k <= 20:
        return 200, 32, 2000  # see SPEC field notes; the shipped test plots are made so
    bound = max_table_bytes(k) / LARGE_BUCKETS / 30
    stripe = MAX_STRIPE
    while stripe > bound:
        stripe //= 2
    return LARGE_BUFFER_MIB, LARGE_BUCKETS, stripe


def die_with_parent() -> None:
    """Default SIGINT (no KeyboardInterrupt after minutes of C++), SIGKILL when the parent goes."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    expected = os.environ.get(PARENT_ENV)
    if expected is not None and expected.isdigit() and os.getppid() != int(expected):
        raise SystemExit(1)  # the parent is already gone: nobody would clean up after us


def main(argv: list[str]) -> int:
    die_with_parent()
    from chiapos import DiskPlotter

    tmp, final, filename, k, memo, pid = argv
    buffer_mib, buckets, stripe = plotter_settings(int(k))
    DiskPlotter().create_plot_disk(
        tmp, tmp, final, filename, int(k), bytes.fromhex(memo), bytes.fromhex(pid),
        buffer_mib, buckets, stripe, 2, False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
