"""Serving benchmark (not a test): stratum1, chronyd and ntpsec's ntpd one after another under
the same load generator, on loopback, server and generator pinned to different cores.

    python bench/serve.py [--only stratum1,chronyd,ntpd] [--duration 5] [--workers N] [--rounds N]

For each server it prints responses/s at saturation, server CPU µs per response, p50/p99 latency
at light load and at saturation, loss, and the offset a client on this machine measures against
the server (kernel TX/RX timestamps on the client side, so any bias is the server's timestamp
error). The reference daemons run without the clock-setting capability and never adjust the
clock; all traffic goes to 127.0.0.1 and every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

NS = 1_000_000_000
NTPLOAD_SOURCE = Path(os.environ.get("NTPLOAD_SOURCE", "/work/shared/tools/ntpload.c"))
REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
#: ntpd cannot serve on any port but 123; chronyd and stratum1 take these.
PORTS = {"stratum1": 12123, "chronyd": 12124, "ntpd": 123, "bare": 12125}
#: A bare server (no daemon around it) exits by itself after this long, whatever happens.
BARE_LIMIT_S = 600
READY_TIMEOUT_S = 45.0
NTP_UNIX_OFFSET_S = 2_208_988_800

# <linux/net_tstamp.h>, <asm-generic/socket.h>
SO_TIMESTAMPING = 37
SOF_TX_SOFTWARE = 1 << 1
SOF_RX_SOFTWARE = 1 << 3
SOF_SOFTWARE = 1 << 4
SOF_OPT_TSONLY = 1 << 11
MSG_ERRQUEUE = 0x2000
_TS3 = struct.Struct("=6q")


# -- pure helpers (tested) ----------------------------------------------------------------------
def parse_result(output: str) -> dict[str, float]:
    """The figures of ntpload's machine-readable ``RESULT k=v ...`` line."""
    for line in output.splitlines():
        if line.startswith("RESULT "):
            figures = {}
            for item in line.split()[1:]:
                key, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(f"bad RESULT item {item!r}")
                figures[key] = float(value)
            return figures
    raise ValueError("no RESULT line in the load generator's output")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


def parse_schedstat(text: str) -> int:
    """CPU time (ns) from a /proc/.../schedstat line: time on CPU, wait, timeslices."""
    return int(text.split()[0])


def ntp64_to_unix_ns(timestamp: int) -> int:
    """A 64-bit NTP timestamp (era 0) to Unix ns, exact to the nanosecond."""
    seconds, frac = timestamp >> 32, timestamp & 0xFFFFFFFF
    return (seconds - NTP_UNIX_OFFSET_S) * NS + ((frac * NS + (1 << 31)) >> 32)


def client_offset_ns(t1: int, t2: int, t3: int, t4: int) -> float:
    """RFC 5905 offset ((T2 - T1) + (T3 - T4)) / 2 in ns."""
    return ((t2 - t1) + (t3 - t4)) / 2


# -- processes ----------------------------------------------------------------------------------
def process_cpu_ns(pid: int) -> int:
    """CPU time so far of every thread of ``pid`` and of its descendants (workers), in ns
    (scheduler accounting, not ticks)."""
    total = 0
    pending, seen = [pid], set()
    while pending and len(seen) < 256:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue
        for task in tasks:
            try:
                total += parse_schedstat((task / "schedstat").read_text())
                pending.extend(int(c) for c in (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total


def build_ntpload(workdir: Path) -> Path:
    binary = workdir / "ntpload"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(NTPLOAD_SOURCE)],
                   check=True)  # fmt: skip
    return binary


def find_chronyd() -> str | None:
    for candidate in (os.environ.get("STRATUM1_CHRONYD"),
                      "/opt/stratum1-ref/chrony/usr/sbin/chronyd", shutil.which("chronyd")):  # fmt: skip
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class ServerSpec:
    name: str
    port: int
    argv: list[str]
    note: str = ""


def stratum1_spec(workdir: Path, port: int, extra: list[str]) -> ServerSpec:
    conf = workdir / "stratum1.conf"
    conf.write_text("server 127.127.1.0\nfudge 127.127.1.0 stratum 0\n")
    argv = [sys.executable, "-m", "stratum1", "run", "-n", "--no-discipline", "-U", "0",
            "-c", str(conf), "--listen", f"{HOST}:{port}", *extra]  # fmt: skip
    return ServerSpec("stratum1", port, argv, "LOCAL refclock, --no-discipline")


def bare_spec(port: int, tx_chunk: int | None, workers: int) -> ServerSpec:
    """The serving path alone: NtpServer on an EventLoop with a fixed snapshot, no daemon."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-bare", str(port),
            "--workers", str(workers)]  # fmt: skip
    note = "NtpServer alone, fixed snapshot"
    if tx_chunk is not None:
        argv += ["--tx-chunk", str(tx_chunk)]
        note += f", tx chunk {tx_chunk}"
    if workers:
        note += f", {workers} workers"
    return ServerSpec("stratum1-bare", port, argv, note)


def serve_bare(port: int, tx_chunk: int | None, workers: int) -> int:
    """Run the bare server (the child side of ``bare_spec``) until SIGTERM or BARE_LIMIT_S."""
    import signal

    from stratum1.clock import SystemClock
    from stratum1.eventloop import EventLoop
    from stratum1.server import NtpServer
    from stratum1.snapshot import SystemSnapshot

    snapshot = SystemSnapshot(leap=0, stratum=1, precision=-20, poll=4, root_delay=0.0,
                              root_dispersion=1e-5, refid=b"LOCL",
                              reference_ns=time.time_ns())  # fmt: skip
    loop = EventLoop()
    kwargs = {} if tx_chunk is None else {"tx_chunk": tx_chunk}
    clock = SystemClock()
    pool = None
    if workers:
        from stratum1.workers import WorkerPool

        # Forked before the main socket opens, as the daemon does: workers and the main
        # process each hold one socket of the SO_REUSEPORT group.
        pool = WorkerPool((HOST, port), workers, clock, server_options=kwargs)
        pool.start(snapshot)
    server = NtpServer((HOST, port), lambda: snapshot, clock, reuse_port=bool(workers),
                       **kwargs)  # fmt: skip
    server.attach(loop)
    if pool is not None:
        pool.attach(loop, server, lambda: snapshot)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    try:
        loop.run(until_ns=loop.now_ns() + BARE_LIMIT_S * NS)
    finally:
        server.close()
        if pool is not None:
            pool.stop()
    return 0


def chronyd_spec(workdir: Path, port: int, binary: str) -> ServerSpec:
    conf = workdir / "chrony.conf"
    conf.write_text(f"port {port}\nbindaddress {HOST}\nallow all\nlocal stratum 1\ncmdport 0\n"
                    f"bindcmdaddress /\npidfile {workdir}/chronyd.pid\n")  # fmt: skip
    # -x: never touch the clock; -u root: the unpacked package brought no _chrony user.
    argv = ["setpriv", "--bounding-set=-sys_time", binary, "-d", "-x", "-u", "root",
            "-f", str(conf)]  # fmt: skip
    return ServerSpec("chronyd", port, argv, "local stratum 1, -x, no CAP_SYS_TIME")


def ntpd_spec(workdir: Path, binary: str) -> ServerSpec:
    conf = workdir / "ntp.conf"
    # No source: orphan mode makes it stratum 1 at once; `disable ntp` keeps it off the clock
    # (and without CAP_SYS_TIME its start-up ntp_adjtime calls fail, as they must).
    conf.write_text("interface ignore wildcard\ninterface ignore all\n"
                    f"interface listen {HOST}\ntos orphan 1 orphanwait 0\ndisable ntp\n"
                    # Without explicit lines ntpsec rate-limits a source after ~20 packets.
                    f"restrict default\nrestrict {HOST}\n")  # fmt: skip
    # Stays root: dropping to its user would need the capability it is denied here.
    argv = ["setpriv", "--bounding-set=-sys_time", binary, "-n", "-c", str(conf)]
    return ServerSpec("ntpd", 123, argv, "orphan stratum 1, disable ntp, no CAP_SYS_TIME")


def port_in_use(port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((HOST, port))
    except OSError:
        return True
    finally:
        sock.close()
    return False


def query_ready(port: int, timeout_s: float = 0.5) -> bool:
    """True when the server answers with a synchronised (LI != 3, stratum 1..15) reply."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.settimeout(timeout_s)
        sock.sendto(b"\x23" + bytes(39) + struct.pack("!Q", 1 << 40), (HOST, port))
        data = sock.recv(512)
    except OSError:
        return False
    finally:
        sock.close()
    return len(data) >= 48 and data[0] >> 6 != 3 and 1 <= data[1] <= 15


# -- the offset probe -------------------------------------------------------------------------
@dataclass
class ProbeResult:
    offsets_ns: list[float] = field(default_factory=list)
    sent: int = 0
    lost: int = 0


def run_probe(port: int, rate: float, duration_s: float, stop: threading.Event,
              cpu: int | None = None) -> ProbeResult:  # fmt: skip
    """One request at a time at ``rate``/s; T1 and T4 are the kernel's TX and RX stamps.
    ``cpu``: run this thread there (the generator's core), never beside the server."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # 0: the calling thread
    result = ProbeResult()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING,
                    SOF_TX_SOFTWARE | SOF_RX_SOFTWARE | SOF_SOFTWARE | SOF_OPT_TSONLY)  # fmt: skip
    sock.connect((HOST, port))
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR)
    interval = 1.0 / rate
    end = time.monotonic() + duration_s
    next_send = time.monotonic()
    seq = 0
    try:
        while not stop.is_set() and time.monotonic() < end:
            delay = next_send - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_send += interval
            seq += 1
            xmt = ((int(time.time()) + NTP_UNIX_OFFSET_S) << 32) | seq
            sock.send(b"\x23\x00\x06\xec" + bytes(36) + struct.pack("!Q", xmt))
            result.sent += 1
            t1 = t4 = None
            reply = b""
            deadline = time.monotonic() + 0.05
            while (t1 is None or t4 is None) and time.monotonic() < deadline:
                poller.poll(max(1, int((deadline - time.monotonic()) * 1000)))
                if t1 is None:
                    t1 = _read_tx_stamp(sock)
                if t4 is None:
                    reply, t4 = _read_reply(sock, xmt)
            if t1 is None or t4 is None:
                result.lost += 1
                _drain(sock)
                continue
            t2 = ntp64_to_unix_ns(struct.unpack_from("!Q", reply, 32)[0])
            t3 = ntp64_to_unix_ns(struct.unpack_from("!Q", reply, 40)[0])
            result.offsets_ns.append(client_offset_ns(t1, t2, t3, t4))
    finally:
        sock.close()
    return result


def _stamp(ancdata: list) -> int | None:
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(payload) >= 48:
            sec, nsec = _TS3.unpack_from(payload)[:2]
            return sec * NS + nsec
    return None


def _read_tx_stamp(sock: socket.socket) -> int | None:
    try:
        _data, ancdata, _flags, _addr = sock.recvmsg(64, 512, MSG_ERRQUEUE)
    except (BlockingIOError, InterruptedError):
        return None
    return _stamp(ancdata)


def _read_reply(sock: socket.socket, xmt: int) -> tuple[bytes, int | None]:
    while True:
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(512, 512)
        except (BlockingIOError, ConnectionRefusedError, InterruptedError):
            return b"", None
        if len(data) >= 48 and struct.unpack_from("!Q", data, 24)[0] == xmt:
            return data, _stamp(ancdata)


def _drain(sock: socket.socket) -> None:
    for flags in (0, MSG_ERRQUEUE):
        for _ in range(64):
            try:
                sock.recvmsg(512, 512, flags)
            except OSError:
                break


# -- one server ---------------------------------------------------------------------------------
@dataclass
class Phase:
    load: dict[str, float]
    probe: ProbeResult
    server_cpu_ns: int
    seconds: float


def run_phase(ntpload: Path, spec: ServerSpec, pid: int, load_cpu: int, args: list[str],
              duration: int, probe_rate: float, socks: int = 1) -> Phase:  # fmt: skip
    stop = threading.Event()
    probe_box: list[ProbeResult] = []
    probe = threading.Thread(
        target=lambda: probe_box.append(run_probe(spec.port, probe_rate, duration, stop,
                                                  load_cpu)),  # fmt: skip
        daemon=True,
    )
    cpu0, t0 = process_cpu_ns(pid), time.monotonic()
    probe.start()
    out = subprocess.run(
        ["taskset", "-c", str(load_cpu), str(ntpload), "-q", "-p", str(spec.port), "-s", str(socks),
         "-d", str(duration), *args, HOST],
        capture_output=True, text=True, timeout=duration + 30, check=True,
    )  # fmt: skip
    cpu1, t1 = process_cpu_ns(pid), time.monotonic()
    stop.set()
    probe.join(timeout=5)
    return Phase(parse_result(out.stdout), probe_box[0] if probe_box else ProbeResult(),
                 cpu1 - cpu0, t1 - t0)  # fmt: skip


def bench_server(spec: ServerSpec, ntpload: Path, opts: argparse.Namespace, log: Path) -> dict:
    if port_in_use(spec.port):
        return {"name": spec.name, "error": f"{HOST}:{spec.port} is in use"}
    with open(log, "w") as logfile:
        proc = subprocess.Popen(["taskset", "-c", str(opts.server_cpu), *spec.argv],
                                stdout=logfile, stderr=subprocess.STDOUT, cwd=REPO)  # fmt: skip
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not query_ready(spec.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                return {"name": spec.name, "error": f"not ready (see {log})"}
            time.sleep(0.5)
        light = run_phase(ntpload, spec, proc.pid, opts.load_cpu,
                          ["-r", str(opts.light_rate)], opts.light_duration, opts.probe_rate,
                          opts.load_sockets)  # fmt: skip
        sat = run_phase(ntpload, spec, proc.pid, opts.load_cpu,
                        ["-w", str(opts.window), "-b", str(opts.batch)], opts.duration,
                        opts.probe_rate, opts.load_sockets)  # fmt: skip
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    responses = sat.load["valid"] + len(sat.probe.offsets_ns)
    return {
        "name": spec.name,
        "note": spec.note,
        "rps": sat.load["rps"],
        "cpu_us": sat.server_cpu_ns / 1e3 / responses if responses else float("nan"),
        "cpu_pct": 100.0 * sat.server_cpu_ns / 1e9 / sat.seconds,
        "light_p50": light.load["p50_us"],
        "light_p99": light.load["p99_us"],
        "light_loss": light.load["loss_pct"],
        "sat_p50": sat.load["p50_us"],
        "sat_p99": sat.load["p99_us"],
        "sat_loss": sat.load["loss_pct"],
        "gen_off_mean": sat.load["off_mean_us"],
        "light_off": _offset_figures(light.probe),
        "sat_off": _offset_figures(sat.probe),
    }


def _offset_figures(probe: ProbeResult) -> dict[str, float]:
    offsets = [o / 1e3 for o in probe.offsets_ns]
    magnitudes = [abs(o) for o in offsets]
    return {"n": len(offsets), "median": percentile(offsets, 0.5),
            "p99abs": percentile(magnitudes, 0.99),
            "lost_pct": 100.0 * probe.lost / probe.sent if probe.sent else float("nan")}  # fmt: skip


def print_table(rows: list[dict]) -> None:
    print()
    print("| server | resp/s sat | CPU µs/resp | server CPU % | p50/p99 µs light | "
          "p50/p99 µs sat | loss light/sat % | offset µs light (median, p99 abs) | "
          "offset µs sat (median, p99 abs) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['name']} | skipped: {r['error']} |||||||| ")
            continue
        lo, so = r["light_off"], r["sat_off"]
        print(f"| {r['name']} | {r['rps']:,.0f} | {r['cpu_us']:.2f} | {r['cpu_pct']:.0f} | "
              f"{r['light_p50']:.1f} / {r['light_p99']:.1f} | {r['sat_p50']:.0f} / "
              f"{r['sat_p99']:.0f} | {r['light_loss']:.2f} / {r['sat_loss']:.2f} | "
              f"{lo['median']:+.2f}, {lo['p99abs']:.2f} (n={lo['n']}) | "
              f"{so['median']:+.2f}, {so['p99abs']:.2f} (n={so['n']}, lost "
              f"{so['lost_pct']:.1f}%) |")  # fmt: skip


def round_order(names: list[str], round_index: int) -> list[str]:
    """The servers' order in round ``round_index``: as given, then reversed, and so on, so that
    over two rounds each server runs once early and once late (a drift in the machine's speed
    during a run then weighs on every server alike)."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def summarise(rounds: list[dict[str, dict]], reference: str = "chronyd") -> list[str]:
    """Lines comparing the servers over rounds: per server the median CPU µs per response and
    saturated offset p99, and the median over rounds of its CPU ratio to ``reference`` in the
    same round (paired: a round's servers ran minutes apart, not hours)."""
    names: list[str] = []
    for figures in rounds:
        names += [n for n in figures if n not in names]
    lines = []
    for name in names:
        rows = [r[name] for r in rounds if name in r and "error" not in r[name]]
        if not rows:
            continue
        cpu = [row["cpu_us"] for row in rows]
        off = [row["sat_off"]["p99abs"] for row in rows]
        line = (f"{name}: CPU µs/resp median {statistics.median(cpu):.2f} "
                f"({min(cpu):.2f}-{max(cpu):.2f}), offset p99 at saturation median "
                f"{statistics.median(off):.2f} µs ({min(off):.2f}-{max(off):.2f}), "
                f"{len(rows)} round(s)")  # fmt: skip
        ratios = [r[name]["cpu_us"] / r[reference]["cpu_us"] for r in rounds
                  if name != reference and name in r and reference in r
                  and "error" not in r[name] and "error" not in r[reference]]  # fmt: skip
        if ratios:
            below = sum(1 for x in ratios if x <= 1.0)
            line += (f"; CPU / {reference} in the same round: median {statistics.median(ratios):.2f}"
                     f" ({min(ratios):.2f}-{max(ratios):.2f}, at or below in {below} of "
                     f"{len(ratios)})")  # fmt: skip
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="stratum1,chronyd,ntpd",
                        help="comma-separated servers to run, in order (also: bare, the "
                             "serving path without the daemon)")
    parser.add_argument("--duration", type=int, default=5, help="saturation phase, s (<= 60)")
    parser.add_argument("--light-duration", type=int, default=3, help="light phase, s")
    parser.add_argument("--light-rate", type=int, default=1000, help="light load, requests/s")
    parser.add_argument("--window", type=int, default=128, help="requests in flight at saturation")
    parser.add_argument("--batch", type=int, default=32, help="generator sendmmsg batch")
    parser.add_argument("--load-sockets", type=int, default=1,
                        help="generator source sockets (more spread over SO_REUSEPORT workers)")
    parser.add_argument("--probe-rate", type=float, default=500.0, help="offset probes/s")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--stratum1-arg", action="append", default=[],
                        help="extra argument for `stratum1 run` (repeatable)")
    parser.add_argument("--tx-chunk", type=int, default=None,
                        help="bare server: replies per sendmmsg (default: the server's)")
    parser.add_argument("--workers", type=int, default=0,
                        help="bare server: SO_REUSEPORT worker processes (0: serve in-process)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the servers this many times, every other round in reverse "
                             "order, and summarise (medians, paired CPU ratios)")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.serve_bare is not None:
        return serve_bare(opts.serve_bare, opts.tx_chunk, opts.workers)
    if not 1 <= opts.duration <= 60 or not 1 <= opts.light_duration <= 60:
        parser.error("durations must be 1..60 s")
    if not 1 <= opts.rounds <= 20:
        parser.error("rounds must be 1..20")
    # The probe and this script stay off the server's core.
    os.sched_setaffinity(0, {opts.load_cpu})
    with tempfile.TemporaryDirectory(prefix="stratum1-bench-") as tmp:
        workdir = Path(tmp)
        ntpload = build_ntpload(workdir)
        rounds: list[dict[str, dict]] = []
        for index in range(opts.rounds):
            if opts.rounds > 1:
                print(f"== round {index + 1} of {opts.rounds}", flush=True)
            rows = run_round(parser, opts, workdir, ntpload,
                             round_order(opts.only.split(","), index))  # fmt: skip
            print_table(rows)
            rounds.append({row["name"]: row for row in rows})
        if opts.rounds > 1:
            print()
            for line in summarise(rounds):
                print(line)
    return 0


def run_round(parser: argparse.ArgumentParser, opts: argparse.Namespace, workdir: Path,
              ntpload: Path, names: list[str]) -> list[dict]:  # fmt: skip
    """Each server of ``names`` in turn under the same load; their rows."""
    rows: list[dict] = []
    for name in names:
        if name == "stratum1":
            spec = stratum1_spec(workdir, PORTS["stratum1"], opts.stratum1_arg)
        elif name == "bare":
            spec = bare_spec(PORTS["bare"], opts.tx_chunk, opts.workers)
        elif name == "chronyd":
            binary = find_chronyd()
            if binary is None:
                rows.append({"name": name, "error": "chronyd not found"})
                continue
            spec = chronyd_spec(workdir, PORTS["chronyd"], binary)
        elif name == "ntpd":
            binary = shutil.which("ntpd")
            if binary is None:
                rows.append({"name": name, "error": "ntpd not found"})
                continue
            spec = ntpd_spec(workdir, binary)
        else:
            parser.error(f"unknown server {name!r}")
        print(f"-- {spec.name} ({spec.note}) on {HOST}:{spec.port}", flush=True)
        row = bench_server(spec, ntpload, opts, workdir / f"{spec.name}.log")
        if "error" in row:
            print(f"   {row['error']}", flush=True)
            log = workdir / f"{spec.name}.log"
            if log.exists():
                print(log.read_text()[-2000:])
        else:
            print(f"   {row['rps']:,.0f} resp/s, {row['cpu_us']:.2f} µs CPU/resp, "
                  f"sat p99 {row['sat_p99']:.0f} µs, offset p99 {row['sat_off']['p99abs']:.2f}"
                  " µs", flush=True)  # fmt: skip
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
