"""A small LAN of Linux network namespaces for multi-host tests (docs/testing-netns.md).

Host i is the namespace `archivas-netns-<pid>-h<i>`, with loopback up and one interface,
eth0, at 10.231.0.<i+1>/24. Its other end, `port<i>`, is plugged into a switch (a Linux
bridge) in a hub namespace, `archivas-netns-<pid>-hub`. Switch 0 is the core; a host may
sit on another switch s, joined to the core by an uplink (a veth pair, `core-sw<s>` on
the core, `sw<s>-core` on switch s). All hosts share one subnet and one broadcast domain,
so any host reaches any other by its address; taking a host's port down cuts that host
off, taking a switch's uplink down cuts off the hosts on that switch together (they still
reach one another).

Nothing is added to the root namespace but the namespace names, so two runs at once do
not collide (each has its own copy of 10.231.0.0/24), and names carry the pid so a run
that crashed leaves nothing in the way of the next; `remove_stale()` deletes what a dead
run left (killing the processes still in its namespaces).

The test process stays in the root namespace. `exec_prefix(i)` runs a program in host i
(`ip netns exec`); `run_in(i, f)` runs f in a thread that has entered host i's namespace
(setns), so the test reaches a node's RPC on host i's own loopback even while that host is
cut off, without starting a process per request.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from typing import Any, Callable, Optional, Sequence

import pytest
from twisted.internet import defer, reactor
from twisted.python.failure import Failure

PREFIX = "archivas-netns-"
SUBNET = "10.231.0"
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(AssertionError):
    """An `ip` command failed: the command and its error."""


def require_root_and_ip() -> str:
    """The path of `ip`. Not root: skip (namespaces need CAP_NET_ADMIN). Root without
    `ip`: install iproute2 with apt-get, or fail saying why. Never a skip as root."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CAP_NET_ADMIN)")
    path = shutil.which("ip")
    if path is not None:
        return path
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "iproute2"]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise AssertionError(f"`ip` is missing and `{' '.join(argv)}` failed ({done.returncode}): "
                                 f"{done.stderr.strip()[-2000:]}")
    path = shutil.which("ip")
    if path is None:
        raise AssertionError("apt-get installed iproute2 but `ip` is still not on PATH")
    return path


def ip(*args: str, ns: Optional[str] = None) -> str:
    """Run `ip [-n ns] args...`; its output, or NetnsError with the command and its stderr."""
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(name: str) -> None:
    """SIGKILL every process in namespace `name` (ours: what a test run started there)."""
    try:
        pids = [int(p) for p in ip("netns", "pids", name).split()]
    except NetnsError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def remove_stale() -> list[str]:
    """Delete the namespaces of runs that are gone (their pid is not alive, or is ours and we
    have made none yet); returns their names. Other live runs' namespaces are left alone."""
    removed = []
    for name in namespaces():
        match = re.match(re.escape(PREFIX) + r"(\d+)-", name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and _alive(pid):
            continue
        _kill_inside(name)
        ip("netns", "del", name)
        removed.append(name)
    return removed


def _set_pdeathsig() -> None:
    # In the child between fork and exec: SIGKILL when the test process dies, so a killed
    # run leaves no node behind (the signal survives `ip netns exec`, which execs).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Network:
    """`hosts` namespaces on switches in a hub namespace; `switch_of[i]` is host i's switch
    (default all on the core, 0). create() builds it, cleanup() removes all of it."""

    def __init__(self, hosts: int, switch_of: Optional[Sequence[int]] = None) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.hub = f"{self.tag}-hub"
        self.names = [f"{self.tag}-h{i}" for i in range(hosts)]
        self.addresses = [f"{SUBNET}.{i + 1}" for i in range(hosts)]
        self.switch_of = list(switch_of) if switch_of is not None else [0] * hosts
        assert len(self.switch_of) == hosts
        self.switches = sorted({0, *self.switch_of})
        self.created: list[str] = []
        self.stale_removed: list[str] = []

    def create(self) -> "Network":
        self.stale_removed = remove_stale()
        hub = self.hub
        self._add_namespace(hub)
        for s in self.switches:
            ip("link", "add", f"sw{s}", "type", "bridge", ns=hub)
            ip("link", "set", f"sw{s}", "up", ns=hub)
            if s != 0:
                ip("link", "add", f"core-sw{s}", "type", "veth", "peer", "name", f"sw{s}-core", ns=hub)
                ip("link", "set", f"core-sw{s}", "master", "sw0", "up", ns=hub)
                ip("link", "set", f"sw{s}-core", "master", f"sw{s}", "up", ns=hub)
        for i, name in enumerate(self.names):
            self._add_namespace(name)
            ip("link", "add", f"port{i}", "type", "veth", "peer", "name", "eth0", "netns", name, ns=hub)
            ip("link", "set", f"port{i}", "master", f"sw{self.switch_of[i]}", "up", ns=hub)
            ip("addr", "add", f"{self.addresses[i]}/24", "dev", "eth0", ns=name)
            ip("link", "set", "eth0", "up", ns=name)
        return self

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.created.append(name)
        ip("link", "set", "lo", "up", ns=name)

    # cutting and restoring links

    def link_down(self, i: int) -> None:
        """Cut host i off: its port on its switch down (eth0 in host i loses its carrier)."""
        ip("link", "set", f"port{i}", "down", ns=self.hub)

    def link_up(self, i: int) -> None:
        ip("link", "set", f"port{i}", "up", ns=self.hub)

    def uplink_down(self, s: int) -> None:
        """Cut off every host on switch s (s != 0) together: the core's end of its uplink down."""
        ip("link", "set", f"core-sw{s}", "down", ns=self.hub)

    def uplink_up(self, s: int) -> None:
        ip("link", "set", f"core-sw{s}", "up", ns=self.hub)

    def link_state(self, name: str) -> str:
        """`UP`, `DOWN`, `LOWERLAYERDOWN`...: an interface of the hub, as `ip -br link` says."""
        return ip("-br", "link", "show", "dev", name, ns=self.hub).split()[1]

    # running things in a host

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[i]]

    def popen(self, i: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start argv in host i; it is killed (SIGKILL) if the test process dies."""
        return subprocess.Popen([*self.exec_prefix(i), *argv], preexec_fn=_set_pdeathsig, **kwargs)

    def run_in(self, i: int, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        """f(*args) in a new thread inside host i's network namespace; a Deferred of its result.
        (setns(2) with CLONE_NEWNET moves only the calling thread.)"""
        d: defer.Deferred = defer.Deferred()
        path = f"/run/netns/{self.names[i]}"

        def work() -> None:
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({path}): {os.strerror(err)}")
                finally:
                    os.close(fd)
                result = f(*args)
            except BaseException:
                failure = Failure()
                reactor.callFromThread(d.errback, failure)
            else:
                reactor.callFromThread(d.callback, result)

        threading.Thread(target=work, name=f"netns-{i}", daemon=True).start()
        return d

    def http(self, i: int, port: int, path: str, method: str = "GET", body: Any = None,
             host: str = "127.0.0.1", timeout: float = 5.0) -> defer.Deferred:
        """An HTTP request from inside host i (to its own loopback by default): a Deferred
        of (status, decoded JSON body or None)."""
        return self.run_in(i, _http_json, host, port, path, method, body, timeout)

    # clean-up

    def cleanup(self) -> None:
        """Kill what still runs in our namespaces and delete them (the hub's deletion takes
        the switches and every veth pair with it). Raises NetnsError if one remains."""
        errors = []
        for name in reversed(self.created):
            _kill_inside(name)
            try:
                ip("netns", "del", name)
            except NetnsError as e:
                errors.append(str(e))
        self.created = []
        left = [n for n in namespaces() if n.startswith(self.tag + "-")]
        if errors or left:
            raise NetnsError(f"namespaces left behind {left}: {'; '.join(errors)}")


def _http_json(host: str, port: int, path: str, method: str, body: Any, timeout: float) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, None
