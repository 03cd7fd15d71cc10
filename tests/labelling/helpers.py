"""A real labelling server on 127.0.0.1 (uvicorn in a thread) and a small HTTP client."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from tensordict import TensorDict

from tdimitation.data.rollout import rollout
from tdimitation.envs import make_env
from tdimitation.labelling import HumanGatherer, LabelStore, make_app
from tdimitation.objectives.preference import TRUE_REWARD
from tdimitation.policies.base import RandomPolicy

CARTPOLE_FIXED = "tdimitation/CartPoleFixed-v1"


@contextmanager
def live_server(store: LabelStore, clip_dir: Path):
    """Serve ``make_app(store, clip_dir)`` on a free 127.0.0.1 port; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(make_app(store, clip_dir), log_level="error", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def call(
    port: int, method: str, path: str, token: str | None = None, body=None, raw=None, headers=None
):
    """``(status, decoded JSON or text)`` of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    kind = response.getheader("content-type", "")
    if kind.startswith("application/json"):
        return response.status, json.loads(data)
    return response.status, data if kind.startswith("image/") else data.decode()


def cartpole_random(episodes: int = 2):
    """Random-policy episodes of fixed-horizon CartPole."""
    env = make_env(CARTPOLE_FIXED, num_envs=2, seed=0)
    try:
        return rollout(RandomPolicy(env, seed=0), env, min_episodes=episodes)
    finally:
        env.close()


def gatherer(tmp: Path, **kwargs) -> HumanGatherer:
    """A human gatherer on a SQLite store and clip directory under ``tmp``."""
    options = dict(
        database=f"sqlite:///{tmp / 'labels.db'}",
        clip_dir=str(tmp / "clips"),
        env_id=CARTPOLE_FIXED,
        min_answers=0,
        poll_interval=0.05,
    )
    return HumanGatherer(**(options | kwargs))


def person(port: int, token: str, store, stop: threading.Event, answered: list) -> None:
    """Answer every pair shown, by the true returns of its fragments, until told to stop."""
    fragments: dict[str, TensorDict] = {}
    rows = {}
    while not stop.is_set():
        query = call(port, "GET", "/api/next", token)[1]["query"]
        if query is None:
            stop.wait(0.05)
            continue
        if query["query_id"] not in rows:
            rows = {r["id"]: r for r in store.query_rows()}
        row = rows[query["query_id"]]
        if row["fragments"] not in fragments:
            fragments[row["fragments"]] = TensorDict.load_memmap(row["fragments"])
        pair = fragments[row["fragments"]][row["fragment_index"]]
        left, right = pair.get(TRUE_REWARD).sum(dim=(1, 2)).tolist()
        choice = "left" if left > right else "right" if right > left else "equal"
        status, _ = call(
            port, "POST", "/api/answer", token, {"query_id": query["query_id"], "choice": choice}
        )
        assert status == 201
        answered.append(row["pair_id"])
