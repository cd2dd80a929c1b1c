"""Making plots bound to a farmer key, with progress reported as a fraction in [0, 1].

chiapos prints its progress ("Progress update: 0.42") from C++ straight to file
descriptor 1, so the plotter runs in a child process whose output we parse.

Safety: before a plot starts, the directory must have room for it at its peak (the
temporary files and the plot being written; `space_needed`, sizes per k in
docs/operations.md). The worker writes only inside a hidden `.plotting-*` folder that this
process holds locked; whatever ends the plot (an error, KeyboardInterrupt, an exception
raised by a signal handler) stops the worker and removes the folder before it propagates.
A folder whose owner was killed outright (SIGKILL) is unlocked, and the next plot in that
directory removes it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from archivas.chain.pos import plot_id, plot_memo
from archivas.farmer.plotworker import PARENT_ENV

PROGRESS_PREFIX = "Progress update:"
TEMP_PREFIX = ".plotting-"
LOCK_NAME = "lock"
WORKER_STOP_SECONDS = 5.0  # SIGTERM, then SIGKILL after this long
GIB = 1 << 30
MIB = 1 << 20

# Bytes on disk, as multiples of space(k) = (2k+1) * 2^(k-1) (consensus' space function),
# measured with this project's settings (plotworker.plotter_settings) for k=18..25: a
# finished plot is 0.75..0.83 space(k) (it varies with the plot id, most at small k), and
# the temporary folder peaks at 1.78..2.04 space(k), the plot being written included. The
# bounds below leave 8% and 10% above the largest; chia's published k=32 figures (101.4 GiB
# plot, 239 GiB temporary space) are 0.78 and 1.84 space(32). docs/operations.md has the table.
FINAL_FACTOR = 0.90
PEAK_FACTOR = 2.25
SPACE_MARGIN = 64 * MIB  # a little room for the file system and the plot's neighbours


class PlotError(Exception):
    """Plotting failed; the message carries the plotter's last words."""


class NotEnoughSpace(PlotError):
    """The directory cannot hold the plot(s) at their peak; nothing was started."""


def plot_filename(k: int, pid: bytes) -> str:
    return f"plot-k{k}-{pid.hex()}.plot"


def space(k: int) -> int:
    return (2 * k + 1) * (1 << (k - 1))


def expected_plot_size(k: int) -> int:
    """Bytes of a finished k plot, an upper bound (k=18: 4.4 MB; 3.6 to 4.0 MB measured)."""
    return int(space(k) * FINAL_FACTOR)


def expected_temp_size(k: int) -> int:
    """Peak bytes of the temporary folder while a k plot is made (the plot itself included)."""
    return int(space(k) * PEAK_FACTOR)


def space_needed(k: int, count: int = 1) -> int:
    """Free bytes needed to make `count` plots of size k one after the other in one directory."""
    return (count - 1) * expected_plot_size(k) + expected_temp_size(k) + SPACE_MARGIN


def human(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def check_space(directory: str | os.PathLike[str], k: int, count: int = 1) -> None:
    """Raise NotEnoughSpace naming the need and what is free, before anything is written."""
    need = space_needed(k, count)
    free = shutil.disk_usage(directory).free
    if free < need:
        plots = f"1 plot of k={k} needs" if count == 1 else f"{count} plots of k={k} need"
        raise NotEnoughSpace(
            f"not enough disk space in {directory}: {plots} {human(need)} "
            f"({human(expected_plot_size(k))} per plot, {human(expected_temp_size(k))} of temporary "
            f"files while one is made), {human(free)} is free")


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> int:
    """Remove `.plotting-*` folders no live plotter holds (their owner was killed);
    returns the bytes freed. A folder without our lock file is left alone."""
    freed = 0
    base = Path(directory)
    if not base.is_dir():
        return 0
    for folder in base.glob(TEMP_PREFIX + "*"):
        try:
            fd = os.open(folder / LOCK_NAME, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a plotter is at work in there
        try:
            freed += _tree_bytes(folder)
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
    return freed


def stop_worker(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the worker, SIGKILL it if it is still there after WORKER_STOP_SECONDS."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=WORKER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def create_plot(
    directory: str | os.PathLike[str],
    farmer_public_key: bytes,
    k: int,
    plot_nonce: Optional[bytes] = None,
    progress: Optional[Callable[[float], None]] = None,
) -> Path:
    """Create one plot in `directory`; returns its path. Blocks: run it in a thread or CLI.
    Raises NotEnoughSpace (nothing started) or PlotError; on any exception, including
    KeyboardInterrupt, the worker is stopped and its temporary files are gone."""
    if not 18 <= k <= 50:
        raise PlotError(f"k={k} is outside 18..50")
    nonce = plot_nonce if plot_nonce is not None else os.urandom(32)
    pid = plot_id(farmer_public_key, nonce)
    final = Path(directory)
    final.mkdir(parents=True, exist_ok=True)
    name = plot_filename(k, pid)
    if (final / name).exists():
        return final / name
    remove_stale_temporaries(final)
    check_space(final, k)
    tmp = Path(tempfile.mkdtemp(dir=final, prefix=TEMP_PREFIX))
    # Locked before it takes the name others look for, so no one sees it unlocked.
    lock = os.open(tmp / (LOCK_NAME + ".new"), os.O_CREAT | os.O_RDWR, 0o600)
    proc: Optional[subprocess.Popen[str]] = None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.rename(tmp / (LOCK_NAME + ".new"), tmp / LOCK_NAME)
        # chiapos writes the plot in tmp too; we move it into place when it is whole.
        cmd = [sys.executable, "-m", "archivas.farmer.plotworker", str(tmp), str(tmp), name, str(k),
               plot_memo(farmer_public_key, nonce).hex(), pid.hex()]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, PARENT_ENV: str(os.getpid())})
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-5:]
            if line.startswith(PROGRESS_PREFIX) and progress is not None:
                try:
                    progress(float(line[len(PROGRESS_PREFIX):]))
                except ValueError:
                    continue
        if proc.wait() != 0 or not (tmp / name).exists():
            raise PlotError(f"plotter exited with {proc.returncode}: {' | '.join(tail)}")
        os.replace(tmp / name, final / name)
    finally:
        if proc is not None:
            stop_worker(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(lock)
    if progress is not None:
        progress(1.0)
    return final / name
