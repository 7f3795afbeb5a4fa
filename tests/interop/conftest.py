"""Fixtures for the interop tests: start the real daemon as a subprocess and always stop it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from interop_support import LOCAL_CONF, MAXDIST, Daemon, GpsFake, loopback_host

StartDaemon = Callable[..., Daemon]


class _DaemonFactory:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Daemon] = []

    def __call__(self, config: str | Path | None = None, listen: str | None = None,
                 extra_args: Sequence[str] = (), command: Sequence[str] | None = None,
                 name: str = "daemon") -> Daemon:
        """Start `stratum1 run -n --no-discipline -c CONFIG --listen LISTEN EXTRA...`.

        `config` is a path or the text of a config file; `command` replaces the whole
        argument list (for `run --demo` and the like).
        """
        if command is None:
            if isinstance(config, str):
                path = self.workdir / f"{name}.conf"
                path.write_text(config)
                config = path
            args = ["run", "-n", "--no-discipline"]
            if config is not None:
                args += ["-c", str(config)]
            if listen is not None:
                args += ["--listen", listen]
            command = [*args, *extra_args]
        daemon = Daemon(command, self.workdir, name=name)
        self.started.append(daemon)
        return daemon

    def stop_all(self) -> None:
        for daemon in self.started:
            daemon.stop()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """Factory: start_daemon(config_text_or_path, listen="127.0.0.N:123", extra_args=())."""
    factory = _DaemonFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def local_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    """One daemon on 127.0.0.N:123 with the LOCAL clock, synchronised, for read-only queries.

    Ready means what a real client (chronyd, ntpd) needs before it takes the server: LI != 3
    and a root distance within MAXDIST. Yields (daemon, host). Session-scoped: the tools only read from it, and waiting for source
    selection once keeps the suite short.
    """
    host = loopback_host()
    factory = _DaemonFactory(tmp_path_factory.mktemp("local-daemon"))
    daemon = factory(LOCAL_CONF, listen=f"{host}:123", name="local")
    try:
        daemon.wait_for_reply(host, 123, timeout=45.0, max_distance=MAXDIST)
        yield daemon, host
    finally:
        factory.stop_all()


@pytest.fixture
def gpsfake(tmp_path: Path) -> Iterator[Callable[..., GpsFake]]:
    """Factory: gpsfake(capture_path, cycle=0.05, once=False) -> a ready GpsFake (`.port`)."""
    started: list[GpsFake] = []

    def start(capture: Path, cycle: float = 0.05, once: bool = False) -> GpsFake:
        fake = GpsFake(capture, tmp_path, cycle=cycle, once=once)
        started.append(fake)
        fake.wait_ready()
        return fake

    yield start
    for fake in started:
        fake.stop()
