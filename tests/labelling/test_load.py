"""Load: 50 concurrent labellers (threads with bounded requests to 127.0.0.1 that stop by
themselves) give 2,000 answers; none is lost or counted twice."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tdimitation.labelling import LabelStore
from tests.labelling.helpers import live_server

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_labelling.py"


def load_driver():
    spec = importlib.util.spec_from_file_location("bench_labelling", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fifty_labellers_two_thousand_answers(tmp_path):
    bench = load_driver()
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    bench.publish(store, 2000, "load")
    tokens = [store.add_labeller(f"labeller{i}") for i in range(50)]
    with live_server(store, tmp_path) as port:
        result = bench.run_load(port, tokens, quota=41)  # more than the share: some find none left
    assert result["refused"] == 0
    assert len(result["given"]) == len(set(result["given"])) == 2000
    rows = store.export_rows("load")
    assert len(rows) == 2000 and len({r["pair_id"] for r in rows}) == 2000
    assert sorted(r["answer_id"] for r in rows) == list(range(1, 2001))
    counts = store.status()["labellers"]
    assert sum(counts.values()) == 2000 and len(counts) == 50
    # Every answer is taken by training exactly once.
    taken = store.claim_answers("load", 0)
    assert len(taken) == len({pair for _, pair, _ in taken}) == 2000
