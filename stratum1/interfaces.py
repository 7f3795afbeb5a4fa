"""Which local addresses to serve on: this host's interface addresses and ntpd's ``interface``
rules (listen / ignore / drop; the last rule that matches an address decides)."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

LISTEN = "listen"
IGNORE = "ignore"
DROP = "drop"

WILDCARD_V4 = "0.0.0.0"
WILDCARD_V6 = "::"

_SIOCGIFADDR = 0x8915


@dataclass(frozen=True, slots=True)
class LocalAddress:
    """One address of one interface ("lo", "eth0", ...)."""

    interface: str
    address: str

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.address)


def local_addresses() -> list[LocalAddress]:
    """This host's IPv4 and IPv6 interface addresses (IPv4 by ioctl, IPv6 from /proc)."""
    found: list[LocalAddress] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue  # no IPv4 address on this interface
            found.append(LocalAddress(name, socket.inet_ntoa(reply[20:24])))
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 6:
                    continue
                hexaddr, name = fields[0], fields[5]
                addr = ipaddress.IPv6Address(bytes.fromhex(hexaddr))
                if addr.is_link_local:
                    continue  # needs a scope id to bind; ntpd skips them for serving too
                found.append(LocalAddress(name, str(addr)))
    except OSError:
        pass
    return found


def _matches(rule, addr: LocalAddress | None, family: int) -> bool:
    """Whether ``rule`` (a config InterfaceRule) applies; ``addr`` None is the wildcard."""
    match = rule.match
    if match == "wildcard":
        return addr is None
    if addr is None:
        return False
    ip = addr.ip
    if match == "all":
        return not ip.is_loopback  # ntpd: all addresses except wildcard and localhost
    if match == "ipv4":
        return ip.version == 4
    if match == "ipv6":
        return ip.version == 6
    if match == "name":
        return addr.interface == rule.value
    if match == "address":
        try:
            value = ipaddress.ip_address(rule.value)
        except ValueError:
            return False
        if value.version != ip.version:
            return False
        bits = rule.prefixlen if rule.prefixlen is not None else value.max_prefixlen
        network = ipaddress.ip_network(f"{value}/{bits}", strict=False)
        return ip in network
    return False


def action_for(rules: Sequence, addr: LocalAddress | None, family: int) -> str:
    """The action for one address (None: the wildcard of ``family``); default listen."""
    action = LISTEN
    for rule in rules:
        if _matches(rule, addr, family):
            action = rule.action
    return action


@dataclass(frozen=True, slots=True)
class Binding:
    """A socket to open: its address, and whether what arrives there is dropped unread."""

    address: str
    drop: bool = False


def plan_bindings(
    rules: Sequence, addresses: Iterable[LocalAddress], *, ipv4: bool = True, ipv6: bool = True
) -> list[Binding]:
    """The sockets to open for ``rules``.

    A listened wildcard serves every address of its family (replies leave from the address
    asked, by IP_PKTINFO), so individual sockets are opened only where the wildcard is ignored,
    or to shadow an address whose traffic must be dropped.
    """
    plan: list[Binding] = []
    for family, wildcard, enabled in (
        (socket.AF_INET, WILDCARD_V4, ipv4),
        (socket.AF_INET6, WILDCARD_V6, ipv6),
    ):
        if not enabled:
            continue
        version = 4 if family == socket.AF_INET else 6
        wild = action_for(rules, None, family)
        if wild != IGNORE:
            plan.append(Binding(wildcard, drop=wild == DROP))
        for addr in addresses:
            if addr.ip.version != version:
                continue
            action = action_for(rules, addr, family)
            if action == DROP and wild == LISTEN:
                plan.append(Binding(addr.address, drop=True))
            elif action != IGNORE and wild != LISTEN:
                plan.append(Binding(addr.address, drop=action == DROP))
    return plan
