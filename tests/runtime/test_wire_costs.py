"""The wire's costs in the cost model: per-frame and per-byte codec cost measured on
each peer, LZ4 where the transport would use it (its own rule), and the link's
per-frame cost fitted from the probe."""

from __future__ import annotations

import pytest
import torch

import lopinfer
from lopinfer.runtime.measure import frame_intercept
from lopinfer.runtime.profiler import costs_from_json, costs_to_json, profile
from lopinfer.scheduler.cost import CostModel, Link, NodeCost, PeerCosts
from lopinfer.transports import HAVE_LZ4
from lopinfer.transports._compress import AdaptiveCompressor
from nets import REFERENCE_NETS

needs_lz4 = pytest.mark.skipif(not HAVE_LZ4, reason="needs the lz4 package (extra 'lz4')")


def _peer(ratio: float, **wire: float) -> PeerCosts:
    return PeerCosts({"a": NodeCost(0.0, 1e-3)}, lz4_ratio={"a": ratio}, **wire)


@needs_lz4
@pytest.mark.parametrize("bandwidth", [1e5, 1e6, 1e7, 1e8, 1e9, 1e10])
@pytest.mark.parametrize("ratio", [0.3, 0.6, 0.9, 0.99])
def test_the_model_compresses_exactly_when_the_transport_would(bandwidth, ratio):
    speed, unspeed = 500e6, 2e9
    peer = _peer(ratio, lz4_per_byte=1 / speed, unlz4_per_byte=1 / unspeed)
    cm = CostModel(peer, peer, Link(bandwidth, 0.0, 0.0), Link(bandwidth, 0.0, 0.0))
    n = 1 << 20
    took, wire = cm.transfer("server", n, "a")
    # the transport, having learnt this stream's ratio and speed
    comp = AdaptiveCompressor("auto")
    comp.decompress_speed = unspeed
    comp.should_try(n, "k", bandwidth)  # creates the stream's stats
    st = comp._keys["k"]
    st.ratio, st.speed, st.measured = ratio, speed, True
    tries = comp.should_try(n, "k", bandwidth)
    sends_compressed = tries and ratio < 0.97
    assert (wire < n) == sends_compressed
    if sends_compressed:
        assert wire == int(n * ratio)
        assert took == pytest.approx(n / speed + n / unspeed + wire / bandwidth)
    else:
        assert took == pytest.approx(n / bandwidth)


def test_per_frame_and_per_byte_costs_of_both_peers_add_up():
    client = _peer(1.0, frame_cpu=1e-4, codec_per_byte=1e-9)
    server = _peer(1.0, frame_cpu=2e-5, codec_per_byte=2e-10)
    cm = CostModel(client, server, Link(1e6, 0.001, 5e-5), Link(2e6, 0.001, 0.0))
    n = 100_000
    up, wire = cm.transfer("server", n, "a")
    assert wire == n
    assert up == pytest.approx(5e-5 + 1e-4 + 2e-5 + n * (1e-9 + 2e-10) + n / 1e6)
    down, _ = cm.transfer("client", n, "a")
    assert down == pytest.approx(1e-4 + 2e-5 + n * (1e-9 + 2e-10) + n / 2e6)
    off = CostModel(client, server, Link(1e3), Link(1e3), compression="off")
    assert off.transfer("server", n, "a")[1] == n  # never compressed when it is off


def test_frame_intercept_recovers_the_per_frame_cost():
    per_frame, bw = 0.8e-3, 2e6
    samples = [(n, per_frame + n / bw) for n in (32 << 10, 256 << 10, 2 << 20) for _ in range(3)]
    assert frame_intercept(samples) == pytest.approx(per_frame, rel=1e-6)
    assert frame_intercept([(1000, 0.01)] * 3) == 0.0  # one size: cannot tell
    assert frame_intercept([(1000, 0.02), (2000, 0.01)]) <= 5e-3  # capped, never silly


def test_the_profile_measures_the_wire(tmp_path, monkeypatch):
    monkeypatch.setenv("LOPINFER_CACHE", str(tmp_path))
    monkeypatch.setattr("lopinfer.runtime.profiler._MEMO", {})
    model, x = REFERENCE_NETS["vgg"]()
    g = lopinfer.capture(model, (x,))
    costs = profile(g, (x,), repeats=1)
    assert 0 < costs.frame_cpu < 0.05
    assert 0 < costs.codec_per_byte < 1e-6
    again = costs_from_json(costs_to_json(costs))
    assert (again.frame_cpu, again.codec_per_byte, again.lz4_ratio, again.lz4_time) == \
        (costs.frame_cpu, costs.codec_per_byte, costs.lz4_ratio, costs.lz4_time)
    if HAVE_LZ4:
        assert costs.lz4_per_byte > 0 and costs.unlz4_per_byte > 0
        relus = [n.name for n in g if n.name in costs.lz4_ratio and "relu" in n.name]
        assert relus, costs.lz4_ratio
        # post-ReLU values are about half zeros: LZ4 shrinks them; the random input not
        assert min(costs.lz4_ratio[r] for r in relus) < 0.9
        (inp,) = g.inputs
        assert costs.lz4_ratio.get(inp, 1.0) > 0.9
        assert set(costs.lz4_time) == set(costs.lz4_ratio)
        assert all(c > 0 and d > 0 for c, d in costs.lz4_time.values())


@needs_lz4
def test_each_value_is_priced_at_the_lz4_speed_measured_on_it(tmp_path, monkeypatch):
    """A mostly empty occupancy grid compresses several times faster than the
    activations that set a peer's average: its frames are priced at its own speed (the
    offload of the AGRNav-style grid was over-predicted by 12% on the average)."""
    from lopinfer.workloads.inputs import lidar_grid

    monkeypatch.setenv("LOPINFER_CACHE", str(tmp_path))
    monkeypatch.setattr("lopinfer.runtime.profiler._MEMO", {})
    model = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU()).eval()
    grid = lidar_grid(128, 32)
    g = lopinfer.capture(model, (grid,))
    (inp,) = g.inputs
    relu = g.nodes[-1].name
    measured = profile(g, (grid,), repeats=1)
    costs = PeerCosts(dict(measured.nodes), lz4_per_byte=measured.lz4_per_byte,  # LZ4 only
                      unlz4_per_byte=measured.unlz4_per_byte, lz4_ratio=measured.lz4_ratio,
                      lz4_time=measured.lz4_time)
    assert costs.lz4_ratio[inp] < 0.1  # mostly zeros
    assert costs.lz4_time[inp][0] < costs.lz4_time[relu][0]  # and quick to compress
    # pricing: the grid's own time on the sender; a value nobody measured: the averages
    server = PeerCosts(dict(costs.nodes), lz4_per_byte=costs.lz4_per_byte / 2,
                       unlz4_per_byte=costs.unlz4_per_byte / 2)
    cm = CostModel(costs, server, Link(1e5, 0.0, 0.0), Link(1e5, 0.0, 0.0))
    n = grid.numel() * 4
    took, wire = cm.transfer("server", n, inp)
    c, d = costs.lz4_time[inp]
    expect = d * server.unlz4_per_byte / costs.unlz4_per_byte  # as much faster there
    assert wire == int(n * costs.lz4_ratio[inp])
    assert took == pytest.approx(n * (c + expect) + wire / 1e5)
    # from the server to the client, the client's measurement of the value still holds
    back, _ = cm.transfer("client", n, inp)
    assert back == pytest.approx(n * (c * server.lz4_per_byte / costs.lz4_per_byte + d)
                                 + wire / 1e5)
    slower = costs.scaled(3.0)
    assert slower.lz4_time[inp] == pytest.approx((3 * c, 3 * d))


@needs_lz4
def test_a_compressible_cut_is_predicted_cheaper_on_a_slow_link():
    from lopinfer.scheduler.builders import cut_plan
    from lopinfer.scheduler.energy import Objective
    from lopinfer.scheduler.planners import evaluate

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 4, 3, padding=1)).eval()
    x = torch.randn(1, 3, 64, 64)
    g = lopinfer.capture(model, (x,))
    relu = g.nodes[1].name
    plan = cut_plan(g, 2, 4)  # conv and relu on the client: the relu output goes up
    base = PeerCosts({n.name: NodeCost(0.0, 1e-5) for n in g})
    squeezed = PeerCosts(dict(base.nodes), lz4_ratio={relu: 0.5})
    slow = dict(up=Link(1e5, 0.0, 0.0), down=Link(1e5, 0.0, 0.0))
    raw = evaluate(g, plan, CostModel(base, base, **slow), Objective()).prediction
    packed = evaluate(g, plan, CostModel(squeezed, squeezed, **slow), Objective()).prediction
    assert packed.bytes_up == raw.bytes_up == raw.wire_up  # raw bytes are what the plan moves
    assert packed.wire_up == pytest.approx(raw.wire_up * 0.5, rel=0.01)
    assert packed.latency_s < raw.latency_s * 0.6


@needs_lz4
def test_ratios_come_from_the_profile_that_saw_the_application_input():
    """The client profiles on the application's input, the server on random data: a
    head's output on a camera frame compressed to 0.43 where the server's profile said
    0.81, and KAPAO's offload was predicted 31% slow on the server's ratio. Both
    directions price a value at the client's ratio (and LZ4 speed) where it has one."""
    client = PeerCosts({"a": NodeCost(0.0, 1e-3)}, lz4_per_byte=2e-9, unlz4_per_byte=1e-9,
                       lz4_ratio={"a": 0.4, "b": 0.5}, lz4_time={"a": (1e-9, 0.5e-9)})
    server = PeerCosts({"a": NodeCost(0.0, 1e-4)}, lz4_per_byte=1e-9, unlz4_per_byte=0.5e-9,
                       lz4_ratio={"a": 0.8, "c": 0.6}, lz4_time={"a": (4e-9, 1e-9)})
    cm = CostModel(client, server, Link(1e6, 0.0, 0.0), Link(1e6, 0.0, 0.0))
    n = 1 << 20
    for receiver in ("server", "client"):
        assert cm.stages(receiver, n, "a").wire_bytes == int(n * 0.4)
        assert cm.stages(receiver, n, "b").wire_bytes == int(n * 0.5)
        assert cm.stages(receiver, n, "c").wire_bytes == int(n * 0.6)  # only the server's
    # the client found "a" twice as quick to compress as its average: so does the server
    down = cm.stages("client", n, "a")
    assert down.encode == pytest.approx(n * 1e-9 * (1e-9 / 2e-9))
    assert down.decode == pytest.approx(n * 0.5e-9)  # the client's own measurement


def test_each_side_of_a_transfer_pays_half_the_codec_round_trip(monkeypatch):
    """The sender is charged its encode and the receiver its decode, each from its own
    profile: the profile's round trip (encode, then decode back) is two sides' work."""
    from lopinfer.runtime import wire

    small_bytes, big_bytes = 64 * 56 * 4, 64 * 64 * 256 * 4
    monkeypatch.setattr(wire, "_roundtrip_s", lambda t, dev, repeats: (
        1e-4 if t.numel() * 4 == small_bytes else 1e-4 + 2e-9 * (big_bytes - small_bytes)))
    frame_cpu, per_byte = wire.measure_codec(torch.device("cpu"))
    assert frame_cpu == pytest.approx(0.5e-4)
    assert per_byte == pytest.approx(1e-9)
