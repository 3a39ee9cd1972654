"""Train the embedded evaluator network (``DigitsNet``) on the digits train split.

Run ``python -m genbench.eval.train_digits_classifier [--out PATH]``. Training is
bit-reproducible on one machine: fixed seed, deterministic algorithms, one CPU thread, a
fixed number of epochs and seeded augmentation, so running it twice writes byte-identical
weights. It prints the
held-out (test split) accuracy and the sha256 of the weights file; the shipped file's hash is
pinned as ``genbench.eval.extractors.DIGITS_WEIGHTS_SHA256``.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from genbench.core.io import write_with_atomic
from genbench.data.datasets import Digits
from genbench.eval.digits_net import DIGITS_WEIGHTS, DigitsNet

SEED = 0
EPOCHS = 40
BATCH_SIZE = 64
LR = 2e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 1  # pixels; small enough that a shifted digit is still the same digit


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = MAX_SHIFT) -> torch.Tensor:
    """Translate each image of ``x`` (N, 1, H, W) by its own random offset in
    [-max_shift, max_shift] pixels per axis, filling with the background value -1."""
    n, _, h, w = x.shape
    padded = F.pad(x[:, 0], (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1), generator=gen)
    rows = (dy + torch.arange(h))[:, :, None]
    cols = (dx + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], rows, cols].unsqueeze(1)


@torch.no_grad()
def accuracy(net: DigitsNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` that ``net`` (put in eval mode) classifies as ``labels``."""
    net.eval()
    return (net(images).argmax(dim=1) == labels).double().mean().item()


def train(epochs: int = EPOCHS, seed: int = SEED) -> DigitsNet:
    """Train a fresh ``DigitsNet`` on the digits train split; deterministic given ``seed``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = Digits.tensors("train")
    net = DigitsNet()
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = -(-len(images) // BATCH_SIZE)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for idx in order.split(BATCH_SIZE):
            loss = F.cross_entropy(net(random_shift(images[idx], gen)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def save_weights(net: DigitsNet, path: Path) -> str:
    """Write ``net``'s weights to ``path`` as safetensors (atomically); returns their sha256."""
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    write_with_atomic(path, lambda tmp: save_file(state, str(tmp)))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DIGITS_WEIGHTS, help="weights file to write")
    args = parser.parse_args(argv)

    # One thread and deterministic kernels: the point is a byte-identical weights file.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    net = train()
    test_acc = accuracy(net, *Digits.tensors("test"))
    sha = save_weights(net, args.out)
    size = args.out.stat().st_size
    print(f"trained {EPOCHS} epochs in {time.perf_counter() - start:.1f} s")
    print(f"held-out test accuracy: {test_acc:.4f}")
    print(f"wrote {args.out} ({size} bytes), sha256 {sha}")


if __name__ == "__main__":
    main()
