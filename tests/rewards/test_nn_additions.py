import pytest
import torch

from tdimitation.errors import NetworkError
from tdimitation.nn import EMANorm, RunningNorm, build_cnn, cnn_output_width


def _mixture_moments(batches, decay):
    """Mean and variance of the mixture of ``batches`` weighted ``decay ** age`` (float64).

    Computed from the definition (weighted first and second moments), independently of
    EMANorm's incremental update.
    """
    n = len(batches)
    weights = torch.tensor([decay ** (n - 1 - i) for i in range(n)], dtype=torch.float64)
    weights = weights / weights.sum()
    means = torch.stack([b.double().mean(0) for b in batches])
    second = torch.stack([b.double().pow(2).mean(0) for b in batches])
    shape = (-1,) + (1,) * (means.dim() - 1)
    mean = (weights.reshape(shape) * means).sum(0)
    return mean, (weights.reshape(shape) * second).sum(0) - mean.pow(2)


def test_ema_norm_small_example_by_hand():
    norm = EMANorm((), decay=0.5)
    norm.update(torch.tensor([1.0, 3.0]))
    # The first batch is taken whole (rate 1): its mean 2 and population variance 1.
    assert (norm.mean.item(), norm.var.item()) == (2.0, 1.0)
    assert norm.num_batches.item() == 1 and norm.inv_learning_rate.item() == 1.0
    norm.update(torch.tensor([5.0, 7.0, 9.0]))
    # Weights 1/3 (old batch) and 2/3: mean 2/3 + 14/3; variance 1/3 + (2/3)(8/3) plus the
    # spread of the batch means, (1/3)(10/3)^2 + (2/3)(5/3)^2.
    assert norm.mean.item() == pytest.approx(16 / 3, abs=1e-12)
    assert norm.var.item() == pytest.approx(23 / 3, abs=1e-12)
    assert norm.count.item() == 5 and norm.num_batches.item() == 2
    assert norm.inv_learning_rate.item() == 1.5
    out = norm(torch.tensor([16 / 3, 16 / 3 + (23 / 3) ** 0.5]))
    assert torch.allclose(out, torch.tensor([0.0, 1.0]), atol=1e-6)


@pytest.mark.parametrize("decay", [0.3, 0.9, 0.99])
def test_ema_norm_equals_decay_weighted_mixture_of_batches(decay):
    gen = torch.Generator().manual_seed(0)
    sizes = [1, 7, 2, 30, 5, 11, 3]  # the weight is per batch, whatever its size
    batches = [torch.randn(s, 3, generator=gen) * (i + 1) + i for i, s in enumerate(sizes)]
    norm = EMANorm(3, decay=decay)
    for k, batch in enumerate(batches, start=1):
        norm.update(batch)
        mean, var = _mixture_moments(batches[:k], decay)
        assert torch.allclose(norm.mean, mean, rtol=0, atol=1e-10)
        assert torch.allclose(norm.var, var, rtol=0, atol=1e-10)
        # inv_learning_rate is the sum of decay^j over j < k.
        assert norm.inv_learning_rate.item() == pytest.approx((1 - decay**k) / (1 - decay))
    assert norm.count.item() == sum(sizes) and norm.num_batches.item() == len(sizes)


def test_ema_norm_tends_to_a_fixed_weight_ema():
    decay = 0.8
    gen = torch.Generator().manual_seed(1)
    norm = EMANorm((), decay=decay)
    for _ in range(200):  # decay^200 ~ 4e-20: the rate has reached 1 - decay
        norm.update(torch.randn(4, generator=gen))
    assert 1 / norm.inv_learning_rate.item() == pytest.approx(1 - decay, abs=1e-15)
    mean, var = norm.mean.item(), norm.var.item()
    w = 1 - decay
    for _ in range(5):
        batch = torch.randn(6, generator=gen, dtype=torch.float64) * 3 + 2
        norm.update(batch)
        # A plain EMA with weight w on each batch's moments and on the between-mean term.
        b_mean, b_var = batch.mean().item(), batch.var(correction=0).item()
        delta = b_mean - mean
        mean, var = mean + w * delta, decay * var + w * b_var + w * decay * delta**2
        assert norm.mean.item() == pytest.approx(mean, abs=1e-12)
        assert norm.var.item() == pytest.approx(var, abs=1e-12)


def test_ema_norm_follows_a_drift_unlike_running_norm():
    ema, running = EMANorm(2, decay=0.9), RunningNorm(2)
    for level in range(50):
        batch = torch.full((8, 2), float(level)) + torch.randn(8, 2) * 0.1
        ema.update(batch)
        running.update(batch)
    assert ema.mean.shape == (2,)
    # On a ramp of slope 1 per batch an EMA lags by decay / (1 - decay) = 9 batches.
    assert torch.allclose(ema.mean, torch.full((2,), 40.0, dtype=torch.float64), atol=0.3)
    assert (running.mean < 30).all()  # the exact mean over everything is ~24.5


def test_ema_norm_checkpoint_round_trip_resumes_exactly(tmp_path):
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(s, 3, generator=gen) for s in (5, 1, 9, 4, 6)]
    norm = EMANorm(3, decay=0.9, clip=1.0)
    for batch in batches[:3]:
        norm.update(batch)
    assert norm(torch.full((2, 3), 1e3)).max().item() == 1.0
    assert set(norm.state_dict()) == {"mean", "var", "count", "num_batches", "inv_learning_rate"}
    torch.save(norm.state_dict(), tmp_path / "norm.pt")
    resumed = EMANorm(3, decay=0.9, clip=1.0)
    resumed.load_state_dict(torch.load(tmp_path / "norm.pt", weights_only=True))
    assert resumed.num_batches.dtype == torch.int64 and resumed.num_batches.item() == 3
    # The resumed norm weighs the next batches as the uninterrupted one does (a norm that
    # lost its batch counter would take the next batch whole).
    for batch in batches[3:]:
        norm.update(batch)
        resumed.update(batch)
    for name, value in norm.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_norm_errors_are_value_errors():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(NetworkError, match="decay must be in"):
            EMANorm(3, decay=bad)
    assert issubclass(NetworkError, ValueError)


def test_build_cnn_shapes_and_errors():
    cnn = build_cnn(3)  # Nature-DQN stack
    assert cnn_output_width(cnn, (3, 84, 84)) == 64 * 7 * 7
    assert cnn(torch.zeros(2, 3, 84, 84)).shape == (2, 3136)
    small = build_cnn(1, (4, 8), (3, 3), (1, 2), activation="tanh")
    assert cnn_output_width(small, (1, 9, 9)) == 8 * 3 * 3
    with pytest.raises(ValueError, match="too small"):
        cnn_output_width(cnn, (3, 20, 20))
    with pytest.raises(ValueError, match="one kernel size and one stride"):
        build_cnn(3, (32, 64), (8,), (4, 2))
    with pytest.raises(ValueError, match="unknown activation"):
        build_cnn(3, activation="nope")
