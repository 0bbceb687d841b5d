"""A second host for tests: a network namespace joined to this one by a veth pair (link-local addresses).

A client in the namespace reaches this host over a real link, so what a server sees of it (source address,
routing, NAT) is what it would see of a machine on the network."""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0, f"ip {' '.join(args)} failed: {res.stderr}"


def _free_link_local_net() -> ipaddress.IPv4Network:
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    for _ in range(100):
        net = ipaddress.ip_network(f"169.254.{secrets.randbelow(250) + 2}.{4 * secrets.randbelow(60)}/30")
        if not any(str(host) in used for host in net):
            return net
    raise AssertionError("no free 169.254.x.y/30 for the veth pair")


@contextmanager
def second_host() -> Iterator[tuple[str, str, str]]:
    """(namespace, this host's address on the link, the namespace's address); removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace and a veth pair needs root")
    tag = secrets.token_hex(3)
    ns, here, there = f"securepacs-{tag}", f"spvh{tag}", f"spvn{tag}"
    net = _free_link_local_net()
    host_ip, ns_ip = (str(a) for a in net.hosts())
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", here, "type", "veth", "peer", "name", there)
        _ip("link", "set", there, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", here)
        _ip("link", "set", here, "up")
        _ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", there)
        _ip("-n", ns, "link", "set", there, "up")
        yield ns, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True, check=False)  # takes the peer too
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
