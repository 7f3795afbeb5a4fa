"""The I/O side of upstream network sources: client UDP sockets, poll timers, name resolution,
and pools that keep several associations alive and replace the unreachable ones.

``Upstream`` is what the daemon holds: one client socket per address family (kernel receive
stamps through ``stratum1.netio``) shared by every ``NetworkSource``; a ``NetworkSource`` is one
``server``/``pool``/``peer`` line and runs a ``stratum1.peer.Peer`` per address it uses.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from . import netio
from .association import MAXPOLL_LIMIT, MINPOLL_LIMIT, Association
from .clock import Clock
from .eventloop import EventLoop, Timer
from .packet import MODE_ACTIVE, MODE_CLIENT
from .peer import KeyAuth, Peer, PeerAuth
from .resolver import Lookup, Resolution, Resolver
from .snapshot import SystemSnapshot

log = logging.getLogger(__name__)

NTP_PORT = 123
#: Associations a pool keeps (chrony's maxsources default; ntpd fills up to tos maxclock).
DEFAULT_POOL_SIZE = 4
#: A pool short of associations looks its name up again this often (s).
POOL_REFRESH_S = 60.0
#: An address a pool dropped is not taken again for this long (s).
POOL_QUARANTINE_S = 3600.0
RECV_BUFSIZE = 2048
MAX_BATCH = 64

Address = tuple[str, int]


@dataclass(slots=True)
class UpstreamStats:
    """Socket-level counters (per-association ones live in each ``Peer.stats``)."""

    sent: int = 0
    send_errors: int = 0
    received: int = 0
    unknown_source: int = 0  # a datagram from an address we have no association with
    truncated: int = 0
    recv_errors: int = 0
    unstamped: int = 0  # no kernel receive stamp: the clock was read instead

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def parse_literal(host: str) -> str | None:
    """The canonical text of an IP address literal (``[v6]`` and ``%scope`` accepted), or None
    for a host name."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


def _family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


class ClientSockets:
    """One wildcard-bound UDP socket per address family, opened on first use; replies are routed
    by their source (address, port) to the handler registered for it."""

    def __init__(self, loop: EventLoop, clock: Clock, *, kernel_timestamps: bool = False) -> None:
        self.loop = loop
        self.clock = clock
        self.kernel_timestamps = kernel_timestamps
        self.stats = UpstreamStats()
        self._socks: dict[int, socket.socket] = {}
        self._stamped: dict[int, bool] = {}
        self._handlers: dict[Address, Callable[[bytes, int], None]] = {}

    def register(self, address: Address, handler: Callable[[bytes, int], None]) -> None:
        self._handlers[address] = handler

    def unregister(self, address: Address) -> None:
        self._handlers.pop(address, None)

    def handler_for(self, address: Address) -> Callable[[bytes, int], None] | None:
        return self._handlers.get(address)

    def send(self, data: bytes, address: Address) -> int | None:
        """Send ``data``; returns the clock reading taken just before the send (t1), or None
        when it could not be sent."""
        family = _family_of(address[0])
        try:
            sock = self._socket(family)
            t1 = self.clock.now_ns()
            sock.sendto(data, address if family == socket.AF_INET else (*address, 0, 0))
        except OSError as exc:
            self.stats.send_errors += 1
            log.debug("send to %s failed: %s", address[0], exc)
            return None
        self.stats.sent += 1
        return t1

    def _socket(self, family: int) -> socket.socket:
        sock = self._socks.get(family)
        if sock is not None:
            return sock
        sock = netio.open_udp(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        mode = netio.enable_rx_timestamps(sock) if self.kernel_timestamps else netio.TS_CLOCK
        self._socks[family] = sock
        self._stamped[family] = mode != netio.TS_CLOCK
        fd = sock.fileno()
        self.loop.add_reader(fd, lambda: self._readable(family))
        return sock

    def _readable(self, family: int) -> None:
        sock = self._socks.get(family)
        if sock is None:
            return
        stamped = self._stamped[family]
        for _ in range(MAX_BATCH):
            try:
                dgram = netio.receive(sock, RECV_BUFSIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP port unreachable and the like surface here: the poll just goes unanswered.
                self.stats.recv_errors += 1
                log.debug("recvmsg failed: %s", exc)
                continue
            rx_ns = dgram.rx_ns if stamped else None
            if rx_ns is None:
                rx_ns = self.clock.now_ns()
                self.stats.unstamped += stamped
            self.stats.received += 1
            if dgram.truncated:
                self.stats.truncated += 1
                continue
            source = (parse_literal(str(dgram.address[0])) or "", int(dgram.address[1]))
            handler = self._handlers.get(source)
            if handler is None:
                self.stats.unknown_source += 1
                continue
            handler(dgram.data, rx_ns)

    def close(self) -> None:
        for sock in self._socks.values():
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()


class Member:
    """One address of a source: its Association, its Peer and its poll timer."""

    def __init__(self, source: NetworkSource, address: str, assoc_id: int) -> None:
        up = source.upstream
        cfg = source.config
        self.source = source
        self.address = address
        self.endpoint: Address = (address, source.port)
        minpoll = max(MINPOLL_LIMIT, min(MAXPOLL_LIMIT, cfg.minpoll))
        maxpoll = max(minpoll, min(MAXPOLL_LIMIT, cfg.maxpoll))
        self.association = Association(
            assoc_id,
            address,
            refclock=False,
            address=address,
            minpoll=minpoll,
            maxpoll=maxpoll,
            prefer=cfg.prefer,
            noselect=cfg.noselect,
            true=cfg.true,
            sys_precision=up.system.precision,
            maxdist=up.maxdist,
        )
        self.peer = Peer(
            self.association,
            mode=MODE_ACTIVE if cfg.kind == "peer" else MODE_CLIENT,
            version=cfg.version,
            iburst=cfg.iburst,
            burst=cfg.burst,
            auth=source.auth,
            maxdist=up.maxdist,
            sys_precision=up.system.precision,
            get_snapshot=up.get_snapshot,
            rng=up.rng,
        )
        self._timer: Timer | None = None

    def start(self) -> None:
        up = self.source.upstream
        up.system.add(self.association)
        up.sockets.register(self.endpoint, self.handle)
        self._schedule(self.peer.start())

    def stop(self) -> None:
        up = self.source.upstream
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if up.sockets.handler_for(self.endpoint) == self.handle:
            up.sockets.unregister(self.endpoint)
        try:
            up.system.remove(self.association.assoc_id)
        except KeyError:
            pass

    def _schedule(self, delay_s: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.source.upstream.loop.call_later(delay_s, self._poll)

    def _poll(self) -> None:
        self._timer = None
        up = self.source.upstream
        action = self.peer.poll(up.clock.now_ns())
        if action.request is not None:
            t1 = up.sockets.send(action.request, self.endpoint)
            if t1 is not None:
                self.peer.mark_sent(t1)
        self._schedule(action.next_s)
        if action.missed:
            up.on_update()
        if self.peer.replace_due:
            self.source.unreachable(self)

    def handle(self, data: bytes, rx_ns: int) -> None:
        """A datagram from this member's address (client socket, or a peer's on port 123)."""
        up = self.source.upstream
        result = self.peer.receive(data, rx_ns, host=self.address)
        if result.accepted:
            up.on_update()
            return
        if result.reschedule_s is not None:
            log.warning("%s sent a RATE kiss-o'-death: polling every %d s now",
                        self.address, int(result.reschedule_s))  # fmt: skip
            self._schedule(result.reschedule_s)
        if result.demobilize:
            kiss = (result.kiss or b"").decode("ascii", "replace")
            log.warning("%s sent a %s kiss-o'-death: association removed", self.address, kiss)
            self.source.demobilize(self, kiss)


class NetworkSource:
    """One ``server``, ``pool`` or ``peer`` line: resolves its name (again when the address
    stops answering), and keeps one member (pool: ``pool_size``) polling."""

    def __init__(self, upstream: Upstream, config: Any, *, port: int = NTP_PORT,
                 pool_size: int | None = None) -> None:  # fmt: skip
        if config.kind not in ("server", "pool", "peer"):
            raise ValueError(f"{config.kind} associations are not supported")
        self.upstream = upstream
        self.config = config
        self.port = port
        self.kind = config.kind
        self.host = config.host
        self.target = (pool_size or upstream.pool_size) if config.kind == "pool" else 1
        self.members: list[Member] = []
        self.error: str | None = None
        self.demobilized: str | None = None
        self.family = upstream.family_for(config.family)
        self._literal = parse_literal(config.host)
        self._lookup: Lookup | None = None
        self._refresh: Timer | None = None
        self._quarantine: dict[str, float] = {}
        self._stopped = False
        self.auth: PeerAuth | None = None
        if config.key is not None:
            self.auth = upstream.make_auth(config.key)
            if self.auth is None:
                self.error = f"key {config.key} cannot be used"

    @property
    def associations(self) -> list[Association]:
        return [m.association for m in self.members]

    @property
    def peers(self) -> list[Peer]:
        return [m.peer for m in self.members]

    def start(self) -> None:
        if self.error is not None:
            log.error("%s %s: %s; not polling it", self.kind, self.host, self.error)
            return
        if self.family is None:
            self.error = "its address family is disabled (-4/-6)"
            log.error("%s %s: %s", self.kind, self.host, self.error)
            return
        if self._literal is not None:
            if self.family != socket.AF_UNSPEC and _family_of(self._literal) != self.family:
                self.error = "its address family is disabled (-4/-6)"
                log.error("%s %s: %s", self.kind, self.host, self.error)
                return
            self._mobilize([self._literal])
            return
        self._resolve()

    def stop(self) -> None:
        self._stopped = True
        if self._lookup is not None:
            self._lookup.cancel()
            self._lookup = None
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        for member in self.members:
            member.stop()
        self.members = []

    def _now_s(self) -> float:
        return self.upstream.loop.now_ns() / 1e9

    # -- addresses ---------------------------------------------------------------------------
    def _resolve(self) -> None:
        if self._stopped or self._lookup is not None or self.upstream.resolver is None:
            return
        self._lookup = self.upstream.resolver.resolve(
            self.host, self._resolved, family=None if self.family == socket.AF_UNSPEC else self.family
        )

    def _resolved(self, result: Resolution) -> None:
        self._lookup = None
        if self._stopped:
            return
        self._mobilize(list(result.addresses))
        if len(self.members) < self.target and self.kind == "pool":
            self._schedule_refresh()

    def _schedule_refresh(self) -> None:
        if self._refresh is None and not self._stopped:
            self._refresh = self.upstream.loop.call_later(POOL_REFRESH_S, self._on_refresh)

    def _on_refresh(self) -> None:
        self._refresh = None
        if len(self.members) < self.target:
            self._resolve()

    def _mobilize(self, addresses: list[str]) -> None:
        now = self._now_s()
        self._quarantine = {a: t for a, t in self._quarantine.items() if t > now}
        for address in addresses:
            if len(self.members) >= self.target:
                break
            if address in self._quarantine or self.upstream.in_use((address, self.port)):
                continue
            member = Member(self, address, self.upstream.next_assoc_id())
            self.members.append(member)
            member.start()
            log.info("%s %s: polling %s (association %d)", self.kind, self.host, address,
                     member.association.assoc_id)  # fmt: skip

    def _drop(self, member: Member) -> None:
        member.stop()
        if member in self.members:
            self.members.remove(member)
        self.upstream.on_update()

    # -- events from members -----------------------------------------------------------------
    def unreachable(self, member: Member) -> None:
        """A member stayed silent for REPLACE_UNREACH polls: a pool replaces it; a server name
        is looked up again and followed if it moved."""
        if self._literal is not None:
            return  # an address literal has nowhere else to go: keep polling (backed off)
        if self.kind == "pool":
            log.info("pool %s: %s unreachable, replacing it", self.host, member.address)
            self._quarantine[member.address] = self._now_s() + POOL_QUARANTINE_S
            self._drop(member)
            self._resolve()
            return
        if self._lookup is None and self.upstream.resolver is not None:
            self._lookup = self.upstream.resolver.resolve(
                self.host, lambda r: self._reresolved(member, r),
                family=None if self.family == socket.AF_UNSPEC else self.family,
            )  # fmt: skip

    def _reresolved(self, member: Member, result: Resolution) -> None:
        self._lookup = None
        if self._stopped or member not in self.members:
            return
        if member.address in result.addresses:
            return  # same place: keep polling it
        log.info("%s %s moved from %s to %s", self.kind, self.host, member.address,
                 result.addresses[0])  # fmt: skip
        self._drop(member)
        self._mobilize(list(result.addresses))

    def demobilize(self, member: Member, kiss: str) -> None:
        """DENY/RSTR: stop polling that address (a pool finds another)."""
        if self.kind == "pool":
            self._quarantine[member.address] = self._now_s() + POOL_QUARANTINE_S
            self._drop(member)
            self._resolve()
            return
        self.demobilized = kiss
        self._drop(member)


class Upstream:
    """Everything that polls network sources, wired to the daemon's loop, clock and system.

    ``on_update`` is called whenever an association changed (a sample, a missed poll, a source
    gone): the daemon runs its system update there.
    """

    def __init__(
        self,
        loop: EventLoop,
        clock: Clock,
        system: Any,
        *,
        on_update: Callable[[], None],
        next_assoc_id: Callable[[], int],
        resolver: Resolver | None = None,
        authenticator: Any = None,
        get_snapshot: Callable[[], SystemSnapshot] | None = None,
        ipv4: bool = True,
        ipv6: bool = True,
        kernel_timestamps: bool = False,
        pool_size: int = DEFAULT_POOL_SIZE,
        rng: random.Random | None = None,
    ) -> None:
        self.loop = loop
        self.clock = clock
        self.system = system
        self.on_update = on_update
        self.next_assoc_id = next_assoc_id
        self._own_resolver = resolver is None
        self.resolver = resolver if resolver is not None else Resolver(loop)
        self.authenticator = authenticator
        self.get_snapshot = get_snapshot
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self.pool_size = pool_size
        self.rng = rng if rng is not None else random.Random()
        tos = getattr(system, "tos", None)
        self.maxdist = float(getattr(tos, "maxdist", 1.5))
        self.sockets = ClientSockets(loop, clock, kernel_timestamps=kernel_timestamps)
        self.sources: list[NetworkSource] = []

    @property
    def stats(self) -> UpstreamStats:
        return self.sockets.stats

    def family_for(self, family: int | None) -> int | None:
        """The family to resolve for a line's ``-4``/``-6`` under the daemon's ``-4``/``-6``
        (None: the line asks for a family the daemon does not use)."""
        if family == socket.AF_INET:
            return family if self.ipv4 else None
        if family == socket.AF_INET6:
            return family if self.ipv6 else None
        if self.ipv4 and self.ipv6:
            return socket.AF_UNSPEC
        return socket.AF_INET if self.ipv4 else socket.AF_INET6 if self.ipv6 else None

    def make_auth(self, keyid: int) -> PeerAuth | None:
        if self.authenticator is None:
            log.error("key %d: no keys file is loaded", keyid)
            return None
        try:
            return KeyAuth(self.authenticator, keyid)
        except (ValueError, TypeError) as exc:
            log.error("key %d: %s", keyid, exc)
            return None

    def add(self, config: Any, *, port: int = NTP_PORT, pool_size: int | None = None) -> NetworkSource:
        """Start polling what one ``server``/``pool``/``peer`` line names. ``port`` exists for
        tests (the configuration has no port: NTP is port 123)."""
        source = NetworkSource(self, config, port=port, pool_size=pool_size)
        self.sources.append(source)
        source.start()
        return source

    def remove(self, source: NetworkSource) -> None:
        source.stop()
        if source in self.sources:
            self.sources.remove(source)

    def counters(self) -> dict[str, int]:
        """Every counter summed over all associations (packets sent, received, accepted, each
        drop reason, missed polls) plus the client sockets' own: for status displays."""
        totals: dict[str, int] = {}
        for source in self.sources:
            for peer in source.peers:
                st = peer.stats
                for name in ("sent", "received", "accepted", "missed_polls"):
                    totals[name] = totals.get(name, 0) + getattr(st, name)
                for reason, count in st.dropped.items():
                    totals[reason] = totals.get(reason, 0) + count
        for name, count in self.stats.as_dict().items():
            totals[f"socket_{name}"] = count
        return totals

    def in_use(self, endpoint: Address) -> bool:
        return self.sockets.handler_for(endpoint) is not None

    def peer_handler(self, data: bytes, address: tuple, rx_ns: int) -> bytes | None:
        """For ``NtpServer(peer_handler=...)``: a symmetric packet that reached our port 123 from
        a configured peer goes to its association. Nothing is sent back (each side of a
        symmetric association transmits on its own poll); unknown senders are ignored."""
        source = (parse_literal(str(address[0])) or "", int(address[1]))
        handler = self.sockets.handler_for(source)
        if handler is not None:
            handler(data, rx_ns)
        return None

    def close(self) -> None:
        for source in list(self.sources):
            source.stop()
        self.sources = []
        self.sockets.close()
        if self._own_resolver:
            self.resolver.close()


__all__ = [
    "DEFAULT_POOL_SIZE",
    "ClientSockets",
    "Member",
    "NetworkSource",
    "Upstream",
    "UpstreamStats",
    "parse_literal",
]
