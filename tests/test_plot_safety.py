"""Plotting safely (issue "What operators and farmers see"): SIGINT or SIGTERM stop
`archivas-farmer plot` and its worker and leave no temporary file, in one line and without
a traceback; a plot that would not fit on the disk is refused before anything is written;
a temporary folder whose plotter was killed outright is removed by the next plot."""

import fcntl
import io
import os
import signal
import subprocess
import sys
from collections import namedtuple
from contextlib import redirect_stderr
from pathlib import Path

from twisted.internet import defer
from twisted.trial import unittest

from archivas.chain.keys import PrivateKey
from archivas.farmer import plotter
from archivas.farmer.plots import load_plots
from archivas.farmer.plotter import (
    LOCK_NAME,
    TEMP_PREFIX,
    NotEnoughSpace,
    create_plot,
    expected_plot_size,
    expected_temp_size,
    remove_stale_temporaries,
    space_needed,
)
from archivas.scripts import farmer
from archivas.testing.chainbuilder import shared_plots
from tests.test_processes import wait_for

BIN = Path(sys.executable).parent
K_LONG = 22  # ~25 s of plotting on 2 cores: it is still at work when the signal comes
STOP_DEADLINE = 10.0  # parent, worker and files gone within this after the signal
START_DEADLINE = 60.0

Usage = namedtuple("Usage", "total used free")


def worker_pids(pid: int) -> list[int]:
    """The children of `pid`, from /proc/<pid>/task/*/children."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for init (pid 1) to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def temporaries(directory: str) -> list[Path]:
    return sorted(Path(directory).glob(TEMP_PREFIX + "*")) if os.path.isdir(directory) else []


class InterruptedPlot(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.key = os.path.join(self.dir, "farmer.key")
        PrivateKey.from_secret(b"plot safety").save(self.key)
        self.plots = os.path.join(self.dir, "plots")

    async def interrupt(self, sig: int, whole_group: bool) -> tuple[int, str]:
        """Start a long plot, wait until its worker writes, signal it; return (status, stderr)."""
        err_path = os.path.join(self.dir, "stderr.txt")
        err = open(err_path, "wb")
        proc = subprocess.Popen(
            [str(BIN / "archivas-farmer"), "plot", "--size", str(K_LONG), "--path", self.plots,
             "--farmer-key", self.key],
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )

        def cleanup():
            for pid in [proc.pid, *worker_pids(proc.pid)]:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=30)
            err.close()

        self.addCleanup(cleanup)
        workers: list[int] = []

        async def writing():
            # The worker exists and chiapos has written into the temporary folder.
            workers[:] = worker_pids(proc.pid)
            return bool(workers) and any(f.stat().st_size > 0 for t in temporaries(self.plots)
                                         for f in t.iterdir() if f.is_file())

        await wait_for(writing, "the plot's worker writing its temporary files", START_DEADLINE)
        self.assertIsNone(proc.poll())
        if whole_group:
            os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does
        else:
            os.kill(proc.pid, sig)  # what kill(1) or systemd does

        async def gone():
            return proc.poll() is not None and not any(alive(w) for w in workers) and not temporaries(self.plots)

        await wait_for(gone, "the plotter, its worker and its temporary files to be gone", STOP_DEADLINE)
        err.close()
        return proc.returncode, Path(err_path).read_text()

    def check(self, status: int, stderr: str, name: str, number: int) -> None:
        self.assertEqual(status, 128 + number, stderr)
        self.assertNotIn("Traceback", stderr)
        last = stderr.replace("\r", "\n").strip().splitlines()[-1]
        self.assertEqual(last, f"archivas-farmer: stopped by {name} after 0 of 1 plots; "
                               "the unfinished plot's temporary files are removed")
        self.assertEqual(os.listdir(self.plots), [])

    @defer.inlineCallbacks
    def test_ctrl_c_stops_worker_and_removes_files(self):
        status, stderr = yield defer.ensureDeferred(self.interrupt(signal.SIGINT, whole_group=True))
        self.check(status, stderr, "SIGINT", 2)

    @defer.inlineCallbacks
    def test_sigint_to_the_plotter_alone(self):
        status, stderr = yield defer.ensureDeferred(self.interrupt(signal.SIGINT, whole_group=False))
        self.check(status, stderr, "SIGINT", 2)

    @defer.inlineCallbacks
    def test_sigterm_stops_worker_and_removes_files(self):
        status, stderr = yield defer.ensureDeferred(self.interrupt(signal.SIGTERM, whole_group=False))
        self.check(status, stderr, "SIGTERM", 15)


class DiskSpace(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.key = os.path.join(self.dir, "farmer.key")
        PrivateKey.from_secret(b"plot safety").save(self.key)
        self.plots = os.path.join(self.dir, "plots")

    def free(self, n: int) -> None:
        self.patch(plotter.shutil, "disk_usage", lambda path: Usage(10 * n, 9 * n, n))

    def run_cli(self, *argv: str) -> tuple[int, str]:
        err = io.StringIO()
        # The plot subcommand sets SIGINT/SIGTERM handlers for its run: the runner's come back.
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with redirect_stderr(err):
                farmer.main(["plot", *argv])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)
        return code, err.getvalue()

    def test_refused_with_one_line_naming_need_and_free(self):
        self.free(100 * plotter.MIB)
        code, err = self.run_cli("--size", "25", "--path", self.plots, "--farmer-key", self.key)
        self.assertEqual(code, 1)
        self.assertEqual(err.count("\n"), 1, err)
        need = space_needed(25)
        self.assertEqual(
            err, f"archivas-farmer: error: not enough disk space in {self.plots}: 1 plot of k=25 needs "
                 f"{plotter.human(need)} ({plotter.human(expected_plot_size(25))} per plot, "
                 f"{plotter.human(expected_temp_size(25))} of temporary files while one is made), 100 MiB is free\n")
        self.assertEqual(os.listdir(self.plots), [])  # nothing started

    def test_count_is_checked_up_front(self):
        # Room for one k=18 plot at its peak, not for three plots.
        self.free(space_needed(18, 1))
        code, err = self.run_cli("--size", "18", "--count", "3", "--path", self.plots, "--farmer-key", self.key)
        self.assertEqual(code, 1)
        self.assertIn("3 plots of k=18 need", err)
        self.assertEqual(os.listdir(self.plots), [])

    def test_create_plot_refuses_before_writing(self):
        self.free(space_needed(18) - 1)
        with self.assertRaisesRegex(NotEnoughSpace, "1 plot of k=18 needs .* is free"):
            create_plot(self.plots, b"\x01" * 32, 18)
        self.assertEqual(os.listdir(self.plots), [])

    def test_encrypted_key_file_plots_without_its_passphrase(self):
        # Plots are bound to the public key, which an encrypted key file holds in clear.
        key = PrivateKey.from_secret(b"plot safety, encrypted")
        path = os.path.join(self.dir, "encrypted.key")
        key.save(path, "a passphrase nobody types", kdf="interactive")
        code, err = self.run_cli("--size", "18", "--path", self.plots, "--farmer-key", path)
        self.assertEqual(code, 0, err)
        [plot] = load_plots(self.plots)
        self.assertEqual(plot.farmer_public_key, key.public_key)

    def test_sizes_bound_a_real_plot_and_grow_with_k(self):
        # The shipped test plots are k=18, made with the worker's settings.
        path = shared_plots(1)[0][1].path
        self.assertLessEqual(os.stat(path).st_blocks * 512, expected_plot_size(18))
        for k in range(18, 40):
            self.assertGreater(expected_temp_size(k), 2 * expected_plot_size(k))
            self.assertGreater(expected_plot_size(k + 1), 2 * expected_plot_size(k))
        # Chia's published k=32 figures: 101.4 GiB plot, 239 GiB temporary space.
        self.assertGreater(expected_plot_size(32), 101.4 * plotter.GIB)
        self.assertGreater(expected_temp_size(32), 239 * plotter.GIB)
        self.assertEqual(space_needed(20, 3),
                         2 * expected_plot_size(20) + expected_temp_size(20) + plotter.SPACE_MARGIN)


class StaleTemporaries(unittest.TestCase):
    def test_unlocked_folder_is_removed_and_a_held_one_kept(self):
        directory = self.mktemp()
        os.makedirs(directory)
        stale = Path(directory, TEMP_PREFIX + "stale")
        held = Path(directory, TEMP_PREFIX + "held")
        foreign = Path(directory, TEMP_PREFIX + "nolock")
        for folder in (stale, held, foreign):
            folder.mkdir()
            (folder / "x.plot.table1.tmp").write_bytes(b"\0" * 100_000)
        (stale / LOCK_NAME).touch()
        (held / LOCK_NAME).touch()
        fd = os.open(held / LOCK_NAME, os.O_RDWR)  # a live plotter's lock
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        freed = remove_stale_temporaries(directory)
        self.assertGreaterEqual(freed, 100_000)
        self.assertFalse(stale.exists())
        self.assertTrue(held.exists())
        self.assertTrue(foreign.exists())  # not ours to judge: it has no lock file

    def test_worker_exits_when_its_parent_is_gone(self):
        # The worker checks that its parent is the one named in ARCHIVAS_PLOTTER_PID.
        directory = self.mktemp()
        os.makedirs(directory)
        result = subprocess.run(
            [sys.executable, "-m", "archivas.farmer.plotworker", directory, directory, "x.plot", "18",
             "ab" * 10, "cd" * 32],
            env={**os.environ, "ARCHIVAS_PLOTTER_PID": "1"}, stdout=subprocess.DEVNULL, timeout=60,
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(os.listdir(directory), [])
