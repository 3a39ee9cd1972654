"""The shipped digits evaluator network: pinned file, accuracy, reproducible training."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from genbench.data.datasets import Digits
from genbench.eval.digits_net import DIGITS_WEIGHTS, DigitsNet
from genbench.eval.extractors import DIGITS_WEIGHTS_SHA256, file_sha256, load_extractor, quantize
from genbench.eval.train_digits_classifier import accuracy, random_shift, train


def test_shipped_weights_are_pinned_and_small() -> None:
    assert DIGITS_WEIGHTS.is_file()
    assert DIGITS_WEIGHTS.stat().st_size <= 1_000_000
    assert file_sha256(DIGITS_WEIGHTS) == DIGITS_WEIGHTS_SHA256


def test_held_out_accuracy() -> None:
    net = DigitsNet()
    net.load_state_dict(load_file(DIGITS_WEIGHTS))
    images, labels = Digits.tensors("test")
    assert accuracy(net, images, labels) >= 0.97


def test_extractor_logits_match_the_net() -> None:
    """The extractor's logits at native size are the net's on the uint8-quantized images (as
    if saved as PNG), so its accuracy is the same."""
    images, labels = Digits.tensors("test")
    extractor = load_extractor("digits")
    features, logits = extractor(images)
    assert features.shape == (360, 64) and logits.shape == (360, 10)
    assert (logits.argmax(1) == labels).double().mean().item() >= 0.97
    assert extractor.quantize
    expected = extractor.net(quantize(images).float() / 255 * 2 - 1)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_random_shift_translates_with_background_fill() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(50, 1, 16, 16) * 2 - 1
    shifted = random_shift(x, gen, max_shift=1)
    assert shifted.shape == x.shape
    for img, out in zip(x[:, 0], shifted[:, 0], strict=True):
        padded = torch.nn.functional.pad(img, (1, 1, 1, 1), value=-1.0)
        windows = [padded[dy : dy + 16, dx : dx + 16] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out, w) for w in windows)
    assert torch.equal(random_shift(x, gen, max_shift=0), x)


@pytest.fixture
def deterministic_cpu():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_training_is_bit_reproducible(deterministic_cpu: None) -> None:
    a, b = train(epochs=1).state_dict(), train(epochs=1).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)  # train's seed: the same initial weights, so training moved them
    assert not torch.equal(a["head.weight"], DigitsNet().state_dict()["head.weight"])
