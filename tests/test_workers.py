"""Tests for stratum1/workers.py: the forwarding and snapshot framing, and a real pool of forked
SO_REUSEPORT workers on loopback (clients spread over the group, snapshots followed, mode 6
forwarded to the main process, bounded shutdown)."""

import dataclasses
import os
import select
import socket
import time

import pytest

from stratum1.clock import SystemClock
from stratum1.eventloop import EventLoop
from stratum1.packet import NtpPacket
from stratum1.server import NtpServer
from stratum1.snapshot import SystemSnapshot
from stratum1.workers import (
    SnapshotReader,
    WorkerPool,
    decode_forward,
    encode_forward,
    encode_snapshot,
)

SNAP = SystemSnapshot(leap=0, stratum=1, precision=-22, poll=4, root_delay=0.0,
                      root_dispersion=0.0005, refid=b"GPS\0",
                      reference_ns=time.time_ns())  # fmt: skip
CLIENTS = 24


def test_forward_round_trip_v4_and_v6():
    message = encode_forward(b"\x16\x02" + bytes(10), ("127.0.0.9", 40123), 1_767_225_600 * 10**9)
    assert decode_forward(message) == (b"\x16\x02" + bytes(10), ("127.0.0.9", 40123),
                                       1_767_225_600 * 10**9)  # fmt: skip
    v6 = ("fe80::1", 123, 0, 3)
    assert decode_forward(encode_forward(b"x", v6, 5)) == (b"x", v6, 5)
    with pytest.raises(ValueError):
        decode_forward(b"\x00" * 5)
    with pytest.raises(ValueError):
        decode_forward(encode_forward(b"", ("127.0.0.1", 1), 0)[:-3])


def test_snapshot_frames_survive_any_split():
    two = SNAP, dataclasses.replace(SNAP, stratum=2)
    wire = b"".join(encode_snapshot(s) for s in two)
    for cut in range(len(wire) + 1):
        reader = SnapshotReader()
        got = reader.feed(wire[:cut]) + reader.feed(wire[cut:])
        assert got == list(two)
    with pytest.raises(ValueError):
        SnapshotReader().feed(b"\xff\xff\xff\xff")


def test_pool_refuses_nonsense():
    with pytest.raises(ValueError):
        WorkerPool(("127.0.0.1", 123), 0, SystemClock())
    with pytest.raises(ValueError):
        WorkerPool(("0.0.0.0", 123), 1, SystemClock())
    with pytest.raises(RuntimeError):
        WorkerPool(("127.0.0.1", 123), 1, SystemClock()).attach(EventLoop(), None, lambda: SNAP)


def _free_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


@pytest.fixture
def pool_and_main():
    address = ("127.0.0.1", _free_port())
    state = {"snapshot": SNAP}
    controls = []

    def control(data, addr):
        controls.append(addr)
        return b"\x16\x82" + data[2:4] + bytes(8)

    pool = WorkerPool(address, 2, SystemClock())
    pool.start(SNAP)
    loop = EventLoop()
    main = NtpServer(address, lambda: state["snapshot"], SystemClock(), reuse_port=True,
                     control_handler=control)  # fmt: skip
    main.attach(loop)
    pool.attach(loop, main, lambda: state["snapshot"])
    clients = []
    for _ in range(CLIENTS):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        client.setblocking(False)
        clients.append(client)
    try:
        yield pool, main, loop, state, controls, clients
    finally:
        for client in clients:
            client.close()
        pids = pool.pids
        pool.stop()
        main.close()
        for pid in pids:
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reaped: nothing left behind


def _ask_all(loop, clients, address, payload, timeout_s=5.0):
    """Send ``payload`` from every client; run the main loop until each has an answer."""
    for client in clients:
        client.sendto(payload, address)
    answers = {}
    deadline = time.monotonic() + timeout_s
    while len(answers) < len(clients) and time.monotonic() < deadline:
        loop.run_once(until_ns=loop.now_ns() + 20_000_000)
        ready, _, _ = select.select(clients, [], [], 0)
        for client in ready:
            data, source = client.recvfrom(2048)
            assert source == address  # every answer comes from the port asked
            answers[client.getsockname()] = data
    return answers


def test_workers_share_clients_and_follow_snapshots(pool_and_main):
    pool, main, loop, state, _controls, clients = pool_and_main
    address = main.address
    request = NtpPacket(version=4, mode=3, poll=6, transmit=12345).pack()
    answers = _ask_all(loop, clients, address, request)
    assert len(answers) == CLIENTS
    assert all(NtpPacket.unpack(a).stratum == 1 for a in answers.values())
    # The kernel hashed some of the 24 source ports to the two workers.
    assert main.stats.replied < CLIENTS
    state["snapshot"] = dataclasses.replace(SNAP, stratum=3, refid=b"\x7f\0\0\1")
    deadline = time.monotonic() + 5.0
    strata: set[int] = set()
    while time.monotonic() < deadline:
        loop.run_once(until_ns=loop.now_ns() + 100_000_000)  # the snapshot watch runs
        answers = _ask_all(loop, clients, address, request)
        strata = {NtpPacket.unpack(a).stratum for a in answers.values()}
        if strata == {3}:
            break
    assert strata == {3}
    assert pool.publish_skipped == 0


def test_mode6_landing_in_a_worker_is_answered_by_the_main_process(pool_and_main):
    pool, main, loop, _state, controls, clients = pool_and_main
    answers = _ask_all(loop, clients, main.address, b"\x16\x01\x00\x07" + bytes(8))
    assert len(answers) == CLIENTS
    assert all(a[:4] == b"\x16\x82\x00\x07" for a in answers.values())
    # Every query reached the main process's control handler; some came through a worker.
    assert sorted(a[1] for a in controls) == sorted(c.getsockname()[1] for c in clients)
    assert 0 < pool.forwarded < CLIENTS
    assert pool.forward_errors == 0
