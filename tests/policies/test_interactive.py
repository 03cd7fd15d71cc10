"""The keyboard expert, driven by real pygame key events on a headless display."""

import os

import pytest
import torch
from tensordict import TensorDict

from tdimitation.envs import make_env
from tdimitation.errors import PolicyError
from tdimitation.policies.interactive import KeyboardExpert


@pytest.fixture
def pygame_headless(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    import pygame

    pygame.display.init()
    yield pygame
    pygame.display.quit()


def press(pygame, *keys):
    for key in keys:
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key))


def test_keys_become_actions(pygame_headless):
    pygame = pygame_headless
    env = make_env("CartPole-v1", num_envs=1, seed=0, render_mode="rgb_array")
    env.reset()
    expert = KeyboardExpert(env)
    # an unmapped key is ignored; then right, left, and the digit 1
    press(pygame, pygame.K_a, pygame.K_RIGHT, pygame.K_LEFT, pygame.K_1)
    actions = [
        int(expert(TensorDict({"observation": torch.zeros(1, 4)}, [1]))["action"]) for _ in range(3)
    ]
    assert actions == [1, 0, 1]
    assert expert._screen.get_size() == (600, 400)  # the frame was shown
    press(pygame, pygame.K_ESCAPE)
    with pytest.raises(KeyboardInterrupt):
        expert(TensorDict({"observation": torch.zeros(1, 4)}, [1]))


def test_dagger_with_a_human_expert(pygame_headless):
    from tdimitation.algorithms import DAgger

    pygame = pygame_headless
    model = DAgger(
        "CartPole-v1",
        expert="interactive",
        n_rounds=1,
        bc_epochs=1,
        batch_size=16,
        min_transitions=16,
    )
    press(pygame, *([pygame.K_RIGHT] * 400))  # always push right: short episodes
    episodes = model.collect_round()
    assert episodes.shape[0] >= 16 and episodes["expert_action"].eq(1).all()


def test_keyboard_expert_rejects_unsuitable_envs():
    with pytest.raises(PolicyError, match="Discrete"):
        KeyboardExpert(make_env("Pendulum-v1", render_mode="rgb_array"))
    with pytest.raises(PolicyError, match="num_envs=1"):
        KeyboardExpert(make_env("CartPole-v1", num_envs=2, render_mode="rgb_array"))
    with pytest.raises(PolicyError, match="outside"):
        KeyboardExpert(make_env("CartPole-v1", render_mode="rgb_array"), keymap={"x": 5})
