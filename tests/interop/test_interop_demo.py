"""`stratum1 run --demo`: the README's first command serves on 127.0.0.1:11123."""

from __future__ import annotations

import pytest
from interop_support import MODE_SERVER, port_free

DEMO_HOST, DEMO_PORT = "127.0.0.1", 11123


def test_demo_serves_on_11123(start_daemon):
    if not port_free(DEMO_HOST, DEMO_PORT):
        pytest.skip(f"{DEMO_HOST}:{DEMO_PORT} is in use (a demo already running?)")
    daemon = start_daemon(command=["run", "--demo"], name="demo")
    reply = daemon.wait_for_reply(DEMO_HOST, DEMO_PORT, timeout=30.0, synced=False)
    assert reply.mode == MODE_SERVER
    assert reply.version == 4
    # The clock is untouched and the simulated receiver follows it: served time is ours.
    assert abs(reply.offset) < 1.0, reply
    # The demo says how to query it, on its own output.
    assert str(DEMO_PORT) in daemon.output(), daemon.describe()
    assert daemon.alive()
