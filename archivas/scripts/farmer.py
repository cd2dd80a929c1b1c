"""archivas-farmer plot|farm: make plots bound to a farmer key, and farm them."""

from __future__ import annotations

import sys
from typing import Any, Optional

from twisted.python import usage

from archivas.chain.keys import KeyFileError, PrivateKey
from archivas.farmer.farming import Farmer
from archivas.farmer.plots import load_plots
from archivas.farmer.plotter import PlotError, create_plot
from archivas.scripts.common import VersionedOptions, die, parse, serve_against_node

PROGRAM = "archivas-farmer"
BAR_WIDTH = 30


def load_key(path: str) -> PrivateKey:
    try:
        return PrivateKey.load(path)
    except KeyFileError as e:
        die(PROGRAM, str(e))


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


class FarmOptions(usage.Options):
    optParameters = [
        ["plots", None, "./plots", "directory of plots"],
        ["farmer-key", None, None, "the farmer's key file"],
        ["node", None, "http://localhost:8080", "the node's RPC URL"],
    ]

    def postOptions(self) -> None:
        if self["farmer-key"] is None:
            raise usage.UsageError("--farmer-key is required")


class Options(VersionedOptions):
    program = "archivas-farmer"
    subCommands = [
        ["plot", None, PlotOptions, "make plots"],
        ["farm", None, FarmOptions, "farm plots against a node"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("say plot or farm")


def progress_bar(index: int, count: int) -> Any:
    def show(fraction: float) -> None:
        filled = int(BAR_WIDTH * fraction)
        sys.stderr.write(f"\rplot {index}/{count} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%}")
        sys.stderr.flush()

    return show


def plot(options: PlotOptions) -> None:
    key = load_key(options["farmer-key"])
    for i in range(options["count"]):
        try:
            path = create_plot(options["path"], key.public_key, options["size"],
                               progress=progress_bar(i + 1, options["count"]))
        except (PlotError, OSError) as e:
            sys.stderr.write("\n")
            die(PROGRAM, str(e))
        sys.stderr.write("\n")
        print(path)


def farm(options: FarmOptions) -> None:
    key = load_key(options["farmer-key"])
    plots = load_plots(options["plots"])
    if not plots:
        die(PROGRAM, f"no plots in {options['plots']}")
    serve_against_node(PROGRAM, options["node"], lambda api, reactor: Farmer(api, plots, key, reactor))


def main(argv: Optional[list[str]] = None) -> None:
    options = parse(PROGRAM, Options(), sys.argv[1:] if argv is None else argv)
    if options.subCommand == "plot":
        plot(options.subOptions)
    else:
        farm(options.subOptions)


if __name__ == "__main__":
    main()
