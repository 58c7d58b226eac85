"""TCP loss-recovery counters per namespace (``bench.tcpstats``)."""

from __future__ import annotations

import sys

import pytest

from lopinfer.bench import tcpstats

SNMP = """Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm RtoMin RetransSegs InErrs
Tcp: 1 200 {retrans} 0
Udp: InDatagrams
Udp: 5
"""
NETSTAT = """TcpExt: SyncookiesSent TCPLossProbes TCPTimeouts TCPLostRetransmit
TcpExt: 0 {probes} {timeouts} 1
IpExt: InNoRoutes
IpExt: 0
"""


def _fake(tmp_path, pid, retrans, probes, timeouts):
    net = tmp_path / str(pid) / "net"
    net.mkdir(parents=True, exist_ok=True)
    (net / "snmp").write_text(SNMP.format(retrans=retrans))
    (net / "netstat").write_text(NETSTAT.format(probes=probes, timeouts=timeouts))


def test_reads_each_counter_from_its_section(tmp_path):
    _fake(tmp_path, 42, retrans=17, probes=3, timeouts=2)
    got = tcpstats.read(42, proc=str(tmp_path))
    assert got == {"RetransSegs": 17, "TCPLossProbes": 3, "TCPTimeouts": 2, "TCPLostRetransmit": 1}


def test_delta_between_two_readings(tmp_path):
    _fake(tmp_path, 7, retrans=10, probes=1, timeouts=0)
    before = tcpstats.read(7, proc=str(tmp_path))
    _fake(tmp_path, 7, retrans=15, probes=2, timeouts=1)
    after = tcpstats.read(7, proc=str(tmp_path))
    assert tcpstats.delta(before, after) == {"RetransSegs": 5, "TCPLossProbes": 1, "TCPTimeouts": 1,
                                             "TCPLostRetransmit": 0}
    assert tcpstats.delta({}, after) == {}


def test_a_process_gone_reads_as_nothing(tmp_path):
    assert tcpstats.read(999999, proc=str(tmp_path)) == {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/PID/net is Linux's")
def test_this_namespace_has_the_counters():
    got = tcpstats.read()
    assert set(got) == {name for _, _, name in tcpstats.COUNTERS}
    assert all(v >= 0 for v in got.values())
