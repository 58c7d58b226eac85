"""Simulator against hand-computed timelines; planners against brute force and baselines."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import lopinfer
from lopinfer.runtime import compile_plan
from lopinfer.scheduler import local_plan, offload_plan
from lopinfer.scheduler.cost import CostModel, Link, NodeCost, PeerCosts, flop_costs
from lopinfer.scheduler.energy import Objective
from lopinfer.scheduler.planners import partition_cost, plan_all, plan_dads
from lopinfer.scheduler.simulator import lower_bound, simulate
from nets import REFERENCE_NETS

MS = 1e-3


class TwoPointwiseConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return self.b(self.a(x))


@pytest.fixture(scope="module")
def tiny():
    x = torch.randn(1, 1, 8, 4)  # 16 bytes per row
    g = lopinfer.capture(TwoPointwiseConvs().eval(), (x,))
    client = PeerCosts({n.name: NodeCost(0.0, 1 * MS) for n in g}, copy_per_byte=0.0)
    server = PeerCosts({n.name: NodeCost(0.0, 0.1 * MS) for n in g}, copy_per_byte=0.0)
    link = Link(bandwidth=128 / MS, latency=0.0, frame_overhead=0.0)  # 128 B/ms: 8 rows/ms
    return g, CostModel(client, server, link, link)


def test_local_is_the_sum_of_its_tasks(tiny):
    g, cm = tiny
    assert simulate(compile_plan(g, local_plan(g, 1)), cm).latency_s == pytest.approx(16 * MS)
    # tiling does not change the work without per-call costs
    assert simulate(compile_plan(g, local_plan(g, 4)), cm).latency_s == pytest.approx(16 * MS)


def test_offload_sequential_by_hand(tiny):
    g, cm = tiny
    # input 128 B up (1 ms), two convs on the server (0.8 + 0.8 ms), 128 B down (1 ms)
    pred = simulate(compile_plan(g, offload_plan(g, 1)), cm, timeline=True)
    assert pred.latency_s == pytest.approx(3.6 * MS)
    assert pred.bytes_up == 128 and pred.bytes_down == 128
    assert pred.client_busy_s == 0 and pred.server_busy_s == pytest.approx(1.6 * MS)


def test_offload_pipelined_by_hand(tiny):
    g, cm = tiny
    # up: piece 0 arrives 0.5, piece 1 at 1.0; server: a0 0.5-0.9, b0 (sends first)
    # 0.9-1.3, a1 1.3-1.7, b1 1.7-2.1; down: b0 1.3-1.8, b1 2.1-2.6
    pred = simulate(compile_plan(g, offload_plan(g, 2)), cm, timeline=True)
    assert pred.latency_s == pytest.approx(2.6 * MS)
    server = sorted((e["start"], e["end"]) for e in pred.timeline if e["peer"] == "server")
    flat = [t / MS for span in server for t in span]
    assert flat == pytest.approx([0.5, 0.9, 0.9, 1.3, 1.3, 1.7, 1.7, 2.1])
    # the bound: the busiest resource without overheads (the server: 2 x 0.8 ms)
    assert lower_bound(compile_plan(g, offload_plan(g, 2)), cm) == pytest.approx(1.6 * MS)


@pytest.mark.parametrize("encode_ms", [0.25, 1.0])
def test_a_frame_is_encoded_while_the_one_before_is_on_the_wire(tiny, encode_ms):
    """Encode, wire and decode are stages that overlap across frames, as the
    transport's codec threads and writer do: four input pieces of 0.5 ms on the wire
    each, encoded in ``encode_ms`` each by the client and decoded in 0.1 ms by the
    server, arrive like a three-stage pipeline, not one after another."""
    g, cm = tiny
    client = PeerCosts(dict(cm.client.nodes), copy_per_byte=0.0, frame_cpu=encode_ms * MS)
    server = PeerCosts(dict(cm.server.nodes), copy_per_byte=0.0, frame_cpu=0.1 * MS)
    link = Link(bandwidth=64 / MS, latency=0.0, frame_overhead=0.0)  # 32 B: 0.5 ms
    staged = CostModel(client, server, link, link)
    prog = compile_plan(g, offload_plan(g, 4))
    pred = simulate(prog, staged, timeline=True)
    up = sorted((e["start"], e["end"]) for e in pred.timeline if e["peer"] == "link-up")
    wire, dec = 0.5, 0.1
    # piece k leaves the encoder at (k + 1) * encode and takes the link when it is free
    ends, free = [], 0.0
    for k in range(4):
        free = max((k + 1) * encode_ms, free) + wire
        ends.append(free)
    assert [e / MS for _, e in up] == pytest.approx(ends)
    assert ends[-1] < 4 * (encode_ms + wire)  # not one after another
    # the first piece is decoded, then the server computes: its first tile starts then
    first = min(e["start"] for e in pred.timeline if e["peer"] == "server")
    assert first / MS == pytest.approx(encode_ms + wire + dec)
    # a single frame pays all three stages
    one = staged.stages("server", 32, None)
    assert staged.transfer("server", 32)[0] == pytest.approx(one.encode + one.wire + one.decode)


def test_dads_equals_brute_force_on_small_dags():
    pytest.importorskip("networkx", reason="dads needs networkx (extra 'bench')")
    torch.manual_seed(0)
    for trial in range(3):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.c = nn.ModuleList(nn.Conv2d(2, 2, 3, padding=1) for _ in range(4))

            def forward(self, x):
                a = self.c[0](x)
                b = self.c[1](a).relu()
                c = self.c[2](a) + b
                return self.c[3](c).mean((2, 3))

        x = torch.randn(1, 2, 6, 5)
        g = lopinfer.capture(Net().eval(), (x,))
        assert len(g) <= 12
        gen = torch.Generator().manual_seed(trial)
        def rnd(gen=gen):
            return float(torch.rand(1, generator=gen)) * MS

        client = PeerCosts({n.name: NodeCost(rnd(), rnd() / 6) for n in g})
        server = PeerCosts({n.name: NodeCost(rnd() / 5, rnd() / 30) for n in g})
        bw = [50, 500, 5000][trial] / MS
        cm = CostModel(client, server, Link(bw, 0, 1e-5), Link(bw, 0, 1e-5))
        names = [n.name for n in g]
        brute = min(partition_cost(g, {n for n, on in zip(names, bits) if on}, cm)
                    for bits in itertools.product((0, 1), repeat=len(names)))
        dads = plan_dads(g, cm, Objective())
        chosen = {n for n, r in dads.plan.nodes.items() if r.client}
        assert partition_cost(g, chosen, cm) == pytest.approx(brute)


@pytest.mark.parametrize("name", ["vgg", "resnet", "densenet", "mobilenet_v3", "unet"])
def test_lopinfer_never_worse_than_any_baseline(name):
    model, x = REFERENCE_NETS[name]()
    g = lopinfer.capture(model, (x,))
    client, server = flop_costs(g, 2e8), flop_costs(g, 4e9)
    for bw in (1e4, 1e6, 1e8):
        cm = CostModel(client, server, Link(bw), Link(bw))
        res = plan_all(g, cm)
        best_other = min(v.latency_s for k, v in res.items() if k != "lopinfer")
        assert res["lopinfer"].latency_s <= best_other + 1e-12


def test_extremes_local_at_no_bandwidth_offload_at_plenty():
    model, x = REFERENCE_NETS["vgg"]()
    g = lopinfer.capture(model, (x,))
    client, server = flop_costs(g, 1e8), flop_costs(g, 1e10)
    slow = plan_all(g, CostModel(client, server, Link(1e2), Link(1e2)))["lopinfer"]
    assert slow.plan.kind == "local"
    fast = plan_all(g, CostModel(client, server, Link(1e11, 1e-6, 1e-7), Link(1e11, 1e-6, 1e-7)))
    assert fast["lopinfer"].plan.kind == "offload"


@pytest.mark.parametrize("name", ["resnet", "densenet", "unet"])
def test_dads_cut_is_no_worse_than_any_prefix_cut(name):
    """DADS's partition costs (its own additive measure) no more than local, offload or
    any topological prefix on the client: the minimum cut must be minimal. On float
    capacities networkx returned a partition 4.7x its own flow value (resnet152, lab)."""
    pytest.importorskip("networkx", reason="dads needs networkx (extra 'bench')")
    model, x = REFERENCE_NETS[name]()
    g = lopinfer.capture(model, (x,))
    names = [n.name for n in g]
    for flops, bw in itertools.product((3e8, 1e9), (2e3, 3e4, 3e5, 3e6, 3e7, 3e8)):
        cm = CostModel(flop_costs(g, flops), flop_costs(g, 18 * flops),
                       Link(bw, 0.005, 0.01), Link(bw, 0.005, 0.01))
        dads = plan_dads(g, cm, Objective())
        got = partition_cost(g, {n for n, r in dads.plan.nodes.items() if r.client}, cm)
        best_prefix = min(partition_cost(g, set(names[:k]), cm) for k in range(len(names) + 1))
        assert got <= best_prefix * (1 + 1e-9), (flops, bw, got, best_prefix)
