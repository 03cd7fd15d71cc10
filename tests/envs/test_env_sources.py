"""make_env with the user's own environments: registered ids, entry points, callables."""

import gymnasium as gym
import pytest
import torch

from tdimitation.envs import FixedHorizon, as_env_id, make_env
from tdimitation.errors import EnvCreationError
from tests.envs import user_envs
from tests.envs.user_envs import CounterEnv, NoArgsEnv, RenderingEnv

MODULE = "tests.envs.user_envs"


def _episode_ends(env, steps):
    td = env.rollout(steps, break_when_any_done=False)
    return td["next", "done"][0, :, 0].nonzero().reshape(-1).tolist()


@pytest.fixture
def registered_no_args():
    """A registered id whose entry point takes no keyword arguments at all."""
    env_id = "tdimitation-test/NoArgs-v0"
    gym.register(env_id, entry_point=NoArgsEnv)
    yield env_id
    del gym.registry[env_id]


def test_registered_env_without_render_mode_argument_builds(registered_no_args):
    # gymnasium.make passes render_mode only when it is asked for; so does make_env.
    env = make_env(registered_no_args, num_envs=2, seed=0)
    assert _episode_ends(env, 9) == [2, 5, 8]
    assert env.env_id == registered_no_args
    fixed = make_env(registered_no_args, fixed_horizon=5)
    assert _episode_ends(fixed, 10) == [4, 9]


def test_asking_a_constructor_without_render_mode_for_frames_says_so(registered_no_args):
    with pytest.raises(EnvCreationError) as err:
        make_env(registered_no_args, render_mode="rgb_array")
    message = str(err.value)
    assert registered_no_args in message and "render_mode='rgb_array' was asked for" in message
    assert "\n" not in message


def test_entry_point_class_is_called_with_env_kwargs():
    name = f"{MODULE}:CounterEnv"
    env = make_env(name, num_envs=2, seed=0, env_kwargs={"length": 3})
    assert env.env_id == name and env.env_kwargs == {"length": 3}
    assert _episode_ends(env, 9) == [2, 5, 8]
    assert isinstance(env.envs[0], CounterEnv)  # built as is: no checker or order wrappers


def test_entry_point_factory_function_and_time_limit():
    env = make_env(f"{MODULE}:make_counter", env_kwargs={"length": 10}, max_episode_steps=4)
    td = env.rollout(8, break_when_any_done=False)[0]
    assert td["next", "truncated"][:, 0].nonzero().reshape(-1).tolist() == [3, 7]
    assert not td["next", "terminated"].any()


def test_entry_point_without_arguments_and_fixed_horizon():
    env = make_env(f"{MODULE}:NoArgsEnv", fixed_horizon=6)
    assert isinstance(env.envs[0], FixedHorizon)
    td = env.rollout(6, break_when_any_done=False)[0]
    assert td["next", "reward"][3:].eq(0).all()  # absorbing after the 3-step task ends
    assert td["next", "truncated"][:, 0].tolist() == [False] * 5 + [True]


def test_render_mode_is_passed_only_when_asked():
    plain = make_env(f"{MODULE}:RenderingEnv")
    assert plain.envs[0].render_mode is None
    env = make_env(f"{MODULE}:RenderingEnv", render_mode="rgb_array")
    assert env.envs[0].render_mode == "rgb_array"
    env.rollout(2)
    assert env.render()[0][0, 0, 0] == 2


def test_module_colon_id_imports_the_module_that_registers_it():
    env = make_env(f"{MODULE}:tdimitation-test/UserCounter-v0", num_envs=1)
    assert env.env_id == f"{MODULE}:tdimitation-test/UserCounter-v0"
    assert _episode_ends(env, 8) == [3, 7]  # the registered kwargs: length 4


def test_callable_is_called_with_env_kwargs_and_render_mode():
    env = make_env(RenderingEnv, num_envs=2, env_kwargs={"length": 2}, render_mode="rgb_array")
    assert _episode_ends(env, 4) == [1, 3]
    assert env.envs[1].render_mode == "rgb_array"


def _error(env_id, **kwargs) -> str:
    with pytest.raises(EnvCreationError) as err:
        make_env(env_id, **kwargs)
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_id_neither_registered_nor_importable():
    message = _error("MyReachEnv-v0")
    assert "unknown environment id 'MyReachEnv-v0'" in message
    assert "'package.module:EnvClassOrFactory'" in message


def test_entry_point_whose_module_does_not_import(tmp_path, monkeypatch):
    message = _error("no_such_module_for_tdimitation:Env")
    assert "cannot import module 'no_such_module_for_tdimitation'" in message
    assert "PYTHONPATH" in message
    (tmp_path / "tdim_broken_envs.py").write_text("import numpy\nraise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    message = _error("tdim_broken_envs:Env")
    assert "importing module 'tdim_broken_envs' failed: RuntimeError: boom" in message


def test_entry_point_whose_attribute_is_missing():
    message = _error(f"{MODULE}:ReachEnv")
    assert f"module '{MODULE}' has no attribute 'ReachEnv'" in message
    assert _error(f"{MODULE}:").startswith(f"environment '{MODULE}:' is not of the form")


def test_entry_point_that_is_not_callable():
    message = _error(f"{MODULE}:NOT_CALLABLE")
    assert "names an object of type int, which cannot be called" in message


def test_factory_returning_something_else_than_an_env():
    message = _error(f"{MODULE}:not_an_env")
    assert f"environment '{MODULE}:not_an_env' returned a dict, not a gymnasium.Env" in message
    assert "returned a NoneType" in _error(lambda: None)


def test_constructor_raising_is_one_line_with_the_cause():
    with pytest.raises(EnvCreationError) as err:
        make_env(f"{MODULE}:broken", env_kwargs={"size": 1})
    assert str(err.value) == (
        f"environment '{MODULE}:broken' could not be built: ValueError: size must be at "
        "least 2, got 1"
    )
    assert isinstance(err.value.__cause__, ValueError)  # the traceback still shows where
    message = _error(f"{MODULE}:CounterEnv", env_kwargs={"lenght": 3})
    assert "TypeError" in message and "lenght" in message
    message = _error("CartPole-v1", env_kwargs={"gravity": 1.0})
    assert "environment 'CartPole-v1' could not be built: TypeError" in message


def test_as_env_id_names_importable_callables_and_refuses_others():
    assert as_env_id("CartPole-v1") == "CartPole-v1"
    assert as_env_id(CounterEnv) == f"{MODULE}:CounterEnv"
    assert as_env_id(user_envs.make_counter) == f"{MODULE}:make_counter"
    env = make_env(as_env_id(CounterEnv), env_kwargs={"length": 2})
    assert _episode_ends(env, 4) == [1, 3]

    def local_factory():
        return CounterEnv()

    for unnamable in (lambda: CounterEnv(), local_factory, [CounterEnv]):
        with pytest.raises(EnvCreationError, match="give env_id as a string"):
            as_env_id(unnamable)


def test_entry_point_envs_have_the_same_specs_as_callables():
    a = make_env(f"{MODULE}:CounterEnv", num_envs=2, seed=3)
    b = make_env(CounterEnv, num_envs=2, seed=3)
    assert a.observation_spec == b.observation_spec and a.action_spec == b.action_spec
    assert torch.equal(a.rollout(5)["next", "observation"], b.rollout(5)["next", "observation"])


def test_env_without_spaces_or_with_unsupported_ones():
    message = _error(f"{MODULE}:NoSpacesEnv")
    assert message == (
        f"environment '{MODULE}:NoSpacesEnv' has no observation_space (a gymnasium space): "
        "set self.observation_space in its constructor"
    )
    message = _error(f"{MODULE}:TextObsEnv")
    assert message.startswith(f"environment '{MODULE}:TextObsEnv': unsupported gymnasium space")


def test_sub_envs_built_before_a_failure_are_closed():
    user_envs.TrackedEnv.instances.clear()
    message = _error([user_envs.TrackedEnv, lambda: user_envs.broken(0)])
    assert "could not be built: ValueError: size must be at least 2" in message
    (built,) = user_envs.TrackedEnv.instances
    assert built.closed
    cartpole = lambda: gym.make("CartPole-v1")  # noqa: E731
    message = _error([user_envs.TrackedEnv, lambda: user_envs.TrackedEnv(length=3), cartpole])
    assert "sub-env 2 has spaces" in message and "every sub-env needs the same spaces" in message
    assert len(user_envs.TrackedEnv.instances) == 3
    assert all(env.closed for env in user_envs.TrackedEnv.instances)
