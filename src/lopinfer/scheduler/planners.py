"""Planners: each returns a Plan the runtime runs unchanged, scored by the simulator.
Each is registered with :func:`~lopinfer.scheduler.registry.planner`:

- ``local``: everything on the device.
- ``offload``: everything on the server, the input streamed in tiles.
- ``neurosurgeon``: the best single cut in topological order, sequential, no tiling.
- ``dads``: a minimum s-t cut of the DAG (networkx max-flow), sequential, no tiling.
- ``lopinfer``: a search over cuts, intra-layer split fractions (a continuous range,
  refined by golden-section search), tile counts and halo policies, scored by the
  simulator; the other planners' plans are candidates, so its prediction is never
  worse than theirs.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from ..errors import PlanError
from ..graph import Graph
from .builders import cut_plan, local_plan, offload_plan
from .compile import compile_program, with_ranks
from .cost import CostModel
from .energy import Objective, device_energy, score
from .plan import CRITICAL, WHOLE, NodeRows, Plan
from .program import Program
from .registry import default_methods, planner, registered
from .search import Budget, search
from .search import grid as grid_search
from .simulator import Prediction, critical_ranks, lower_bound, simulate

__all__ = ["Scored", "evaluate", "evaluate_ordered", "plan_all", "partition_cost", "plan_key", "plan_lopinfer",
           "plan_lopinfer_grid"]

CP_REACH = 1.25  # see plan_lopinfer


@dataclass
class Scored:
    """A plan with its predicted latency, device energy and pipeline bound."""

    plan: Plan
    prediction: Prediction
    energy_j: float
    bound_s: float

    @property
    def latency_s(self) -> float:
        return self.prediction.latency_s


# Compiling a plan is most of a planner's time and does not depend on the bandwidth:
# programs are kept by (graph, the plan's rows) so a bandwidth grid compiles each once.
_PROGRAMS: OrderedDict[tuple, tuple[Graph, Program]] = OrderedDict()
_PROGRAMS_LOCK = threading.Lock()
_PROGRAMS_MAX = 4096


def plan_key(plan: Plan) -> tuple:
    """What a plan computes where (its rows and input pieces) and in which order (its
    ranks), names aside: equal keys, equal programs."""
    # input pieces matter only when something runs on the server
    edges = tuple(sorted(plan.input_edges.items())) if plan.uses_server() else ()
    return (edges, tuple((k, v.client, v.server) for k, v in plan.nodes.items()),
            tuple(sorted(plan.ranks.items())))


def _compiled(graph: Graph, plan: Plan) -> Program:
    key = (id(graph), *plan_key(plan))
    with _PROGRAMS_LOCK:
        hit = _PROGRAMS.get(key)
        if hit is not None and hit[0] is graph:
            _PROGRAMS.move_to_end(key)
            return hit[1]
    prog = compile_program(graph, plan)
    with _PROGRAMS_LOCK:
        _PROGRAMS[key] = (graph, prog)
        while len(_PROGRAMS) > _PROGRAMS_MAX:
            _PROGRAMS.popitem(last=False)
    return prog


def evaluate(graph: Graph, plan: Plan, cost: CostModel, objective: Objective) -> Scored:
    """``plan`` as it is (its ranks included), scored by the simulator."""
    prog = _compiled(graph, plan)
    return _scored(plan, prog, simulate(prog, cost), cost, objective)


def evaluate_ordered(graph: Graph, plan: Plan, cost: CostModel, objective: Objective,
                     worth: Callable[[float], bool] | None = None) -> Scored:
    """The better of ``plan`` with each peer's ready tasks ordered deepest first (no
    ranks) and ordered by their critical path (:func:`~.simulator.critical_ranks`,
    named ``~cp``): the search's scorer. Ranks a candidate carries are recomputed for
    ``cost``. ``worth(latency)`` says whether a plan that latency first is worth the
    second simulation (default: always)."""
    if plan.ranks:
        plan = replace(plan, ranks={}, name=plan.base_name)
    base = _compiled(graph, plan)
    s = _scored(plan, base, simulate(base, cost), cost, objective)
    if not plan.uses_server():
        return s  # one worker, nothing to wait for: the order cannot change the latency
    if worth is not None and not worth(s.latency_s):
        return s
    ranks = critical_ranks(base, cost)
    ordered = replace(plan, ranks=ranks, name=plan.name + CRITICAL)
    prog = with_ranks(base, ranks, orders=False)
    c = _scored(ordered, prog, simulate(prog, cost), cost, objective)
    return c if score(objective, c.latency_s, c.energy_j) < score(
        objective, s.latency_s, s.energy_j) else s


def _scored(plan: Plan, prog: Program, pred: Prediction, cost: CostModel,
            objective: Objective) -> Scored:
    up_s = pred.frames_up * cost.up.frame_overhead + pred.wire_up / cost.up.bandwidth  # radio on
    down_s = pred.frames_down * cost.down.frame_overhead + pred.wire_down / cost.down.bandwidth
    energy = device_energy(pred.latency_s, pred.client_busy_s, up_s, down_s, objective.profile)
    return Scored(plan, pred, energy, lower_bound(prog, cost))


def _best(graph: Graph, plans: Iterable[Plan], cost: CostModel, objective: Objective) -> Scored:
    best = None
    for plan in plans:
        s = evaluate(graph, plan, cost, objective)
        if best is None or score(objective, s.latency_s, s.energy_j) < score(
                objective, best.latency_s, best.energy_j):
            best = s
    if best is None:
        raise PlanError("no candidate plan")
    return best


@planner("local", baseline=True)
def plan_local(graph: Graph, cost: CostModel, objective: Objective) -> Scored:
    """Everything on the device."""
    return evaluate(graph, local_plan(graph, 1), cost, objective)


@planner("offload", baseline=True)
def plan_offload(graph: Graph, cost: CostModel, objective: Objective) -> Scored:
    """Everything on the server, the input streamed in tiles (the best of 1, 2, 4, 8)."""
    return _best(graph, (offload_plan(graph, t, min_rows=2) for t in (1, 2, 4, 8)), cost, objective)


@planner("neurosurgeon", baseline=True)
def plan_neurosurgeon(graph: Graph, cost: CostModel, objective: Objective) -> Scored:
    """The best single cut in topological order, sequential, no tiling."""
    return _best(graph, (cut_plan(graph, k, 1) for k in range(len(graph) + 1)), cost, objective)


def partition_cost(graph: Graph, client: set[str], cost: CostModel) -> float:
    """What DADS minimises: every node's time where it runs, plus each value's
    transfer once per direction it crosses (inputs live, outputs end, on the client)."""
    total = 0.0
    for node in graph:
        peer = "client" if node.name in client else "server"
        c = cost.peer(peer).nodes.get(node.name)
        total += 0.0 if c is None else c(node.locality.size if node.locality else 1)
    side = {name: "client" for name in graph.inputs}
    side.update({n.name: "client" if n.name in client else "server" for n in graph})
    readers: dict[str, set[str]] = {}
    for node in graph:
        for ref in node.refs():
            if ref in side:
                readers.setdefault(ref, set()).add(side[node.name])
    for name in graph.outputs:
        readers.setdefault(name, set()).add("client")
    for value, where in readers.items():
        nbytes = graph.meta(value).nbytes
        if side[value] == "client" and "server" in where:
            total += cost.transfer("server", nbytes, value)[0]
        if side[value] == "server" and "client" in where:
            total += cost.transfer("client", nbytes, value)[0]
    return total


@planner("dads", requires="networkx", baseline=True)
def plan_dads(graph: Graph, cost: CostModel, objective: Objective) -> Scored:
    """A minimum s-t cut of the DAG (networkx max-flow), sequential, no tiling.

    Minimum s-t cut: a node on the server pays its server time, on the client its
    client time, a value crossing pays its transfer time once per direction."""
    try:
        import networkx as nx
    except ImportError:  # the bench extra brings it; without it DADS is not offered
        raise PlanError("the dads planner needs networkx (extra 'bench')") from None
    g = nx.DiGraph()

    # Integer nanoseconds, and no capacity at all for an infinite edge: networkx's
    # max-flow is not exact on floats. With float seconds (and math.inf) it returned a
    # partition whose cut was 4.7x its own flow value (resnet152 at 2 MB/s in the lab:
    # a 13.6 s upload cut, against local's 3.19 s), and DADS ran it.
    def ns(seconds: float) -> int:
        return int(round(seconds * 1e9))

    def whole(name: str, peer: str) -> int:
        node = graph[name]
        c = cost.peer(peer).nodes.get(name)
        rows = node.locality.size if node.locality else 1
        return 0 if c is None else ns(c(rows))

    for node in graph:
        g.add_edge("s", node.name, capacity=whole(node.name, "server"))
        g.add_edge(node.name, "t", capacity=whole(node.name, "client"))
    for name in graph.inputs:
        g.add_edge("s", name)  # (no capacity: infinite)
    g.add_edge("s", "@out")
    consumers: dict[str, list[str]] = {}
    for node in graph:
        for ref in dict.fromkeys(node.refs()):
            if graph.kind(ref) != "param":
                consumers.setdefault(ref, []).append(node.name)
    for name in graph.outputs:
        consumers.setdefault(name, []).append("@out")
    for value, users in consumers.items():
        nbytes = graph.meta(value).nbytes
        up, down = f"{value}@up", f"{value}@down"
        g.add_edge(value, up, capacity=ns(cost.transfer("server", nbytes, value)[0]))
        g.add_edge(down, value, capacity=ns(cost.transfer("client", nbytes, value)[0]))
        for u in users:
            g.add_edge(up, u)
            g.add_edge(u, down)
    _, (client_side, _) = nx.minimum_cut(g, "s", "t")
    nodes = {n.name: NodeRows(client=(WHOLE if n.locality is None else (0, n.locality.size),))
             if n.name in client_side else
             NodeRows(server=(WHOLE if n.locality is None else (0, n.locality.size),))
             for n in graph}
    plan = Plan("dads", nodes, kind="dads")
    return evaluate(graph, plan, cost, objective)


@planner("lopinfer", searches=True)
def plan_lopinfer(graph: Graph, cost: CostModel, objective: Objective,
                  baselines: Iterable[Scored] = (), budget: Budget | None = None) -> Scored:
    """A branch and bound over cuts, partitions and intra-layer splits (ranked by their
    pipeline bound), tiles sized per node and split fractions refined by the simulator,
    under a budget (:mod:`.search`), the baselines' plans among the candidates."""
    t0 = time.perf_counter()
    pool = list(baselines)
    fastest = min((s.latency_s for s in pool), default=math.inf)

    def scorer(graph: Graph, plan: Plan, cost: CostModel, objective: Objective) -> Scored:
        # the critical path shortened plans by 2-12%: a plan slower than the fastest so
        # far by more than CP_REACH is not worth its second simulation (AGRNav in a
        # 3 s budget: 191 candidates scored instead of 118)
        nonlocal fastest
        s = evaluate_ordered(graph, plan, cost, objective,
                             worth=lambda lat: lat < CP_REACH * fastest)
        fastest = min(fastest, s.latency_s)
        return s

    best, stats = search(graph, cost, objective, scorer, pool, budget)
    assert isinstance(best, Scored)
    # a baseline's plan may win: say who chose it on a copy, not on the baseline's
    return Scored(replace(best.plan, planner="lopinfer", candidates=stats.candidates,
                          search_s=time.perf_counter() - t0),
                  best.prediction, best.energy_j, best.bound_s)


def plan_lopinfer_grid(graph: Graph, cost: CostModel, objective: Objective,
                       baselines: Iterable[Scored] = ()) -> Scored:
    """The previous ``lopinfer`` search (kept to compare against): cuts x tile counts 2,
    4, 8 for the whole graph and splits of the 3 longest local segments x fractions
    (6 golden-section steps) x halo policies, scored by the simulator."""
    t0 = time.perf_counter()
    pool: list[Scored] = list(baselines)

    def key(s: Scored) -> tuple[float, float]:
        return score(objective, s.latency_s, s.energy_j)

    def consider(plan: Plan) -> Scored | None:
        try:
            s = evaluate(graph, plan, cost, objective)
        except PlanError:
            return None
        pool.append(s)
        return s

    def lat(s: Scored | None) -> float:
        return math.inf if s is None else key(s)[0] + key(s)[1] * 1e-9

    grid_search(graph, pool, key, consider, lat)  # the very loop the search seeds with
    best = min(pool, key=key)
    return Scored(replace(best.plan, planner="lopinfer-grid", candidates=len(pool),
                          search_s=time.perf_counter() - t0),
                  best.prediction, best.energy_j, best.bound_s)


@planner("lopinfer-energy", searches=True, default=False)
def plan_lopinfer_energy(graph: Graph, cost: CostModel, objective: Objective,
                         baselines: Iterable[Scored] = (), budget: Budget | None = None) -> Scored:
    """The least device energy among plans no slower than offloading everything."""
    pool = list(baselines)
    offload = next((s for s in pool if s.plan.kind == "offload"), None)
    if offload is None:
        offload = plan_offload(graph, cost, objective)
        pool.append(offload)
    goal = Objective("energy", offload.latency_s, objective.profile)
    best = plan_lopinfer(graph, cost, goal, baselines=pool, budget=budget)
    best.plan.planner = "lopinfer-energy"  # a copy already (plan_lopinfer made it)
    return best


def plan_all(graph: Graph, cost: CostModel, objective: Objective | str = "latency",
             methods: Iterable[str] | None = None, budget: Budget | None = None,
             ) -> dict[str, Scored]:
    """Every planner's best plan and its prediction (``methods``: the registry's
    defaults); the searches see every baseline's result. A planner that cannot run here
    (a missing extra, no valid plan) is left out. ``budget`` bounds each search
    (:class:`~lopinfer.scheduler.search.Budget`; default ``Budget()``)."""
    obj = Objective.parse(objective)
    infos = registered()
    wanted = list(default_methods() if methods is None else methods)
    unknown = [m for m in wanted if m not in infos]
    if unknown:
        raise PlanError(f"unknown planner(s) {unknown}; registered: {sorted(infos)}")
    out: dict[str, Scored] = {}
    for name in wanted:
        if not infos[name].searches:
            if budget is not None and budget.checkpoint is not None:
                budget.checkpoint()  # a background book yields between planners too
            try:
                out[name] = infos[name].fn(graph, cost, obj)
            except PlanError:
                continue
    found = list(out.values())
    for name in wanted:
        if infos[name].searches:
            kw = {} if budget is None else {"budget": budget}
            out[name] = infos[name].fn(graph, cost, obj, baselines=found, **kw)
    return out
