"""Trajectory files: round trips, imitation's files, errors and atomic saves (real files)."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import sys
import types
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch
from tensordict import TensorDict, TensorDictBase

from tdimitation.data.storage import (
    TRUNCATED_INFO,
    load_trajectories,
    save_trajectories,
    trajectory_format,
    trajectory_metadata,
)
from tdimitation.data.trajectory import episode_lengths, rollout_stats
from tdimitation.errors import TrajectoryError, TrajectoryFileError

ANCHORS = Path(__file__).parents[2].parent / "shared" / "anchors" / "imitation_testdata"
LENGTHS = [5, 1, 9, 3]
ENDINGS = ["terminated", "truncated", "truncated", "terminated"]


# --------------------------------------------------------------------------- test data


def _leaf(gen: torch.Generator, n: int, shape: tuple[int, ...], dtype: torch.dtype):
    if dtype == torch.uint8:
        return torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)
    if dtype == torch.int64:
        return torch.randint(0, 5, (n, *shape), generator=gen, dtype=torch.int64)
    return torch.randn((n, *shape), generator=gen, dtype=dtype)


def make_trajectories(
    obs_spec: dict | tuple,
    act_shape: tuple[int, ...],
    act_dtype: torch.dtype,
    *,
    rewards: bool = True,
    lengths=LENGTHS,
    endings=ENDINGS,
    seed: int = 0,
) -> TensorDictBase:
    """A flat trajectory set whose next observations chain into the following rows."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    n_eps = len(lengths)
    lengths_t = torch.tensor(lengths)
    episode = torch.repeat_interleave(torch.arange(n_eps), lengths_t)
    obs_rows = torch.arange(n) + episode  # index into the T+1 observations per episode

    def obs_pair(spec):
        if isinstance(spec, dict):
            pairs = {k: obs_pair(v) for k, v in spec.items()}
            return (
                TensorDict({k: p[0] for k, p in pairs.items()}, [n]),
                TensorDict({k: p[1] for k, p in pairs.items()}, [n]),
            )
        shape, dtype = spec
        full = _leaf(gen, n + n_eps, shape, dtype)
        return full[obs_rows], full[obs_rows + 1]

    obs, next_obs = obs_pair(obs_spec)
    last = torch.cumsum(lengths_t, 0) - 1
    terminated = torch.zeros(n, 1, dtype=torch.bool)
    truncated = torch.zeros(n, 1, dtype=torch.bool)
    for e, how in enumerate(endings):
        (terminated if how == "terminated" else truncated)[last[e]] = True
    nxt = {
        "observation": next_obs,
        "terminated": terminated,
        "truncated": truncated,
        "done": terminated | truncated,
    }
    if rewards:
        nxt["reward"] = torch.randn(n, 1, generator=gen)
    return TensorDict(
        {
            "observation": obs,
            "action": _leaf(gen, n, act_shape, act_dtype),
            "next": nxt,
            "episode": episode,
        },
        batch_size=[n],
    )


def assert_same(a: TensorDictBase, b: TensorDictBase) -> None:
    keys_a = set(a.keys(include_nested=True, leaves_only=True))
    keys_b = set(b.keys(include_nested=True, leaves_only=True))
    assert keys_a == keys_b
    assert a.batch_size == b.batch_size
    for key in keys_a:
        va, vb = a.get(key), b.get(key)
        assert va.dtype == vb.dtype, key
        assert va.shape == vb.shape, key
        assert torch.equal(va, vb), key


CASES = {
    "box-continuous": (((3,), torch.float32), (2,), torch.float32),
    "image-discrete": (((4, 4, 3), torch.uint8), (), torch.int64),
    "box-discrete": (((3,), torch.float32), (), torch.int64),
    "box-multidiscrete": (((3,), torch.float32), (2,), torch.int64),
    "dict-discrete": (
        {"pos": ((2,), torch.float32), "camera": ((3, 3), torch.uint8)},
        (),
        torch.int64,
    ),
}


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("rewards", [True, False], ids=["rews", "no-rews"])
@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(tmp_path, case, rewards):
    obs_spec, act_shape, act_dtype = CASES[case]
    td = make_trajectories(obs_spec, act_shape, act_dtype, rewards=rewards)
    out = save_trajectories(tmp_path / "demos", td)
    assert out == tmp_path / "demos"
    assert trajectory_format(out) == "tdimitation"
    loaded = load_trajectories(str(out))
    assert_same(loaded, td)
    assert loaded["next", "truncated"].sum() == 2
    assert loaded["next", "terminated"].sum() == 2


def test_round_trip_nested_dict_and_shape_1_actions(tmp_path):
    spec = {"a": {"b": ((2,), torch.float32), "c": ((), torch.int64)}, "d": ((1,), torch.float32)}
    td = make_trajectories(spec, (1,), torch.int64)
    save_trajectories(tmp_path / "d", td)
    assert_same(load_trajectories(tmp_path / "d"), td)


def test_columns_are_imitations(tmp_path):
    td = make_trajectories(((3,), torch.float32), (), torch.int64)
    save_trajectories(tmp_path / "d", td)
    ds = datasets.load_from_disk(str(tmp_path / "d"))
    assert ds.column_names == ["obs", "acts", "infos", "terminal", "rews"]
    schema = ds.data.table.schema
    assert schema.field("obs").type.value_type.value_type == pa.float32()
    assert schema.field("acts").type.value_type == pa.int64()
    assert ds.num_rows == len(LENGTHS)
    # Read rows the way imitation does (python lists -> np.asarray, as for its own files).
    for i, length in enumerate(LENGTHS):
        row = {k: np.asarray(v) for k, v in ds[i].items()}
        assert row["obs"].shape == (length + 1, 3)
        assert row["acts"].shape == (length,)
        assert row["rews"].shape == (length,)
        assert bool(row["terminal"])
        infos = [json.loads(s) for s in row["infos"]]
        expected_last = {"TimeLimit.truncated": True} if ENDINGS[i] == "truncated" else {}
        assert infos[:-1] == [{}] * (length - 1) and infos[-1] == expected_last
    assert json.loads(TRUNCATED_INFO) == {"TimeLimit.truncated": True}


def test_dict_obs_is_a_struct_of_lists(tmp_path):
    obs_spec, act_shape, act_dtype = CASES["dict-discrete"]
    save_trajectories(tmp_path / "d", make_trajectories(obs_spec, act_shape, act_dtype))
    feature = datasets.load_from_disk(str(tmp_path / "d")).features["obs"]
    assert set(feature) == {"pos", "camera"}


def test_metadata_and_extra_keys(tmp_path):
    td = make_trajectories(((3,), torch.float32), (), torch.int64)
    td.set(("next", "original_reward"), torch.zeros(td.shape[0], 1))
    td["episode"] += 7  # ids need not start at 0; they are renumbered on load
    save_trajectories(tmp_path / "d", td, metadata={"seed": 3}, env_id="CartPole-v1")
    meta = trajectory_metadata(tmp_path / "d")
    assert meta["format"] == "tdimitation" and meta["format_version"] == 1
    assert meta["env_id"] == "CartPole-v1" and meta["metadata"] == {"seed": 3}
    assert meta["n_episodes"] == len(LENGTHS) and meta["n_transitions"] == sum(LENGTHS)
    loaded = load_trajectories(tmp_path / "d")
    assert ("next", "original_reward") not in loaded.keys(include_nested=True)
    assert loaded["episode"].unique().tolist() == list(range(len(LENGTHS)))


def test_terminated_and_truncated_saves_as_terminated(tmp_path):
    td = make_trajectories(((3,), torch.float32), (), torch.int64)
    td["next", "truncated"][-1] = True  # last episode ends terminated and truncated
    save_trajectories(tmp_path / "d", td)
    loaded = load_trajectories(tmp_path / "d")
    assert loaded["next", "terminated"][-1] and not loaded["next", "truncated"][-1]


def test_fragment_loads_as_truncated(tmp_path):
    td = make_trajectories(((3,), torch.float32), (), torch.int64)
    save_trajectories(tmp_path / "d", td)
    ds = datasets.load_from_disk(str(tmp_path / "d"))
    table = ds.data.table.set_column(3, "terminal", pa.array([False] * ds.num_rows))
    datasets.Dataset(table).save_to_disk(str(tmp_path / "frag"))
    loaded = load_trajectories(tmp_path / "frag")
    assert loaded["next", "truncated"].sum() == len(LENGTHS)
    assert loaded["next", "terminated"].sum() == 0
    assert trajectory_format(tmp_path / "frag") == "imitation-hf"


# --------------------------------------------------------------------------- imitation's files


def _anchor(name: str) -> Path:
    path = ANCHORS / name
    if not path.exists():
        pytest.skip(f"anchor data {path} is absent")
    return path


def test_cartpole_hf_anchor():
    td = load_trajectories(_anchor("cartpole_expert_hf"))
    stats = rollout_stats(td)
    assert stats["n_traj"] == 57 and stats["n_transitions"] == 26_964
    assert stats["return_mean"] == pytest.approx(473.05, abs=0.01)
    assert td["observation"].shape == (26_964, 4) and td["observation"].dtype == torch.float32
    assert td["action"].shape == (26_964,) and td["action"].dtype == torch.int64
    assert td["next", "reward"].dtype == torch.float32
    assert td["next", "done"].sum() == 57
    # obs of row i + 1 continues next obs of row i inside an episode
    same_ep = td["episode"][1:] == td["episode"][:-1]
    assert torch.equal(td["next", "observation"][:-1][same_ep], td["observation"][1:][same_ep])


def test_cartpole_npz_matches_hf():
    hf = load_trajectories(_anchor("cartpole_expert_hf"))
    npz_path = _anchor("expert_models__cartpole_0__rollouts__final.npz")
    assert trajectory_format(npz_path) == "imitation-npz"
    assert_same(load_trajectories(npz_path), hf)


def test_pendulum_anchor():
    path = _anchor("pendulum_expert_hf")
    td = load_trajectories(path)
    lengths = episode_lengths(td)
    assert lengths.numel() == 56 and bool((lengths == 200).all())
    assert rollout_stats(td)["return_mean"] == pytest.approx(-189.40, abs=0.01)
    assert td["action"].shape == (11_200, 1) and td["action"].dtype == torch.float32
    npz = load_trajectories(_anchor("expert_models__pendulum_0__rollouts__final.npz"))
    assert_same(npz, td)


def test_multi_shard_dataset(tmp_path):
    path = _anchor("cartpole_expert_hf")
    ds = datasets.load_from_disk(str(path))
    ds.save_to_disk(str(tmp_path / "sharded"), num_shards=3)
    assert len(list((tmp_path / "sharded").glob("*.arrow"))) == 3
    assert_same(load_trajectories(tmp_path / "sharded"), load_trajectories(path))


def test_anchor_round_trip(tmp_path):
    td = load_trajectories(_anchor("cartpole_expert_hf"))
    save_trajectories(tmp_path / "d", td)
    assert_same(load_trajectories(tmp_path / "d"), td)


# --------------------------------------------------------------------------- legacy pickles


@pytest.fixture
def fake_imitation():
    """Importable ``imitation.data.types`` with frozen dataclasses, removed afterwards."""
    names = ["imitation", "imitation.data", "imitation.data.types"]
    saved_modules = {n: sys.modules[n] for n in names if n in sys.modules}
    mods = {n: types.ModuleType(n) for n in names}

    @dataclasses.dataclass(frozen=True)
    class Trajectory:
        obs: np.ndarray
        acts: np.ndarray
        infos: object
        terminal: bool

    @dataclasses.dataclass(frozen=True)
    class TrajectoryWithRew(Trajectory):
        rews: np.ndarray

    @dataclasses.dataclass(frozen=True)
    class DictObs:
        _d: dict

    for cls in (Trajectory, TrajectoryWithRew, DictObs):
        cls.__module__ = "imitation.data.types"
        cls.__qualname__ = cls.__name__
        setattr(mods["imitation.data.types"], cls.__name__, cls)
    mods["imitation"].data = mods["imitation.data"]
    mods["imitation.data"].types = mods["imitation.data.types"]
    sys.modules.update(mods)
    try:
        yield mods["imitation.data.types"]
    finally:
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved_modules)


def _write_pickle(tmp_path: Path, mod, protocol: int) -> tuple[Path, TensorDictBase]:
    td = make_trajectories(((3,), torch.float32), (), torch.int64)
    trajs = []
    for ep in td.split(LENGTHS):
        obs = torch.cat([ep["observation"], ep["next", "observation"][-1:]]).numpy()
        truncated = bool(ep["next", "truncated"][-1])
        infos = [{}] * (ep.shape[0] - 1) + [{"TimeLimit.truncated": truncated}]
        trajs.append(
            mod.TrajectoryWithRew(
                obs=obs,
                acts=ep["action"].numpy(),
                infos=np.array(infos, dtype=object),
                terminal=True,
                rews=ep["next", "reward"].reshape(-1).numpy().astype(np.float64),
            )
        )
    path = tmp_path / "demos.pkl"
    path.write_bytes(pickle.dumps(trajs, protocol=protocol))
    return path, td


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_legacy_pickle(tmp_path, fake_imitation, protocol):
    path, td = _write_pickle(tmp_path, fake_imitation, protocol)
    for n in ["imitation", "imitation.data", "imitation.data.types"]:
        del sys.modules[n]  # loading must not need imitation
    assert trajectory_format(path) == "imitation-pkl"
    with pytest.raises(TrajectoryFileError, match="pickle.*allow_pickle=True"):
        load_trajectories(path)
    assert_same(load_trajectories(path, allow_pickle=True), td)


def test_legacy_pickle_dict_obs(tmp_path, fake_imitation):
    obs_spec, act_shape, act_dtype = CASES["dict-discrete"]
    td = make_trajectories(obs_spec, act_shape, act_dtype, rewards=False)
    trajs = []
    for ep in td.split(LENGTHS):
        d = {
            k: torch.cat([ep["observation", k], ep["next", "observation", k][-1:]]).numpy()
            for k in ("pos", "camera")
        }
        truncated = bool(ep["next", "truncated"][-1])
        trajs.append(
            fake_imitation.Trajectory(
                obs=fake_imitation.DictObs(d),
                acts=ep["action"].numpy(),
                infos=None if not truncated else [{}] * (ep.shape[0] - 1) + [TRUNC_DICT],
                terminal=True,
            )
        )
    path = tmp_path / "demos.pickle"
    path.write_bytes(pickle.dumps(trajs))
    assert_same(load_trajectories(path, allow_pickle=True), td)


TRUNC_DICT = {"TimeLimit.truncated": True}


def test_pickle_with_other_classes_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(TrajectoryFileError, match=r"posix\.mkdir|os\.mkdir|refusing"):
        load_trajectories(path, allow_pickle=True)
    assert not marker.exists()


# --------------------------------------------------------------------------- errors


@pytest.fixture
def saved(tmp_path) -> Path:
    td = make_trajectories(((3,), torch.float32), (), torch.int64)
    return save_trajectories(tmp_path / "demos", td)


def test_missing_path(tmp_path):
    with pytest.raises(TrajectoryFileError, match="no trajectory file or dataset at"):
        load_trajectories(tmp_path / "nope")


def test_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("hi")
    with pytest.raises(TrajectoryFileError, match="not a trajectory dataset"):
        load_trajectories(tmp_path / "d")


def test_unknown_file(tmp_path):
    (tmp_path / "f.txt").write_text("hello")
    with pytest.raises(TrajectoryFileError, match="not a known trajectory format"):
        load_trajectories(tmp_path / "f.txt")


def test_truncated_arrow_file(saved):
    arrow = next(saved.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    with pytest.raises(TrajectoryFileError, match="corrupted.*regenerate"):
        load_trajectories(saved)


def test_garbage_state_json(saved):
    (saved / "state.json").write_text("{not json")
    with pytest.raises(TrajectoryFileError, match="corrupted"):
        load_trajectories(saved)


def test_garbage_dataset_info(saved):
    (saved / "dataset_info.json").write_text("\x00\x01")
    with pytest.raises(TrajectoryFileError, match="corrupted"):
        load_trajectories(saved)


def test_dataset_lacking_columns(tmp_path):
    datasets.Dataset(pa.table({"x": [1, 2]})).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(TrajectoryFileError, match=r"lacks the columns \['obs', 'acts'"):
        load_trajectories(tmp_path / "d")


def test_nan_in_file(tmp_path):
    obs = pa.array([[[0.0, 1.0], [float("nan"), 1.0]]], pa.list_(pa.list_(pa.float32())))
    table = pa.table(
        {
            "obs": obs,
            "acts": pa.array([[1]]),
            "infos": pa.array([["{}"]]),
            "terminal": pa.array([True]),
        }
    )
    datasets.Dataset(table).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(TrajectoryError, match="NaN/inf"):
        load_trajectories(tmp_path / "d")


def test_misaligned_obs_in_file(tmp_path):
    obs = pa.array([[[0.0], [1.0]]], pa.list_(pa.list_(pa.float32())))
    table = pa.table({"obs": obs, "acts": pa.array([[1, 0]]), "terminal": pa.array([True])})
    datasets.Dataset(table).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(TrajectoryError, match="T \\+ 1 observations"):
        load_trajectories(tmp_path / "d")


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", obs=np.zeros((2, 1)))
    with pytest.raises(TrajectoryFileError, match="lacks the arrays"):
        load_trajectories(tmp_path / "a.npz")
    (tmp_path / "b.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(TrajectoryFileError, match="corrupted"):
        load_trajectories(tmp_path / "b.npz")


def test_save_rejects_bad_content(tmp_path):
    td = make_trajectories(((3,), torch.float32), (), torch.int64)
    bad = td.clone()
    bad["next", "reward"][2] = float("inf")
    with pytest.raises(TrajectoryError, match="NaN/inf"):
        save_trajectories(tmp_path / "d", bad)
    with pytest.raises(TrajectoryError, match="empty"):
        save_trajectories(tmp_path / "d", td[:0])
    broken = td.clone()
    broken["next", "observation"][0] += 1  # no longer the observation of row 1
    with pytest.raises(TrajectoryError, match="differs from the next row.s observation"):
        save_trajectories(tmp_path / "d", broken)
    with pytest.raises(TrajectoryError, match="JSON"):
        save_trajectories(tmp_path / "d", td, metadata={"f": object()})
    assert not (tmp_path / "d").exists()
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_foreign_paths(tmp_path):
    td = make_trajectories(((3,), torch.float32), (), torch.int64)
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(TrajectoryFileError, match="refusing to overwrite"):
        save_trajectories(tmp_path / "file", td)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "notes.txt").write_text("keep me")
    with pytest.raises(TrajectoryFileError, match="refusing to overwrite"):
        save_trajectories(tmp_path / "dir", td)
    assert (tmp_path / "file").read_text() == "keep me"
    assert (tmp_path / "dir" / "notes.txt").read_text() == "keep me"
    datasets.Dataset(pa.table({"x": [1, 2]})).save_to_disk(str(tmp_path / "other"))
    with pytest.raises(TrajectoryFileError, match="not a trajectory dataset; refusing"):
        save_trajectories(tmp_path / "other", td)
    assert datasets.load_from_disk(str(tmp_path / "other"))["x"] == [1, 2]
    (tmp_path / "empty").mkdir()
    save_trajectories(tmp_path / "empty", td)  # an empty directory is fine
    assert_same(load_trajectories(tmp_path / "empty"), td)


# --------------------------------------------------------------------------- atomic saves


def _only_entries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_save_repairs_corrupted_dataset(saved):
    (saved / "dataset_info.json").write_text("garbage")
    td = make_trajectories(((3,), torch.float32), (), torch.int64, seed=2)
    save_trajectories(saved, td)
    assert_same(load_trajectories(saved), td)


def test_overwrite_replaces_dataset(saved):
    new = make_trajectories(((3,), torch.float32), (), torch.int64, seed=1)
    save_trajectories(saved, new)
    assert_same(load_trajectories(saved), new)
    assert _only_entries(saved.parent) == ["demos"]


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_old_dataset(saved, monkeypatch, exc):
    before = load_trajectories(saved)
    original = pa.RecordBatchStreamWriter.write_table

    def write_then_fail(self, *args, **kwargs):
        original(self, *args, **kwargs)  # part of the new data reaches the disk
        raise exc

    monkeypatch.setattr(pa.RecordBatchStreamWriter, "write_table", write_then_fail)
    new = make_trajectories(((3,), torch.float32), (), torch.int64, seed=1)
    with pytest.raises(type(exc)):
        save_trajectories(saved, new)
    monkeypatch.undo()
    assert_same(load_trajectories(saved), before)
    assert _only_entries(saved.parent) == ["demos"]


def test_failed_rename_restores_old_dataset(saved, monkeypatch):
    before = load_trajectories(saved)
    calls = []
    real_rename = os.rename

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # moving the new dataset into place
            raise OSError("simulated crash")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    new = make_trajectories(((3,), torch.float32), (), torch.int64, seed=1)
    with pytest.raises(OSError, match="simulated crash"):
        save_trajectories(saved, new)
    monkeypatch.undo()
    assert len(calls) == 3  # aside, in (failed), back
    assert_same(load_trajectories(saved), before)
    assert _only_entries(saved.parent) == ["demos"]


def test_nan_save_keeps_old_dataset(saved):
    before = load_trajectories(saved)
    bad = before.clone()
    bad["observation"][0, 0] = float("nan")
    with pytest.raises(TrajectoryError, match="NaN"):
        save_trajectories(saved, bad)
    assert_same(load_trajectories(saved), before)


def test_missing_path_points_at_leftover(saved):
    os.rename(saved, saved.parent / ".demos.old-1234abcd")
    with pytest.raises(TrajectoryFileError, match="interrupted save left the previous version"):
        load_trajectories(saved)
