"""Smoke test of bench/serve.py's own helpers (the benchmark itself prints figures, untested)."""

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "bench" / "serve.py"
_spec = importlib.util.spec_from_file_location("bench_serve", _PATH)
serve = importlib.util.module_from_spec(_spec)
sys.modules["bench_serve"] = serve  # dataclasses look their module up
_spec.loader.exec_module(serve)


def test_parse_result_line():
    out = "target ...\nRESULT sent=10 valid=9 rps=3.5 loss_pct=10.000 p99_us=12.5\n"
    assert serve.parse_result(out) == {"sent": 10, "valid": 9, "rps": 3.5, "loss_pct": 10.0,
                                       "p99_us": 12.5}  # fmt: skip
    with pytest.raises(ValueError):
        serve.parse_result("no figures here\n")
    with pytest.raises(ValueError):
        serve.parse_result("RESULT sent\n")


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert serve.percentile(values, 0.5) == 50.0
    assert serve.percentile(values, 0.99) == 99.0
    assert serve.percentile([3.0], 0.99) == 3.0
    assert serve.percentile([], 0.5) != serve.percentile([], 0.5)  # NaN


def test_timestamps_and_offset():
    assert serve.parse_schedstat("123456 789 10\n") == 123456
    ntp = ((1_767_225_600 + serve.NTP_UNIX_OFFSET_S) << 32) | (1 << 31)
    assert serve.ntp64_to_unix_ns(ntp) == 1_767_225_600_500_000_000
    # Server 5 µs ahead, symmetric 10 µs path: offset +5 µs.
    assert serve.client_offset_ns(0, 15_000, 20_000, 25_000) == 5_000


def test_bare_spec_and_cpu_of_a_process_tree():
    spec = serve.bare_spec(12125, 2, 1)
    assert spec.port == 12125 and "--serve-bare" in spec.argv
    assert spec.argv[-2:] == ["--tx-chunk", "2"] and "1 workers" in spec.note
    assert "--tx-chunk" not in serve.bare_spec(12125, None, 0).argv
    import os
    import subprocess

    # A child that burns ~50 ms of CPU, then waits: the tree's total includes it.
    child = subprocess.Popen([sys.executable, "-c",
                              "import time, sys\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.05: pass\n"
                              "print('', flush=True)\nsys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        child.stdout.readline()
        own = serve.process_cpu_ns(child.pid)
        assert own >= 50_000_000
        assert serve.process_cpu_ns(os.getpid()) >= own
    finally:
        child.stdin.close()
        child.wait(timeout=10)


def test_rounds_alternate_the_order_and_pair_the_ratios():
    assert serve.round_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert serve.round_order(["a", "b", "c"], 1) == ["c", "b", "a"]
    assert serve.round_order(["a", "b", "c"], 2) == ["a", "b", "c"]

    def row(cpu, off):
        return {"cpu_us": cpu, "sat_off": {"p99abs": off}}

    rounds = [
        {"stratum1": row(5.0, 4.0), "chronyd": row(5.0, 2.0)},
        {"chronyd": row(4.0, 1.0), "stratum1": row(4.4, 12.0)},
        {"stratum1": row(3.0, 3.0), "chronyd": {"name": "chronyd", "error": "not found"}},
    ]
    stratum1, chronyd = serve.summarise(rounds)
    assert stratum1.startswith("stratum1: CPU µs/resp median 4.40 (3.00-5.00)")
    assert "offset p99 at saturation median 4.00 µs (3.00-12.00), 3 round(s)" in stratum1
    # Paired by round (round 3 has no chronyd): ratios 1.00 and 1.10.
    assert "median 1.05 (1.00-1.10, at or below in 1 of 2)" in stratum1
    assert chronyd == ("chronyd: CPU µs/resp median 4.50 (4.00-5.00), offset p99 at "
                       "saturation median 1.50 µs (1.00-2.00), 2 round(s)")  # fmt: skip
