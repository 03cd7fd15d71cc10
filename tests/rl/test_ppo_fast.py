"""PPO's fused update: closed-form gradients and flat Adam against autograd and torch.optim."""

import itertools

import lightning as L
import pytest
import torch

from tdimitation.data.collector import VecCollector
from tdimitation.fused import PPOGradients
from tdimitation.fused.lightning import backward_blocker
from tdimitation.objectives.ppo import PPOClipLoss
from tdimitation.policies import CategoricalActor
from tdimitation.policies.actors import GaussianActor
from tdimitation.policies.critics import ValueCritic
from tdimitation.rl.ppo import PPO
from tests.helpers import quiet_trainer as trainer


@pytest.mark.parametrize(
    "categorical, hidden, activation, ent_coef, normalize",
    list(
        itertools.product(
            [True, False], [(16,), (16, 8), ()], ["tanh", "relu"], [0.0, 0.01], [True]
        )
    )
    + [(True, (16, 16), "tanh", 0.0, False), (False, (16, 16), "tanh", 0.01, False)],
)
def test_closed_form_gradients_equal_autograd(categorical, hidden, activation, ent_coef, normalize):
    torch.manual_seed(0)
    if categorical:
        actor = CategoricalActor(4, 3, hidden, activation, normalize_observations=normalize)
    else:
        actor = GaussianActor(4, 2, None, None, hidden, activation, -0.3, normalize)
    if normalize:
        actor.obs_norm.update(torch.randn(100, 4) * 3 + 1)
    critic = ValueCritic(4, hidden, activation, obs_norm=actor.obs_norm)
    actor.double()
    critic.double()
    loss = PPOClipLoss(actor, critic, clip_epsilon=0.2, vf_coef=0.5, ent_coef=ent_coef)
    size = 64
    obs = torch.randn(size, 4, dtype=torch.float64)
    if categorical:
        action = torch.randint(0, 3, (size,))
    else:
        action = torch.randn(size, 2, dtype=torch.float64)
    with torch.no_grad():
        # Log-probs off the current policy, so some ratios leave the clip range.
        old = actor.log_prob(obs, action) + 0.3 * torch.randn(size, dtype=torch.float64)
    advantage = torch.randn(size, dtype=torch.float64)
    target = torch.randn(size, dtype=torch.float64)
    reference = loss.loss_tensors(obs, action, old, advantage, target)
    total = sum(
        reference[k] for k in ("loss_objective", "loss_critic", "loss_entropy") if k in reference
    )
    params = list(actor.parameters()) + list(critic.parameters())
    expected = dict(zip(map(id, params), torch.autograd.grad(total, params), strict=True))

    grads = PPOGradients(loss)
    weights, flat_grad = grads.load(grads.new_buffer()), grads.new_buffer().fill_(float("nan"))
    terms = grads.step(
        grads.views(weights),
        grads.views(flat_grad),
        grads.features(obs),
        grads.encode_actions(action),
        old,
        grads.advantage_weights(advantage.view(1, size))[0],
        target,
        diagnostics=True,
    )
    views = grads.param_views(flat_grad)
    assert {id(p) for p, _ in views} == set(expected)  # every parameter gets its gradient
    for p, g in views:
        torch.testing.assert_close(g, expected[id(p)], rtol=0, atol=1e-12)
    assert terms.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(terms[key], value.detach(), rtol=0, atol=1e-12)


def _pair(env_id, **kwargs):
    args = dict(
        env_id=env_id,
        num_envs=4,
        n_steps=64,
        batch_size=32,
        n_epochs=3,
        total_frames=4 * 64 * 10,
        normalize_observations=True,
    )
    fast = PPO(**args | kwargs)
    slow = PPO(**args | kwargs | {"compile_loss": False}, fast_update=False)
    slow.load_state_dict(fast.state_dict())
    return fast, slow


@pytest.mark.parametrize(
    "env_id, kwargs",
    [
        ("CartPole-v1", {}),
        ("CartPole-v1", {"ent_coef": 0.01, "lr_schedule": "linear", "target_kl": 0.01}),
        ("Pendulum-v1", {"ent_coef": 0.01, "max_grad_norm": None}),
        # The whole step compiled (one-off compilation of ~20 s); importing inductor warns.
        pytest.param(
            "CartPole-v1",
            {"ent_coef": 0.01, "compile_loss": True},
            marks=pytest.mark.filterwarnings("ignore:.*torch.jit.script_method:DeprecationWarning"),
        ),
    ],
)
def test_fused_update_gives_the_autograd_parameters(env_id, kwargs):
    """Same minibatches, same steps: parameters, Adam state and metrics agree over rounds."""
    torch.manual_seed(0)
    fast, slow = _pair(env_id, **kwargs)
    collector = VecCollector(fast.make_env(), fast.actor, frames_per_batch=256, total_frames=768)
    fast_opt, slow_opt = fast.configure_optimizers(), slow.configure_optimizers()
    for round_index in range(3):
        batch = collector.rollout()
        torch.manual_seed(round_index)
        fast_metrics = fast.update(batch, fast_opt)
        torch.manual_seed(round_index)
        slow_metrics = slow.update(batch, slow_opt)
        assert fast.update_path == "fused"
        assert slow.update_path == "autograd: fast_update=False"
        for p, q in zip(fast.parameters(), slow.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=2e-6)
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(
                    fast_opt.state[p][key], slow_opt.state[q][key], rtol=1e-4, atol=1e-7
                )
            assert float(fast_opt.state[p]["step"]) == float(slow_opt.state[q]["step"])
            assert p.grad is not None
        assert fast_metrics.keys() == slow_metrics.keys()
        for key, value in slow_metrics.items():
            assert fast_metrics[key] == pytest.approx(value, rel=1e-3, abs=1e-6), key
        # Observation statistics and the collection policy see the updated values.
        torch.testing.assert_close(fast.actor.obs_norm.mean, slow.actor.obs_norm.mean)
    collector.shutdown()


def test_trainer_takes_the_fused_path_and_counts_steps():
    model = PPO(
        env_id="CartPole-v1",
        num_envs=2,
        n_steps=64,
        total_frames=2 * 64 * 3,
        batch_size=32,
        n_epochs=2,
    )
    fit = trainer()
    fit.fit(model)
    assert model.update_path == "fused"
    assert model.optimizer_steps == 3 * 2 * 4  # rounds x epochs x minibatches
    assert fit.global_step == 0  # fused rounds step the torch optimizer, not Lightning's


class _GradientWatcher(L.Callback):
    def __init__(self):
        self.calls = 0

    def on_after_backward(self, trainer, pl_module):
        self.calls += 1


def test_lightning_hooks_and_custom_backward_take_the_autograd_path():
    watcher = _GradientWatcher()
    model = PPO(
        env_id="CartPole-v1",
        num_envs=2,
        n_steps=64,
        total_frames=2 * 64 * 2,
        batch_size=32,
        n_epochs=2,
    )
    fit = trainer(callbacks=[watcher])
    fit.fit(model)
    assert model.update_path.startswith("autograd: callback _GradientWatcher")
    assert watcher.calls == fit.global_step == model.optimizer_steps == 2 * 2 * 4

    torch.manual_seed(0)
    model = PPO(
        env_id="CartPole-v1", num_envs=2, n_steps=32, total_frames=64, batch_size=32, n_epochs=1
    )
    collector = VecCollector(model.make_env(), model.actor, frames_per_batch=64, total_frames=64)
    batch = collector.rollout()
    calls = []

    def backward(loss):
        calls.append(1)
        loss.backward()

    model.update(batch, model.configure_optimizers(), backward=backward)
    assert model.update_path == "autograd: a custom backward function" and len(calls) == 2
    params = list(model.actor.parameters()) + list(model.critic.parameters())
    for optimizer, reason in [
        (torch.optim.SGD(params, lr=0.01), "optimizer SGD"),
        (torch.optim.Adam(params, weight_decay=0.1), "weight decay"),
        (torch.optim.Adam(model.actor.parameters()), "not exactly"),
    ]:
        model.update(batch, optimizer)
        assert reason in model.update_path
    model.update(batch, torch.optim.Adam(params))  # plain (for-loop) Adam is supported
    assert model.update_path == "fused"
    collector.shutdown()


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "64-true"])
def test_other_precisions_block_the_fused_path(precision):
    """Only the default 32-bit plugin makes manual_backward a plain loss.backward()."""
    model = PPO(env_id="CartPole-v1", num_envs=2, n_steps=32, total_frames=64, batch_size=32)
    model.trainer = trainer(precision="32-true")
    assert backward_blocker(model.manual_backward) is None
    model.trainer = trainer(precision=precision)
    assert backward_blocker(model.manual_backward) == f"precision {precision}"


def test_unsupported_networks_take_the_autograd_path():
    model = PPO(
        env_id="CartPole-v1",
        num_envs=2,
        n_steps=32,
        total_frames=64,
        batch_size=32,
        n_epochs=1,
        activation="elu",
    )
    trainer().fit(model)
    assert "tanh or ReLU" in model.update_path


class _Generator(L.LightningModule):
    """An adversarial-style owner of the Trainer driving PPO through its generator interface."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.ppo = PPO(
            env_id="CartPole-v1",
            num_envs=2,
            n_steps=32,
            total_frames=64 * 3,
            batch_size=32,
            n_epochs=2,
        )
        self.collector = VecCollector(
            self.ppo.make_env(), self.ppo.actor, frames_per_batch=64, total_frames=64 * 3
        )
        self.paths = []

    def configure_optimizers(self):
        return self.ppo.configure_optimizers()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(range(3), batch_size=None)

    def training_step(self, index, batch_idx):
        batch = self.collector.rollout()
        self.ppo.update(
            batch, self.optimizers(), self.manual_backward, lambda td: -td["next", "reward"]
        )
        self.paths.append(self.ppo.update_path)


class _HookedGenerator(_Generator):
    def __init__(self):
        super().__init__()
        self.backward_calls = 0

    def on_after_backward(self):
        self.backward_calls += 1


def test_generator_interface_inside_another_modules_trainer():
    fit = trainer()
    generator = _Generator()
    fit.fit(generator)
    assert generator.paths == ["fused"] * 3
    assert generator.ppo.optimizer_steps == 3 * 2 * 2  # rounds x epochs x minibatches
    fit = trainer()
    hooked = _HookedGenerator()
    fit.fit(hooked)
    assert (
        hooked.paths
        == ["autograd: _HookedGenerator overrides a backward or optimizer-step hook"] * 3
    )
    assert hooked.backward_calls == fit.global_step == 3 * 2 * 2
