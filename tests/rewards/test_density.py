"""The torch kernel density estimate and the density reward net."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import TransformedEnv

from tdimitation.envs import RewardReplacement, make_env
from tdimitation.errors import TdimitationError, TrajectoryError
from tdimitation.rewards import DensityRewardNet, KernelDensity, load_reward, save_reward
from tdimitation.rewards.density import kernel_log_normaliser, time_steps


def brute_force_log_density(points, queries, kernel, bandwidth, standardise=True):
    """The KDE written out in float64: mean of normalised kernels over every point."""
    points, queries = points.double(), queries.double()
    if standardise:
        mean = points.mean(0)
        std = points.std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        points, queries = (points - mean) / std, (queries - mean) / std
    d = points.shape[1]
    dist = (queries[:, None, :] - points[None, :, :]).pow(2).sum(-1).sqrt() / bandwidth
    if kernel == "gaussian":
        k = torch.exp(-0.5 * dist**2) / ((2 * math.pi) ** (d / 2) * bandwidth**d)
    else:
        # exp(-r/h) integrates to h^d (d-1)! * 2 pi^(d/2) / Gamma(d/2) over R^d.
        volume = bandwidth**d * math.gamma(d) * 2 * math.pi ** (d / 2) / math.gamma(d / 2)
        k = torch.exp(-dist) / volume
    return k.mean(1).log()


def cloud(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.3, 3.0, d, dtype=dtype)
    return torch.randn(n, d, generator=g, dtype=dtype) * scale + 1.0


@pytest.mark.parametrize("kernel", ["gaussian", "exponential"])
@pytest.mark.parametrize("standardise", [True, False])
def test_log_density_matches_float64_formula(kernel, standardise):
    points, queries = cloud(300, 3, 0), cloud(70, 3, 1) * 1.5
    kde = KernelDensity(kernel, 0.7, standardise).double().fit(points)
    expected = brute_force_log_density(points, queries, kernel, 0.7, standardise)
    torch.testing.assert_close(kde.log_density(queries), expected, rtol=1e-10, atol=1e-10)
    # float32 (the default) stays close; tiny chunks give the same values as one chunk.
    kde32 = KernelDensity(kernel, 0.7, standardise, chunk_elements=50).fit(points.float())
    torch.testing.assert_close(
        kde32.log_density(queries.float()).double(), expected, atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("kernel", ["gaussian", "exponential"])
def test_density_integrates_to_one(kernel):
    # Without standardisation the density is of the raw input: sum it over a fine 2-D grid.
    points = torch.tensor([[0.0, 0.0], [1.0, -0.5], [0.5, 2.0]], dtype=torch.float64)
    kde = KernelDensity(kernel, 0.4, standardise=False).double().fit(points)
    axis = torch.linspace(-9, 10, 761, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    cell = (axis[1] - axis[0]) ** 2
    total = float(kde.log_density(grid).exp().sum() * cell)
    assert total == pytest.approx(1.0, abs=2e-3)


def test_normaliser_of_exponential_kernel_in_one_dimension():
    # exp(-|u|/h) over the real line integrates to 2h.
    assert kernel_log_normaliser("exponential", 1, 0.3) == pytest.approx(-math.log(0.6))


def test_non_stationary_uses_each_steps_points_and_the_last_model_beyond():
    points = cloud(60, 2, 2)
    time = torch.arange(60) % 4
    kde = KernelDensity("gaussian", 0.5).double().fit(points, time)
    queries, steps = cloud(30, 2, 3), torch.arange(30) % 6
    got = kde.log_density(queries, steps)
    # One standardisation over all points, then one model per step.
    mean, std = points.mean(0), points.std(0, unbiased=False)
    for i in range(30):
        step = min(int(steps[i]), 3)
        own = points[time == step]
        z_points, z_query = (own - mean) / std, ((queries[i] - mean) / std)[None]
        expected = brute_force_log_density(z_points, z_query, "gaussian", 0.5, standardise=False)
        assert float(got[i]) == pytest.approx(float(expected[0]), abs=1e-10)
    with pytest.raises(TdimitationError, match="time steps"):
        kde.log_density(queries)


def test_non_stationary_fit_needs_every_step():
    with pytest.raises(TrajectoryError, match="0 .. T-1"):
        KernelDensity().fit(torch.randn(4, 2), torch.tensor([0, 0, 2, 2]))


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown kernel"):
        KernelDensity("tophat")
    with pytest.raises(ValueError, match="bandwidth must be a positive"):
        KernelDensity(bandwidth=0.0)
    with pytest.raises(ValueError, match="not fitted"):
        KernelDensity().log_density(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="unknown density_type"):
        DensityRewardNet((4,), 2, True, density_type="action")
    with pytest.raises(TrajectoryError, match="NaN"):
        KernelDensity().fit(torch.tensor([[0.0, math.nan]]))


# -------------------------------------------------------------- reward net
def trajectories(n_episodes=3, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = n_episodes * length
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[length - 1 :: length] = True
    return TensorDict(
        {
            "observation": torch.randn(n, 4, generator=g),
            "action": torch.randint(2, (n,), generator=g),
            "episode": torch.arange(n) // length,
            "next": {
                "observation": torch.randn(n, 4, generator=g),
                "done": done,
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
                "truncated": done.clone(),
                "step_count": (torch.arange(n) % length + 1).unsqueeze(-1),
            },
        },
        batch_size=[n],
    )


@pytest.mark.parametrize(
    ("density_type", "features"),
    [
        ("state", lambda td: td["observation"]),
        (
            "state_action",
            lambda td: torch.cat(
                [td["observation"], torch.nn.functional.one_hot(td["action"], 2).float()], -1
            ),
        ),
        ("state_state", lambda td: torch.cat([td["observation"], td["next", "observation"]], -1)),
    ],
)
def test_reward_is_log_density_of_the_density_types_features(density_type, features):
    demos, queries = trajectories(seed=0), trajectories(seed=1)
    net = DensityRewardNet((4,), 2, True, density_type=density_type, kernel="exponential")
    net.fit(demos)
    out = net(queries.copy())["learned_reward"]
    assert out.shape == (15, 1)
    expected = brute_force_log_density(features(demos), features(queries), "exponential", 0.5)
    torch.testing.assert_close(out[:, 0].double(), expected, atol=1e-4, rtol=0)
    # Any batch shape: a [3, 5] view scores the same.
    folded = net(queries.reshape(3, 5).copy())["learned_reward"]
    torch.testing.assert_close(folded.reshape(-1), out[:, 0])


def test_time_steps_are_positions_in_episodes():
    demos = trajectories(n_episodes=2, length=3)
    assert time_steps(demos).tolist() == [0, 1, 2, 0, 1, 2]


def test_non_stationary_reward_reads_the_step_count():
    demos = trajectories(n_episodes=4, length=5)
    net = DensityRewardNet((4,), 2, True, density_type="state", stationary=False).fit(demos)
    assert net.kde.num_models == 5
    queries = trajectories(n_episodes=2, length=5, seed=3)
    got = net(queries.copy())["learned_reward"][:, 0]
    for step in range(5):
        own = demos["observation"][time_steps(demos) == step]
        rows = time_steps(queries) == step
        # Standardisation is over all demonstrations, then each step's own points.
        mean, std = demos["observation"].mean(0), demos["observation"].std(0, unbiased=False)
        expected = brute_force_log_density(
            (own - mean) / std, (queries["observation"][rows] - mean) / std, "gaussian", 0.5, False
        )
        torch.testing.assert_close(got[rows].double(), expected, atol=1e-4, rtol=0)


def test_state_state_density_without_next_observations_is_refused():
    demos = trajectories().exclude(("next", "observation"))
    net = DensityRewardNet((4,), 2, True, density_type="state_state")
    with pytest.raises(TrajectoryError, match="next observations"):
        net.fit(demos)


def test_non_stationary_density_given_transitions_is_refused():
    transitions = trajectories().exclude("episode")
    net = DensityRewardNet((4,), 2, True, stationary=False)
    with pytest.raises(TrajectoryError, match="needs trajectories, not transitions"):
        net.fit(transitions)
    # A stationary density takes plain transitions.
    DensityRewardNet((4,), 2, True).fit(transitions)


def test_save_and_load_keep_the_fitted_density(tmp_path):
    demos = trajectories(n_episodes=4)
    net = DensityRewardNet((4,), 2, True, stationary=False, kernel="exponential").fit(demos)
    path = save_reward(net, tmp_path / "density.pt")
    loaded = load_reward("tdimitation", path)
    assert isinstance(loaded, DensityRewardNet) and not loaded.is_stationary
    queries = trajectories(seed=5)
    torch.testing.assert_close(
        loaded(queries.copy())["learned_reward"], net(queries.copy())["learned_reward"]
    )


def test_serves_as_reward_module_of_reward_replacement():
    env = make_env("tdimitation/CartPoleFixed-v1", num_envs=2, seed=0)
    try:
        g = torch.Generator().manual_seed(0)
        demos = TensorDict(
            {
                "observation": torch.randn(50, 4, generator=g) * 0.1,
                "action": torch.randint(2, (50,)),
            },
            batch_size=[50],
        )
        for stationary in (True, False):
            net = DensityRewardNet.from_env(env, stationary=stationary)
            if stationary:
                net.fit(demos)
            else:
                net.fit(demos.set("episode", torch.arange(50) // 25))
            transformed = TransformedEnv(env, RewardReplacement(net))
            steps = transformed.rollout(4, break_when_any_done=False)
            learned = steps["next", "reward"][..., 0]
            obs, action = steps["observation"], steps["action"]
            time = steps["next", "step_count"] - 1
            expected = net.reward(obs, action, None, None, None if stationary else time)
            torch.testing.assert_close(learned, expected)
            assert not torch.equal(steps["next", "original_reward"], steps["next", "reward"])
    finally:
        env.close()
