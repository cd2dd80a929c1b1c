"""archivas-farmer plot|farm: make plots bound to a farmer key, and farm them."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Optional

from twisted.python import usage

from archivas import walletkeys
from archivas.chain.keys import KeyFileError, key_file_public_key
from archivas.client import NodeOption
from archivas.farmer.farming import Farmer
from archivas.farmer.plots import load_plots
from archivas.farmer.plotter import PlotError, check_space, create_plot, human, remove_stale_temporaries
from archivas.scripts.common import LogOptions, VersionedOptions, die, parse, serve_against_node

PROGRAM = "archivas-farmer"
BAR_WIDTH = 30


class PlotOptions(usage.Options):
    optParameters = [
        ["size", None, 18, "k, the plot size (18 or more)", int],
        ["path", None, "./plots", "directory for the plots"],
        ["farmer-key", None, None, "the farmer's key file (plots are bound to it)"],
        ["count", None, 1, "how many plots", int],
    ]

    def postOptions(self) -> None:
        if self["farmer-key"] is None:
            raise usage.UsageError("--farmer-key is required")
        if not 18 <= self["size"] <= 50:
            raise usage.UsageError("--size must be between 18 and 50")
        if self["count"] < 1:
            raise usage.UsageError("--count must be at least 1")


class FarmOptions(NodeOption, LogOptions):
    optParameters = [
        ["plots", None, "./plots", "directory of plots"],
        ["farmer-key", None, None, "the farmer's key file"],
        ["passphrase-file", None, None, "the key file's passphrase, if encrypted (else a prompt asks)"],
    ]

    def postOptions(self) -> None:
        if self["farmer-key"] is None:
            raise usage.UsageError("--farmer-key is required")
        self.check_nodes()
        LogOptions.postOptions(self)


class Options(VersionedOptions):
    program = "archivas-farmer"
    subCommands = [
        ["plot", None, PlotOptions, "make plots"],
        ["farm", None, FarmOptions, "farm plots against a node"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("say plot or farm")


class ProgressBar:
    """`plot 1/2 [#########.....................]  30%` on stderr, redrawn in place."""

    def __init__(self, index: int, count: int) -> None:
        self.index, self.count = index, count
        self.shown = False

    def __call__(self, fraction: float) -> None:
        filled = int(BAR_WIDTH * fraction)
        sys.stderr.write(f"\rplot {self.index}/{self.count} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                         f"{fraction:4.0%}")
        sys.stderr.flush()
        self.shown = True

    def end(self) -> None:
        """Leave the bar's line, so what follows starts a line of its own."""
        if self.shown:
            sys.stderr.write("\n")
            self.shown = False


class Stopped(BaseException):
    """SIGINT or SIGTERM while plotting; raised by the handler so that create_plot stops
    its worker and removes the temporary files on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_plotting(signum: int, frame: Any) -> None:
    # Once is enough: a second Ctrl-C must not interrupt the clean-up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stopped(signum)


def plot(options: PlotOptions) -> None:
    """Refuse at once without the disk space for all the plots; SIGINT or SIGTERM stop the
    worker, remove its temporary files and exit 128 + the signal's number, in one line.
    Plots are bound to the public key only: an encrypted key file needs no passphrase."""
    try:
        public_key = key_file_public_key(options["farmer-key"])
    except KeyFileError as e:
        die(PROGRAM, str(e))
    directory, k, count = options["path"], options["size"], options["count"]
    done = 0
    bar = ProgressBar(1, count)
    signal.signal(signal.SIGINT, _stop_plotting)
    signal.signal(signal.SIGTERM, _stop_plotting)
    try:
        os.makedirs(directory, exist_ok=True)
        freed = remove_stale_temporaries(directory)
        if freed:
            sys.stderr.write(f"{PROGRAM}: removed {human(freed)} of temporary files that an interrupted plot "
                             f"left in {directory}\n")
        check_space(directory, k, count)
        for i in range(count):
            bar = ProgressBar(i + 1, count)
            path = create_plot(directory, public_key, k, progress=bar)
            bar.end()
            print(path, flush=True)
            done += 1
    except Stopped as e:
        bar.end()
        sys.stderr.write(f"{PROGRAM}: stopped by {signal.Signals(e.signum).name} after {done} of {count} "
                         f"plots; the unfinished plot's temporary files are removed\n")
        sys.stderr.flush()
        raise SystemExit(128 + e.signum) from None
    except (PlotError, OSError) as e:
        bar.end()
        die(PROGRAM, str(e))


def farm(options: FarmOptions) -> None:
    try:  # before the reactor runs: opening an encrypted key takes argon2id's time
        key = walletkeys.load_key(options["farmer-key"], options["passphrase-file"])
    except KeyFileError as e:
        die(PROGRAM, str(e))
    plots = load_plots(options["plots"])
    if not plots:
        die(PROGRAM, f"no plots in {options['plots']}")
    # Every --node, as serve_against_node's one string: HttpNodeAPI reads a comma list as
    # several nodes; the farmer fails over between them and submits its blocks to all.
    serve_against_node(PROGRAM, ",".join(options["node"]), lambda api, reactor: Farmer(api, plots, key, reactor),
                       options["log-level"], options["log-format"])


def main(argv: Optional[list[str]] = None) -> None:
    options = parse(PROGRAM, Options(), sys.argv[1:] if argv is None else argv)
    if options.subCommand == "plot":
        plot(options.subOptions)
    else:
        farm(options.subOptions)


if __name__ == "__main__":
    main()
