"""pytorch-fid's FID Inception: where its weights come from, and the network built from them.

The weights are ``pt_inception-2015-12-05-6726825d.pth``, pytorch-fid's port of the
TensorFlow FID Inception (downloaded from ``pytorch_fid.inception.FID_WEIGHTS_URL``).
``InceptionWeights.resolve`` looks for them in this order: an explicit path (the CLI's
``--inception-weights``), ``$BENCH_INCEPTION_WEIGHTS``, the torch hub cache where pytorch-fid
keeps them (``<torch.hub.get_dir()>/checkpoints/``), and finally a download into that cache
whose every network step is bounded by ``DOWNLOAD_TIMEOUT_S``, so an offline machine gets a
one-line ``GenbenchError`` naming both fixes instead of a hang.

The network is pytorch-fid's own ``InceptionV3`` (its ``fid_inception_v3``: torchvision's
Inception3 with the FID blocks patched in), loaded strictly from the resolved file;
``FIDInception`` returns the features pytorch-fid's ``--dims`` selects (pool3, 2048-d, by
default) and the 1008-way logits of pool3.

pytorch_fid (and with it torchvision) is imported only when a network is built: the import
takes over a second, and listing or validating extractor names must stay fast.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

from genbench.core.download import (
    check_host_resolves,
    local_or_download,
    one_line,
    socket_timeout,
)
from genbench.core.errors import GenbenchError

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
"""pytorch-fid's weights file name; torch hub names carry the first hex digits of the sha256."""

WEIGHTS_ENV = "BENCH_INCEPTION_WEIGHTS"
"""Environment variable naming a local copy of the weights."""

DOWNLOAD_TIMEOUT_S = 8.0
"""Seconds a host look-up, a connect or a single read of the download may take."""


def _fid_weights_url() -> str:
    from pytorch_fid.inception import FID_WEIGHTS_URL

    return FID_WEIGHTS_URL


@dataclass(frozen=True)
class InceptionWeights:
    """Finds and checks the FID Inception weights file (see the module docstring).

    The defaults are pytorch-fid's file; the fields let tests point the search at another
    name or server. ``file_name`` must follow torch hub's ``<name>-<sha256 prefix>.<ext>``
    convention; ``url`` None means pytorch-fid's ``FID_WEIGHTS_URL``.
    """

    file_name: str = FID_WEIGHTS_NAME
    url: str | None = None
    timeout_s: float = DOWNLOAD_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.sha256_prefix:
            raise ValueError(f"{self.file_name!r} does not carry a torch hub sha256 prefix")

    @property
    def sha256_prefix(self) -> str:
        """The leading hex digits of the sha256 that ``file_name`` promises ("" if none)."""
        match = torch.hub.HASH_REGEX.search(self.file_name)
        return match.group(1) if match else ""

    @property
    def hint(self) -> str:
        """How to fix a missing or wrong file, for the end of error messages."""
        return f"pass --inception-weights PATH or set {WEIGHTS_ENV} to a copy of {self.file_name}"

    def hub_path(self) -> Path:
        """Where torch hub (and so pytorch-fid) caches the file."""
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file_name

    def resolve(self, weights: Path | None) -> Path:
        """The weights file to use: ``weights``, else ``$BENCH_INCEPTION_WEIGHTS``, else the
        torch hub cache, else a fresh download into it. Raises ``GenbenchError`` (one line)
        when the named file is missing or the download fails."""
        return local_or_download(
            weights, WEIGHTS_ENV, self.hub_path(), self._download, "Inception weights", self.hint
        )

    def check(self, path: Path, sha256: str) -> None:
        """Raise ``GenbenchError`` when a file named like the hub's (any file from the cache
        is) has a sha256 that does not start with the name's prefix. Files under other names
        are the user's explicit choice and pass; their sha256 is recorded either way."""
        if path.name == self.file_name and not sha256.startswith(self.sha256_prefix):
            raise GenbenchError(
                f"Inception weights {path} have sha256 {sha256}, but their name promises one "
                f"starting with {self.sha256_prefix} (corrupt or a different file; delete it to "
                f"download again): {self.hint}"
            )

    def _download(self, dst: Path) -> None:
        """Download into ``dst`` with torch hub, checking the sha256 prefix; torch hub writes
        a temporary file and renames it, so a failure leaves nothing behind."""
        url = self.url if self.url is not None else _fid_weights_url()
        dst.parent.mkdir(parents=True, exist_ok=True)
        print(f'Downloading "{url}" to {dst}', file=sys.stderr)
        with socket_timeout(self.timeout_s):
            check_host_resolves(url, self.timeout_s)
            torch.hub.download_url_to_file(url, str(dst), hash_prefix=self.sha256_prefix)


BLOCK_INDEX_BY_DIM: dict[int, int] = {64: 0, 192: 1, 768: 2, 2048: 3}
"""pytorch-fid's ``--dims`` choices and the ``InceptionV3`` block whose output they are: first
max pool (64), second max pool (192), the aux classifier's input (768), pool3 (2048)."""

LOGITS_BLOCK = 3
"""The block ending in pool3, which the 1008-way logits are computed from."""


class FIDInception(nn.Module):
    """pytorch-fid's FID Inception returning (features (N, dims), logits (N, 1008) or None).

    Input: (N, 3, 299, 299) in [-1, 1], the range the network was trained on (pytorch-fid's
    ``normalize_input`` maps its [0, 1] inputs there; nothing is rescaled here). ``blocks`` are
    pytorch-fid's ``InceptionV3.blocks``; features of a block with a spatial extent are
    averaged over it, as pytorch-fid's ``get_activations`` does for ``--dims`` below 2048.
    """

    def __init__(self, blocks: nn.ModuleList, fc: nn.Linear, dims: int = 2048) -> None:
        super().__init__()
        if dims not in BLOCK_INDEX_BY_DIM:
            raise ValueError(f"dims must be one of {sorted(BLOCK_INDEX_BY_DIM)}, got {dims}")
        self.blocks = blocks
        self.fc = fc
        self.dims = dims
        self.feature_block = BLOCK_INDEX_BY_DIM[dims]

    def forward(
        self, x: torch.Tensor, logits: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features (N, dims), logits (N, 1008) or None) of (N, 3, 299, 299) images in
        [-1, 1]; without ``logits`` only the blocks up to the feature block run."""
        last = LOGITS_BLOCK if logits else self.feature_block
        features = x
        for index, block in enumerate(self.blocks[: last + 1]):
            x = block(x)
            if index == self.feature_block:
                features = x
        if features.shape[2:] != (1, 1):
            features = F.adaptive_avg_pool2d(features, output_size=(1, 1))
        # pool3 is (N, 2048, 1, 1). The Inception Score's logits are pool3 x W without the
        # fc bias, as in the original IS code (Salimans et al.), OpenAI's evaluator and
        # torch-fidelity's default (its ``logits_unbiased``); dropout is the identity here.
        return features.flatten(1), x.flatten(1) @ self.fc.weight.T if logits else None


def fold_batch_norm(net: nn.Module) -> nn.Module:
    """Fold each eval-mode batch norm of pytorch-fid's ``BasicConv2d`` blocks (conv, then
    batch norm, then ReLU) into its convolution, in place, with torch's
    ``fuse_conv_bn_eval``: the same affine map in float32, one pass over the activations
    fewer (batch norm was 8% of the CPU forward pass). Features move only by rounding
    (about 1e-5). Returns ``net``."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in net.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(conv.eval(), bn.eval())
            module.bn = nn.Identity()
    return net


def load_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict stored at ``path``; ``GenbenchError`` (one line) if it is not one."""
    hint = InceptionWeights().hint
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GenbenchError(
            f"cannot read Inception weights {path} ({one_line(exc)}): {hint}"
        ) from exc
    if not isinstance(state_dict, Mapping):
        kind = type(state_dict).__name__
        raise GenbenchError(f"Inception weights {path} hold a {kind}, not a state dict: {hint}")
    return state_dict


def build_fid_inception(
    state_dict: Mapping[str, torch.Tensor], dims: int = 2048, source: str = "state dict"
) -> FIDInception:
    """pytorch-fid's FID Inception (eval mode, CPU) with ``state_dict`` loaded strictly.

    Raises ``GenbenchError`` (one line, naming ``source``) when the state dict does not fit
    the network (missing or unexpected keys, wrong shapes).
    """
    from pytorch_fid import inception as pytorch_fid_inception

    # pytorch-fid's builder fetches its weights itself (from the URL, no file argument, no
    # timeout). Handing it ours keeps the architecture, the block split and the strict load
    # its own.
    blocks = sorted({BLOCK_INDEX_BY_DIM.get(dims, LOGITS_BLOCK), LOGITS_BLOCK})
    with mock.patch.object(
        pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state_dict
    ):
        try:
            net = pytorch_fid_inception.InceptionV3(
                blocks, resize_input=False, normalize_input=False
            )
        except Exception as exc:
            raise GenbenchError(
                f"Inception weights {source} do not fit pytorch-fid's FID Inception "
                f"({one_line(exc)}): {InceptionWeights().hint}"
            ) from exc
    # InceptionV3 drops the final fc layer; the strict load above has checked its shapes.
    fc = nn.Linear(2048, 1008)
    fc.load_state_dict({"weight": state_dict["fc.weight"], "bias": state_dict["fc.bias"]})
    return FIDInception(net.blocks, fc, dims).eval()


def load_fid_inception(path: Path, dims: int = 2048) -> FIDInception:
    """pytorch-fid's FID Inception (eval mode, CPU) with the state dict stored at ``path``,
    returning ``dims``-d features. Raises ``GenbenchError`` (one line) when the file cannot
    be read or its state dict does not fit the network."""
    return build_fid_inception(load_state_dict(path), dims, source=str(path))


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in pytorch-fid's format with random values, built offline (for tests and
    for timing the network where the real weights are not at hand).

    pytorch-fid's FID blocks subclass torchvision's and change only their forward passes, so
    torchvision's Inception3 with 1008 classes and no aux head has exactly their parameters.
    """
    import torchvision

    net = torchvision.models.inception_v3(
        weights=None, aux_logits=False, num_classes=1008, init_weights=False
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            # He init keeps activations O(1) through the ~100 layers; non-trivial batch-norm
            # statistics make checks sensitive to their use (eps, eval mode).
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.running_mean.normal_(0.0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return net.state_dict()
