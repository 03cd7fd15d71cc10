"""A user's env class or factory as an algorithm's env_id: stored as "module:Name"."""

from __future__ import annotations

import pytest
import torch

from tdimitation.errors import EnvCreationError
from tdimitation.policies import load_policy
from tdimitation.rl import PPO
from tests.envs.user_envs import CounterEnv, make_counter
from tests.helpers import quiet_trainer


@pytest.mark.parametrize(
    "source, name",
    [
        (CounterEnv, "tests.envs.user_envs:CounterEnv"),
        (make_counter, "tests.envs.user_envs:make_counter"),
    ],
)
def test_a_callable_env_id_is_stored_as_its_entry_point(source, name, tmp_path):
    model = PPO(source, num_envs=2, n_steps=16, batch_size=16, total_frames=64, n_epochs=1)
    assert model.hparams.env_id == name == model.env_id
    trainer = quiet_trainer()
    trainer.fit(model)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)  # primitives only
    assert state["hyper_parameters"]["env_id"] == name
    resumed = PPO.load_from_checkpoint(path, weights_only=True)
    assert resumed.env_id == name
    assert load_policy("tdimitation", str(path)) is not None


def test_an_unnameable_env_factory_is_refused():
    with pytest.raises(EnvCreationError, match="module:EnvClassOrFactory"):
        PPO(lambda: CounterEnv(), num_envs=2, n_steps=16, batch_size=16, total_frames=64)
