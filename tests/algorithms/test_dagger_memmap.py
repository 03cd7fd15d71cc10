"""DAgger's aggregated buffer memory-mapped on disk: decision, files, checkpoints, training."""

import gc

import numpy as np
import pytest
import torch
from tensordict import MemoryMappedTensor
from torchrl.data import LazyMemmapStorage, LazyTensorStorage

from tdimitation.algorithms.dagger import DAgger
from tdimitation.callbacks import PeriodicCheckpoint
from tests.helpers import quiet_trainer as trainer


def test_large_buffers_are_memory_mapped_by_default(tmp_path):
    # CartPole: observation and next observation (2 x 4 float32), action, expert_action and
    # executed_action (3 x int64), float32 reward, three bool flags, int64 episode id.
    small = DAgger("CartPole-v1", buffer_capacity=1_000_000, memmap_dir=str(tmp_path))
    assert small.buffer_bytes == 71_000_000 and small.memmap_path is None
    assert isinstance(small.buffer.storage, LazyTensorStorage)
    large = DAgger("CartPole-v1", buffer_capacity=50_000_000, memmap_dir=str(tmp_path))
    assert large.buffer_bytes > 2**30
    assert isinstance(large.buffer.storage, LazyMemmapStorage)
    assert large.memmap_path.parent == tmp_path
    assert list(large.memmap_path.iterdir()) == []  # files appear with the first rows
    never = DAgger("CartPole-v1", buffer_capacity=50_000_000, memmap_threshold=None)
    assert never.memmap_path is None
    with pytest.raises(ValueError, match="memmap_threshold"):
        DAgger("CartPole-v1", memmap_threshold=-1)


def test_memmapped_buffer_trains_checkpoints_and_resumes(tmp_path):
    memmap_dir, ckpt_dir = tmp_path / "buffers", tmp_path / "ckpt"
    kwargs = dict(
        env_id="CartPole-v1",
        expert="scripted",
        num_envs=2,
        bc_epochs=4,
        batch_size=32,
        min_transitions=400,
        buffer_capacity=200_000,  # 4.8 MB when full: "large" above a 1 MB threshold
        memmap_dir=str(memmap_dir),
        memmap_threshold=1_000_000,
        seed=0,
    )
    torch.manual_seed(0)
    first = DAgger(n_rounds=2, **kwargs)
    initial = [p.detach().clone() for p in first.policy.parameters()]
    trainer(callbacks=[PeriodicCheckpoint(ckpt_dir, every_n_rounds=1)]).fit(first)
    torch.manual_seed(0)
    in_ram = DAgger(n_rounds=2, **(kwargs | {"memmap_threshold": None}))
    trainer().fit(in_ram)
    assert in_ram.memmap_path is None

    # The rows live in files under the given directory, sized to the capacity.
    n = len(first.buffer)
    assert n == first.transitions_collected >= 800
    assert first.memmap_path.parent == memmap_dir
    obs_file = first.memmap_path / "observation.memmap"
    assert obs_file.stat().st_size == 200_000 * 4 * 4
    data = first.buffer[:]
    assert isinstance(data["observation"], MemoryMappedTensor)
    on_disk = np.memmap(obs_file, dtype=np.float32, mode="r")[: n * 4].reshape(n, 4)
    np.testing.assert_array_equal(on_disk, data["observation"].numpy())
    act_file = first.memmap_path / "action.memmap"
    on_disk_actions = np.memmap(act_file, dtype=np.int64, mode="r")[:n]
    np.testing.assert_array_equal(on_disk_actions, data["action"].numpy())

    # Training worked on the memory-mapped rows: the learner moved, imitates the expert,
    # and ends exactly where the same run with the buffer in RAM ends.
    assert not all(
        torch.equal(a, b) for a, b in zip(initial, first.policy.parameters(), strict=True)
    )
    with torch.no_grad():
        predicted = first.policy.logits(data["observation"].clone()).argmax(-1)
    assert (predicted == data["action"]).float().mean() > 0.75
    for a, b in zip(first.policy.parameters(), in_ram.policy.parameters(), strict=True):
        assert torch.equal(a, b)

    # The checkpoint holds the contents (sized to them, not to the capacity).
    state = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    saved = state["tdimitation"]["buffers"]["aggregated"]["content"]
    assert state["tdimitation"]["round"] == 2 and saved["observation"].shape == (n, 4)

    # Resume in the same process, same directory: a new buffer directory, same rows.
    resumed = DAgger(n_rounds=3, **kwargs)
    assert resumed.memmap_path != first.memmap_path
    assert resumed.memmap_path.parent == memmap_dir
    trainer(max_epochs=2).fit(resumed, ckpt_path=str(ckpt_dir / "last.ckpt"), weights_only=True)
    assert resumed.round == 3 and len(resumed.buffer) == resumed.transitions_collected > n
    assert isinstance(resumed.buffer.storage, LazyMemmapStorage)
    restored = resumed.buffer[:n]
    assert torch.equal(restored["observation"], data["observation"])
    assert torch.equal(restored["action"], data["action"])
    # The first run's files were not touched by the resumed run.
    np.testing.assert_array_equal(
        np.memmap(obs_file, dtype=np.float32, mode="r")[: n * 4].reshape(n, 4), on_disk
    )


def test_buffer_files_are_removed_with_their_module(tmp_path):
    model = DAgger("CartPole-v1", num_envs=2, memmap_threshold=0, memmap_dir=str(tmp_path))
    episodes = model.collect_round()
    model.buffer.extend(episodes)
    directory = model.memmap_path
    assert (directory / "observation.memmap").exists()
    del model, episodes
    gc.collect()
    assert not directory.exists() and tmp_path.exists()
