"""Atari games through make_env: ALE + the usual preprocessing (needs the [atari] extra)."""

import pytest
import torch

from tdimitation.envs import make_env
from tdimitation.errors import EnvCreationError

pytest.importorskip("ale_py", reason="Atari games need the [atari] extra")

ATARI = "tdimitation.envs.atari:atari_env"


def test_pong_observations_are_stacked_84x84_grayscale_frames():
    env = make_env(ATARI, 2, seed=0, fixed_horizon=12, env_kwargs={"game": "ALE/Pong-v5"})
    try:
        td = env.reset()
        obs = td["observation"]
        assert obs.shape == (2, 4, 84, 84) and obs.dtype == torch.uint8
        assert env.full_action_spec_unbatched["action"].space.n == 6
        frames = []
        for _ in range(12):
            td["action"] = torch.zeros(2, dtype=torch.int64)
            out = env.step(td)
            frames.append(out["next", "observation"])
            td = out["next"]
        # Frame stacking: each observation's last three frames are the next one's first three.
        assert torch.equal(frames[0][:, 1:], frames[1][:, :3])
        assert bool(out["next", "truncated"].all())  # the fixed horizon ends the episode
        assert frames[-1].float().std() > 0  # a real screen, not a blank frame
    finally:
        env.close()


def test_atari_errors_name_the_game():
    with pytest.raises(EnvCreationError, match="unknown Atari game 'ALE/NotAGame-v5'"):
        make_env(ATARI, 1, env_kwargs={"game": "ALE/NotAGame-v5"})
    with pytest.raises(EnvCreationError, match="not an Atari game"):
        make_env(ATARI, 1, env_kwargs={"game": "CartPole-v1"})
