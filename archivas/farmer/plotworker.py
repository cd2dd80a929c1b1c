"""Child process that runs chiapos' plotter (its C++ progress output goes to our stdout).

Usage: python -m archivas.farmer.plotworker TMPDIR FINALDIR FILENAME K MEMO_HEX PLOT_ID_HEX
"""

import sys

from chiapos import DiskPlotter


def plotter_settings(k: int) -> tuple[int, int, int]:
    """(buffer MiB, buckets, stripe size): small k needs a small stripe (see SPEC field notes)."""
    if k <= 20:
        return 200, 32, 2000
    return 3389, 128, 65536


def main(argv: list[str]) -> int:
    tmp, final, filename, k, memo, pid = argv
    buffer_mib, buckets, stripe = plotter_settings(int(k))
    DiskPlotter().create_plot_disk(
        tmp, tmp, final, filename, int(k), bytes.fromhex(memo), bytes.fromhex(pid),
        buffer_mib, buckets, stripe, 2, False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
