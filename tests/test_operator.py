"""Operator calls on the RPC: the admin token (a cookie file in the data directory), and
the bans and peers it manages; bans live in the database and survive a restart."""

import json
import os
import stat

from treq.testing import StubTreq
from twisted.trial import unittest

from archivas import admin
from archivas.chain.blockchain import Chain
from archivas.nodeapi import LocalNodeAPI
from archivas.protocols.banlist import BanList
from archivas.rpc import NodeRPC
from tests.common import PARAMS
from tests.test_protocol import Harness

TOKEN = "f" * 64


class OperatorRPCTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.node = self.h.node
        self.http = StubTreq(NodeRPC(LocalNodeAPI(self.node), TOKEN).resource())

    def call(self, method, path, body=None, token=TOKEN):
        headers = {b"authorization": [f"Bearer {token}".encode()]} if token else {}
        data = None if body is None else json.dumps(body).encode()
        d = self.http.request(method, "http://node" + path, data=data, headers=headers)
        d.addCallback(lambda r: self.http.content(r).addCallback(lambda c: (r.code, json.loads(c))))
        self.http.flush()
        return self.successResultOf(d)

    def test_operator_calls_need_the_token(self):
        for method, path, body in (("GET", "/bans", None), ("POST", "/bans", {"address": "10.0.0.9"}),
                                   ("DELETE", "/bans/10.0.0.9", None), ("POST", "/peers", {"address": "a:1"}),
                                   ("DELETE", "/peers/a:1", None)):
            for token in (None, "0" * 64, TOKEN[:-1]):
                with self.subTest(method=method, path=path, token=token):
                    code, doc = self.call(method, path, body, token=token)
                    self.assertEqual(code, 401, doc)
                    self.assertIn("admin token", doc["error"])
        self.assertEqual(len(self.node.peers.bans), 0)
        self.assertEqual(self.node.peers.dialers, {})
        self.assertEqual(self.call("GET", "/status", token=None)[0], 200)  # reading stays open

    def test_ban_list_and_lift(self):
        proto, transport = self.h.connect(host="10.9.1.2")
        code, doc = self.call("POST", "/bans", {"address": "10.9.0.0/16", "seconds": 3600, "reason": "spam"})
        self.assertEqual((code, doc["banned"], doc["disconnected"]), (200, "10.9.0.0/16", 1))
        self.assertTrue(transport.disconnecting)
        code, listing = self.call("GET", "/bans")
        self.assertEqual([(b["subnet"], b["reason"]) for b in listing], [("10.9.0.0/16", "spam")])
        _, refused = self.h.connect(host="10.9.7.7")
        self.assertTrue(refused.disconnecting)
        self.assertEqual(self.call("DELETE", "/bans/10.9.0.0_16")[0], 200)
        self.assertEqual(self.call("DELETE", "/bans/10.9.0.0_16")[0], 404)
        _, welcome = self.h.connect(host="10.9.7.8")
        self.assertFalse(welcome.disconnecting)

    def test_bans_expire(self):
        self.call("POST", "/bans", {"address": "10.8.0.1", "seconds": 60})
        self.assertTrue(self.node.peers.is_banned("10.8.0.1"))
        self.h.clock.advance(61)
        self.assertFalse(self.node.peers.is_banned("10.8.0.1"))
        self.assertEqual(self.call("GET", "/bans")[1], [])

    def test_bad_ban_requests(self):
        for body in ({"address": "not an ip"}, {"address": "10.0.0.1", "seconds": -5}, {"address": 5}, [],
                     {"address": "10.0.0.1", "seconds": True}, {"address": "1.2.3.4", "reason": "x" * 500}):
            with self.subTest(body=body):
                self.assertEqual(self.call("POST", "/bans", body)[0], 400)
        self.assertEqual(len(self.node.peers.bans), 0)

    def test_add_and_drop_a_peer(self):
        code, doc = self.call("POST", "/peers", {"address": "[::1]:9"})
        self.assertEqual((code, doc), (200, {"dialing": "[::1]:9"}))
        self.assertIn("[::1]:9", self.node.peers.dialers)
        self.assertEqual(self.call("POST", "/peers", {"address": "no-port"})[0], 400)
        self.assertEqual(self.call("DELETE", "/peers/[::1]:9")[0], 200)
        self.assertNotIn("[::1]:9", self.node.peers.dialers)


class PersistenceTests(unittest.TestCase):
    def test_bans_survive_a_restart(self):
        directory = self.mktemp()
        now = [1000.0]
        chain = Chain.open(directory, PARAMS)
        BanList(lambda: now[0], chain.storage).ban("10.1.0.0/16", 3600, "flood")
        chain.close()
        chain = Chain.open(directory, PARAMS)
        self.addCleanup(chain.close)
        bans = BanList(lambda: now[0], chain.storage)
        self.assertTrue(bans.is_banned("10.1.2.3"))
        now[0] += 3601
        self.assertFalse(bans.is_banned("10.1.2.3"))
        self.assertEqual(chain.storage.load_bans(), [])  # expired bans leave the database

    def test_cookie_is_private_and_fresh(self):
        directory = self.mktemp()
        os.makedirs(directory)
        first = admin.write_cookie(directory)
        mode = stat.S_IMODE(os.stat(os.path.join(directory, admin.COOKIE_FILE)).st_mode)
        self.assertEqual(mode, 0o600)
        self.assertEqual(admin.read_cookie(directory), first)
        self.assertNotEqual(admin.write_cookie(directory), first)
        token = admin.read_cookie(directory)
        self.assertTrue(admin.authorised(f"Bearer {token}".encode(), token))
        self.assertFalse(admin.authorised(b"Basic abc", token))
