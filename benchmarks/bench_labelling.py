"""Load on the labelling server: concurrent labellers answering through the HTTP API.

Each labeller is a thread with its own keep-alive connection to 127.0.0.1 that asks for its
next pair and answers it until it has given its quota (or nothing is left), so every run
is bounded. The server runs as ``tdimitation label serve`` in a subprocess on a SQLite
store. Prints one JSON line (answers, answers/s, p50/p95/max answer latency) and a
Markdown row for benchmarks/RESULTS.md.

    python benchmarks/bench_labelling.py --labellers 50 --answers 2000 --repeats 3

``imitation`` has no labelling server, so there is no side-by-side column.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHOICES = ("left", "right", "equal", "cant_tell")


def labeller(port: int, token: str, quota: int, out: dict, seed: int) -> None:
    """Answer up to ``quota`` pairs; records answer latencies and refused requests."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies, refused, given = [], 0, []
    try:
        for i in range(quota):
            conn.request("GET", "/api/next", headers=headers)
            response = conn.getresponse()
            query = json.loads(response.read())["query"]
            if query is None:
                break
            body = json.dumps({"query_id": query["query_id"], "choice": CHOICES[(seed + i) % 4]})
            start = time.perf_counter()
            conn.request("POST", "/api/answer", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            latencies.append(time.perf_counter() - start)
            if response.status == 201:
                given.append(query["query_id"])
            else:
                refused += 1
    finally:
        conn.close()
    out[token] = {"latencies": latencies, "refused": refused, "given": given}


def run_load(port: int, tokens: list[str], quota: int) -> dict:
    """Run one labeller thread per token at once; the pooled results."""
    out: dict = {}
    threads = [
        threading.Thread(target=labeller, args=(port, t, quota, out, i))
        for i, t in enumerate(tokens)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    latencies = sorted(x for r in out.values() for x in r["latencies"])
    given = [q for r in out.values() for q in r["given"]]
    return {
        "given": given,
        "refused": sum(r["refused"] for r in out.values()),
        "seconds": elapsed,
        "answers_per_s": len(given) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p95_ms": 1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "max_ms": 1000 * latencies[-1],
    }


def publish(store, n: int, session: str) -> None:
    """``n`` queries (their clips are not fetched under load)."""
    rows = [
        {
            "pair_id": i,
            "left_clip": f"{i:040x}.gif",
            "right_clip": f"{i + n:040x}.gif",
            "fragments": None,
            "fragment_index": None,
            "copies": 1,
        }
        for i in range(n)
    ]
    store.add_queries(session, rows, time.time() + 3600)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labellers", type=int, default=50)
    parser.add_argument("--answers", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from tdimitation.labelling import LabelStore

    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    results = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            database = f"sqlite:///{tmp}/labels.db"
            store = LabelStore(database)
            publish(store, args.answers, "bench")
            tokens = [store.add_labeller(f"labeller{i}") for i in range(args.labellers)]
            port = _free_port()
            argv = [
                sys.executable,
                "-m",
                "tdimitation.cli",
                "label",
                "--database",
                database,
                "serve",
                "--clip-dir",
                tmp,
                "--port",
                str(port),
            ]
            server = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
            try:
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        time.sleep(0.1)
                quota = -(-args.answers // args.labellers)
                result = run_load(port, tokens, quota)
            finally:
                server.terminate()
                server.wait(30)
            stored = len(store.export_rows("bench"))
            store.close()
        given = result.pop("given")
        result |= {"answers": len(given), "distinct": len(set(given)), "stored": stored}
        results.append(result)
        print(f"repeat {repeat + 1}/{args.repeats}: {json.dumps(result)}", file=sys.stderr)
    summary = {
        "labellers": args.labellers,
        "answers": results[0]["answers"],
        "lost_or_doubled": sum(
            r["answers"] - r["stored"] + r["answers"] - r["distinct"] for r in results
        ),
        "answers_per_s": statistics.median(r["answers_per_s"] for r in results),
        "p50_ms": statistics.median(r["p50_ms"] for r in results),
        "p95_ms": statistics.median(r["p95_ms"] for r in results),
        "max_ms": max(r["max_ms"] for r in results),
        "repeats": args.repeats,
    }
    print(json.dumps(summary))
    print(
        f"| {summary['labellers']} | {summary['answers']:,} | {summary['lost_or_doubled']} | "
        f"{summary['answers_per_s']:.0f} | {summary['p50_ms']:.1f} | {summary['p95_ms']:.1f} | "
        f"{summary['max_ms']:.0f} |"
    )


if __name__ == "__main__":
    main()
