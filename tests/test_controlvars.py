"""Tests for stratum1/controlvars.py: ntpq's variable lists and the daemon adapter."""

from __future__ import annotations

import struct
from types import SimpleNamespace

from stratum1.association import SEL_CANDIDATE, SEL_PPSPEER, SEL_SYSPEER, Association
from stratum1.control import (
    OP_READCLOCK,
    OP_READSTAT,
    OP_READVAR,
    SRC_LOCAL,
    SRC_NTP,
    SRC_PPS,
    SRC_UHF_RADIO,
    SRC_UNSPEC,
    SYS_EVNT_CLOCK_STEP,
    SYS_EVNT_CLOCK_SYNC,
    SYS_EVNT_NO_SYS_PEER,
    SYS_EVNT_RESTART,
    Control,
)
from stratum1.controlvars import (
    DaemonView,
    clock_variables,
    fmt_ms,
    fmt_refid,
    fmt_timestamp,
    peer_variables,
    quote,
    system_variables,
)
from stratum1.ntptime import ns_to_ntp64
from stratum1.sample import Measurement
from stratum1.snapshot import UNSYNCHRONIZED, SystemSnapshot

NOW = 1_767_225_600_000_000_000 + 123_456_789
S = 1_000_000_000


def test_value_formats():
    assert fmt_ms(0.0012345) == "1.234" and fmt_ms(-2.5e-6, 6) == "-0.002500"
    assert fmt_ms(float("nan")) == "0.000"
    assert fmt_timestamp(0) == "0x00000000.00000000"
    stamp = ns_to_ntp64(NOW)
    assert fmt_timestamp(NOW) == f"0x{stamp >> 32:08x}.{stamp & 0xFFFFFFFF:08x}"
    assert quote('say "hi",\x01') == '"say \'hi\',?"'.replace("'", "?")


def test_refid_formats():
    assert fmt_refid(b"GPS\0") == "GPS"
    assert fmt_refid("PPS") == "PPS"
    assert fmt_refid(b"\x01AB=") == ".AB."
    assert fmt_refid(b"\xc0\xa8\x01\x02", as_address=True) == "192.168.1.2"


def snapshot(**kw) -> SystemSnapshot:
    values = dict(leap=0, stratum=1, precision=-22, poll=4, root_delay=0.0,
                  root_dispersion=0.001, refid=b"GPS\0", reference_ns=NOW - 2 * S,
                  offset=2.5e-6, jitter=1e-6, system_peer_id=1)
    values.update(kw)
    return SystemSnapshot(**values)


def test_system_variables_default_order_and_values():
    v = system_variables(snapshot(), NOW, frequency_ppm=-12.5, clk_jitter=3e-6)
    names = [n for n, _ in v.defaults]
    assert names == ["version", "processor", "system", "leap", "stratum", "precision",
                     "rootdelay", "rootdisp", "refid", "reftime", "clock", "peer", "tc", "mintc",
                     "offset", "frequency", "sys_jitter", "clk_jitter", "clk_wander"]
    d = dict(v.defaults)
    assert d["leap"] == "0" and d["stratum"] == "1" and d["refid"] == "GPS"
    assert d["peer"] == "1" and d["tc"] == "4" and d["precision"] == "-22"
    assert d["offset"] == "0.002500" and d["frequency"] == "-12.500000"
    assert d["clk_jitter"] == "0.003000"
    assert d["clock"] == fmt_timestamp(NOW) and d["reftime"] == fmt_timestamp(NOW - 2 * S)
    assert d["rootdisp"] == "1.030"  # 1 ms aged 2 s at 15 PPM
    assert d["version"].startswith('"stratum1 ')
    assert "rootdist" in dict(v.extra)


def test_system_refid_is_an_address_only_behind_a_network_peer():
    snap = snapshot(stratum=3, refid=bytes([10, 0, 0, 7]))
    assert dict(system_variables(snap, NOW, peer_is_network=True).defaults)["refid"] == "10.0.0.7"
    local = snapshot(stratum=11, refid=b"LOCL")
    assert dict(system_variables(local, NOW).defaults)["refid"] == "LOCL"


def test_system_leap_table_values_only_when_known():
    names = [n for n, _ in system_variables(snapshot(), NOW).defaults]
    assert "tai" not in names and "leapsec" not in names
    v = dict(system_variables(snapshot(), NOW, tai=37, leapsec_ns=1483228800 * S,
                              expire_ns=1767225600 * S).defaults)
    assert v["tai"] == "37" and v["leapsec"] == "201701010000" and v["expire"] == "202601010000"


def refclock_assoc(assoc_id=1, address="127.127.20.0", refid=b"GPS", samples=8,
                   offset=0.0123, pps=False) -> Association:
    a = Association(assoc_id, address, refclock=True, stratum=0, refid=refid, precision=-9,
                    minpoll=4, maxpoll=4, pps=pps)
    for k in range(samples):
        t = NOW - (samples - k) * 16 * S
        a.receive(Measurement(offset=offset, delay=0.0, dispersion=1e-3, local_ns=t,
                              jitter=2e-4, leap=0), t)
    return a


def test_peer_variables_for_a_refclock():
    a = refclock_assoc()
    v = peer_variables(a, NOW, srcadr="127.127.20.0", srchost="GPS_NMEA(0)")
    names = [n for n, _ in v.defaults]
    assert names[:4] == ["srcadr", "srcport", "srchost", "dstadr"]
    assert names[-3:] == ["filtdelay", "filtoffset", "filtdisp"]
    d = dict(v.defaults)
    assert d["srchost"] == '"GPS_NMEA(0)"'
    assert d["refid"] == "GPS" and d["stratum"] == "0" and d["hmode"] == "3"
    assert d["reach"] == "0xff" and d["hpoll"] == "4" and d["flash"] == "0x0"
    assert d["offset"] == "12.300000"
    assert d["rec"] == fmt_timestamp(a.rec_ns) and d["reftime"] == fmt_timestamp(a.reference_ns)
    assert d["filtoffset"].split() == ["12.30"] * 8
    assert dict(v.extra)["received"] == "8"


def test_peer_variables_for_a_network_peer_and_an_unreachable_one():
    a = Association(3, "ntp.example.org", refclock=False, address="192.0.2.7", stratum=2,
                    refid=bytes([10, 1, 2, 3]))
    d = dict(peer_variables(a, NOW, srcadr="192.0.2.7", srchost="ntp.example.org").defaults)
    assert d["refid"] == "10.1.2.3" and d["reach"] == "0x0"
    assert d["flash"] == "0x1000"  # peer_unreach
    assert d["rec"] == "0x00000000.00000000"


def test_clock_variables():
    status = {"type": 20, "timecode": '$GPRMC,1,"x"', "poll": 12, "noreply": 1, "badformat": 2,
              "baddata": 3, "fudgetime1": 0.0, "fudgetime2": 0.412, "stratum": 0, "refid": "GPS",
              "flags": 5, "device": "/dev/gps0", "state": "open",
              "driver_status": {"sentences": 1234, "pps": True, "mode name": "x"}}
    v = clock_variables(status, "NMEA GPS receiver")
    names = [n for n, _ in v.defaults]
    assert names[:6] == ["device", "timecode", "poll", "noreply", "badformat", "baddata"]
    assert "fudgetime1" not in names
    d = dict(v.defaults)
    assert d["device"] == '"NMEA GPS receiver"' and d["timecode"] == '"$GPRMC,1,?x?"'
    assert d["fudgetime2"] == "412.000" and d["flags"] == "5"
    assert d["sentences"] == "1234" and d["pps"] == "1" and d["mode_name"] == '"x"'
    assert dict(v.extra)["path"] == '"/dev/gps0"'
    assert dict(clock_variables({"type": 22}).defaults)["type"] == "22"


# -- the daemon adapter ---------------------------------------------------------------------------


class FakeUnit:
    def __init__(self, type_: int, unit: int, ntpq_name: str, refid: str) -> None:
        self.address = f"127.127.{type_}.{unit}"
        self.name = f"{ntpq_name}({unit})"
        self.config = SimpleNamespace(type=type_, unit=unit)
        self.driver_cls = SimpleNamespace(description=f"{ntpq_name} driver")
        self.event = 0
        self.refid = refid

    def status(self, now_ns=None):
        return {"type": self.config.type, "timecode": "T", "poll": 3, "noreply": 0,
                "badformat": 0, "baddata": 0, "stratum": 0, "refid": self.refid, "flags": 0,
                "event": self.event}


def fake_daemon():
    gps = refclock_assoc(1, "127.127.20.0", b"GPS")
    pps = refclock_assoc(2, "127.127.22.0", b"PPS", offset=1e-6, pps=True)
    gps.set_select_code(SEL_CANDIDATE)
    pps.set_select_code(SEL_PPSPEER)
    units = [FakeUnit(20, 0, "GPS_NMEA", "GPS"), FakeUnit(22, 0, "PPS", "PPS")]
    sources = [SimpleNamespace(association=a, unit=u) for a, u in zip((gps, pps), units,
                                                                        strict=True)]
    discipline = SimpleNamespace(frequency_ppm=lambda: 3.25, jitter=1e-6, wander=0.01)
    return SimpleNamespace(
        snapshot=snapshot(system_peer_id=2, refid=b"PPS\0"),
        system=SimpleNamespace(associations=[gps, pps], discipline=discipline),
        sources=sources,
        clock=SimpleNamespace(now_ns=lambda: NOW),
        servers=[],
    )


def test_view_status_words():
    daemon = fake_daemon()
    view = DaemonView(daemon)
    status = view.system_status()
    assert status >> 14 == 0 and (status >> 8) & 0x3F == SRC_PPS
    assert status & 0xF == SYS_EVNT_CLOCK_SYNC  # restart, then synchronised
    assert dict(view.association_status()) == {1: 0x9414, 2: 0x971A}
    daemon.snapshot = snapshot(system_peer_id=1)
    daemon.system.associations[0].set_select_code(SEL_SYSPEER)
    assert (view.system_status() >> 8) & 0x3F == SRC_UHF_RADIO


def test_view_source_codes_for_local_network_and_none():
    daemon = fake_daemon()
    view = DaemonView(daemon)
    daemon.sources[0].unit.config.type = 1
    daemon.snapshot = snapshot(system_peer_id=1)
    assert (view.system_status() >> 8) & 0x3F == SRC_LOCAL
    net = Association(5, "192.0.2.1", refclock=False, address="192.0.2.1", stratum=2)
    daemon.system.associations.append(net)
    daemon.snapshot = snapshot(system_peer_id=5, stratum=3, refid=bytes([192, 0, 2, 1]))
    assert (view.system_status() >> 8) & 0x3F == SRC_NTP
    assert dict(view.system_variables().defaults)["refid"] == "192.0.2.1"
    daemon.snapshot = UNSYNCHRONIZED
    assert (view.system_status() >> 8) & 0x3F == SRC_UNSPEC


def test_view_system_events():
    daemon = fake_daemon()
    daemon.snapshot = UNSYNCHRONIZED
    view = DaemonView(daemon)
    assert view.system_status() & 0xFF == 0x10 | SYS_EVNT_RESTART
    assert view.system_status() >> 14 == 3
    daemon.snapshot = snapshot()
    assert view.system_status() & 0xFF == 0x10 | SYS_EVNT_CLOCK_SYNC
    daemon.snapshot = SystemSnapshot(refid=b"STEP")
    assert view.system_status() & 0xF == SYS_EVNT_CLOCK_STEP
    daemon.snapshot = snapshot()
    daemon.snapshot = UNSYNCHRONIZED
    view.system_status()
    daemon.snapshot = snapshot()
    view.system_status()
    daemon.snapshot = UNSYNCHRONIZED
    assert view.system_status() & 0xF == SYS_EVNT_NO_SYS_PEER


def test_view_peer_and_system_variables():
    view = DaemonView(fake_daemon())
    status, v = view.peer(2)
    d = dict(v.defaults)
    assert status == 0x971A
    assert d["srcadr"] == "127.127.22.0" and d["srchost"] == '"PPS(0)"' and d["refid"] == "PPS"
    assert view.peer(9) is None
    sysvars = dict(view.system_variables().defaults)
    assert sysvars["frequency"] == "3.250000" and sysvars["peer"] == "2"
    assert sysvars["refid"] == "PPS"


def test_view_clock_picks_the_system_peer_and_counts_events():
    daemon = fake_daemon()
    view = DaemonView(daemon)
    status, v = view.clock(0)
    assert dict(v.defaults)["device"] == '"PPS driver"'
    assert status == 0
    unit = daemon.sources[0].unit
    unit.event = 3  # fault
    assert view.clock(1)[0] == 0x0313
    assert view.clock(1)[0] == 0x0313  # the same fault seen again is not a new event
    unit.event = 0
    assert view.clock(1)[0] == 0x0013
    unit.event = 3
    assert view.clock(1)[0] == 0x0323
    assert view.clock(7) is None
    daemon.snapshot = UNSYNCHRONIZED
    assert dict(view.clock(0)[1].defaults)["device"] == '"GPS_NMEA driver"'  # first refclock


def _ask(control: Control, opcode: int, assoc_id: int = 0) -> tuple[int, bytes]:
    data = struct.pack("!BBHHHHH", (2 << 3) | 6, opcode, 1, 0, assoc_id, 0, 0)
    status, body = 0, b""
    for frag in sorted(control.respond(data, ("127.0.0.1", 1)), key=lambda f: f[8:10]):
        status, count = struct.unpack_from("!H", frag, 4)[0], struct.unpack_from("!H", frag, 10)[0]
        body += frag[12:12 + count]
    return status, body


def test_control_over_the_daemon_view():
    control = Control(DaemonView(fake_daemon()))
    status, body = _ask(control, OP_READSTAT)
    assert len(body) == 8
    status, body = _ask(control, OP_READVAR, 1)
    assert status == 0x9414 and b'srchost="GPS_NMEA(0)"' in body and b"filtdisp=" in body
    status, body = _ask(control, OP_READCLOCK, 1)
    assert b'timecode="T"' in body


def test_view_reads_the_daemons_discipline_and_leap_table():
    from stratum1.leapfile import parse_leapfile

    text = ("#@\t3976214400\n"  # expires 2026-01-01 (NTP seconds)
            "3644697600\t36\t# 1 Jul 2015\n"
            "3692217600\t37\t# 1 Jan 2017\n")
    daemon = fake_daemon()
    daemon.discipline = SimpleNamespace(frequency_ppm=lambda: -7.0, jitter=0.0, wander=0.0)
    daemon.leap = SimpleNamespace(table=parse_leapfile(text))
    d = dict(DaemonView(daemon).system_variables().defaults)
    assert d["frequency"] == "-7.000000"
    assert d["tai"] == "37" and d["leapsec"] == "201701010000" and d["expire"] == "202601010000"


# -- the s1_* unit variables (stratum1 drivers list) ----------------------------------------------


def _sim_units():
    from stratum1.config.parser import parse_text
    from stratum1.refclock.backoff import Backoff
    from stratum1.refclock.testing import VirtualClock, VirtualLoop
    from stratum1.refclock.unit import RefclockUnit

    config, _ = parse_text("refclock sim unit 0 flag1 1\nrefclock nmea unit 2 path /nonexistent/x\n",
                           "ntp.conf")
    loop = VirtualLoop()
    clock = VirtualClock(loop)
    units = [RefclockUnit(rc, loop, clock, backoff=Backoff(initial=30, maximum=60))
             for rc in config.refclocks]
    for u in units:
        u.start()
    loop.advance(16)
    for u in units:
        u.poll(clock.now_ns())
    return units, clock


def test_unit_variables_of_a_working_and_a_faulty_unit():
    from stratum1.controlvars import unit_variables

    (sim, nmea), clock = _sim_units()
    d = dict(unit_variables(sim.status(clock.now_ns())))
    assert d["s1_address"] == '"127.127.99.0"' and d["s1_name"] == '"SIM(0)"'
    assert d["s1_state"] == '"open"' and d["s1_reach"] == "1" and d["s1_pps"] == "1"
    assert int(d["s1_samples"]) >= 16 and d["s1_errors"] == "0"
    assert abs(float(d["s1_offset"]) - sim.offset) < 1e-9 and float(d["s1_age"]) < 2
    assert "s1_fault" not in d and "s1_retry_in" not in d  # unknown values are left out
    d = dict(unit_variables(nmea.status(clock.now_ns())))
    assert d["s1_state"] == '"fault"' and d["s1_device"] == '"/nonexistent/x"'
    assert "cannot open /nonexistent/x" in d["s1_fault"] and 0 < float(d["s1_retry_in"]) <= 30
    assert "s1_offset" not in d and "s1_age" not in d and d["s1_reach"] == "0"


def test_unit_variables_error_sum_and_suggested_time2():
    from stratum1.controlvars import unit_variables

    status = {"counters": {"badformat": 2, "baddata": 1, "ambiguous_pulses": 4, "samples": 9},
              "offset": float("nan"), "reach": 255, "state": "open",
              "driver_status": {"time2_suggested": 0.41234,
                                "pps": {"path": "/dev/ttyS0 (DCD)", "error": 'no "ldisc"'}}}
    d = dict(unit_variables(status))
    assert d["s1_errors"] == "7" and d["s1_reach"] == "255" and "s1_offset" not in d
    assert d["s1_time2"] == "0.4123" and d["s1_pps_device"] == '"/dev/ttyS0 (DCD)"'
    assert d["s1_pps_error"] == '"no ?ldisc?"'


def test_clock_variables_end_with_the_unit_variables():
    (sim, _), clock = _sim_units()
    names = [n for n, _ in clock_variables(sim.status(clock.now_ns())).defaults]
    first = next(i for i, n in enumerate(names) if n.startswith("s1_"))
    assert names[:2] == ["type", "timecode"] and all(n.startswith("s1_") for n in names[first:])


def test_view_serves_sysstats_by_name():
    from stratum1.server import ServerStats
    from stratum1.sysstats import SysStats, server_counters

    daemon = fake_daemon()
    daemon.servers = [SimpleNamespace(stats=ServerStats(received=12, control=3))]
    daemon.sysstats = SysStats(NOW - 3725 * 1_000_000_000, lambda: server_counters(daemon.servers))
    variables = DaemonView(daemon).system_variables()
    picked = dict(variables.select(["ss_uptime", "ss_received_r", "ss_numctlreq"]))
    assert picked == {"ss_uptime": "3725", "ss_received_r": "12", "ss_numctlreq": "3"}
    assert "ss_uptime" not in dict(variables.defaults)  # by name only, as ntpd does
