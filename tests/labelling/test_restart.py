"""Restarts lose nothing: the server killed mid-session and started again serves the pending
queries and not the answered ones; a training process restarted from a checkpoint state of
its gatherer takes every answer exactly once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from tdimitation.algorithms.preference.fragments import RandomFragmenter
from tdimitation.rng import make_rng
from tests.labelling.helpers import call, cartpole_random, gatherer

ROOT = Path(__file__).resolve().parents[2]


def start_server(database: str, clips: Path, port: int) -> subprocess.Popen:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    argv = [sys.executable, "-m", "tdimitation.cli", "label", "--database", database, "serve"]
    argv += ["--clip-dir", str(clips), "--port", str(port)]
    log = clips.parent / f"server-{time.monotonic_ns()}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, env=env, stderr=err)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_and_training_restarts_lose_nothing(tmp_path):
    pairs = RandomFragmenter(make_rng(1), 0.0)(cartpole_random(), 10, 5)
    g = gatherer(tmp_path, session="run")
    g.submit(pairs, torch.arange(5))
    token = g.store.add_labeller("eve")
    database = g.database
    port = free_port()
    server = start_server(database, tmp_path / "clips", port)
    try:
        answered = []
        for choice in ("left", "right"):
            query = call(port, "GET", "/api/next", token)[1]["query"]
            assert (
                call(
                    port,
                    "POST",
                    "/api/answer",
                    token,
                    {"query_id": query["query_id"], "choice": choice},
                )[0]
                == 201
            )
            answered.append(query["query_id"])
        shown = call(port, "GET", "/api/next", token)[1]["query"][
            "query_id"
        ]  # on screen, unanswered
        server.send_signal(signal.SIGKILL)  # mid-session
        server.wait(30)
        server = start_server(database, tmp_path / "clips", port)
        # The pair on screen is served again; the answered ones are not asked again.
        status, out = call(port, "GET", "/api/next", token)
        assert status == 200 and out["query"]["query_id"] == shown
        assert out["progress"] == {"answered": 2, "open": 3}
        assert (
            call(port, "POST", "/api/answer", token, {"query_id": answered[0], "choice": "equal"})[
                0
            ]
            == 409
        )
        ids, labels = g.poll()
        assert ids.tolist() == [0, 1] and labels.tolist() == [1.0, 0.0]
        checkpoint = g.state_dict()
        assert (
            call(port, "POST", "/api/answer", token, {"query_id": shown, "choice": "equal"})[0]
            == 201
        )
        assert g.poll()[0].tolist() == [2]  # taken, then the training process dies
        # Restarted from the checkpoint: the answer taken after it comes again, once.
        restarted = gatherer(tmp_path, session="run")
        restarted.load_state_dict(checkpoint)
        assert restarted.open_ids == {2, 3, 4}
        restarted.submit(pairs, torch.arange(5))  # submitted again: nothing duplicated
        ids, labels = restarted.poll()
        assert ids.tolist() == [2] and labels.tolist() == [0.5]
        assert restarted.poll()[0].numel() == 0
        assert len(restarted.store.export_rows("run")) == 3
        assert call(port, "GET", "/api/status", token)[1]["queries"] == {
            "answered": 3,
            "pending": 2,
        }
    finally:
        server.kill()
        server.wait(30)


def test_checkpoint_keeps_pending_pairs_and_taken_answers(tmp_path):
    from tdimitation.algorithms import PreferenceComparisons
    from tests.labelling.helpers import CARTPOLE_FIXED

    def module():
        m = PreferenceComparisons(
            CARTPOLE_FIXED,
            agent=None,
            trajectories=cartpole_random(),
            num_iterations=1,
            total_comparisons=8,
            initial_comparison_frac=0.5,
            fragment_length=10,
            reward_epochs=1,
            initial_epoch_multiplier=1,
            fragment_warning_threshold=0.0,
            human_gatherer={
                "database": f"sqlite:///{tmp_path / 'labels.db'}",
                "clip_dir": str(tmp_path / "clips"),
                "session": "ckpt",
                "min_answers": 0,
            },
        )
        m.set_trajectories(m._trajectory_source)
        return m

    first = module()
    first.preference_query(first.trajectories)  # 4 pairs published
    store = first.gatherer.store
    token = store.add_labeller("fay")
    labeller = store.labeller(token)
    for choice in ("left", "right"):
        store.answer(labeller.id, store.next_query(labeller.id)["query_id"], choice)
    first._receive_answers()
    checkpoint: dict = {}
    first.on_save_checkpoint(checkpoint)
    store.answer(labeller.id, store.next_query(labeller.id)["query_id"], "equal")
    first._receive_answers()  # taken, then the process dies before the next checkpoint
    assert len(first.dataset) == 3
    resumed = module()
    resumed.on_load_checkpoint(checkpoint)
    assert len(resumed.dataset) == 2 and resumed.pending.ids.tolist() == [2, 3]
    resumed._receive_answers()
    assert resumed.dataset.labels().tolist() == [1.0, 0.0, 0.5]
    assert resumed.pending.ids.tolist() == [3] and resumed.gatherer.open_ids == {3}
    resumed._receive_answers()
    assert len(resumed.dataset) == 3
