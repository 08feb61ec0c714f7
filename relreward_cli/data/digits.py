"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no download): a stratified split, the file that
holds them (for a provenance digest) and a pixel classifier that labels diffusion samples.

Pixel values are raw intensities in [0, 16] throughout; an image `(8, 8)` is rows x columns.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from relreward_cli.errors import UserError

if TYPE_CHECKING:
    from sklearn.svm import SVC

PIXEL_MAX = 16.0  # the digits' largest intensity


@dataclass
class DigitsSplit:
    """`train_images` `(N, 8, 8)` float32 raw pixels in [0, 16], `train_labels` `(N,)` int64 digits 0-9; the same
    for the test part `(M, 8, 8)`, `(M,)`."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@functools.cache
def _image_and_class_counts() -> tuple[int, int]:
    """How many digit images scikit-learn ships, and of how many classes (read once: every stage checks)."""
    from sklearn.datasets import load_digits  # scikit-learn takes a second to import: only where it is used

    labels = load_digits().target
    return len(labels), len(set(labels.tolist()))


def split_problems(test_fraction: object, seed: object) -> list[str]:
    """What keeps `load_digits_split` from splitting with these values: each part, being stratified, needs an
    image of every class; the seed is a NumPy seed (an integer in [0, 2**32 - 1])."""
    problems = []
    if not isinstance(test_fraction, (int, float)) or isinstance(test_fraction, bool) or not 0 < test_fraction < 1:
        problems.append(f"test_fraction={test_fraction}: must be a number in (0, 1), the share of images held out")
    else:
        n_images, n_classes = _image_and_class_counts()
        n_test = math.ceil(test_fraction * n_images)
        if min(n_test, n_images - n_test) < n_classes:
            problems.append(f"test_fraction={test_fraction}: gives {n_test} test and {n_images - n_test} training "
                            f"images of {n_images}; each part needs at least one of each of the {n_classes} digits")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        problems.append(f"split_seed={seed}: must be an integer in [0, 2**32 - 1]")
    return problems


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> DigitsSplit:
    """The digits split into train and test parts, stratified by label (every class in both), the same for a
    given `seed`."""
    if problems := split_problems(test_fraction, seed):
        raise UserError("The digits cannot be split so: " + "; ".join(problems) + ".")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(images, labels, test_size=test_fraction, random_state=seed,
                                                        stratify=labels)
    return DigitsSplit(train_x, train_y, test_x, test_y)


def digits_data_file() -> Path:
    """The file in scikit-learn's installed package that holds the digits (`sklearn/datasets/data/digits.csv.gz`)."""
    path = Path(str(resources.files("sklearn.datasets.data") / "digits.csv.gz"))
    if not path.is_file():
        raise UserError(f"scikit-learn's digits file is missing at {path}; reinstall scikit-learn.")
    return path


def _features(images: np.ndarray) -> np.ndarray:
    """Images `(N, 8, 8)` raw pixels (clipped to [0, 16]) -> features `(N, 64)` in [0, 1]."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3:
        raise UserError(f"Expected images shaped (N, height, width), got {images.shape}.")
    return np.clip(images, 0.0, PIXEL_MAX).reshape(len(images), -1) / PIXEL_MAX


def fit_digit_classifier(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> SVC:
    """An RBF support-vector classifier of images `(N, 8, 8)` raw pixels with labels `(N,)` (about 0.99 test
    accuracy on the digits)."""
    from sklearn.svm import SVC

    return SVC(kernel="rbf", C=10.0, gamma="scale", random_state=seed).fit(_features(images), np.asarray(labels))


def classify(classifier: SVC, images: np.ndarray) -> np.ndarray:
    """Predicted digits `(N,)` int64 of images `(N, 8, 8)` in raw pixel units; values outside [0, 16] (diffusion
    samples) are clipped first."""
    return classifier.predict(_features(images)).astype(np.int64)


class ImageSamples:
    """Normalized images `(N, H, W)` float32 as training samples (a diffusion model's `(horizon, transition_dim)`
    arrays), with their labels `(N,)`; `sample(batch_size, generator)` draws `(batch_size, H, W)` uniformly with
    replacement (the interface of `relreward_cli.data.segments.SegmentDataset`)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.data = torch.as_tensor(np.asarray(images, dtype=np.float32))
        self.labels = np.asarray(labels, dtype=np.int64)

    def to(self, device: torch.device | str) -> ImageSamples:
        self.data = self.data.to(device)
        return self

    def __len__(self) -> int:
        return len(self.data)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        index = torch.randint(len(self.data), (batch_size,), generator=generator).to(self.data.device)
        return self.data[index]
