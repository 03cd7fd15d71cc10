"""Minari datasets recorded in the test (DataCollector on real envs): load, save, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch
from minari.data_collector import EpisodeBuffer

from tdimitation.data import load_minari, load_trajectories, save_minari, save_trajectories
from tdimitation.data.minari import minari_metadata
from tdimitation.data.storage import trajectory_format, trajectory_metadata
from tdimitation.errors import (
    SpaceMismatchError,
    TrajectoryError,
    TrajectoryFileError,
)

from .minari_recording import DictObsEnv, quiet_minari, record
from .test_storage import assert_same


@pytest.fixture
def root(tmp_path, monkeypatch):
    path = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


@pytest.fixture
def cartpole(root):
    """A CartPole dataset with terminated and truncated episodes, and what was collected."""
    env = gym.make("CartPole-v1", max_episode_steps=15)
    _, expected = record(env, "test/cartpole/random-v0", episodes=6)
    return root / "test" / "cartpole" / "random-v0", expected


def _endings(td):
    last = td["next", "done"].reshape(-1)
    return td["next", "terminated"].reshape(-1)[last], td["next", "truncated"].reshape(-1)[last]


# --------------------------------------------------------------------------- round trips


def test_cartpole_load_equals_collected_and_round_trips(cartpole, root):
    path, expected = cartpole
    terminated, truncated = _endings(expected)
    assert terminated.any() and truncated.any()  # both endings are exercised

    by_id = load_minari("test/cartpole/random-v0")
    assert_same(by_id, expected)
    assert_same(load_minari(path), expected)
    assert_same(load_minari(path / "data"), expected)
    assert by_id["action"].dtype == torch.int64 and by_id["action"].shape == (len(by_id),)
    assert by_id["next", "reward"].dtype == torch.float32
    assert by_id["next", "reward"].shape == (len(by_id), 1)

    out = save_minari(by_id, "test/cartpole/copy-v0", env="CartPole-v1")
    assert out == root / "test" / "cartpole" / "copy-v0"
    assert_same(load_minari("test/cartpole/copy-v0"), expected)
    # Minari itself reads what we wrote, and knows the environment.
    copy = minari.load_dataset("test/cartpole/copy-v0")
    assert copy.total_episodes == 6 and copy.total_steps == len(expected)
    assert copy.recover_environment().spec.id == "CartPole-v1"
    first = next(copy.iterate_episodes())
    n0 = int((expected["episode"] == 0).sum())
    np.testing.assert_array_equal(first.observations[:n0], expected["observation"][:n0].numpy())
    assert "test/cartpole/copy-v0" in minari.list_local_datasets()


def test_load_trajectories_recognises_minari_directories(cartpole):
    path, expected = cartpole
    assert trajectory_format(path) == "minari"
    assert_same(load_trajectories(path), expected)
    meta = trajectory_metadata(path)
    assert meta["format"] == "minari" and meta["env_id"] == "CartPole-v1"
    assert meta["dataset_id"] == "test/cartpole/random-v0" and meta["n_episodes"] == 6


def test_minari_to_ours_and_back(cartpole, tmp_path):
    path, expected = cartpole
    ours = save_trajectories(tmp_path / "demos", load_minari(path), env_id="CartPole-v1")
    assert_same(load_trajectories(ours), expected)
    save_minari(load_trajectories(ours), "test/cartpole/back-v0", env="CartPole-v1")
    assert_same(load_minari("test/cartpole/back-v0"), expected)


@pytest.mark.parametrize("data_format", ["hdf5", "arrow", "parquet"])
def test_dict_observations_round_trip(root, data_format):
    env = gym.wrappers.TimeLimit(DictObsEnv(), max_episode_steps=8)
    _, expected = record(env, "test/dict-v0", episodes=5, seed=3)
    terminated, truncated = _endings(expected)
    assert terminated.any() and truncated.any()

    loaded = load_minari("test/dict-v0")
    assert_same(loaded, expected)
    assert loaded["observation", "inner", "img"].dtype == torch.uint8
    assert loaded["observation", "count"].dtype == torch.int64

    save_minari(
        loaded,
        "test/dict-copy-v0",
        observation_space=DictObsEnv.observation_space,
        action_space=DictObsEnv.action_space,
        data_format=data_format,
    )
    assert minari_metadata("test/dict-copy-v0")["data_format"] == data_format
    assert_same(load_minari("test/dict-copy-v0"), expected)


def _buffer(i, length, terminations, truncations, rng):
    return EpisodeBuffer(
        id=i,
        observations=rng.standard_normal((length + 1, 4)).astype(np.float32),
        actions=rng.integers(0, 2, length),
        rewards=rng.standard_normal(length),
        terminations=np.array(terminations, dtype=bool),
        truncations=np.array(truncations, dtype=bool),
    )


def test_endings_are_kept_as_minari_records_them(root):
    rng = np.random.default_rng(0)
    buffers = [
        _buffer(0, 3, [0, 0, 1], [0, 0, 0], rng),  # terminated
        _buffer(1, 2, [0, 0], [0, 1], rng),  # truncated
        _buffer(2, 2, [0, 1], [0, 1], rng),  # both
        _buffer(3, 2, [0, 0], [0, 0], rng),  # neither: cut short, so truncated
    ]
    with quiet_minari():
        minari.create_dataset_from_buffers("test/endings-v0", buffers, env="CartPole-v1")
    td = load_minari("test/endings-v0")
    terminated, truncated = _endings(td)
    assert terminated.tolist() == [True, False, True, False]
    assert truncated.tolist() == [False, True, True, True]
    # Minari stores float64 rewards; they load as float32.
    np.testing.assert_allclose(
        td["next", "reward"][:3, 0].numpy(), buffers[0].rewards.astype(np.float32)
    )
    save_minari(td, "test/endings-copy-v0", env="CartPole-v1")
    assert_same(load_minari("test/endings-copy-v0"), td)


# --------------------------------------------------------------------------- empty and bad input


def test_empty_dataset_is_reported_as_empty(root, capsys):
    with quiet_minari():
        minari.create_dataset_from_buffers("test/empty-v0", [], env="CartPole-v1")
    with pytest.raises(TrajectoryError, match="is empty: it holds no trajectories"):
        load_minari("test/empty-v0")
    with pytest.raises(TrajectoryError, match="is empty"):
        load_trajectories(root / "test" / "empty-v0")


def test_directory_that_is_not_a_dataset(root, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    (plain / "metadata.json").write_text('{"run": 3}')  # not Minari's metadata
    with pytest.raises(TrajectoryFileError, match=r"plain is a directory but not a Minari") as e:
        load_minari(plain)
    assert "pass one dataset's directory" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TrajectoryFileError, match="not a trajectory dataset.*Minari"):
        load_trajectories(plain)


def test_unknown_id_and_files(root, tmp_path):
    with pytest.raises(TrajectoryFileError, match="no Minari dataset 'test/nope-v0'.*MINARI"):
        load_minari("test/nope-v0")
    file = tmp_path / "file.hdf5"
    file.write_bytes(b"x")
    with pytest.raises(TrajectoryFileError, match="is a file, not a Minari dataset"):
        load_minari(file)


def test_namespace_directory_is_not_a_dataset(cartpole, root):
    with pytest.raises(TrajectoryFileError, match="not a Minari dataset"):
        load_minari(root / "test" / "cartpole")


@pytest.mark.parametrize("damage", ["metadata", "hdf5"])
def test_corrupted_dataset(cartpole, damage):
    path, _ = cartpole
    if damage == "metadata":
        (path / "data" / "metadata.json").write_text("{garbage")
    else:
        main = path / "data" / "main_data.hdf5"
        main.write_bytes(main.read_bytes()[:200])
    with pytest.raises(TrajectoryFileError, match="corrupted"):
        load_minari(path)


def test_save_refuses_existing_dataset_unless_overwrite(cartpole):
    path, expected = cartpole
    other = expected.clone()
    other["next", "reward"] += 1
    with pytest.raises(TrajectoryFileError, match="already exists.*overwrite=True"):
        save_minari(other, "test/cartpole/random-v0", env="CartPole-v1")
    assert_same(load_minari(path), expected)
    save_minari(other, "test/cartpole/random-v0", env="CartPole-v1", overwrite=True)
    assert_same(load_minari(path), other)
    assert sorted(p.name for p in path.parent.iterdir()) == ["namespace_metadata.json", "random-v0"]


def test_save_refuses_to_overwrite_other_data(root, cartpole):
    _, expected = cartpole
    target = root / "mine-v0"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(TrajectoryFileError, match="not a Minari dataset; refusing"):
            save_minari(expected, "mine-v0", env="CartPole-v1", overwrite=overwrite)
    assert (target / "keep.txt").read_text() == "precious"


def test_failed_save_leaves_nothing_behind(root, cartpole, monkeypatch):
    path, expected = cartpole
    before = sorted(p.name for p in root.parent.iterdir())
    with pytest.raises(TrajectoryError, match="Minari refused"):
        save_minari(expected, "test/cartpole/fmt-v0", env="CartPole-v1", data_format="hdf6")
    assert not (root / "test" / "cartpole" / "fmt-v0").exists()
    assert sorted(p.name for p in root.parent.iterdir()) == before  # no temporary directory
    assert os.environ["MINARI_DATASETS_PATH"] == str(root)


def test_save_bad_arguments(cartpole):
    _, td = cartpole
    with pytest.raises(TrajectoryError, match="not a Minari dataset id"):
        save_minari(td, "no-version", env="CartPole-v1")
    with pytest.raises(TrajectoryError, match="pass env="):
        save_minari(td, "test/x-v0")
    with pytest.raises(TrajectoryError, match="need rewards"):
        save_minari(td.exclude(("next", "reward")), "test/x-v0", env="CartPole-v1")
    with pytest.raises(SpaceMismatchError, match="per-step shape"):
        save_minari(td, "test/x-v0", env="Pendulum-v1")
    with pytest.raises(SpaceMismatchError, match="outside Discrete"):
        save_minari(
            td,
            "test/x-v0",
            observation_space=gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
            action_space=gym.spaces.Discrete(1),
        )
    with pytest.raises(SpaceMismatchError, match="Tuple space is not supported"):
        save_minari(
            td,
            "test/x-v0",
            observation_space=gym.spaces.Tuple([gym.spaces.Discrete(2)]),
            action_space=gym.spaces.Discrete(2),
        )


def test_without_minari_the_error_says_how_to_install(cartpole, tmp_path):
    path, _ = cartpole
    code = (
        "import sys; sys.modules['minari'] = None\n"  # makes `import minari` fail
        "from tdimitation.data import load_minari\n"
        "from tdimitation.errors import TrajectoryFileError\n"
        "try:\n"
        f"    load_minari({str(path)!r})\n"
        "except TrajectoryFileError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout.strip()
    assert out.endswith("pip install 'tdimitation[minari]'") and "\n" not in out


def test_metadata_is_read_without_minari(cartpole):
    path, _ = cartpole
    meta = json.loads((path / "data" / "metadata.json").read_text())
    assert minari_metadata(path)["n_transitions"] == meta["total_steps"]
