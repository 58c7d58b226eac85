"""A compiled program is plain data: its text form reads back exactly, and binding
kernels to the program read back gives the unsplit model's result."""

from __future__ import annotations

import pytest

import lopinfer
from helpers import assert_exact, reference
from lopinfer.runtime import TiledExecutor, bind
from lopinfer.scheduler import cut_plan, local_plan, local_segments, offload_plan, split_plan
from lopinfer.scheduler.compile import compile_program
from lopinfer.scheduler.program import format_program, format_task, parse_program, parse_task
from nets import REFERENCE_NETS


def _plans(graph):
    seg = max(local_segments(graph), key=lambda s: s[1] - s[0])
    return [local_plan(graph, 3), offload_plan(graph, 4), cut_plan(graph, len(graph) // 2, 2),
            split_plan(graph, 0.5, seg[0], seg[1], 3, halo="send"),
            split_plan(graph, 0.4, seg[0], seg[1], 2, halo="recompute")]


@pytest.mark.parametrize("name", ["vgg", "resnet", "unet", "densenet", "convnext"])
def test_text_form_round_trips_and_runs(name):
    model, x = REFERENCE_NETS[name]()
    graph = lopinfer.capture(model, (x,))
    ref = reference(model, x)
    for plan in _plans(graph):
        prog = compile_program(graph, plan)
        for t in prog.tasks:
            assert parse_task(format_task(t)) == t
        again = parse_program(format_program(prog), graph, plan)
        assert again.tasks == prog.tasks
        assert (again.inputs, again.outputs) == (prog.inputs, prog.outputs)
        assert (again.order, again.frees) == (prog.order, prog.frees)
        out = TiledExecutor(graph, plan=plan, program=bind(again))(x)
        assert_exact(out, ref)


def test_text_form_names_what_each_task_reads():
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    prog = compile_program(graph, offload_plan(graph, 2))
    recv = next(t for t in prog.tasks if t.kind == "recv" and t.peer == "server")
    line = format_task(recv)
    assert line.startswith(f"{recv.id} server recv {recv.value} [{recv.a}:{recv.b})@{recv.dim}")
    assert f"<- {recv.value}@" in line  # a narrow of the client's input task
    with pytest.raises(ValueError, match="task kind"):
        parse_task(line.replace(" recv ", " bogus "))
