"""Property: random chains of local operators, random sizes and tilings, all exact."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lopinfer
from helpers import assert_exact
from lopinfer.runtime import TiledExecutor


class Chain(nn.Module):
    """Applies a list of (op name, params) to a (N, C, *spatial) tensor."""

    def __init__(self, steps: list[tuple[str, dict]], channels: int, nd: int) -> None:
        super().__init__()
        self.steps = steps
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[nd]
        tconv = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}[nd]
        self.mods = nn.ModuleList()
        for op, p in steps:
            if op == "conv":
                self.mods.append(conv(channels, channels, p["k"], p["s"], p["p"], p["d"],
                                      groups=p["g"]))
            elif op == "tconv":
                self.mods.append(tconv(channels, channels, p["k"], p["s"], p["p"], p["op"],
                                       dilation=p["d"]))
            else:
                self.mods.append(nn.Identity())
        self.nd = nd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for (op, p), mod in zip(self.steps, self.mods):
            if op in ("conv", "tconv"):
                x = mod(x)
            elif op == "maxpool":
                f = F.max_pool1d if self.nd == 1 else F.max_pool2d
                x = f(x, p["k"], p["s"], p["p"], p["d"], ceil_mode=p["ceil"])
            elif op == "avgpool":
                f = F.avg_pool1d if self.nd == 1 else F.avg_pool2d
                x = f(x, p["k"], p["s"], p["p"], ceil_mode=p["ceil"], count_include_pad=p["cip"])
            elif op == "pad":
                x = F.pad(x, p["pad"], mode=p["mode"], **({"value": 0.25} if p["mode"] == "constant" else {}))
            elif op == "up":
                kw = {"align_corners": p["align"]} if p["mode"] == "linear" else {}
                mode = {"linear": "linear" if self.nd == 1 else "bilinear"}.get(p["mode"], p["mode"])
                if "size" in p:
                    x = F.interpolate(x, size=p["size"], mode=mode, **kw)
                else:
                    x = F.interpolate(x, scale_factor=p["scale"], mode=mode, **kw)
            elif op == "adaptive":
                f = F.adaptive_avg_pool1d if self.nd == 1 else F.adaptive_avg_pool2d
                x = f(x, p["out"])
            elif op == "act":
                x = torch.tanh(x) * 1.5 + x.sigmoid()
        return x


def _out(n: int, k: int, s: int, p: int, d: int, ceil: bool = False) -> int:
    span = n + 2 * p - d * (k - 1) - 1
    if span < 0:
        return 0
    o = (-(-span // s) if ceil else span // s) + 1
    if ceil and (o - 1) * s >= n + p:
        o -= 1
    return o


@st.composite
def chains(draw):
    nd = draw(st.sampled_from([1, 2, 2]))
    size = [draw(st.integers(5, 29)) | 1 for _ in range(nd)]  # odd sizes
    x_shape = list(size)
    steps: list[tuple[str, dict]] = []
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["conv", "conv", "tconv", "maxpool", "avgpool", "pad", "up",
                                   "adaptive", "act"]))
        if op == "conv":
            k, s, d = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
            p = draw(st.integers(0, d * (k - 1)))
            new = [_out(n, k, s, p, d) for n in size]
            params = {"k": k, "s": s, "p": p, "d": d, "g": draw(st.sampled_from([1, 3]))}
        elif op == "tconv":
            k, s, d = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
            p = draw(st.integers(0, d * (k - 1)))
            opad = draw(st.integers(0, max(s, d) - 1))
            new = [(n - 1) * s - 2 * p + d * (k - 1) + opad + 1 for n in size]
            params = {"k": k, "s": s, "p": p, "d": d, "op": opad}
        elif op == "maxpool":
            k, s, d = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
            p, ceil = draw(st.integers(0, k // 2)), draw(st.booleans())
            new = [_out(n, k, s, p, d, ceil) for n in size]
            params = {"k": k, "s": s, "p": p, "d": d, "ceil": ceil}
        elif op == "avgpool":
            k, s = draw(st.integers(1, 4)), draw(st.integers(1, 3))
            p, ceil, cip = draw(st.integers(0, k // 2)), draw(st.booleans()), draw(st.booleans())
            new = [_out(n, k, s, p, 1, ceil) for n in size]
            params = {"k": k, "s": s, "p": p, "ceil": ceil, "cip": cip}
        elif op == "pad":
            mode = draw(st.sampled_from(["constant", "reflect", "replicate"]))
            lim = min(size) - 1
            lo = -2 if mode == "constant" else 0
            pad = [draw(st.integers(max(lo, -(n // 3)), min(4, lim))) for n in size for _ in (0, 1)]
            new = [n + pad[2 * i] + pad[2 * i + 1] for i, n in enumerate(reversed(size))][::-1]
            params = {"pad": pad, "mode": mode}
        elif op == "up":
            mode = draw(st.sampled_from(["nearest", "linear", "nearest-exact"]))
            params = {"mode": mode, "align": draw(st.booleans())}
            if draw(st.booleans()):
                new = [draw(st.integers(max(1, n // 2), 2 * n + 3)) for n in size]
                params["size"] = new
            else:
                scale = draw(st.sampled_from([2.0, 1.5, 3.0, 0.75, 1.3]))
                new = [int(n * scale) for n in size]
                params["scale"] = scale
        elif op == "adaptive":
            new = [draw(st.integers(2, max(2, n))) for n in size]
            params = {"out": new}
        else:
            new, params = list(size), {}
        if min(new) < 2 or max(new) > 200:
            continue
        steps.append((op, params))
        size = new
    return nd, x_shape, steps


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain=chains(), tiles=st.one_of(st.integers(1, 9),
                                       st.lists(st.integers(0, 5), min_size=1, max_size=6)
                                       .filter(lambda w: sum(w) > 0)),
       batch=st.integers(1, 2))
def test_random_local_chains_are_exact(chain, tiles, batch):
    nd, shape, steps = chain
    torch.manual_seed(0)
    model = Chain(steps, 3, nd).double().eval()
    x = torch.randn(batch, 3, *shape, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    graph = lopinfer.capture(model, (x,))
    out = TiledExecutor(graph, tiles)(x)
    assert_exact(out, ref)
    # the chain is local end to end: no barrier was needed for these ops
    assert all(n.local for n in graph if n.meta.shape[2] > 1), graph.describe()
