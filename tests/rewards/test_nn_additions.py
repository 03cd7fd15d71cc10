import pytest
import torch

from tdimitation.nn import EMANorm, RunningNorm, build_cnn, cnn_output_width


def test_ema_norm_matches_hand_computation():
    norm = EMANorm((), decay=0.5)
    norm.update(torch.tensor([1.0, 3.0]))
    # First batch initialises: mean 2, population variance 1.
    assert norm.mean.item() == pytest.approx(2.0)
    assert norm.var.item() == pytest.approx(1.0)
    norm.update(torch.tensor([5.0, 7.0, 9.0]))
    # delta = 7 - 2 = 5; mean = 2 + 0.5 * 5; var = 0.5 * (1 + 0.5 * 25) + 0.5 * 8/3.
    assert norm.mean.item() == pytest.approx(4.5)
    assert norm.var.item() == pytest.approx(97 / 12)
    assert norm.count.item() == 5
    out = norm(torch.tensor([4.5, 4.5 + (97 / 12) ** 0.5]))
    assert torch.allclose(out, torch.tensor([0.0, 1.0]), atol=1e-6)


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


def test_ema_norm_clip_state_dict_and_validation():
    norm = EMANorm(3, decay=0.9, clip=1.0)
    norm.update(torch.randn(16, 3))
    assert norm(torch.full((2, 3), 1e3)).max().item() == 1.0
    other = EMANorm(3, decay=0.9)
    other.load_state_dict(norm.state_dict())
    assert torch.equal(other.mean, norm.mean) and torch.equal(other.var, norm.var)
    assert other.count.item() == 16
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="decay must be in"):
            EMANorm(3, decay=bad)


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
