"""Making plots bound to a farmer key, with progress reported as a fraction in [0, 1].

chiapos prints its progress ("Progress update: 0.42") from C++ straight to file
descriptor 1, so the plotter runs in a child process whose output we parse.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from archivas.chain.pos import plot_id, plot_memo

PROGRESS_PREFIX = "Progress update:"


class PlotError(Exception):
    """Plotting failed; the message carries the plotter's last words."""


def plot_filename(k: int, pid: bytes) -> str:
    return f"plot-k{k}-{pid.hex()}.plot"


def create_plot(
    directory: str | os.PathLike[str],
    farmer_public_key: bytes,
    k: int,
    plot_nonce: Optional[bytes] = None,
    progress: Optional[Callable[[float], None]] = None,
) -> Path:
    """Create one plot in `directory`; returns its path. Blocks: run it in a thread or CLI."""
    if not 18 <= k <= 50:
        raise PlotError(f"k={k} is outside 18..50")
    nonce = plot_nonce if plot_nonce is not None else os.urandom(32)
    pid = plot_id(farmer_public_key, nonce)
    final = Path(directory)
    final.mkdir(parents=True, exist_ok=True)
    name = plot_filename(k, pid)
    if (final / name).exists():
        return final / name
    with tempfile.TemporaryDirectory(dir=final, prefix=".plotting-") as tmp:
        cmd = [sys.executable, "-m", "archivas.farmer.plotworker", tmp, str(final), name, str(k),
               plot_memo(farmer_public_key, nonce).hex(), pid.hex()]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-5:]
            if line.startswith(PROGRESS_PREFIX) and progress is not None:
                try:
                    progress(float(line[len(PROGRESS_PREFIX):]))
                except ValueError:
                    continue
        if proc.wait() != 0 or not (final / name).exists():
            raise PlotError(f"plotter exited with {proc.returncode}: {' | '.join(tail)}")
    if progress is not None:
        progress(1.0)
    return final / name
