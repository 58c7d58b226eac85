"""Bench reporting: summary maths on hand-computed records, files, table and plots."""

import csv
import json
import statistics
import sys
from pathlib import Path

import pytest

from lopinfer.bench import report
from lopinfer.errors import MissingDependencyError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST, SLOW = "fixed:10MB/s", "fixed:1MB/s"


def rec(model, scenario, method, latency, rep=0, *, rate=10e6, up=0, down=0, energy=1.0,
        pred=None, bound=None, seq=None, plan="p", fell_back=False, timeline=()):
    return {"model": model, "method": method, "scenario": scenario, "rate_Bps": rate,
            "rep": rep, "latency_s": latency, "bytes_up": up, "bytes_down": down,
            "energy_j": energy, "predicted_s": pred, "bound_s": bound, "sequential_s": seq,
            "plan": plan, "fell_back": fell_back, "timeline": list(timeline)}


SPANS = [
    {"peer": "client", "kind": "tile", "task": 1, "start": 0.0, "end": 0.004},
    {"peer": "link-up", "kind": "transfer", "task": 2, "start": 0.004, "end": 0.009},
    {"peer": "server", "kind": "whole", "task": 3, "start": 0.009, "end": 0.020},
    {"peer": "link-down", "kind": "transfer", "task": 4, "start": 0.020, "end": 0.024},
    {"peer": "client", "kind": "gather", "task": 5, "start": 0.024, "end": 0.030},
]


def records():
    rs = []
    # lopinfer on vgg/FAST: p50 30 ms, p95 = 40 + 0.8 * 60 = 88 ms (position 3.8 of 0..4).
    plans = ["split-a", "split-b", "split-a", "split-b", "split-a"]
    for i, lat in enumerate([0.040, 0.010, 0.100, 0.030, 0.020]):
        rs.append(rec("vgg", FAST, "lopinfer", lat, i, up=100_000 * (i + 1), down=10_000 * (i + 1),
                      energy=float(i + 1), pred=0.033, bound=0.020, seq=0.050,
                      plan=plans[i], fell_back=(i == 2), timeline=SPANS))
        rs[-1].update(wire_up=50_000 * (i + 1), wire_down=11_000 * (i + 1))  # LZ4, headers
    # local: no model of its own, so predicted/bound/sequential stay None.
    for i, lat in enumerate([0.060, 0.050, 0.070, 0.080]):
        rs.append(rec("vgg", FAST, "local", lat, i, plan="local"))
    # offload: sequential == bound, nothing to overlap.
    for i in range(3):
        rs.append(rec("vgg", FAST, "offload", 0.045, i, pred=0.045, bound=0.040, seq=0.040,
                      plan="offload", timeline=SPANS[1:4]))
    rs.append(rec("vgg", SLOW, "lopinfer", 0.200, rate=1e6, pred=0.1, bound=0.1, seq=0.3))
    rs.append(rec("vgg", SLOW, "local", 0.065, rate=1e6))
    rs.append(rec("resnet", "seed-indoor", "lopinfer", 0.015, rate=5e6, timeline=SPANS))
    return rs


def rows_by_key(rows):
    return {(r["model"], r["scenario"], r["method"]): r for r in rows}


@pytest.fixture
def rows():
    return rows_by_key(report.summarise(records()))


def test_percentile_matches_hand_values_and_statistics_inclusive():
    assert report.percentile([4.0, 1.0, 3.0, 2.0], 0.5) == pytest.approx(2.5)
    assert report.percentile([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)
    assert report.percentile([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0
    assert report.percentile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
    assert report.percentile([7.0], 0.95) == 7.0
    data = [float(x * x % 37) for x in range(50)]
    cuts = statistics.quantiles(data, n=20, method="inclusive")
    assert report.percentile(data, 0.95) == pytest.approx(cuts[18])
    assert report.percentile(data, 0.5) == pytest.approx(statistics.median(data))
    with pytest.raises(ValueError):
        report.percentile([], 0.5)
    with pytest.raises(ValueError):
        report.percentile([1.0], 1.5)


def test_summarise_latency_bytes_energy_plan(rows):
    assert len(rows) == 6
    lop = rows["vgg", FAST, "lopinfer"]
    assert lop["n"] == 5
    assert lop["p50_s"] == pytest.approx(0.030)
    assert lop["p95_s"] == pytest.approx(0.088)
    assert lop["mean_bytes_up"] == pytest.approx(300_000.0)
    assert lop["mean_bytes_down"] == pytest.approx(30_000.0)
    assert (lop["mean_wire_up"], lop["mean_wire_down"]) == pytest.approx((150_000.0, 33_000.0))
    assert rows["vgg", FAST, "local"]["mean_wire_up"] is None  # records without wire bytes
    assert lop["energy_j"] == pytest.approx(3.0)
    assert lop["rate_Bps"] == pytest.approx(10e6)
    assert lop["plan"] == "split-a"
    assert lop["fell_back"] == 1
    local = rows["vgg", FAST, "local"]
    assert local["p50_s"] == pytest.approx(0.065)  # even count: mean of 60 and 70 ms
    assert local["p95_s"] == pytest.approx(0.0785)
    assert local["fell_back"] == 0


def test_prediction_error_and_overlap_efficiency(rows):
    lop = rows["vgg", FAST, "lopinfer"]
    assert lop["predicted_s"] == pytest.approx(0.033)
    assert lop["pred_error"] == pytest.approx(0.1)  # (33 - 30) / 30
    assert lop["bound_s"] == pytest.approx(0.020)
    assert lop["sequential_s"] == pytest.approx(0.050)
    assert lop["overlap_eff"] == pytest.approx(2 / 3)  # (50 - 30) / (50 - 20)
    # Slower than doing the work sequentially: negative, not clamped.
    slow = rows["vgg", SLOW, "lopinfer"]
    assert slow["overlap_eff"] == pytest.approx((0.3 - 0.2) / (0.3 - 0.1))
    assert slow["pred_error"] == pytest.approx(-0.5)


def test_speedup_vs_best_other(rows):
    assert rows["vgg", FAST, "lopinfer"]["speedup_vs_best_other"] == pytest.approx(0.045 / 0.030)
    assert rows["vgg", FAST, "local"]["speedup_vs_best_other"] == pytest.approx(0.030 / 0.065)
    assert rows["vgg", FAST, "offload"]["speedup_vs_best_other"] == pytest.approx(0.030 / 0.045)
    # Other scenarios and models are not rivals.
    assert rows["vgg", SLOW, "lopinfer"]["speedup_vs_best_other"] == pytest.approx(0.065 / 0.2)
    assert rows["resnet", "seed-indoor", "lopinfer"]["speedup_vs_best_other"] is None


def test_none_handling(rows):
    local = rows["vgg", FAST, "local"]
    for key in ("predicted_s", "bound_s", "sequential_s", "pred_error", "overlap_eff"):
        assert local[key] is None, key
    off = rows["vgg", FAST, "offload"]
    assert off["overlap_eff"] is None  # T_seq <= T_bound: undefined
    assert off["pred_error"] == pytest.approx(0.0)
    # Partly missing predictions: the median of those present.
    mixed = [rec("m", FAST, "x", 0.01, 0, pred=None), rec("m", FAST, "x", 0.01, 1, pred=0.02),
             rec("m", FAST, "x", 0.01, 2, pred=0.04)]
    assert report.summarise(mixed)[0]["predicted_s"] == pytest.approx(0.03)
    with pytest.raises(ValueError):
        report.summarise([])
    with pytest.raises(ValueError, match="latency"):
        report.summarise([rec("m", FAST, "x", None)])


def test_csv_round_trip(tmp_path):
    rows = report.summarise(records())
    path = report.write_csv(rows, tmp_path / "s.csv")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == report.COLUMNS
        back = list(reader)
    assert len(back) == len(rows)
    for row, got in zip(rows, back):
        for key in report.COLUMNS:
            if row[key] is None:
                assert got[key] == "", key
            elif isinstance(row[key], str):
                assert got[key] == row[key], key
            else:
                assert float(got[key]) == pytest.approx(float(row[key])), key


def test_json_round_trip(tmp_path):
    recs, rows = records(), report.summarise(records())
    meta = {"models": ["vgg", "resnet"], "dilation": 4.0, "out": tmp_path}
    doc = json.loads(report.write_json(recs, rows, meta, tmp_path / "r.json").read_text())
    assert doc["summary"] == rows
    assert doc["records"] == recs
    assert doc["meta"] == {"models": ["vgg", "resnet"], "dilation": 4.0, "out": str(tmp_path)}


def test_table_has_every_row_sorted_and_aligned():
    rows = report.summarise(records())
    lines = report.table(rows).splitlines()
    assert lines[0].split()[:3] == ["model", "scenario", "method"]
    body = lines[2:]
    assert len(body) == len(rows)
    keys = [tuple(line.split()[:3]) for line in body]
    assert set(keys) == {(r["model"], r["scenario"], r["method"]) for r in rows}
    # Sorted by model, scenario, then p50: resnet first; fast vgg: lopinfer, offload, local.
    assert keys[0][0] == "resnet"
    assert [k[2] for k in keys if k[1] == FAST] == ["lopinfer", "offload", "local"]
    lop = next(line for line in body if line.split()[:3] == ["vgg", FAST, "lopinfer"])
    # records without a limit show "-" in the limit columns
    assert lop.split()[3:] == ["30.00", "88.00", "0.300", "0.030", "0.150", "0.033", "3.000",
                               "33.00", "20.00", "-", "-", "0.67", "1.50x", "-"]
    local = next(line for line in body if line.split()[:3] == ["vgg", FAST, "local"])
    assert local.split()[7:9] == ["-", "-"]  # no wire bytes recorded
    assert local.split()[10:] == ["-", "-", "-", "-", "-", "0.46x", "-"]
    # Fixed width: every line of the header rule's length or less, columns line up.
    assert max(len(line) for line in lines) == len(lines[1])
    ends = {line.index("30.00") + 5 for line in body if "30.00" in line}
    assert ends == {lines[0].index("p50 ms") + 6}


def assert_png(path: Path):
    data = Path(path).read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_MAGIC


def test_plots_are_written_as_png(tmp_path):
    pytest.importorskip("matplotlib", reason="bench extra not installed")
    recs = records()
    rows = report.summarise(recs)
    assert_png(report.plot_latency_bars(rows, tmp_path / "bars.png"))
    assert_png(report.plot_gantt(recs, tmp_path / "gantt.png", "vgg", FAST))
    assert_png(report.plot_latency_vs_bandwidth(rows, tmp_path / "bw.png"))
    with pytest.raises(ValueError):
        report.plot_gantt(recs, tmp_path / "x.png", "vgg", "nope")
    with pytest.raises(ValueError, match="fixed-rate"):
        report.plot_latency_vs_bandwidth([r for r in rows if r["model"] == "resnet"],
                                         tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_gantt_uses_the_median_latency_inference():
    rs = [rec("m", FAST, "x", lat, i) for i, lat in enumerate([0.4, 0.1, 0.3, 0.2])]
    assert report._median_record(rs)["rep"] == 3  # lower middle of 0.1, 0.2, 0.3, 0.4


def test_write_all(tmp_path):
    pytest.importorskip("matplotlib", reason="bench extra not installed")
    out = report.write_all(records(), {"cmd": "lopinfer bench"}, tmp_path / "out")
    assert set(out) == {"csv", "json", "table", "latency_bars", "latency_vs_bandwidth",
                        f"gantt:vgg:{FAST}", f"gantt:vgg:{SLOW}", "gantt:resnet:seed-indoor"}
    assert out[f"gantt:vgg:{FAST}"].name == "gantt_vgg_fixed_10MB_s.png"
    for name, path in out.items():
        assert path.parent == tmp_path / "out"
        if name.startswith(("gantt", "latency")):
            assert_png(path)
    assert out["table"].read_text() == report.table(report.summarise(records())) + "\n"
    # Without fixed-rate scenarios there is no bandwidth plot.
    traced = [r for r in records() if r["scenario"] == "seed-indoor"]
    assert "latency_vs_bandwidth" not in report.write_all(traced, {}, tmp_path / "t")


def test_missing_matplotlib_is_one_clear_error_after_the_data(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(MissingDependencyError, match=r"lopinfer\[bench\]"):
        report.write_all(records(), {}, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"summary.csv", "results.json", "table.txt"}
    assert set(report.write_all(records(), {}, tmp_path / "np", plots=False)) == {
        "csv", "json", "table"}


def test_limit_columns():
    """limit_s per record: the cell's median limit and p50 as a multiple of it."""
    recs = [dict(r, limit_s=0.010) for r in records()]
    rows = report.summarise(recs)
    for r in rows:
        assert r["limit_s"] == pytest.approx(0.010)
        assert r["x_limit"] == pytest.approx(r["p50_s"] / 0.010)
    assert "x limit" in report.table(rows)


def test_one_limit_per_cell():
    """A record's limit is capped by its plan's bound: a cell's rows all take the lowest,
    so each method's p50 is a multiple of the same number."""
    recs = [dict(r, limit_s=0.010 if r["method"] == "local" else 0.004) for r in records()]
    rows = report.summarise(recs)
    for r in rows:
        assert r["limit_s"] == pytest.approx(0.004)
        assert r["x_limit"] == pytest.approx(r["p50_s"] / 0.004)


def test_tcp_loss_recovery_summed_per_method():
    rs = records()
    for i, r in enumerate(x for x in rs if x["method"] == "offload"):
        r["tcp_up"] = {"RetransSegs": i, "TCPTimeouts": 0}
        r["tcp_down"] = {"RetransSegs": 2, "TCPTimeouts": 1 if i == 2 else 0}
    got = rows_by_key(report.summarise(rs))
    offload = got[("vgg", FAST, "offload")]
    assert (offload["tcp_retrans"], offload["tcp_timeouts"]) == (0 + 1 + 2 + 3 * 2, 1)
    assert got[("vgg", FAST, "local")]["tcp_retrans"] is None  # nothing counted: unknown, not 0
    line = next(x for x in report.table(list(got.values())).splitlines() if "offload" in x)
    assert line.endswith("9/1")
