"""Several hosts on one machine for multi-node tests: network namespaces joined by a bridge.

`lan(["db", "r1", "r2"])` makes one namespace per name, each with a veth whose other end is on a
bridge in this (the root) namespace, and yields their addresses: the test process talks to every host
through the bridge, and the hosts talk to each other. Traffic stays on this machine (the addresses are
those of the namespaces made here). Needs root (CAP_NET_ADMIN) and iproute2; the test is skipped with
the reason otherwise. Everything is deleted on exit, also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Host:
    name: str  # the namespace
    address: str  # its address on the bridge
    link: str  # the veth end on the bridge (root namespace): set it down to cut the host off

    def exec(self, *cmd: str) -> list[str]:
        """``cmd`` to run inside this host's namespace (for `subprocess`)."""
        return ["ip", "netns", "exec", self.name, *cmd]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def set_link(host: Host, up: bool) -> None:
    """Connect or cut ``host`` (its bridge port goes up or down: packets to and from it are dropped)."""
    _ip("link", "set", host.link, "up" if up else "down")


@contextlib.contextmanager
def lan(names: list[str]) -> Iterator[dict[str, Host]]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed: no network namespaces for a multi-host test")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CAP_NET_ADMIN)")
    tag = f"{os.getpid() % 100000:05d}"
    subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"  # private, only on this bridge
    bridge = f"lobr{tag}"
    hosts: dict[str, Host] = {}
    made: list[str] = []
    try:
        try:
            _ip("link", "add", bridge, "type", "bridge")
        except subprocess.CalledProcessError as e:
            pytest.skip(f"cannot create a bridge here: {e.stderr.strip()}")
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, name in enumerate(names, start=2):
            ns, outer = f"lo{tag}{name}", f"lv{tag}{i}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", outer, "master", bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{subnet}.{i}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            hosts[name] = Host(ns, f"{subnet}.{i}", outer)
        yield hosts
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # takes its veth pair along
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
