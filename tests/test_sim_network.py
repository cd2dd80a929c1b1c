"""The simulator's substrate (archivas.sim.clock, archivas.sim.network), on no real reactor:
the heap clock's order, ties, cancellation and LoopingCall; the network's timing
(uplink + latency + downlink, computed from the model), bandwidth shared by writes and
connections, in-order delivery under loss, partitions, connection set-up, refusal and
time-outs, close and abort, paused reading, producer backpressure, a LineReceiver echo
and ClientService over it; and determinism: the same seed gives the same trace digest, in
this process and under other PYTHONHASHSEEDs, and another seed another digest."""

import os
import random
import subprocess
import sys
import time

from twisted.application.internet import ClientService
from twisted.internet import error, task
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from archivas.sim.clock import COMPACT_MIN_STALE, HeapClock
from archivas.sim.network import (
    EPHEMERAL_FIRST,
    RECEIVE_WINDOW_BYTES,
    UPLINK_PAUSE_BYTES,
    UPLINK_RESUME_BYTES,
    SimNetwork,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = 1_000.0  # the clock's start in these tests
LATENCY = 0.1  # seconds one way: the networks here draw from (100, 100) ms
BYTE = 1e-6  # seconds a byte takes at 8 Mbit/s


class Recorder(Protocol):
    """Keeps what arrives with its time, and how the connection ended."""

    def __init__(self, clock):
        self.clock = clock
        self.chunks = []  # (time, bytes)
        self.made_at = None
        self.lost = None  # (time, failure)

    def connectionMade(self):
        self.made_at = self.clock.seconds()

    def dataReceived(self, data):
        self.chunks.append((self.clock.seconds(), data))

    def connectionLost(self, reason):
        self.lost = (self.clock.seconds(), reason)

    @property
    def data(self):
        return b"".join(chunk for _, chunk in self.chunks)


class RecordingFactory(Factory):
    def __init__(self, clock):
        self.clock = clock
        self.built = []

    def buildProtocol(self, addr):
        proto = Recorder(self.clock)
        proto.factory = self
        self.built.append(proto)
        return proto


class Producer:
    """A streaming producer that records when it is paused and resumed."""

    def __init__(self, clock):
        self.clock = clock
        self.events = []

    def pauseProducing(self):
        self.events.append(("pause", self.clock.seconds()))

    def resumeProducing(self):
        self.events.append(("resume", self.clock.seconds()))

    def stopProducing(self):
        self.events.append(("stop", self.clock.seconds()))


def fixed_network(loss=0.0, rng=None, bandwidth_mbit=8.0):
    clock = HeapClock(START)
    net = SimNetwork(clock, rng or random.Random(1), latency_ms=(100.0, 100.0), bandwidth_mbit=bandwidth_mbit,
                     loss=loss)
    return clock, net


def connected_pair(clock, net, a="10.0.0.1", b="10.0.0.2", port=9000):
    """A connection from a to b, run until both ends are made: (client, server)."""
    ha = net.hosts.get(a) or net.add_host(a)
    hb = net.hosts.get(b) or net.add_host(b)
    server_factory = RecordingFactory(clock)
    hb.listen(port, server_factory)
    got = []
    ha.endpoint(b, port).connect(RecordingFactory(clock)).addCallback(got.append)
    clock.advance(1)
    client, = got
    server, = server_factory.built
    return client, server


class Scripted(random.Random):
    """A Random whose random() answers from a script (then 0.99: nothing lost)."""

    def __init__(self, answers):
        super().__init__(0)
        self.answers = list(answers)

    def random(self):
        return self.answers.pop(0) if self.answers else 0.99


class HeapClockTests(unittest.TestCase):
    def test_calls_run_in_time_order_and_ties_in_scheduling_order(self):
        clock = HeapClock(START)
        ran = []
        for name, delay in [("c", 2.0), ("a", 1.0), ("b1", 1.5), ("b2", 1.5), ("b3", 1.5), ("z", 0.0)]:
            clock.callLater(delay, lambda n=name: ran.append((n, clock.seconds())))
        self.assertEqual(clock.pending, 6)
        clock.advance(1.5)
        self.assertEqual(ran, [("z", START), ("a", START + 1.0), ("b1", START + 1.5), ("b2", START + 1.5),
                               ("b3", START + 1.5)])
        self.assertEqual(clock.seconds(), START + 1.5)
        clock.run_until(START + 10)
        self.assertEqual(ran[-1], ("c", START + 2.0))
        self.assertEqual(clock.seconds(), START + 10)

    def test_a_call_made_while_running_at_the_same_time_runs_after_those_already_due(self):
        clock = HeapClock()
        ran = []

        def first():
            ran.append("first")
            clock.callLater(0, ran.append, "nested")

        clock.callLater(1, first)
        clock.callLater(1, ran.append, "second")
        clock.advance(1)
        self.assertEqual(ran, ["first", "second", "nested"])

    def test_cancel_reset_delay_active(self):
        clock = HeapClock(START)
        ran = []
        a = clock.callLater(1, ran.append, "a")
        b = clock.callLater(2, ran.append, "b")
        c = clock.callLater(3, ran.append, "c")
        d = clock.callLater(3, ran.append, "d")
        a.cancel()
        self.assertFalse(a.active())
        self.assertRaises(error.AlreadyCancelled, a.cancel)
        self.assertRaises(error.AlreadyCancelled, a.reset, 1)
        b.reset(5)  # now due at START + 5
        c.delay(1)  # START + 4
        self.assertEqual(b.getTime(), START + 5)
        self.assertEqual(c.getTime(), START + 4)
        self.assertEqual(clock.getDelayedCalls(), [d, c, b])
        self.assertEqual(clock.pending, 3)
        clock.advance(10)
        self.assertEqual(ran, ["d", "c", "b"])
        self.assertFalse(d.active())
        self.assertRaises(error.AlreadyCalled, d.cancel)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_reset_call_goes_behind_calls_already_due_at_its_new_time(self):
        clock = HeapClock()
        ran = []
        early = clock.callLater(1, ran.append, "moved")
        clock.callLater(2, ran.append, "waiting")
        early.reset(2)
        clock.advance(2)
        self.assertEqual(ran, ["waiting", "moved"])

    def test_many_cancelled_calls_are_compacted_away(self):
        clock = HeapClock()
        ran = []
        calls = [clock.callLater(i % 97, ran.append, i) for i in range(4 * COMPACT_MIN_STALE)]
        for call in calls[: 3 * COMPACT_MIN_STALE]:
            call.cancel()
        self.assertLess(len(clock._heap), 3 * COMPACT_MIN_STALE)  # rebuilt at least once
        self.assertEqual(clock.pending, COMPACT_MIN_STALE)
        clock.advance(100)
        kept = range(3 * COMPACT_MIN_STALE, 4 * COMPACT_MIN_STALE)
        self.assertEqual(ran, sorted(kept, key=lambda i: (i % 97, i)))

    def test_cancelling_inside_a_run_while_compacting_keeps_the_order(self):
        clock = HeapClock()
        ran = []
        calls = []

        def cancel_many():
            for call in calls:
                if call.active():
                    call.cancel()

        clock.callLater(1, cancel_many)
        calls.extend(clock.callLater(2, ran.append, i) for i in range(3 * COMPACT_MIN_STALE))
        clock.callLater(3, ran.append, "last")
        clock.advance(5)
        self.assertEqual(ran, ["last"])
        self.assertEqual(clock.pending, 0)

    def test_time_never_goes_back_and_run_until_idle_stops_at_its_bound(self):
        clock = HeapClock(START)
        ran = []
        clock.callLater(5, ran.append, 5)
        clock.callLater(50, ran.append, 50)
        self.assertEqual(clock.run_until(START - 10), 0)
        self.assertEqual(clock.seconds(), START)
        self.assertEqual(clock.run_until_idle(START + 20), 1)
        self.assertEqual(clock.seconds(), START + 5)  # at the last call run
        self.assertEqual(clock.next_time(), START + 50)
        self.assertTrue(clock.step())
        self.assertEqual(clock.seconds(), START + 50)
        self.assertFalse(clock.step())
        self.assertEqual(clock.run_until_idle(START + 1000), 0)
        self.assertEqual(ran, [5, 50])

    def test_an_exception_is_logged_and_the_run_goes_on(self):
        clock = HeapClock()
        ran = []
        clock.callLater(1, lambda: 1 / 0)
        clock.callLater(1, ran.append, "after")
        clock.advance(2)
        self.assertEqual(ran, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_looping_call_and_defer_later(self):
        clock = HeapClock(START)
        ticks = []
        loop = task.LoopingCall(lambda: ticks.append(clock.seconds()))
        loop.clock = clock
        loop.start(10, now=True)
        clock.advance(35)
        loop.stop()
        clock.advance(100)
        self.assertEqual(ticks, [START, START + 10, START + 20, START + 30])
        later = task.deferLater(clock, 2.5, lambda: clock.seconds())
        clock.advance(3)
        self.assertEqual(self.successResultOf(later), START + 135 + 2.5)

    def test_keyword_arguments_reach_the_call(self):
        clock = HeapClock()
        got = []
        clock.callLater(1, lambda *a, **kw: got.append((a, kw)), 1, 2, x=3)
        clock.advance(1)
        self.assertEqual(got, [((1, 2), {"x": 3})])


class TimingTests(unittest.TestCase):
    def test_connection_set_up_takes_a_round_trip_and_names_both_ends(self):
        clock, net = fixed_network()
        a, b = net.add_host("10.0.0.1"), net.add_host("10.0.0.2")
        server_factory = RecordingFactory(clock)
        b.listen(9000, server_factory)
        got = []
        a.endpoint("10.0.0.2", 9000).connect(RecordingFactory(clock)).addCallback(got.append)
        clock.advance(2 * LATENCY - 1e-6)
        self.assertEqual(got, [])
        clock.advance(1e-6)
        client, = got
        self.assertAlmostEqual(client.made_at, START + 2 * LATENCY, places=9)
        self.assertEqual(server_factory.built, [])  # the ACK is on its way
        clock.advance(LATENCY)
        server, = server_factory.built
        self.assertAlmostEqual(server.made_at, START + 3 * LATENCY, places=9)
        self.assertEqual((client.transport.getHost().host, client.transport.getHost().port),
                         ("10.0.0.1", EPHEMERAL_FIRST))
        self.assertEqual((client.transport.getPeer().host, client.transport.getPeer().port), ("10.0.0.2", 9000))
        self.assertEqual(server.transport.getPeer().port, EPHEMERAL_FIRST)
        self.assertEqual(server.transport.getHost().port, 9000)
        got2 = []
        a.endpoint("10.0.0.2", 9000).connect(RecordingFactory(clock)).addCallback(got2.append)
        clock.advance(1)
        self.assertEqual(got2[0].transport.getHost().port, EPHEMERAL_FIRST + 1)
        self.assertEqual(len(a.connections), 2)
        self.assertEqual(len(b.connections), 2)

    def test_arrival_is_uplink_then_latency_then_downlink(self):
        clock, net = fixed_network()
        client, server = connected_pair(clock, net)
        net.hosts["10.0.0.2"].bandwidth_mbit = 16.0  # the receiver's links twice as fast
        sent_at = clock.seconds()
        client.transport.write(b"x" * 1000)
        clock.advance(1)
        (at, data), = server.chunks
        self.assertEqual(data, b"x" * 1000)
        self.assertAlmostEqual(at, sent_at + 1000 * BYTE + LATENCY + 1000 * BYTE / 2, places=9)

    def test_two_writes_share_the_uplink_one_after_the_other(self):
        clock, net = fixed_network()
        client, server = connected_pair(clock, net)
        sent_at = clock.seconds()
        client.transport.write(b"a" * 1000)
        client.transport.write(b"b" * 1000)
        clock.advance(1)
        (t1, d1), (t2, d2) = server.chunks
        self.assertEqual((d1, d2), (b"a" * 1000, b"b" * 1000))
        self.assertAlmostEqual(t1, sent_at + 1000 * BYTE + LATENCY + 1000 * BYTE, places=9)
        self.assertAlmostEqual(t2, sent_at + 2000 * BYTE + LATENCY + 1000 * BYTE, places=9)

    def test_connections_of_one_host_share_its_uplink_and_of_one_receiver_its_downlink(self):
        clock, net = fixed_network()
        c1, s1 = connected_pair(clock, net, "10.0.0.1", "10.0.0.2", 9000)
        c2, s2 = connected_pair(clock, net, "10.0.0.1", "10.0.0.3", 9000)
        c3, s3 = connected_pair(clock, net, "10.0.0.4", "10.0.0.2", 9001)
        sent_at = clock.seconds()
        c1.transport.write(b"1" * 1000)
        c2.transport.write(b"2" * 1000)  # behind c1's write on 10.0.0.1's uplink
        clock.advance(1)
        self.assertAlmostEqual(s2.chunks[0][0], sent_at + 2000 * BYTE + LATENCY + 1000 * BYTE, places=9)
        sent_at = clock.seconds()
        c1.transport.write(b"1" * 1000)
        c3.transport.write(b"3" * 1000)  # same arrival at 10.0.0.2: its downlink takes them in turn
        clock.advance(1)
        first, second = sorted([s1.chunks[-1][0], s3.chunks[0][0]])
        self.assertAlmostEqual(first, sent_at + 1000 * BYTE + LATENCY + 1000 * BYTE, places=9)
        self.assertAlmostEqual(second, first + 1000 * BYTE, places=9)

    def test_latency_is_drawn_once_per_unordered_pair_in_range(self):
        clock = HeapClock()
        rng = random.Random(7)
        net = SimNetwork(clock, rng, latency_ms=(50.0, 150.0))
        first = net.latency("10.0.0.1", "10.0.0.2")
        state = rng.getstate()
        self.assertEqual(net.latency("10.0.0.2", "10.0.0.1"), first)
        self.assertEqual(rng.getstate(), state)  # no second draw
        self.assertTrue(0.05 <= first <= 0.15)
        self.assertNotEqual(net.latency("10.0.0.1", "10.0.0.3"), first)

    def test_receive_cost_and_charge_delay_reading(self):
        clock, net = fixed_network()
        client, server = connected_pair(clock, net)
        host = net.hosts["10.0.0.2"]
        host.receive_cost = lambda nbytes: 0.5
        sent_at = clock.seconds()
        client.transport.write(b"a" * 100)
        clock.advance(0.3)
        client.transport.write(b"b" * 100)  # arrives while the first is being processed
        clock.advance(2)
        (t1, _), (t2, _) = server.chunks
        self.assertAlmostEqual(t1, sent_at + 100 * BYTE + LATENCY + 100 * BYTE, places=9)
        self.assertAlmostEqual(t2, t1 + 0.5, places=9)
        host.receive_cost = lambda nbytes: 0.0
        host.charge(1.0)
        charged_at = clock.seconds()
        client.transport.write(b"c")
        clock.advance(2)
        self.assertAlmostEqual(server.chunks[-1][0], charged_at + 1.0, places=9)

    def test_accounting(self):
        clock, net = fixed_network()
        client, server = connected_pair(clock, net)
        before = net.deliveries
        client.transport.write(b"abc")
        client.transport.writeSequence([b"de", b"f"])
        server.transport.write(b"xy")
        clock.advance(1)
        a, b = net.hosts["10.0.0.1"], net.hosts["10.0.0.2"]
        self.assertEqual((a.bytes_sent, a.writes_sent, a.bytes_received), (6, 2, 2))
        self.assertEqual((b.bytes_sent, b.writes_sent, b.bytes_received), (2, 1, 6))
        self.assertEqual(net.deliveries - before, 3)


class LossTests(unittest.TestCase):
    def test_a_lost_write_arrives_a_timeout_later_and_later_writes_wait_behind_it(self):
        # the pair's latency draw, then the first write is lost
        clock, net = fixed_network(loss=0.5, rng=Scripted([0.5, 0.0, 0.9, 0.9]))
        client, server = connected_pair(clock, net)
        sent_at = clock.seconds()
        for part in (b"one,", b"two,", b"three"):
            client.transport.write(part)
        clock.advance(2)
        rto = max(0.2, 4 * LATENCY)
        (at, data), = server.chunks  # read together, in order
        self.assertEqual(data, b"one,two,three")
        self.assertAlmostEqual(at, sent_at + 4 * BYTE + LATENCY + rto + 13 * BYTE, places=9)
        self.assertEqual(net.losses, 1)

    def test_in_order_under_heavy_loss(self):
        clock, net = fixed_network(loss=0.3, rng=random.Random(3))
        client, server = connected_pair(clock, net)
        sent = b""
        for i in range(500):
            piece = b"%d;" % i
            sent += piece
            client.transport.write(piece)
            clock.advance(0.01)
        clock.advance(5)
        self.assertEqual(server.data, sent)
        self.assertGreater(net.losses, 100)
        times = [t for t, _ in server.chunks]
        self.assertEqual(times, sorted(times))


class PartitionTests(unittest.TestCase):
    def test_a_cut_holds_data_and_the_heal_releases_it_in_order(self):
        clock, net = fixed_network()
        client, server = connected_pair(clock, net)
        net.partition(["10.0.0.1"])
        self.assertTrue(net.is_cut("10.0.0.1", "10.0.0.2"))
        self.assertFalse(net.is_cut("10.0.0.2", "10.0.0.3"))
        client.transport.write(b"during ")
        clock.advance(5)
        client.transport.write(b"the cut")
        server.transport.write(b"back")
        clock.advance(5)
        self.assertEqual(server.chunks, [])
        self.assertEqual(client.chunks, [])
        healed_at = clock.seconds()
        net.heal()
        clock.advance(1)
        (at, data), = server.chunks
        self.assertEqual(data, b"during the cut")
        self.assertAlmostEqual(at, healed_at + LATENCY + 7 * BYTE + 7 * BYTE, places=9)
        self.assertEqual(client.data, b"back")
        self.assertIsNone(server.lost)

    def test_several_cuts_and_a_path_inside_one_side(self):
        clock, net = fixed_network()
        c1, s1 = connected_pair(clock, net, "10.0.0.1", "10.0.0.2")
        c2, s2 = connected_pair(clock, net, "10.0.0.3", "10.0.0.4")
        net.partition(["10.0.0.1", "10.0.0.2"])  # both ends on one side: not cut
        net.partition(["10.0.0.4"])
        c1.transport.write(b"inside")
        c2.transport.write(b"across")
        clock.advance(1)
        self.assertEqual(s1.data, b"inside")
        self.assertEqual(s2.data, b"")
        net.heal()
        clock.advance(1)
        self.assertEqual(s2.data, b"across")

    def test_connecting_across_a_cut_times_out(self):
        clock, net = fixed_network()
        a, b = net.add_host("10.0.0.1"), net.add_host("10.0.0.2")
        b.listen(9000, RecordingFactory(clock))
        net.partition(["10.0.0.2"])
        started = clock.seconds()
        d = a.endpoint("10.0.0.2", 9000, timeout=4.0).connect(RecordingFactory(clock))
        failures = []
        d.addErrback(lambda f: failures.append((clock.seconds(), f)))
        clock.advance(3.9)
        self.assertEqual(failures, [])
        clock.advance(0.2)
        (at, failure), = failures
        failure.trap(error.TimeoutError)
        self.assertEqual(at, started + 4.0)

    def test_a_cut_during_the_handshake_times_the_attempt_out(self):
        clock, net = fixed_network()
        a, b = net.add_host("10.0.0.1"), net.add_host("10.0.0.2")
        b.listen(9000, RecordingFactory(clock))
        d = a.endpoint("10.0.0.2", 9000, timeout=2.0).connect(RecordingFactory(clock))
        clock.advance(LATENCY * 1.5)  # the SYN is in, the SYN-ACK on its way
        net.partition(["10.0.0.1"])
        clock.advance(3)
        self.failureResultOf(d, error.TimeoutError)


class ConnectionTests(unittest.TestCase):
    def test_refused_without_a_listener_after_a_round_trip(self):
        clock, net = fixed_network()
        a, _ = net.add_host("10.0.0.1"), net.add_host("10.0.0.2")
        d = a.endpoint("10.0.0.2", 9000).connect(RecordingFactory(clock))
        failures = []
        d.addErrback(lambda f: failures.append((clock.seconds(), f)))
        clock.advance(1)
        (at, failure), = failures
        failure.trap(error.ConnectionRefusedError)
        self.assertAlmostEqual(at, START + 2 * LATENCY, places=9)

    def test_unknown_and_down_hosts_time_out(self):
        clock, net = fixed_network()
        a, b = net.add_host("10.0.0.1"), net.add_host("10.0.0.2")
        b.listen(9000, RecordingFactory(clock))
        net.set_down("10.0.0.2", True)
        d1 = a.endpoint("10.0.0.2", 9000, timeout=3.0).connect(RecordingFactory(clock))
        d2 = a.endpoint("10.0.0.9", 9000, timeout=3.0).connect(RecordingFactory(clock))
        clock.advance(3)
        self.failureResultOf(d1, error.TimeoutError)
        self.failureResultOf(d2, error.TimeoutError)
        net.set_down("10.0.0.2", False)
        d3 = a.endpoint("10.0.0.2", 9000).connect(RecordingFactory(clock))
        clock.advance(1)
        self.assertIsInstance(self.successResultOf(d3), Recorder)

    def test_cancelling_an_attempt(self):
        clock, net = fixed_network()
        a, b = net.add_host("10.0.0.1"), net.add_host("10.0.0.2")
        server_factory = RecordingFactory(clock)
        b.listen(9000, server_factory)
        d = a.endpoint("10.0.0.2", 9000).connect(RecordingFactory(clock))
        clock.advance(LATENCY)
        d.cancel()
        self.failureResultOf(d, error.ConnectingCancelledError)
        clock.advance(20)
        self.assertEqual(server_factory.built, [])
        self.assertEqual(clock.pending, 0)

    def test_a_host_going_down_drops_its_connections(self):
        clock, net = fixed_network()
        client, server = connected_pair(clock, net)
        down_at = clock.seconds()
        net.set_down("10.0.0.2", True)
        clock.advance(0)
        server_at, server_reason = server.lost
        self.assertEqual(server_at, down_at)
        server_reason.trap(error.ConnectionLost)
        self.assertIsNone(client.lost)
        clock.advance(1)
        client_at, client_reason = client.lost
        self.assertAlmostEqual(client_at, down_at + LATENCY, places=9)
        client_reason.trap(error.ConnectionLost)
        self.assertEqual(net.hosts["10.0.0.2"].connections, {})

    def test_lose_connection_delivers_what_was_written_then_closes_both_sides(self):
        clock, net = fixed_network()
        client, server = connected_pair(clock, net)
        sent_at = clock.seconds()
        client.transport.write(b"x" * 1000)
        client.transport.loseConnection()
        self.assertTrue(client.transport.disconnecting)
        client.transport.write(b"y" * 10)  # still goes out before the FIN
        clock.advance(1)
        local_at, local_reason = client.lost
        local_reason.trap(error.ConnectionDone)
        self.assertAlmostEqual(local_at, sent_at + 1010 * BYTE, places=9)  # when the uplink is done
        self.assertEqual(server.data, b"x" * 1000 + b"y" * 10)
        remote_at, remote_reason = server.lost
        remote_reason.trap(error.ConnectionDone)
        self.assertEqual(remote_at, server.chunks[-1][0])
        self.assertFalse(client.transport.connected)
        self.assertEqual(net.hosts["10.0.0.1"].connections, {})
        self.assertEqual(net.hosts["10.0.0.2"].connections, {})

    def test_abort_drops_pending_data_and_resets_the_peer(self):
        clock, net = fixed_network()
        client, server = connected_pair(clock, net)
        aborted_at = clock.seconds()
        client.transport.write(b"never")
        server.transport.write(b"never either")
        client.transport.abortConnection()
        self.assertIsNone(client.lost)  # not inside the call, as Twisted's
        client.transport.write(b"ignored")
        clock.advance(0)
        local_at, local_reason = client.lost
        self.assertEqual(local_at, aborted_at)
        local_reason.trap(error.ConnectionAborted)
        self.assertTrue(local_reason.check(error.ConnectionLost))
        clock.advance(1)
        remote_at, remote_reason = server.lost
        self.assertAlmostEqual(remote_at, aborted_at + LATENCY, places=9)
        remote_reason.trap(error.ConnectionLost)
        self.assertEqual((server.chunks, client.chunks), ([], []))

    def test_a_protocol_that_raises_in_data_received_is_disconnected(self):
        clock, net = fixed_network()
        client, server = connected_pair(clock, net)
        server.dataReceived = lambda data: 1 / 0
        client.transport.write(b"boom")
        clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(server.lost[1].check(ZeroDivisionError))
        client.lost[1].trap(error.ConnectionDone)

    def test_a_listener_that_stopped_refuses_new_connections(self):
        clock, net = fixed_network()
        a, b = net.add_host("10.0.0.1"), net.add_host("10.0.0.2")
        port = b.listen(9000, RecordingFactory(clock))
        self.assertRaises(error.CannotListenError, b.listen, 9000, RecordingFactory(clock))
        self.successResultOf(port.stopListening())
        d = a.endpoint("10.0.0.2", 9000).connect(RecordingFactory(clock))
        clock.advance(1)
        self.failureResultOf(d, error.ConnectionRefusedError)

    def test_server_endpoint(self):
        clock, net = fixed_network()
        a, b = net.add_host("10.0.0.1"), net.add_host("10.0.0.2")
        port = self.successResultOf(b.server_endpoint(9000).listen(RecordingFactory(clock)))
        self.assertEqual(port.getHost().port, 9000)
        d = a.endpoint("10.0.0.2", 9000).connect(RecordingFactory(clock))
        clock.advance(1)
        self.successResultOf(d)


class FlowControlTests(unittest.TestCase):
    def test_paused_reading_holds_data_until_resumed(self):
        clock, net = fixed_network()
        client, server = connected_pair(clock, net)
        server.transport.pauseProducing()
        client.transport.write(b"held")
        clock.advance(5)
        self.assertEqual(server.chunks, [])
        resumed_at = clock.seconds()
        server.transport.resumeProducing()
        clock.advance(0)
        self.assertEqual(server.chunks, [(resumed_at, b"held")])

    def test_a_big_backlog_pauses_the_producer_until_half_has_left_the_uplink(self):
        clock, net = fixed_network()
        client, server = connected_pair(clock, net)
        producer = Producer(clock)
        client.transport.registerProducer(producer, True)
        self.assertRaises(RuntimeError, client.transport.registerProducer, Producer(clock), True)
        chunk = 10 * 1024
        sent_at = clock.seconds()
        for i in range(10):
            client.transport.write(b"z" * chunk)
            expected = [("pause", sent_at)] if (i + 1) * chunk > UPLINK_PAUSE_BYTES else []
            self.assertEqual(producer.events, expected)
        clock.advance(5)
        # it resumes when what has not left the uplink is down to UPLINK_RESUME_BYTES
        leaving = next(j for j in range(1, 11) if (10 - j) * chunk <= UPLINK_RESUME_BYTES)
        self.assertEqual(producer.events[1][0], "resume")
        self.assertAlmostEqual(producer.events[1][1], sent_at + leaving * chunk * BYTE, places=9)
        self.assertEqual(len(server.data), 10 * chunk)
        client.transport.loseConnection()
        clock.advance(1)
        self.assertEqual(producer.events[-1][0], "stop")  # as Twisted's: stopped at the close

    def test_a_peer_that_does_not_read_closes_the_window(self):
        clock, net = fixed_network(bandwidth_mbit=80.0)
        client, server = connected_pair(clock, net)
        producer = Producer(clock)
        client.transport.registerProducer(producer, True)
        server.transport.pauseProducing()
        chunk = 32 * 1024  # never more than UPLINK_PAUSE_BYTES in the uplink
        written = 0
        while not producer.events:
            client.transport.write(b"w" * chunk)
            written += chunk
            clock.advance(0.05)
        self.assertEqual(producer.events[0][0], "pause")
        self.assertGreater(written, RECEIVE_WINDOW_BYTES)
        self.assertLessEqual(written, RECEIVE_WINDOW_BYTES + chunk)
        server.transport.resumeProducing()
        clock.advance(1)
        self.assertEqual([kind for kind, _ in producer.events], ["pause", "resume"])
        self.assertEqual(len(server.data), written)


class Echo(LineReceiver):
    delimiter = b"\n"

    def lineReceived(self, line):
        self.sendLine(b"echo " + line)


class Collector(LineReceiver):
    delimiter = b"\n"

    def __init__(self):
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)
        if line == b"echo pause":
            self.pauseProducing()  # LineReceiver's: pauses its transport's reading too


class TwistedProtocolTests(unittest.TestCase):
    def test_line_receiver_echo_with_paused_reading(self):
        clock, net = fixed_network()
        a, b = net.add_host("10.0.0.1"), net.add_host("10.0.0.2")
        b.listen(9000, Factory.forProtocol(Echo))
        d = a.endpoint("10.0.0.2", 9000).connect(Factory.forProtocol(Collector))
        clock.advance(1)
        collector = self.successResultOf(d)
        for word in (b"one", b"pause", b"two", b"three"):
            collector.sendLine(word)
        clock.advance(1)
        self.assertEqual(collector.lines, [b"echo one", b"echo pause"])
        self.assertTrue(collector.transport.reading_paused)
        collector.resumeProducing()
        clock.advance(1)
        self.assertEqual(collector.lines, [b"echo one", b"echo pause", b"echo two", b"echo three"])

    def test_client_service_reconnects_over_the_sim_network(self):
        clock, net = fixed_network()
        a, b = net.add_host("10.0.0.1"), net.add_host("10.0.0.2")
        server_factory = RecordingFactory(clock)
        b.listen(9000, server_factory)
        service = ClientService(a.endpoint("10.0.0.2", 9000), RecordingFactory(clock),
                                retryPolicy=lambda attempt: 2.0, clock=clock)
        service.startService()
        first = service.whenConnected()
        clock.advance(1)
        self.successResultOf(first)
        server_factory.built[0].transport.loseConnection()
        clock.advance(1)
        self.assertEqual(len(server_factory.built), 1)
        clock.advance(2.5)  # the retry delay, then a round trip and the ACK
        self.assertEqual(len(server_factory.built), 2)
        self.successResultOf(service.whenConnected())
        stopped = service.stopService()
        clock.advance(1)
        self.successResultOf(stopped)


class RealNodeTests(unittest.TestCase):
    """Two real Nodes (PeerManager, PeerProtocol) over the sim network: the handshake
    completes, a block relays, and stopping one closes the connection on both sides."""

    def node(self, clock):
        from archivas.node import Node
        from tests.common import open_chain

        node = Node(open_chain(self), clock, threaded=False)
        node.start()
        return node

    def test_two_nodes_handshake_and_relay_a_block(self):
        from archivas.protocols.peer import PeerState
        from tests.common import builder

        clock = HeapClock(1_800_000_000.0)  # block times in the past, as tests.test_protocol's Harness
        net = SimNetwork(clock, random.Random(2))
        a, b = self.node(clock), self.node(clock)
        ha, hb = net.add_host("10.0.0.1"), net.add_host("10.0.0.2")
        ha.listen(9090, a.peers.inbound_factory)
        service = b.peers.client_service("10.0.0.1:9090", endpoint=hb.endpoint("10.0.0.1", 9090))
        service.startService()
        clock.advance(5)
        self.assertEqual([p.info.state for p in a.peers.peers + b.peers.peers], [PeerState.READY] * 2)
        self.assertEqual(b.peers.peers[0].info.address, "10.0.0.1:9090")
        self.assertEqual(a.peers.peers[0].info.host, "10.0.0.2")
        blocks = builder().extend(builder().genesis, 3)
        for block in blocks:
            a.receive_block(block)
            clock.advance(1)
        self.assertEqual(b.chain.tip.hash, blocks[-1].hash)
        service.stopService()
        stopped = a.stop()
        clock.advance(10)
        self.successResultOf(stopped)
        self.assertEqual((a.peers.peers, b.peers.peers), ([], []))
        self.successResultOf(b.stop())


# determinism

SCENARIO = """
import sys
from tests.test_sim_network import scenario_digest
print(scenario_digest(int(sys.argv[1])))
"""


def scenario_digest(seed, hosts=20, writes=2000):
    """A small busy network (random connections and writes, loss, a partition and a
    host going down and up), run for a while: its trace digest."""
    clock = HeapClock(1_700_000_000.0)
    rng = random.Random(seed)
    net = SimNetwork(clock, random.Random(seed + 1), loss=0.05)
    addresses = [f"10.1.{i // 200}.{i % 200 + 1}" for i in range(hosts)]
    for address in addresses:
        host = net.add_host(address)
        host.listen(9000, RecordingFactory(clock))
        host.receive_cost = lambda nbytes: nbytes * 2e-7
    transports = []
    for address in addresses:
        for _ in range(3):
            other = rng.choice(addresses)
            d = net.hosts[address].endpoint(other, 9000).connect(RecordingFactory(clock))
            d.addCallback(lambda proto: transports.append(proto.transport))
            d.addErrback(lambda failure: None)
    clock.advance(1)
    for i in range(writes):
        if i == writes // 3:
            net.partition(addresses[: hosts // 2])
        if i == writes // 2:
            net.heal()
            net.set_down(addresses[-1], True)
        if i == 2 * writes // 3:
            net.set_down(addresses[-1], False)
        live = [t for t in transports if t.connected]
        if live:
            transport = rng.choice(live)
            transport.write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
        clock.advance(rng.random() * 0.01)
    clock.advance(30)
    net.trace_note(b"end %d" % net.deliveries)
    return net.digest()


class DeterminismTests(unittest.TestCase):
    def test_same_seed_same_digest_other_seed_other_digest(self):
        first = scenario_digest(11)
        self.assertEqual(scenario_digest(11), first)
        self.assertNotEqual(scenario_digest(12), first)

    def test_the_digest_does_not_depend_on_the_hash_seed(self):
        digests = set()
        for hash_seed in ("1", "2"):
            env = dict(os.environ, PYTHONHASHSEED=hash_seed)
            out = subprocess.run([sys.executable, "-c", SCENARIO, "11"], cwd=REPO, env=env, check=True,
                                 capture_output=True, text=True, timeout=300)
            digests.add(out.stdout.strip())
        self.assertEqual(digests, {scenario_digest(11)})


class ThroughputTests(unittest.TestCase):
    def test_two_hundred_thousand_small_writes_between_a_hundred_hosts(self):
        """Not timed (no assertion on time): prints the wall time and the rate."""
        clock = HeapClock(1_700_000_000.0)
        net = SimNetwork(clock, random.Random(5))
        rng = random.Random(6)
        hosts = [net.add_host(f"10.2.0.{i + 1}") for i in range(100)]
        for host in hosts:
            host.listen(9000, RecordingFactory(clock))
        transports = []
        for host in hosts:
            for _ in range(4):
                d = host.endpoint(rng.choice(hosts).address, 9000).connect(RecordingFactory(clock))
                d.addCallback(lambda proto: transports.append(proto.transport))
        clock.advance(1)
        self.assertEqual(len(transports), 400)
        writes, per_tick, payload = 200_000, 200, b"p" * 100
        picks = [rng.randrange(len(transports)) for _ in range(writes)]

        def tick(start):
            for i in picks[start:start + per_tick]:
                transports[i].write(payload)
            if start + per_tick < writes:
                clock.callLater(0.001, tick, start + per_tick)

        before = net.deliveries
        tick(0)
        began = time.perf_counter()
        clock.advance(10)
        wall = time.perf_counter() - began
        received = sum(host.bytes_received for host in hosts)
        self.assertEqual(received, writes * len(payload))
        deliveries = net.deliveries - before
        print(f"\n[sim bench] {writes:,} writes, {deliveries:,} deliveries, {clock.calls_run:,} clock calls in "
              f"{wall:.2f} s wall: {deliveries / wall:,.0f} deliveries/s")
