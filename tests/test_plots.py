"""Plots made by the farmer code: bound to the farmer key, proofs that verify, and the
ways a proof is refused."""

import os
import subprocess
import sys

from twisted.trial import unittest

from archivas.chain import pos
from archivas.chain.encoding import sha256
from archivas.chain.keys import PrivateKey
from archivas.farmer.plots import Plot, best_win, load_plots
from archivas.farmer.plotter import PlotError, create_plot
from archivas.testing.chainbuilder import shared_plots


def challenge_with_quality(plot):
    for i in range(100):
        challenge = sha256(b"challenge", bytes([i]))
        qualities = plot.qualities(challenge)
        if qualities:
            return challenge, qualities
    raise AssertionError("no quality in 100 challenges")


class ProofTests(unittest.TestCase):
    def setUp(self):
        self.key, self.plot = shared_plots(2)[0]

    def test_plot_is_bound_to_farmer_key(self):
        self.assertEqual(self.plot.farmer_public_key, self.key.public_key)
        self.assertEqual(self.plot.id, pos.plot_id(self.key.public_key, self.plot.nonce))
        self.assertEqual(self.plot.k, 18)

    def test_proofs_verify_with_their_quality(self):
        verified = 0
        for i in range(20):
            challenge = sha256(b"c", bytes([i]))
            for index, quality in enumerate(self.plot.qualities(challenge)):
                proof = self.plot.proof(challenge, index)
                self.assertEqual(pos.verify(self.plot.id, proof.k, challenge, proof.proof), quality)
                verified += 1
        self.assertGreater(verified, 5)

    def test_rejections(self):
        challenge, _ = challenge_with_quality(self.plot)
        proof = self.plot.proof(challenge, 0).proof
        other = PrivateKey.from_secret(b"another farmer")
        flipped = proof[:10] + bytes([proof[10] ^ 0x40]) + proof[11:]
        cases = {
            "another farmer's key": (pos.plot_id(other.public_key, self.plot.nonce), 18, challenge, proof),
            "wrong k": (self.plot.id, 19, challenge, proof),
            "wrong challenge": (self.plot.id, 18, sha256(challenge), proof),
            "flipped byte": (self.plot.id, 18, challenge, flipped),
        }
        for name, args in cases.items():
            with self.subTest(name):
                self.assertIsNone(pos.verify(*args))
        self.assertIsNotNone(pos.verify(self.plot.id, 18, challenge, proof))

    def test_best_win_picks_lowest_score(self):
        plots = [p for _, p in shared_plots(2)]
        challenge, _ = challenge_with_quality(plots[0])
        win = best_win(plots, challenge, 1, 18, 0)
        scores = [pos.score(q, challenge) for p in plots for q in p.qualities(challenge)]
        self.assertEqual(win.score, min(scores))
        self.assertIsNone(best_win(plots, challenge, 2**255, 18, 0))

    def test_space_and_filter(self):
        self.assertEqual(pos.space(18), 37 * 2**17)
        self.assertTrue(pos.passes_filter(b"x", b"y", 0))
        passed = sum(pos.passes_filter(bytes([i]), b"c", 4) for i in range(256))
        self.assertTrue(4 <= passed <= 40, passed)

    def test_more_space_wins_more(self):
        quality, challenge = b"q" * 32, b"c" * 32
        difficulty = 2**256 // pos.score(quality, challenge) + 1  # just too hard for k_min
        self.assertFalse(pos.wins(quality, challenge, 18, difficulty, 18))
        self.assertTrue(pos.wins(quality, challenge, 19, difficulty, 18))
        self.assertTrue(pos.wins(quality, challenge, 18, difficulty - 1, 18))


class PlotterTests(unittest.TestCase):
    def test_progress_is_reported_and_plot_loads(self):
        directory = self.mktemp()
        key = PrivateKey.from_secret(b"plotter test")
        seen = []
        path = create_plot(directory, key.public_key, 18, progress=seen.append)
        self.assertGreater(len(seen), 5)
        self.assertEqual(seen, sorted(seen))
        self.assertEqual(seen[-1], 1.0)
        plots = load_plots(directory)
        self.assertEqual([p.path for p in plots], [path])
        self.assertEqual(plots[0].farmer_public_key, key.public_key)
        self.assertEqual(os.listdir(directory), [path.name])  # temporary files cleaned up

    def test_bad_k_is_refused(self):
        with self.assertRaisesRegex(PlotError, "outside"):
            create_plot(self.mktemp(), b"\x00" * 32, 17)

    def test_foreign_files_are_skipped(self):
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "junk.plot"), "wb") as f:
            f.write(b"not a plot" * 100)
        self.assertEqual(load_plots(directory), [])

    def test_plot_without_archivas_memo_is_refused(self):
        directory = self.mktemp()
        os.makedirs(directory)
        # A plot made outside Archivas: its memo does not bind it to a farmer key.
        subprocess.run(
            [sys.executable, "-m", "archivas.farmer.plotworker", directory, directory, "x.plot", "18",
             "ab" * 10, "cd" * 32],
            check=True, stdout=subprocess.DEVNULL,
        )
        with self.assertRaisesRegex(ValueError, "not an Archivas plot"):
            Plot(os.path.join(directory, "x.plot"))
