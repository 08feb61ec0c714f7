"""The digits image family's pieces: 2-D denoiser and reward net, the digits split and classifier, classification
metrics of a reward, and the image plots."""

import numpy as np
import pytest
import torch

from relreward_cli.data.digits import classify, digits_data_file, fit_digit_classifier, load_digits_split
from relreward_cli.diffusion.gaussian import GaussianDiffusion
from relreward_cli.diffusion.schedule import NoiseSchedule
from relreward_cli.errors import UserError
from relreward_cli.models.image_unet import ImageRewardNet, ImageUnet
from relreward_cli.plots import plot_class_rewards, plot_image_grid
from relreward_cli.reward.classification import auroc, class_means, heldout_accuracy


@pytest.fixture(scope="module")
def split():
    return load_digits_split(seed=0)


def test_image_nets_shapes():
    torch.manual_seed(0)
    x, t = torch.randn(3, 8, 8), torch.tensor([0, 5, 19])
    assert ImageUnet(8, 8)(x, t).shape == (3, 8, 8)
    assert ImageUnet(8, 8, dim=8, dim_mults=(1, 2, 4))(x, t).shape == (3, 8, 8)
    assert ImageRewardNet(8, 8)(x, t).shape == (3,)
    assert ImageRewardNet(8, 8, dim=8, dim_mults=(1, 2, 4))(x, t).shape == (3,)


@pytest.mark.parametrize("size", [(6, 8), (8, 6), (0, 8)])
def test_image_nets_reject_bad_sizes(size):
    for net in (ImageUnet, ImageRewardNet):
        with pytest.raises(UserError, match="multiple of 4"):
            net(*size, dim_mults=(1, 2, 4))


def test_image_nets_reject_wrong_input():
    with pytest.raises(UserError, match=r"\(batch, 8, 8\)"):
        ImageUnet(8, 8)(torch.zeros(2, 8, 7), torch.zeros(2, dtype=torch.long))


def test_reward_net_double_backward():
    torch.manual_seed(0)
    net = ImageRewardNet(8, 8, dim=8)
    x = torch.randn(4, 8, 8, requires_grad=True)
    (grad_x,) = torch.autograd.grad(net(x, torch.tensor([0, 3, 7, 19])).sum(), x, create_graph=True)
    assert grad_x.shape == x.shape
    (grad_x ** 2).sum().backward()
    grads = {name: p.grad for name, p in net.named_parameters() if p.grad is not None}
    assert set(dict(net.named_parameters())) - set(grads) == {"head.2.bias"}  # a constant shift leaves grad_x
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["head.0.weight"].abs().sum() > 0 and grads["downs.0.0.block1.0.weight"].abs().sum() > 0


def test_image_unet_in_gaussian_diffusion(split):
    torch.manual_seed(0)
    x0 = torch.from_numpy(split.train_images[:32]) / 8 - 1
    diffusion = GaussianDiffusion(ImageUnet(8, 8, dim=8), NoiseSchedule(20, "cosine"), 8, 8, action_dim=0)
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    t, noise = torch.randint(0, 20, (32,), generator=generator), torch.randn(x0.shape, generator=generator)
    losses = []
    for _ in range(50):
        loss = diffusion.row_losses(x0, t=t, noise=noise).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(diffusion.loss(x0).item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert diffusion.sample(4).x.shape == (4, 8, 8)


def test_digits_split(split):
    assert split.train_images.shape[1:] == (8, 8) and split.train_images.dtype == np.float32
    assert split.train_labels.dtype == np.int64
    assert len(split.train_images) + len(split.test_images) == 1797
    assert len(split.test_images) == pytest.approx(0.3 * 1797, abs=1)
    assert split.train_images.min() >= 0 and split.train_images.max() <= 16
    assert set(split.train_labels) == set(split.test_labels) == set(range(10))
    again, other = load_digits_split(seed=0), load_digits_split(seed=1)
    np.testing.assert_array_equal(again.train_images, split.train_images)
    np.testing.assert_array_equal(again.test_labels, split.test_labels)
    assert not np.array_equal(other.train_images, split.train_images)
    train_rows = {row.tobytes() for row in split.train_images.reshape(len(split.train_images), -1)}
    test_rows = [row.tobytes() for row in split.test_images.reshape(len(split.test_images), -1)]
    assert sum(row in train_rows for row in test_rows) < 5  # the digits hold a few exact duplicate images
    assert digits_data_file().name == "digits.csv.gz" and digits_data_file().is_file()


def test_digit_classifier(split):
    classifier = fit_digit_classifier(split.train_images, split.train_labels)
    predicted = classify(classifier, split.test_images)
    assert predicted.dtype == np.int64 and predicted.shape == split.test_labels.shape
    assert (predicted == split.test_labels).mean() >= 0.9
    noisy = split.test_images[:20] + np.random.default_rng(0).normal(0, 0.5, (20, 8, 8))  # leaves [0, 16]
    assert classify(classifier, noisy).shape == (20,)


def test_auroc_and_heldout_accuracy():
    positive = np.repeat([True, False], 50)
    scores = np.where(positive, 1.0, -1.0) + np.random.default_rng(0).uniform(-0.5, 0.5, 100)
    assert auroc(scores, positive) == 1.0
    assert auroc(-scores, positive) == 0.0
    assert auroc(np.zeros(100), positive) == 0.5
    assert heldout_accuracy(scores, positive) == 1.0
    assert heldout_accuracy(np.full(100, 3.0), positive) == 0.5
    # two classes of unequal size (the digits' expert holds 2 of 10): a constant still reads 0.5, not the majority's 0.8
    few = np.arange(100) < 20
    assert heldout_accuracy(np.full(100, 3.0), few) == 0.5
    assert heldout_accuracy(np.where(few, 1.0, -1.0), few) == 1.0
    with pytest.raises(UserError):
        auroc(scores, np.ones(100, dtype=bool))


def test_class_means():
    classes, means, sems = class_means(np.array([1.0, 3.0, 5.0, 2.0, 4.0, 6.0]), np.array([2, 2, 0, 0, 0, 7]))
    np.testing.assert_array_equal(classes, [0, 2, 7])
    np.testing.assert_allclose(means, [11 / 3, 2.0, 6.0])
    np.testing.assert_allclose(sems, [np.std([5, 2, 4], ddof=1) / np.sqrt(3), np.std([1, 3], ddof=1) / np.sqrt(2), 0])


def test_image_plots(tmp_path, split):
    classes, means, sems = class_means(np.arange(20.0), np.arange(20) % 10)
    path = plot_class_rewards(classes, means, sems, {3, 7}, tmp_path / "bars.png", "reward per digit")
    assert path.read_bytes()[:4] == b"\x89PNG"
    rows = {"expert": split.train_images[:5], "base": split.train_images[5:8]}
    path = plot_image_grid(rows, tmp_path / "grid" / "images.png", "samples",
                           captions={"expert": [f"{v:.2f}" for v in range(5)]})
    assert path.read_bytes()[:4] == b"\x89PNG"
