"""TCP's loss-recovery counters of a network namespace, for the bench's records.

A shaped link drops what overflows its queue, and TCP recovers: fast retransmits cost
a round trip, a lost tail costs a probe or a retransmission timeout (200 ms at least,
doubling while it repeats). The edge lab's peers each own a namespace, so the kernel's
per-namespace counters (``/proc/PID/net/snmp`` and ``netstat``, read through any process
in it) tell, per inference, how much of its time TCP spent recovering: the device's for
the uplink, the server's for the downlink.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["COUNTERS", "read", "delta"]

# (file, section, name): segments retransmitted, retransmission timeouts, tail-loss
# probes, retransmissions lost again
COUNTERS = (("snmp", "Tcp", "RetransSegs"), ("netstat", "TcpExt", "TCPTimeouts"),
            ("netstat", "TcpExt", "TCPLossProbes"), ("netstat", "TcpExt", "TCPLostRetransmit"))


def read(pid: int | str = "self", proc: str = "/proc") -> dict[str, int]:
    """The counters of ``pid``'s namespace; {} where /proc cannot tell (no Linux, a
    process gone)."""
    out: dict[str, int] = {}
    for file in {f for f, _, _ in COUNTERS}:
        try:
            lines = Path(proc, str(pid), "net", file).read_text().splitlines()
        except OSError:
            return {}
        # each section is a line of names then a line of values, both "Section: ..."
        for names, values in zip(lines[::2], lines[1::2]):
            section, _, keys = names.partition(":")
            table = dict(zip(keys.split(), values.partition(":")[2].split()))
            for f, s, name in COUNTERS:
                if f == file and s == section and name in table:
                    out[name] = int(table[name])
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What happened between two readings (counters both readings have)."""
    return {k: after[k] - before[k] for k in after if k in before}
