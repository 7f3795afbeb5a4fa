"""Parse ntp.conf text or files (following includefile) into a Config plus diagnostics.

Parsing never raises on bad input: every problem becomes a Diagnostic naming file:line and the
directive, and all of a file's problems are reported together. ``load`` raises ConfigError when
any of them is an error; ``reload`` keeps the running configuration in that case.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import stat
from collections.abc import Callable

from . import associations, directives
from .builder import Builder, suggest
from .diagnostics import ConfigError, Diagnostic, has_errors
from .lexer import Statement, tokenize
from .model import (
    DEFAULT_ENABLED,
    Config,
    Discard,
    Filegen,
    Location,
    Mru,
    NtsConfig,
    Rlimit,
    Tinker,
    Tos,
)
from .refclocks import build_refclocks
from .retired import RETIRED_DIRECTIVES

log = logging.getLogger(__name__)

#: ntpd's include nesting limit: the top file plus four levels of includefile.
MAX_INCLUDE_DEPTH = 5
#: Files larger than this are refused (a config is a few kB; this stops /dev/zero-like input).
MAX_FILE_SIZE = 1 << 20

_Handler = Callable[[Builder, Statement], None]
HANDLERS: dict[str, _Handler] = {**associations.HANDLERS, **directives.HANDLERS}
#: Every directive name the parser knows (for suggestions and the docs test).
KNOWN_DIRECTIVES = frozenset(HANDLERS) | frozenset(RETIRED_DIRECTIVES) | {"includefile"}


class _Reader:
    """Reads statements from text and files into a Builder, following includes."""

    def __init__(self, builder: Builder) -> None:
        self.b = builder
        self.stack: list[str] = []  # real paths of the files being read, outermost first
        self.names: list[str] = []  # the same files as named in diagnostics

    def read_text(self, text: str, filename: str, base_dir: str, depth: int) -> None:
        statements, diags = tokenize(text, filename)
        self.b.diagnostics.extend(diags)
        for stmt in statements:
            self.statement(stmt, base_dir, depth)

    def read_file(self, path: str, where: Statement | Location, depth: int) -> None:
        real = os.path.realpath(path)
        if real in self.stack:
            chain = " -> ".join([*self.names[self.stack.index(real):], path])
            self.b.error(where, f"include loop: {chain}")
            return
        text = self._load(path, where)
        if text is None:
            return
        self.b.source_files.append(path)
        self.stack.append(real)
        self.names.append(path)
        try:
            self.read_text(text, path, os.path.dirname(path) or ".", depth)
        finally:
            self.stack.pop()
            self.names.pop()

    def _load(self, path: str, where: Statement | Location) -> str | None:
        try:
            st = os.stat(path)
            if stat.S_ISDIR(st.st_mode):
                self.b.error(where, f"{path} is a directory")
                return None
            if not stat.S_ISREG(st.st_mode):
                self.b.error(where, f"{path} is not a regular file")
                return None
            if st.st_size > MAX_FILE_SIZE:
                self.b.error(where, f"{path} is larger than {MAX_FILE_SIZE} bytes")
                return None
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except OSError as exc:
            self.b.error(where, f"cannot read {path}: {exc.strerror or exc}")
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            # Old configs carry Latin-1 comments; every byte decodes, nothing is lost.
            return data.decode("latin-1")

    def statement(self, stmt: Statement, base_dir: str, depth: int) -> None:
        name = stmt.directive
        if name == "includefile":
            self.include(stmt, base_dir, depth)
            return
        handler = HANDLERS.get(name)
        if handler is None:
            if name in RETIRED_DIRECTIVES:
                severity, message = RETIRED_DIRECTIVES[name]
                self.b.report(stmt, message, severity)
            else:
                self.b.error(stmt, f"unknown directive{suggest(name, sorted(KNOWN_DIRECTIVES))}",
                             directive=stmt.raw_directive)
            return
        try:
            handler(self.b, stmt)
        except Exception as exc:  # a parser bug must not take the daemon down with it
            log.exception("config handler for %s failed", name)
            self.b.error(stmt, f"internal error while reading this line: {exc!r}")

    def include(self, stmt: Statement, base_dir: str, depth: int) -> None:
        if len(stmt.args) != 1 or not stmt.args[0].text:
            self.b.error(stmt, "expects one file name")
            return
        target = os.path.normpath(os.path.join(base_dir, os.path.expanduser(stmt.args[0].text)))
        if depth + 1 >= MAX_INCLUDE_DEPTH:
            self.b.error(stmt, f"{stmt.args[0].text}: includes nested deeper than "
                         f"{MAX_INCLUDE_DEPTH - 1} levels")
            return
        if glob.has_magic(target):
            matches = sorted(glob.glob(target))
            if not matches:
                self.b.warning(stmt, f"{stmt.args[0].text} matches no file")
            for path in matches:
                if os.path.isfile(path):
                    self.read_file(path, stmt, depth + 1)
            return
        self.read_file(target, stmt, depth + 1)


def _section(b: Builder, cls: type, name: str):  # type: ignore[no-untyped-def]
    return dataclasses.replace(cls(), **b.sections.get(name, {}))


def _build(b: Builder) -> Config:
    refclocks = build_refclocks(b)
    enabled = set(DEFAULT_ENABLED)
    for flag, on in b.enable_changes:
        (enabled.add if on else enabled.discard)(flag)
    filegens = []
    for name in sorted(b.statistics | set(b.filegens)):
        entry = b.filegens.get(name, {})
        filegens.append(Filegen(name=name, file=entry.get("file", name),
                                type=entry.get("type", "day"), link=entry.get("link", True),
                                enabled=entry.get("enabled", name in b.statistics)))
    scalars = dict(b.scalars)
    config = Config(
        refclocks=refclocks,
        associations=tuple(b.associations),
        restrict=tuple(b.restrict),
        tos=_section(b, Tos, "tos"),
        tinker=_section(b, Tinker, "tinker"),
        discard=_section(b, Discard, "discard"),
        mru=_section(b, Mru, "mru"),
        rlimit=_section(b, Rlimit, "rlimit"),
        nts=_section(b, NtsConfig, "nts"),
        logconfig=tuple(b.logconfig),
        trustedkeys=frozenset(b.trustedkeys),
        statistics=frozenset(b.statistics),
        filegens=tuple(filegens),
        enabled=frozenset(enabled),
        interfaces=tuple(b.interfaces),
        setvars=tuple(b.setvars),
        ttl=tuple(b.ttl),
        multicastclient=tuple(b.multicastclient),
        manycastserver=tuple(b.manycastserver),
        source_files=tuple(b.source_files),
        **scalars,
    )
    _cross_check(b, config)
    return config


def _cross_check(b: Builder, config: Config) -> None:
    """Problems only visible across lines."""
    for assoc in config.associations:
        if assoc.key is None or assoc.location is None:
            continue
        if config.keys is None:
            b.error(assoc.location, f"key {assoc.key} is used but no keys file is configured",
                    assoc.kind)
        elif assoc.key not in config.trustedkeys:
            b.warning(assoc.location, f"key {assoc.key} is not listed in trustedkey",
                      assoc.kind)
    if config.controlkey is not None and config.controlkey not in config.trustedkeys:
        where = b.scalar_locations.get("controlkey", Location(_top(config), 0))
        b.warning(where, f"controlkey {config.controlkey} is not listed in trustedkey",
                  "controlkey")
    if config.tinker.freq is not None and config.driftfile is not None:
        b.warning(b.scalar_locations["driftfile"], "tinker freq is given too; the drift file's "
                  "value replaces it once it exists", "driftfile")
    tos = config.tos
    top = Location(_top(config), 0)
    loc = b.scalar_locations
    if tos.floor > tos.ceiling:
        b.error(loc.get("tos.ceiling", loc.get("tos.floor", top)), f"floor {tos.floor} is above ceiling {tos.ceiling}",
                "tos")
    if tos.minclock > tos.maxclock:
        b.error(loc.get("tos.maxclock", loc.get("tos.minclock", top)), f"minclock {tos.minclock} is above maxclock "
                f"{tos.maxclock}", "tos")


def _top(config: Config) -> str:
    return config.source_files[0] if config.source_files else "<config>"


def _finish(b: Builder) -> tuple[Config, list[Diagnostic]]:
    try:
        config = _build(b)
    except Exception as exc:  # defensive, as in _Reader.statement
        log.exception("building the configuration failed")
        b.error(Location(b.source_files[0] if b.source_files else "<config>", 0),
                f"internal error while building the configuration: {exc!r}")
        config = Config(source_files=tuple(b.source_files))
    # Cross-line checks run last; sort so a reader sees each file's problems in line order.
    order = {name: i for i, name in enumerate(b.source_files)}
    diags = sorted(b.diagnostics,
                   key=lambda d: (order.get(d.location.file, len(order)), d.location.line))
    return config, diags


def parse_text(text: str, filename: str = "<string>", *,
               base_dir: str | None = None) -> tuple[Config, list[Diagnostic]]:
    """Parse config text. Relative includefile paths resolve against ``base_dir`` (default:
    the directory of ``filename`` if it names one, else the current directory)."""
    b = Builder()
    b.source_files.append(filename)
    reader = _Reader(b)
    if base_dir is None:
        base_dir = os.path.dirname(filename) if not filename.startswith("<") else "."
    reader.read_text(text, filename, base_dir or ".", 0)
    return _finish(b)


def parse_file(path: str | os.PathLike[str]) -> tuple[Config, list[Diagnostic]]:
    """Parse a config file and everything it includes."""
    b = Builder()
    _Reader(b).read_file(os.fspath(path), Location(os.fspath(path), 0), 0)
    return _finish(b)


def load(path: str | os.PathLike[str]) -> Config:
    """Parse ``path``; raise ConfigError listing every diagnostic if any is an error, else log
    the warnings and return the Config."""
    config, diags = parse_file(path)
    if has_errors(diags):
        raise ConfigError(diags)
    for d in diags:
        log.warning("%s", d)
    return config


def reload(path: str | os.PathLike[str], current: Config) -> tuple[Config, list[Diagnostic]]:
    """For SIGHUP: the new Config, or ``current`` unchanged when the file has errors."""
    config, diags = parse_file(path)
    return (current if has_errors(diags) else config), diags


#: Config fields the command line may override (-f -s -k -l -p).
OVERRIDABLE = frozenset(f.name for f in dataclasses.fields(Config)) - {"source_files"}


def with_overrides(config: Config, **fields: object) -> Config:
    """``config`` with command-line values replacing file values; None values are skipped."""
    unknown = set(fields) - OVERRIDABLE
    if unknown:
        raise TypeError(f"unknown config field(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(config, **{k: v for k, v in fields.items() if v is not None})
