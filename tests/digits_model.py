"""A small CNN trained in seconds on scikit-learn's bundled digits (8x8 grayscale, 10 classes).

Real weights and real labels without a download, so int8 accuracy and the precision fallback can be
tested for what they mean. As a farm model source: `tests.digits_model:trained_digits_cnn` with
input_shape (1, 8, 8); `save_digits_arrays` writes matching calibration / held-out .npy files and labels.

The trained weights are cached in the temp folder, keyed by the training recipe, torch version, this
file's code and the CPU (see weights_cache), so every process of one session (Ray workers included)
trains at most once and no other code or machine's weights are read.
"""

from __future__ import annotations

import copy
import hashlib
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workers.device import CpuInfo, describe

INPUT_SHAPE = (1, 8, 8)
TEST_COUNT = 500
CALIBRATION_COUNT = 64
SEED = 0
EPOCHS = 12
# Part of the cached weights' key (with this file's code, which changes whenever DigitsCNN or _train does).
RECIPE = f"digits-cnn-v1-seed{SEED}-epochs{EPOCHS}-test{TEST_COUNT}-torch{torch.__version__}"


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class DigitsData:
    train_inputs: np.ndarray  # [N, 1, 8, 8] float32 in [0, 1]
    train_labels: np.ndarray  # [N] int64
    test_inputs: np.ndarray
    test_labels: np.ndarray

    @property
    def calibration_inputs(self) -> np.ndarray:
        """Training images (never test images) for calibration."""
        return self.train_inputs[:CALIBRATION_COUNT]


def digits_data() -> DigitsData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    inputs = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(labels))
    test, train = order[:TEST_COUNT], order[TEST_COUNT:]
    return DigitsData(inputs[train], labels[train], inputs[test], labels[test])


def weights_cache(source: str | None = None, cpu: CpuInfo | None = None) -> Path:
    """Where the trained weights are kept between sessions, keyed by everything that shapes them:
    the recipe and torch version, the training code (this file, unless `source` is given), and the CPU
    (this one unless given: kernels round differently per instruction set), so weights from other code
    or another machine sharing the temp folder are never reused."""
    code = Path(__file__).read_text() if source is None else source
    cpu = describe().cpu if cpu is None else cpu
    key = "\n".join((RECIPE, code, platform.platform(), cpu.arch, cpu.model, " ".join(cpu.isa)))
    return Path(tempfile.gettempdir()) / f"farm-digits-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def trained_digits_cnn() -> nn.Module:
    """The trained CNN in eval mode (the farm factory source)."""
    cache = weights_cache()
    module = DigitsCNN()
    if cache.is_file():
        module.load_state_dict(torch.load(cache, weights_only=True))
        return module.eval()
    _train(module, digits_data())
    # Write then rename: parallel workers may train at the same time, and none may read half a file.
    partial = cache.with_suffix(f".{os.getpid()}.partial")
    torch.save(module.state_dict(), partial)
    os.replace(partial, cache)
    return module.eval()


def _train(module: nn.Module, data: DigitsData) -> None:
    torch.manual_seed(SEED)
    inputs = torch.from_numpy(data.train_inputs)
    labels = torch.from_numpy(data.train_labels)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(SEED)
    module.train()
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(inputs), generator=generator).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(module(inputs[batch]), labels[batch])
            loss.backward()
            optimizer.step()
    module.eval()


def predict(module: nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(inputs)).numpy()  # type: ignore[no-any-return]


def with_outlier_channel(module: DigitsCNN, value: float = 400.0) -> DigitsCNN:
    """The same function with one extra first-layer channel that is always `value` and never used.

    The fp32 outputs are unchanged (the next layer's weights for that channel are zero), but the
    channel stretches the per-tensor activation range of the first layer's output a hundredfold, so
    a per-tensor int8 scale leaves the real channels a few quantization levels: int8 breaks unless
    the precision fallback keeps that tensor in float. Outlier channels like this occur in real
    networks (large-magnitude features in transformers, unfused scale layers).
    """
    return _with_extra_channel(module, bias=value, next_weight=0.0)


def with_outlier_weights(module: DigitsCNN, value: float = 1000.0) -> DigitsCNN:
    """The same function with one extra first-layer channel that is always 0, read by the second
    layer through weights of `value`: the activations are untouched, but every output channel of
    the second conv now holds one weight hundreds of times its others, so its per-channel int8 scale
    rounds the real weights to zero. Weights, not activations, break int8 here.
    """
    return _with_extra_channel(module, bias=0.0, next_weight=value)


def _with_extra_channel(module: DigitsCNN, bias: float, next_weight: float) -> DigitsCNN:
    """One more first-layer channel with zero weights and `bias` (after ReLU: the constant max(bias, 0)),
    read by the second layer with weight `next_weight`; the fp32 function stays the same when one of the two is 0."""
    conv1: nn.Conv2d = module.features[0]  # type: ignore[assignment]
    conv2: nn.Conv2d = module.features[2]  # type: ignore[assignment]
    widened = DigitsCNN(width=conv1.out_channels + 1)
    state = copy.deepcopy(module.state_dict())
    with torch.no_grad():
        state["features.0.weight"] = torch.cat([conv1.weight, torch.zeros(1, *conv1.weight.shape[1:])])
        state["features.0.bias"] = torch.cat([conv1.bias, torch.tensor([bias])])  # type: ignore[list-item]
        state["features.2.weight"] = torch.cat([conv2.weight, torch.full((conv2.out_channels, 1, 3, 3), next_weight)], dim=1)
    widened.load_state_dict(state)
    return widened.eval()


def outlier_digits_cnn() -> nn.Module:
    """The trained CNN with an outlier channel (see with_outlier_channel): a farm source where int8 needs the fallback."""
    return with_outlier_channel(trained_digits_cnn())  # type: ignore[arg-type]


def outlier_weights_digits_cnn() -> nn.Module:
    """The trained CNN whose second conv holds outlier weights (see with_outlier_weights)."""
    return with_outlier_weights(trained_digits_cnn())  # type: ignore[arg-type]


def export_onnx(factory: str = "trained_digits_cnn") -> bytes:
    """The ONNX the farm's export stage makes from one of this module's factories."""
    from workers.models import export
    from workers.structs import ModelRef

    return export(ModelRef("digits", f"{__name__}:{factory}", None, INPUT_SHAPE)).onnx_bytes


def save_digits_arrays(folder: str | Path) -> dict[str, Path]:
    """Write calibration.npy (training images), holdout.npy (test images) and labels.csv for end-to-end runs."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    data = digits_data()
    paths = {"calibration": root / "calibration.npy", "holdout": root / "holdout.npy", "labels": root / "labels.csv"}
    np.save(paths["calibration"], data.calibration_inputs)
    np.save(paths["holdout"], data.test_inputs)
    rows = [f"holdout.npy[{i}],{label}" for i, label in enumerate(data.test_labels)]
    paths["labels"].write_text("file,label\n" + "\n".join(rows) + "\n")
    return paths
