"""Rollouts: complete episodes of a policy in an environment, as a trajectory set."""

from __future__ import annotations

import math

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.envs.utils import ExplorationType

from tdimitation.data.collector import VecCollector
from tdimitation.data.trajectory import DONE, EPISODE, renumber_episodes
from tdimitation.errors import TrajectoryError
from tdimitation.rng import isolated_sampling


def _stop_step(done: np.ndarray, lengths_at_done: np.ndarray, min_episodes, min_timesteps):
    """First global step at which both minimums hold, or None.

    Episodes finishing at the same vector step count together (a condition is only
    checked between vector steps).
    """
    env_idx, step_idx = np.nonzero(done)
    if step_idx.size == 0:
        return None
    order = np.argsort(step_idx, kind="stable")
    steps = step_idx[order]
    cum_episodes = np.arange(1, steps.size + 1)
    cum_timesteps = np.cumsum(lengths_at_done[env_idx[order], steps])
    ok = np.ones(steps.size, dtype=bool)
    if min_episodes is not None:
        ok &= cum_episodes >= min_episodes
    if min_timesteps is not None:
        ok &= cum_timesteps >= min_timesteps
    # All episodes ending at one step count together: use the last index of that step.
    last_of_step = np.r_[steps[1:] != steps[:-1], True]
    hits = np.nonzero(ok & last_of_step)[0]
    return None if hits.size == 0 else int(steps[hits[0]])


def rollout(
    policy,
    env,
    *,
    min_episodes: int | None = None,
    min_timesteps: int | None = None,
    deterministic: bool = False,
    steps_per_batch: int | None = None,
    seed: int | None = None,
    progress: bool | str = False,
) -> TensorDictBase:
    """Run ``policy`` in ``env`` and return complete episodes as a flat trajectory set.

    Sampling is not biased toward short episodes: once the stop condition holds (at least
    ``min_episodes`` episodes and ``min_timesteps`` transitions in completed episodes),
    the episodes already running finish, no new ones start, and episodes started after
    that point are dropped. With two sub-envs whose episodes last 3 and 5 steps and
    ``min_episodes=2`` this returns two episodes of length 3 and one of length 5.

    Args:
        policy: anything :func:`~tdimitation.policies.as_policy` accepts.
        env: a batched env (see :func:`~tdimitation.envs.make_env`), or an env id, entry
            point or factory to build one from (closed afterwards).
        min_episodes: minimum number of complete episodes (> 0).
        min_timesteps: minimum number of transitions in complete episodes (> 0).
        deterministic: act greedily (torchrl ``ExplorationType.DETERMINISTIC``).
        steps_per_batch: vector steps per collection batch (default: chosen from the
            targets; larger wastes more steps at the end, smaller costs more overhead).
        seed: reseed the env before collecting, and sample the policy's actions from a
            generator of this seed with the global RNGs left as they were (see
            :func:`~tdimitation.rng.isolated_sampling`): the same seed gives the same
            episodes. Without it, sampled actions draw from the policy's own generators
            or the global RNGs.
        progress: show a tqdm progress bar of finished episodes (a string: with this
            description).

    Returns:
        A flat trajectory set (episode ids ``0..n-1``) with the collector's keys.
    """
    if min_episodes is None and min_timesteps is None:
        raise ValueError("rollout needs a stop condition: pass min_episodes and/or min_timesteps")
    for name, value in (("min_episodes", min_episodes), ("min_timesteps", min_timesteps)):
        if value is not None and int(value) <= 0:
            raise ValueError(f"{name} must be a positive number, got {value}")
    if seed is None:
        return _collect_episodes(
            policy, env, min_episodes, min_timesteps, deterministic, steps_per_batch, None, progress
        )
    sampler = policy if isinstance(policy, torch.nn.Module) else None
    with isolated_sampling(sampler, seed):
        return _collect_episodes(
            policy, env, min_episodes, min_timesteps, deterministic, steps_per_batch, seed, progress
        )


def _collect_episodes(
    policy, env, min_episodes, min_timesteps, deterministic, steps_per_batch, seed, progress
) -> TensorDictBase:
    """:func:`rollout`'s collection, its arguments checked."""
    # An id, an entry point or a user's env factory: build (and afterwards close) one env.
    owns_env = isinstance(env, str) or (callable(env) and not hasattr(env, "batch_size"))
    if owns_env:
        from tdimitation.envs import make_env

        env = make_env(env, seed=seed)
    elif seed is not None:
        env.set_seed(seed)
    num_envs = int(env.batch_size[0])
    if steps_per_batch is None:
        target = math.ceil((min_timesteps or 0) / num_envs)
        steps_per_batch = int(min(256, max(32, target // 4)))
    exploration = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
    collector = VecCollector(
        env,
        policy,
        frames_per_batch=num_envs * steps_per_batch,
        exploration_type=exploration,
        close_env=False,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        description = progress if isinstance(progress, str) else "rollout"
        bar = tqdm(total=min_episodes, unit="episode", desc=description)
    chunks: list[TensorDictBase] = []
    done_parts: list[np.ndarray] = []
    episode_parts: list[np.ndarray] = []
    try:
        while True:
            batch = collector.rollout()
            chunks.append(batch)
            done_parts.append(batch.get(DONE)[..., 0].numpy())
            episode_parts.append(batch.get(EPISODE).numpy())
            done = np.concatenate(done_parts, axis=1)
            if bar is not None:
                finished = int(done_parts[-1].sum())
                # Episodes running at the stop finish too: the bar stops at its total.
                bar.update(finished if bar.total is None else min(finished, bar.total - bar.n))
            lengths = _steps_into_episode(np.concatenate(episode_parts, axis=1))
            t_star = _stop_step(done, lengths, min_episodes, min_timesteps)
            if t_star is None:
                continue
            # Every sub-env must have finished the episode it was running at t_star.
            if all(done[i, t_star:].any() for i in range(num_envs)):
                break
    finally:
        if bar is not None:
            bar.close()
        collector.shutdown()
        if owns_env:
            env.close()
    data = torch.cat(chunks, dim=1)
    return _episodes_started_by(data, t_star)


def _steps_into_episode(episode: np.ndarray) -> np.ndarray:
    """For ``[N, T]`` episode ids: 1 + the number of earlier steps of the same episode."""
    n_steps = episode.shape[1]
    change = np.ones(episode.shape, dtype=bool)
    change[:, 1:] = episode[:, 1:] != episode[:, :-1]
    steps = np.arange(n_steps)
    run_start = np.maximum.accumulate(np.where(change, steps, 0), axis=1)
    return steps - run_start + 1


def _episodes_started_by(data: TensorDictBase, t_star: int) -> TensorDictBase:
    """Flatten ``[N, T]`` data, keeping complete episodes whose first step is <= t_star."""
    n_envs, n_steps = data.shape
    flat = data.reshape(-1)
    episode = flat.get(EPISODE)
    change = torch.ones(episode.shape[0], dtype=torch.bool)
    change[1:] = episode[1:] != episode[:-1]
    starts = torch.nonzero(change).reshape(-1)
    lengths = torch.diff(torch.cat([starts, torch.tensor([episode.shape[0]])]))
    start_step = starts % n_steps
    done = flat.get(DONE).reshape(-1)
    complete = done[starts + lengths - 1]
    # An env's first episode starts at step 0; the run boundary at each env's row start
    # is also a boundary because episode ids are globally unique.
    keep_episode = complete & (start_step <= t_star)
    keep_rows = torch.repeat_interleave(keep_episode, lengths)
    result = flat[keep_rows]
    if result.shape[0] == 0:
        raise TrajectoryError("the rollout produced no complete episode")
    return renumber_episodes(result)
