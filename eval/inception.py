"""pytorch-fid's FID Inception: where its weights come from, and the network built from them.

The weights are ``pt_inception-2015-12-05-6726825d.pth``, pytorch-fid's port of the
TensorFlow FID Inception (downloaded from ``pytorch_fid.inception.FID_WEIGHTS_URL``).
``InceptionWeights.resolve`` looks for them in this order: an explicit path (the CLI's
``--inception-weights``), ``$BENCH_INCEPTION_WEIGHTS``, the torch hub cache where pytorch-fid
keeps them (``<torch.hub.get_dir()>/checkpoints/``), and finally a download into that cache
whose every network step is bounded by ``DOWNLOAD_TIMEOUT_S``, so an offline machine gets a
one-line ``GenbenchError`` naming both fixes instead of a hang.

The network is pytorch-fid's own ``fid_inception_v3`` (torchvision's Inception3 with the FID
blocks patched in), loaded strictly from the resolved file; ``FIDInception`` returns its pool3
features (what pytorch-fid's ``InceptionV3([3])`` returns) and its 1008-way logits.

pytorch_fid (and with it torchvision) is imported only when a network is built: the import
takes over a second, and listing or validating extractor names must stay fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from benchmarks.download import check_host_resolves, one_line, socket_timeout
from benchmarks.errors import GenbenchError

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
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise GenbenchError(f"Inception weights not found at {path}: {self.hint}")
            return path
        env = os.environ.get(WEIGHTS_ENV, "").strip()
        if env:
            path = Path(env).expanduser()
            if not path.is_file():
                raise GenbenchError(f"{WEIGHTS_ENV}={env} is not a file: {self.hint}")
            return path
        cached = self.hub_path()
        if not cached.is_file():
            try:
                self._download(cached)
            except Exception as exc:
                raise GenbenchError(
                    f"Inception weights not found (looked in {cached}) and download failed "
                    f"({one_line(exc)}): {self.hint}"
                ) from exc
        return cached

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


class FIDInception(nn.Module):
    """pytorch-fid's FID Inception returning (pool3 features (N, 2048), logits (N, 1008)).

    Input: (N, 3, 299, 299) in [-1, 1], the range the network was trained on (pytorch-fid's
    ``normalize_input`` maps its [0, 1] inputs there; nothing is rescaled here).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        # torchvision's forward ends avgpool -> dropout -> flatten -> fc. With fc lifted out,
        # the unmodified forward yields pool3 (dropout is the identity in eval mode), and the
        # logits are fc of it: both outputs from one pass, without hooks.
        self.fc = net.fc
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool3 features (N, 2048), logits (N, 1008)) of (N, 3, 299, 299) images in [-1, 1]."""
        pool3 = self.net(x)
        return pool3, self.fc(pool3)


def load_fid_inception(path: Path) -> FIDInception:
    """pytorch-fid's FID Inception (eval mode, CPU) with the state dict stored at ``path``.

    Raises ``GenbenchError`` (one line) when the file cannot be read or its state dict does
    not fit the network (missing or unexpected keys, wrong shapes).
    """
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
    from pytorch_fid import inception as pytorch_fid_inception

    # pytorch-fid's builder fetches its weights itself (from the URL, no file argument, no
    # timeout). Handing it ours keeps both the architecture and the strict load its own.
    with mock.patch.object(
        pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state_dict
    ):
        try:
            net = pytorch_fid_inception.fid_inception_v3()
        except Exception as exc:
            raise GenbenchError(
                f"Inception weights {path} do not fit pytorch-fid's FID Inception "
                f"({one_line(exc)}): {hint}"
            ) from exc
    return FIDInception(net).eval()
