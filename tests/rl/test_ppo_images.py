"""PPO on image observations: CNN actor and critic (Nature-CNN style encoders)."""

import pytest
import torch

from tdimitation.envs import make_env
from tdimitation.errors import NetworkError, SpaceMismatchError
from tdimitation.evaluation import evaluate_policy
from tdimitation.nn import ImageEncoder, is_channels_last
from tdimitation.policies import CategoricalActor, build_actor, load_policy, save_policy
from tdimitation.rl.ppo import PPO
from tdimitation.rl.sac import SAC
from tests.helpers import quiet_trainer as trainer

CUE_ENV = "tests.rl.image_envs:CueImageEnv"
# Small images need small kernels: two 3x3 convolutions, 32 features.
SMALL_CNN = {"hidden_channels": [8, 8], "kernel_sizes": [3, 3], "strides": [1, 1], "features": 32}


def test_image_encoder_nature_defaults_and_pixel_scaling():
    encoder = ImageEncoder((4, 84, 84))
    convs = [m for m in encoder.cnn if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (8, 8), (4, 4)),
        (64, (4, 4), (2, 2)),
        (64, (3, 3), (1, 1)),
    ]
    assert encoder.linear.in_features == 64 * 7 * 7 and encoder.out_features == 512
    pixels = torch.randint(0, 256, (2, 3, 4, 84, 84), dtype=torch.uint8)
    out = encoder(pixels)
    assert out.shape == (2, 3, 512)
    # uint8 pixels are the same images as floats scaled to [0, 1].
    assert torch.allclose(out, encoder(pixels.float() / 255), atol=1e-6)


def test_image_encoder_channels_last_matches_channels_first():
    assert is_channels_last((84, 84, 4)) and not is_channels_last((4, 84, 84))
    first = ImageEncoder((2, 12, 12), **SMALL_CNN)
    last = ImageEncoder((12, 12, 2), **SMALL_CNN)
    last.load_state_dict(first.state_dict())
    images = torch.rand(5, 2, 12, 12)
    assert torch.allclose(first(images), last(images.permute(0, 2, 3, 1)), atol=1e-6)


def test_image_encoder_errors_name_the_shape():
    with pytest.raises(NetworkError, match=r"\(C, H, W\)"):
        ImageEncoder((84, 84))
    with pytest.raises(NetworkError, match="too small"):
        ImageEncoder((1, 10, 10))  # Nature kernels do not fit 10x10 images
    with pytest.raises(NetworkError, match="1, 10, 10"):
        ImageEncoder((1, 10, 10), **SMALL_CNN)(torch.zeros(3, 10, 10, 1))


def test_build_actor_for_images_and_refusals():
    env = make_env(CUE_ENV, 2, seed=0)
    try:
        actor = build_actor(env, hidden_sizes=(16,), cnn=SMALL_CNN)
        assert isinstance(actor, CategoricalActor) and actor.encoder is not None
        assert actor.config["image_shape"] == [1, 10, 10]
        td = env.reset()
        out = actor(td)
        assert out["action"].shape == (2,) and out["action"].dtype == torch.int64
        with pytest.raises(SpaceMismatchError, match="images"):
            build_actor(env, kind="qvalue")
        with pytest.raises(SpaceMismatchError, match="normalize_observations"):
            build_actor(env, normalize_observations=True, cnn=SMALL_CNN)
    finally:
        env.close()
    vector_env = make_env("CartPole-v1", 1, seed=0)
    try:
        with pytest.raises(SpaceMismatchError, match="cnn options"):
            build_actor(vector_env, cnn=SMALL_CNN)
    finally:
        vector_env.close()


def test_sac_refuses_images_with_a_clear_error():
    with pytest.raises(SpaceMismatchError, match="images"):
        SAC(CUE_ENV, num_envs=1, total_frames=64, learning_starts=0, batch_size=8)


@pytest.mark.parametrize("channels_last", [False, True])
def test_ppo_learns_from_images(tmp_path, channels_last):
    """The cue is only in the pixels: a policy that ignores them earns about half."""
    model = PPO(
        CUE_ENV,
        env_kwargs={"channels_last": channels_last},
        num_envs=4,
        n_steps=32,
        total_frames=4 * 32 * 25,
        n_epochs=4,
        batch_size=32,
        learning_rate=3e-3,
        ent_coef=0.0,
        hidden_sizes=(32,),
        cnn=SMALL_CNN,
        seed=0,
    )
    assert model.critic.encoder is not None
    assert model.critic.encoder is not model.actor.encoder  # separate feature extractors
    trainer().fit(model)
    assert model.update_path.startswith("autograd: image encoders")
    policy = model.export_policy()
    env = make_env(CUE_ENV, 4, seed=100, env_kwargs={"channels_last": channels_last})
    try:
        stats = evaluate_policy(policy, env, n_episodes=16, deterministic=True)
        # The saved policy file rebuilds the encoder and acts the same.
        path = save_policy(policy, tmp_path / "cnn_policy.pt")
        loaded = load_policy("tdimitation", path, env=env)
        td = env.reset()
        assert torch.equal(policy(td.clone())["action"], loaded(td.clone())["action"])
    finally:
        env.close()
    assert stats["return_mean"] >= 7.0, stats  # 8 = always right, ~4 = ignoring the image


def test_ppo_image_collection_keeps_uint8_observations():
    model = PPO(
        CUE_ENV, num_envs=2, n_steps=8, total_frames=16, batch_size=8, cnn=SMALL_CNN, seed=0
    )
    trainer().fit(model)
    batch = model.last_batch
    assert batch["observation"].dtype == torch.uint8
    assert batch["observation"].shape == (2, 8, 1, 10, 10)


def test_image_encoder_follows_its_parameters_dtype_and_device():
    encoder = ImageEncoder((1, 10, 10), **SMALL_CNN).double()
    pixels = torch.randint(0, 256, (3, 1, 10, 10), dtype=torch.uint8)
    assert encoder(pixels).dtype == torch.float64
    # CPU pixels reach parameters on another device (the meta device stands in for a GPU).
    out = encoder.to("meta")(pixels)
    assert out.device.type == "meta" and out.shape == (3, 32)
