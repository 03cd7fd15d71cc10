"""An empty trajectory file or dataset is reported as empty, not as corrupted."""

from __future__ import annotations

import pickle
from pathlib import Path

import datasets
import numpy as np
import pytest

from tdimitation.data import load_trajectories
from tdimitation.errors import TrajectoryError


def _write_empty(kind: str, path: Path) -> Path:
    """A file or dataset holding zero trajectories, as imitation or datasets write one."""
    columns = {"obs": [], "acts": [], "infos": [], "terminal": [], "rews": []}
    if kind == "hf-untyped":  # imitation's serialize.save([]) goes through from_dict
        datasets.Dataset.from_dict(columns).save_to_disk(str(path))
    elif kind == "hf-typed":
        features = datasets.Features(
            {
                "obs": datasets.List(datasets.List(datasets.Value("float32"))),
                "acts": datasets.List(datasets.Value("int64")),
                "infos": datasets.List(datasets.Value("string")),
                "terminal": datasets.Value("bool"),
                "rews": datasets.List(datasets.Value("float64")),
            }
        )
        datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(path))
    elif kind == "npz":
        path = path.with_suffix(".npz")
        np.savez(
            path,
            obs=np.zeros((0, 4), np.float32),
            acts=np.zeros(0, np.int64),
            terminal=np.zeros(0, bool),
            indices=np.zeros(0, np.int64),
        )
    else:
        path = path.with_suffix(".pkl")
        path.write_bytes(pickle.dumps([]))
    return path


@pytest.mark.parametrize("kind", ["hf-untyped", "hf-typed", "npz", "pkl"])
def test_empty_file_is_reported_as_empty(tmp_path, kind):
    path = _write_empty(kind, tmp_path / "empty")
    with pytest.raises(TrajectoryError, match="is empty: it holds no trajectories") as err:
        load_trajectories(path, allow_pickle=True)
    message = str(err.value)
    assert str(path) in message and "corrupted" not in message and "\n" not in message
