"""The node's command line (flags, environment, config file, precedence, bad values) and
the service tree makeService builds."""

import os
import socket

from twisted.application.internet import ClientService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial import unittest

from archivas.chain.keys import PrivateKey
from archivas.chain.storage import StorageError
from archivas.farmer.farming import Farmer
from archivas.service import ListenError, ListeningService, NodeService, node_service
from archivas.tap import Options, makeService
from archivas.timelord import Timelord


def parse(argv, environ=None):
    options = Options(environ=environ or {}, exit_on_error=False)
    options.parseOptions(argv)
    return options


class OptionsTests(unittest.TestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self):
        o = parse([])
        self.assertEqual((o["rpc-port"], o["p2p-port"], o["db"], o["network"], o["peers"], o["timelord"]),
                         ("127.0.0.1:8080", ":9090", "./archivas-data", "devnet", [], False))

    def test_flags(self):
        o = parse(["--rpc-port", "127.0.0.1:8081", "--p2p-port", "9091", "--db", "x", "--network", "fastnet",
                   "--peers", "localhost:9092,localhost:9093", "--peers", "10.0.0.1:9094", "--timelord"])
        self.assertEqual(o["rpc-port"], "127.0.0.1:8081")
        self.assertEqual(o["p2p-port"], "9091")
        self.assertEqual(o["peers"], ["localhost:9092", "localhost:9093", "10.0.0.1:9094"])
        self.assertTrue(o["timelord"])

    def test_db_sync(self):
        self.assertEqual(parse([])["db-sync"], "normal")
        self.assertEqual(parse(["--db-sync", "full"])["db-sync"], "full")
        self.assertEqual(parse(["--config", self.write('db-sync = "full"\n')])["db-sync"], "full")
        db = self.mktemp()
        top = makeService(parse(["--db", db, "--network", "fastnet", "--db-sync", "full"]), MemoryReactorClock())
        self.addCleanup(top.node.chain.close)
        self.assertEqual(top.node.chain.storage.db.execute("PRAGMA synchronous").fetchone()[0], 2)

    def test_listen_address_forms(self):
        for form in ("8080", ":8080", "127.0.0.1:8080", "tcp:8080:interface=127.0.0.1"):
            self.assertEqual(parse(["--rpc-port", form])["rpc-port"], form)

    def test_precedence_flag_env_file_default(self):
        config = self.write('rpc-port = ":7001"\np2p-port = ":7002"\ndb = "from-file"\npeers = ["f:1"]\n')
        env = {"ARCHIVAS_RPC_PORT": ":6001", "ARCHIVAS_PEERS": "e:1,e:2", "ARCHIVAS_DB_PATH": "from-env"}
        o = parse(["--config", config, "--rpc-port", ":5001"], env)
        self.assertEqual(o["rpc-port"], ":5001")  # flag over env and file
        self.assertEqual(o["peers"], ["e:1", "e:2"])  # env over file
        self.assertEqual(o["db"], "from-env")
        self.assertEqual(o["p2p-port"], ":7002")  # file over default
        self.assertEqual(o["network"], "devnet")  # default
        o = parse(["--config", config, "--peers", "flag:1"], env)
        self.assertEqual(o["peers"], ["flag:1"])

    def test_bad_values(self):
        config_bad_toml = self.write("rpc-port = \n")
        config_unknown = self.write('colour = "blue"\n')
        config_wrong_type = self.write("peers = 5\n")
        cases = {
            ("--network", "mainnet"): "must be one of",
            ("--db-sync", "off"): "--db-sync must be one of normal, full",
            ("--rpc-port", "99999"): "not a port",
            ("--rpc-port", "nonsense:endpoint:x"): "not a listen address",
            ("--peers", "localhost"): "not host:port",
            ("--peers", "localhost:0"): "not host:port",
            ("--farm", "/nonexistent", "--farmer-key", "k"): "not a directory",
            ("--farm", "."): "needs --farmer-key",
            ("--farmer-key", "/nonexistent.key"): "does not exist",
            ("--config", "/nonexistent.toml"): "cannot read config file",
            ("--config", config_bad_toml): "not valid TOML",
            ("--config", config_unknown): "unknown setting",
            ("--config", config_wrong_type): "wrong type",
            ("--bogus",): "not recognized",
        }
        for argv, words in cases.items():
            with self.assertRaises(usage.UsageError, msg=argv) as cm:
                parse(list(argv))
            self.assertIn(words, str(cm.exception), argv)

    def test_operator_sees_one_line_and_exit_2(self):
        import io
        import sys

        err = io.StringIO()
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as cm:
            Options(environ={}).parseOptions(["--network", "mainnet"])
        self.assertEqual(cm.exception.code, 2)
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertTrue(err.getvalue().startswith("archivas-node: error: --network"))


class ServiceTreeTests(unittest.TestCase):
    def test_make_service_tree(self):
        from archivas.testing.chainbuilder import farmer_key, shared_plots

        key_file = self.mktemp()
        farmer_key(0).save(key_file)
        plots = os.path.dirname(shared_plots(2)[0][1].path)
        config = parse(["--db", self.mktemp(), "--network", "fastnet", "--peers", "127.0.0.1:9999,127.0.0.1:9998",
                        "--timelord", "--farm", plots, "--farmer-key", key_file,
                        "--rpc-port", "127.0.0.1:0", "--p2p-port", "127.0.0.1:0"])
        reactor = MemoryReactorClock()
        top = makeService(config, reactor)
        self.addCleanup(top.node.chain.close)
        names = [s.name for s in top]
        self.assertEqual(names, ["node", "p2p", "rpc", "peer 127.0.0.1:9999", "peer 127.0.0.1:9998",
                                 "timelord", "farmer"])
        self.assertIsInstance(top.getServiceNamed("node"), NodeService)
        self.assertIsInstance(top.getServiceNamed("p2p"), ListeningService)
        self.assertIsInstance(top.getServiceNamed("peer 127.0.0.1:9999"), ClientService)
        self.assertIsInstance(top.getServiceNamed("timelord"), Timelord)
        self.assertIsInstance(top.getServiceNamed("farmer"), Farmer)
        self.assertEqual(len(top.getServiceNamed("farmer").plots), 1)  # only its own key's plot
        self.assertEqual(top.node.params.name, "fastnet")

    def test_minimal_tree_and_listening_on_memory_reactor(self):
        reactor = MemoryReactorClock()
        top = node_service(db=self.mktemp(), network="fastnet", rpc="127.0.0.1:8081", p2p="9091", reactor=reactor)
        self.assertEqual([s.name for s in top], ["node", "p2p", "rpc"])
        top.startService()
        ports = sorted((port, interface) for port, _, _, interface in reactor.tcpServers)
        self.assertEqual(ports, [(8081, "127.0.0.1"), (9091, "")])
        top.node.stop()  # nothing to wait for on a memory reactor
        top.node.chain.close()

    def test_rpc_on_a_unix_socket(self):
        """An endpoint string other than TCP (here a UNIX socket) is listened on and logged
        by its path (it used to stop the node with a traceback: no host, no port)."""
        reactor = MemoryReactorClock()
        path = os.path.join(self.mktemp() + "-sock", "rpc.sock")
        os.makedirs(os.path.dirname(path))
        top = node_service(db=self.mktemp(), network="fastnet", rpc=f"unix:{path}", p2p="9091", reactor=reactor)
        top.startService()
        self.assertEqual([server[0] for server in reactor.unixServers], [path])
        top.node.stop()
        top.node.chain.close()

    def test_peer_layer_options(self):
        db = self.mktemp()
        config = parse(["--db", db, "--network", "fastnet", "--p2p-tls", "--whitelist", "10.0.0.0/8",
                        "--whitelist", "192.0.2.7", "--peers", "tls:localhost:9999,[::1]:9998",
                        "--rpc-port", "127.0.0.1:0", "--p2p-port", "127.0.0.1:0"])
        self.assertEqual(config["whitelist"], ["10.0.0.0/8", "192.0.2.7/32"])
        self.assertTrue(config["p2p-tls"])
        reactor = MemoryReactorClock()
        top = makeService(config, reactor)
        self.addCleanup(top.node.chain.close)
        peers = top.node.peers
        self.assertTrue(peers.is_whitelisted("10.9.9.9") and not peers.is_whitelisted("11.0.0.1"))
        self.assertIn("tls:localhost:9999", peers.dialers)
        self.assertIsNotNone(peers.tls_certificate)
        for name in ("node.key", "p2p-tls.pem", ".cookie"):
            path = os.path.join(db, name)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600, name)
        top.startService()
        self.assertEqual(len(reactor.sslServers), 1)  # the p2p port speaks TLS
        top.node.stop()
        for bad in (["--whitelist", "not-a-net"], ["--peers", "tls:nohost"], ["--peers", "::1:9090"]):
            with self.assertRaises(usage.UsageError, msg=bad):
                parse(bad)

    def test_database_in_use_or_foreign_is_refused(self):
        db = self.mktemp()
        first = node_service(db=db, network="fastnet", reactor=MemoryReactorClock())
        self.addCleanup(first.node.chain.close)
        with self.assertRaisesRegex(StorageError, "in use by pid"):
            node_service(db=db, network="fastnet", reactor=MemoryReactorClock())
        first.node.chain.close()
        with self.assertRaisesRegex(StorageError, "belongs to network fastnet"):
            node_service(db=db, network="devnet", reactor=MemoryReactorClock())

    def test_port_in_use_fails_start(self):
        from twisted.internet import reactor

        busy = reactor.listenTCP(0, __import__("twisted.internet.protocol", fromlist=["Factory"]).Factory(),
                                 interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        top = node_service(db=self.mktemp(), network="fastnet", rpc="127.0.0.1:0",
                           p2p=f"127.0.0.1:{busy.getHost().port}", reactor=reactor)
        self.addCleanup(top.node.chain.close)
        p2p = top.getServiceNamed("p2p")
        with self.assertRaisesRegex(ListenError, "cannot listen for p2p"):
            p2p.startService()
        self.assertFalse(p2p.running)

    def test_embedding_in_an_application(self):
        from twisted.application import service

        application = service.Application("host app")
        top = node_service(db=self.mktemp(), network="fastnet", reactor=MemoryReactorClock())
        self.addCleanup(top.node.chain.close)
        top.setServiceParent(service.IServiceCollection(application))
        self.assertIs(service.IServiceCollection(application).getServiceNamed("archivas-node"), top)

    def test_key_file_helper(self):
        path = self.mktemp()
        PrivateKey.generate().save(path)
        self.assertTrue(parse(["--farmer-key", path])["farmer-key"])


class VersionTests(unittest.TestCase):
    def test_every_program_prints_archivas_version(self):
        import io
        import sys

        from archivas import __version__
        from archivas.scripts import farmer, timelord, wallet

        for program, options in (("archivas-node", Options(environ={}, exit_on_error=False)),
                                 ("archivas-wallet", wallet.Options()), ("archivas-farmer", farmer.Options()),
                                 ("archivas-timelord", timelord.Options())):
            out = io.StringIO()
            self.patch(sys, "stdout", out)
            with self.assertRaises(SystemExit) as cm:
                options.parseOptions(["--version"])
            self.assertEqual(cm.exception.code, 0)
            self.assertTrue(out.getvalue().startswith(f"{program} {__version__} "), out.getvalue())


class AcceptBoundTests(unittest.TestCase):
    """A listener accepts at most ACCEPTS_PER_TURN connections per reactor turn, so that in
    a flood the descriptors of connections closed to make room are released before the
    next batch comes in (Twisted's own quota grows by 20 a turn without a ceiling)."""

    def test_a_turn_accepts_at_most_the_bound_even_after_the_quota_grew(self):
        from twisted.internet import defer, protocol, reactor

        from archivas.service import ACCEPTS_PER_TURN

        built = []

        class Counting(protocol.Factory):
            def buildProtocol(self, addr):
                p = protocol.Protocol()
                built.append(p)
                return p

        listener = ListeningService(reactor, "tcp:0:interface=127.0.0.1", Counting(), "test")
        listener.startService()
        port = listener.port
        clients = []

        def cleanup():
            for c in clients:
                c.close()
            lost = [defer.Deferred() for _ in built]
            for p, d in zip(built, lost):
                p.connectionLost = lambda reason, d=d: d.callback(None)
                p.transport.abortConnection()
            return defer.gatherResults([defer.maybeDeferred(listener.stopService)] + lost)
        self.addCleanup(cleanup)
        # The kernel completes these handshakes in the listen backlog (50) with no reactor turn.
        for _ in range(ACCEPTS_PER_TURN + 8):
            clients.append(socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5))
        port.numberAccepts = 500  # as after a long flood
        port.doRead()  # one reactor turn's accepts, called directly
        self.assertEqual(len(built), ACCEPTS_PER_TURN)
        self.assertLessEqual(port.numberAccepts, ACCEPTS_PER_TURN + 20)  # grows back only to the bound
        port.doRead()
        self.assertEqual(len(built), ACCEPTS_PER_TURN + 8)
