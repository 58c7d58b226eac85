"""Two peers, two compute threads, pieces handed over as they are produced: every plan
kind gives the unsplit model's result (no network: the handover is a direct call)."""

from __future__ import annotations

import threading

import pytest

import lopinfer
from helpers import assert_exact, reference
from lopinfer.runtime import compile_plan, pack_outputs
from lopinfer.runtime.peer import DeviceWorker, PeerRun
from lopinfer.scheduler import cut_plan, local_plan, local_segments, offload_plan, split_plan
from nets import REFERENCE_NETS


def run_two_peers(graph, plan, x, timeout=60, trace=False, program=False):
    prog = compile_plan(graph, plan)
    done = {p: threading.Event() for p in ("client", "server")}
    runs = {}

    def sender(dst):
        return lambda task, piece: runs[dst].deliver(task.id, task.a, task.b, piece.clone())

    workers = {p: DeviceWorker(f"test-{p}") for p in ("client", "server")}
    try:
        runs["server"] = PeerRun(prog, "server", on_send=sender("client"),
                                 on_done=lambda r: done["server"].set(), trace=trace)
        runs["client"] = PeerRun(prog, "client", on_send=sender("server"),
                                 on_done=lambda r: done["client"].set(), inputs=(x,),
                                 trace=trace)
        for p in ("server", "client"):
            workers[p].add(runs[p])
        for p in ("client", "server"):
            assert done[p].wait(timeout), f"{p} did not finish: {runs[p]!r}"
            assert runs[p].error is None, runs[p].error
        out = pack_outputs(graph, runs["client"].outputs())
        return (out, runs, prog) if program else (out, runs)
    finally:
        for w in workers.values():
            w.close()


@pytest.mark.parametrize("name", ["vgg", "resnet", "unet", "densenet", "convnext"])
def test_plan_kinds_with_two_threads(name):
    model, x = REFERENCE_NETS[name]()
    graph = lopinfer.capture(model, (x,))
    ref = reference(model, x)
    seg = max(local_segments(graph), key=lambda s: s[1] - s[0])
    plans = [local_plan(graph, 3), offload_plan(graph, 4), cut_plan(graph, len(graph) // 2, 3),
             split_plan(graph, 0.5, seg[0], seg[1], 2, halo="send"),
             split_plan(graph, 0.4, seg[0], seg[1], 3, halo="recompute")]
    for plan in plans:
        out, runs = run_two_peers(graph, plan, x)
        assert_exact(out, ref)
        # both peers computed something whenever the plan says so
        if plan.uses_server():
            assert any(s[0] == "tile" or s[0] == "whole" for s in runs["server"].spans)


def test_unexpected_piece_is_a_protocol_error():
    from lopinfer.errors import ProtocolError

    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    prog = compile_plan(graph, offload_plan(graph, 2))
    run = PeerRun(prog, "server", on_send=lambda t, p: None, on_done=lambda r: None)
    recv = next(t for t in prog.tasks if t.kind == "recv" and t.peer == "server")
    with pytest.raises(ProtocolError, match="unexpected tensor"):
        run.deliver(10**6, 0, 1, x)
    with pytest.raises(ProtocolError, match="expected"):
        run.deliver(recv.id, recv.a, recv.b, x)  # the whole input, not the piece
