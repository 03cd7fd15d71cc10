"""The labelling server's API on a real server and SQLite store: answers, undo, agreement,
export, expiry, and every kind of bad request (a clear 4xx, the store unchanged)."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from tdimitation.algorithms.preference import PreferenceDataset
from tdimitation.algorithms.preference.fragments import RandomFragmenter
from tdimitation.labelling import LabelStore, export_csv, export_dataset
from tdimitation.labelling.app import MAX_BODY_BYTES
from tdimitation.rng import make_rng
from tests.labelling.helpers import call, cartpole_random, gatherer, live_server


@pytest.fixture(scope="module")
def pairs():
    return RandomFragmenter(make_rng(0), 0.0)(cartpole_random(), 10, 6)


def snapshot(store: LabelStore):
    return store.export_rows(), store.status()


def test_bad_requests_get_4xx_and_change_nothing(tmp_path, pairs):
    g = gatherer(tmp_path, timeout=600)
    g.submit(pairs[:4], torch.arange(4))
    store = g.store
    alice = store.add_labeller("alice")
    bob = store.add_labeller("<b>bob</b>")
    with live_server(store, tmp_path / "clips") as port:
        status, out = call(port, "GET", "/api/next", alice)
        assert status == 200 and out["progress"] == {"answered": 0, "open": 4}
        query = out["query"]
        status, gif = call(port, "GET", query["left"], alice)
        assert status == 200 and gif.startswith(b"GIF8")
        assert (
            call(
                port,
                "POST",
                "/api/answer",
                alice,
                {"query_id": query["query_id"], "choice": "left"},
            )[0]
            == 201
        )
        before = snapshot(store)
        other = call(port, "GET", "/api/next", bob)[1]["query"]["query_id"]
        assert other != query["query_id"]  # one pair goes to one labeller
        before = snapshot(store)
        bad = [
            # (method, path, token, body, raw, headers) -> status
            (("GET", "/api/next", None, None, None, None), 401),
            (("GET", "/api/next", "not-a-token", None, None, None), 401),
            (("GET", "/", None, None, None, None), 401),
            (("GET", "/status", "wrong", None, None, None), 401),
            (("POST", "/api/answer", None, {"query_id": other, "choice": "left"}, None, None), 401),
            (("GET", query["left"], None, None, None, None), 401),
            (("GET", "/clips/../labels.db", alice, None, None, None), 404),
            (("GET", "/clips/..%2Flabels.db", alice, None, None, None), 404),
            (("GET", "/clips/%2e%2e%2f%2e%2e%2fetc%2fpasswd", alice, None, None, None), 404),
            (("GET", "/clips/" + "0" * 40 + ".gif", alice, None, None, None), 404),
            (("GET", "/static/../store.py", None, None, None, None), 404),
            (("POST", "/api/answer", alice, None, b"{not json", None), 400),
            (("POST", "/api/answer", alice, None, b"x" * (MAX_BODY_BYTES + 1), None), 413),
            (
                ("POST", "/api/answer", alice, None, b"query_id=1", {"Content-Type": "text/plain"}),
                415,
            ),
            (("POST", "/api/answer", alice, [1, 2], None, None), 422),
            (("POST", "/api/answer", alice, {"query_id": "1", "choice": "left"}, None, None), 422),
            (("POST", "/api/answer", alice, {"query_id": other, "choice": "up"}, None, None), 422),
            (
                (
                    "POST",
                    "/api/answer",
                    alice,
                    {"query_id": other, "choice": "left", "note": 3},
                    None,
                    None,
                ),
                422,
            ),
            (
                ("POST", "/api/answer", alice, {"query_id": 10**6, "choice": "left"}, None, None),
                404,
            ),
            (
                ("POST", "/api/answer", alice, {"query_id": 10**30, "choice": "left"}, None, None),
                404,
            ),
            # bob's query, and a second answer to alice's (idempotent: refused, unchanged)
            (
                ("POST", "/api/answer", alice, {"query_id": other, "choice": "left"}, None, None),
                403,
            ),
            (
                (
                    "POST",
                    "/api/answer",
                    alice,
                    {"query_id": query["query_id"], "choice": "right"},
                    None,
                    None,
                ),
                409,
            ),
            (
                (
                    "POST",
                    "/api/answer",
                    alice,
                    {"query_id": query["query_id"], "choice": "left"},
                    None,
                    None,
                ),
                409,
            ),
        ]
        for (method, path, token, body, raw, headers), expected in bad:
            status, out = call(port, method, path, token, body, raw, headers)
            assert status == expected, (path, body, raw, status, out)
            if path.startswith("/api"):
                assert isinstance(out, dict) and out["error"], out
            assert snapshot(store) == before, (path, body)
        # HTML in user-supplied text is escaped on every page.
        for page in ("/", "/status"):
            status, text = call(port, "GET", page, bob)
            assert status == 200
            assert "<b>bob</b>" not in text and "&lt;b&gt;bob&lt;/b&gt;" in text
        note = "<script>alert(1)</script>"
        status, _ = call(
            port, "POST", "/api/answer", bob, {"query_id": other, "choice": "equal", "note": note}
        )
        assert status == 201
        assert store.export_rows()[-1]["note"] == note  # kept as written, never rendered
    # Expired queries refuse answers.
    late = gatherer(tmp_path / "late", timeout=2.0)
    store = late.store
    carol = store.add_labeller("carol")
    with live_server(store, tmp_path / "late" / "clips") as port:
        late.submit(pairs[4:6], torch.arange(2))
        query = call(port, "GET", "/api/next", carol)[1]["query"]
        assert query is not None
        time.sleep(2.1)
        before = snapshot(store)
        status, out = call(
            port, "POST", "/api/answer", carol, {"query_id": query["query_id"], "choice": "left"}
        )
        assert status == 410 and "expired" in out["error"]
        assert snapshot(store) == before
        assert call(port, "GET", "/api/next", carol)[1]["query"] is None


def test_undo_claims_agreement_and_export(tmp_path, pairs):
    g = gatherer(tmp_path, agreement_frac=1.0, session="run1")
    g.submit(pairs[:3], torch.tensor([10, 11, 12]))
    store = g.store
    ann, ben = store.add_labeller("ann"), store.add_labeller("ben")
    choices = {"ann": ["left", "right", "cant_tell"], "ben": ["left", "equal", "right"]}
    with live_server(store, tmp_path / "clips") as port:
        first = call(port, "GET", "/api/next", ann)[1]["query"]["query_id"]
        assert (
            call(port, "POST", "/api/answer", ann, {"query_id": first, "choice": "right"})[0] == 201
        )
        status, out = call(port, "POST", "/api/undo", ann, {})
        assert status == 200 and out == {"query_id": first, "choice": "right"}
        # The undone pair is shown again, to the same labeller.
        assert call(port, "GET", "/api/next", ann)[1]["query"]["query_id"] == first
        for name, token in (("ann", ann), ("ben", ben)):
            for choice in choices[name]:
                query = call(port, "GET", "/api/next", token)[1]["query"]
                out = call(
                    port,
                    "POST",
                    "/api/answer",
                    token,
                    {"query_id": query["query_id"], "choice": choice},
                )
                assert out[0] == 201, out
            assert call(port, "GET", "/api/next", token)[1]["query"] is None
        ids, labels = g.poll()
        # The first answer of each pair; "can't tell" is a NaN (dropped by the algorithm).
        assert ids.tolist() == [10, 11, 12]
        assert labels[:2].tolist() == [1.0, 0.0] and math.isnan(labels[2])
        # A claimed answer cannot be undone; the store keeps it.
        status, out = call(port, "POST", "/api/undo", ben, {})
        assert status == 409 and "training" in out["error"]
        status, out = call(port, "GET", "/api/status", ann)
        assert out["labellers"] == {"ann": 3, "ben": 3}
        # Agreement over pairs both labellers answered with a preference or a tie: 1 of 2.
        assert out["double_answered"] == 2 and out["agreement"] == 0.5
        assert out["agreement_by_labeller"] == {"ann": 0.5, "ben": 0.5}
        assert "50.0%" in call(port, "GET", "/status", ann)[1]
    assert g.poll()[0].numel() == 0  # nothing is delivered twice
    assert export_csv(store, tmp_path / "answers.csv", "run1") == 6
    lines = (tmp_path / "answers.csv").read_text().splitlines()
    assert lines[0].startswith("answer_id,session,pair_id,labeller,choice,label")
    assert export_dataset(store, tmp_path / "dataset", "run1") == 2
    dataset = PreferenceDataset.load(tmp_path / "dataset")
    assert dataset.labels().tolist() == [1.0, 0.0]
    assert torch.equal(dataset.pairs()[1]["observation"], pairs[1]["observation"])


def test_poll_waits_for_min_answers_and_expires(tmp_path, pairs):
    g = gatherer(tmp_path, min_answers=2, timeout=600)
    g.submit(pairs[:3], torch.arange(3))
    token = g.store.add_labeller("dan")
    labeller = g.store.labeller(token)

    def person():
        for choice in ("left", "right"):
            time.sleep(0.3)
            query = g.store.next_query(labeller.id)
            g.store.answer(labeller.id, query["query_id"], choice)

    thread = threading.Thread(target=person)
    thread.start()
    ids, labels = g.poll()  # blocks until both answers are in
    thread.join()
    assert ids.tolist() == [0, 1] and labels.tolist() == [1.0, 0.0]
    assert g.open_ids == {2}
    # An unanswered pair expires: a NaN label withdraws it.
    short = gatherer(tmp_path, session="short", timeout=0.2, min_answers=5)
    short.submit(pairs[3:5], torch.tensor([7, 8]))
    ids, labels = short.poll()  # returns once nothing is open
    assert sorted(ids.tolist()) == [7, 8] and bool(labels.isnan().all())


def test_label_command_and_bad_settings(tmp_path, capsys):
    from tdimitation.cli import main
    from tdimitation.errors import LabellingError
    from tdimitation.labelling import HumanGatherer

    url = f"sqlite:///{tmp_path / 'db' / 'labels.db'}"
    assert main(["label", "--database", url, "add-labeller", "ann"]) == 0
    token = capsys.readouterr().out.strip()
    assert LabelStore(url).labeller(token).name == "ann"
    assert main(["label", "--database", url, "add-labeller", "ann"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["label", "--database", "nonsense://x", "status"]) == 2
    assert "cannot open the labelling database" in capsys.readouterr().err
    assert main(["label", "--database", url, "export", str(tmp_path / "none")]) == 2
    assert "--session" in capsys.readouterr().err
    assert main(["label", "--database", url, "export", str(tmp_path / "a.csv")]) == 0
    assert (tmp_path / "a.csv").read_text().startswith("answer_id,")
    for bad in (dict(session="../x"), dict(agreement_frac=1.5), dict(timeout=0)):
        with pytest.raises(LabellingError):
            HumanGatherer(**bad)
    # A database password never reaches the logged hyperparameters.
    shown = HumanGatherer.loggable_options({"database": "postgresql://ann:secret@db/labels"})
    assert "secret" not in shown["database"] and "ann@db/labels" in shown["database"].replace(
        ":***", ""
    )
