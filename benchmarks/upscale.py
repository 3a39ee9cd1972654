"""Upscaling after sampling (``[sample] upscale = "weights.pth"``): a super-resolution
network from the user's file, loaded by spandrel (Real-ESRGAN x4 and the many architectures
it knows), applied to every evaluation sample as a stage of its own, timed apart from
sampling and recorded in the protocol. The samples are then evaluated against reference
statistics of the real images resized to the upscaled resolution."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from spandrel import ImageModelDescriptor, ModelLoader

from genbench.core import io
from genbench.core.errors import GenbenchError


class Upscaler:
    """A spandrel image model applied to batches in [-1, 1] of ``channels`` channels (grey
    images go through an RGB model as three equal channels and come back as their mean)."""

    def __init__(self, path: Path, device: torch.device, channels: int) -> None:
        self.path = Path(path)
        try:
            descriptor = ModelLoader(device=device).load_from_file(self.path)
        except Exception as exc:  # spandrel raises many kinds; all mean "not loadable"
            text = str(exc).strip().splitlines()
            why = text[0] if text else type(exc).__name__
            raise GenbenchError(
                f"sample.upscale: {self.path} is no upscaler spandrel can load ({why})"
            ) from None
        if not isinstance(descriptor, ImageModelDescriptor):
            raise GenbenchError(
                f"sample.upscale: {self.path} holds a {type(descriptor).__name__}, not an "
                "image-to-image model"
            )
        inputs, outputs = descriptor.input_channels, descriptor.output_channels
        if inputs not in (channels, 3 if channels == 1 else channels) or outputs not in (
            channels,
            3 if channels == 1 else channels,
        ):
            raise GenbenchError(
                f"sample.upscale: {self.path} maps {inputs} to {outputs} channels; the "
                f"samples have {channels}"
            )
        self.descriptor = descriptor.eval()
        self.scale: int = descriptor.scale
        self.channels = channels
        self.sha256 = io.file_sha256(self.path)
        self.seconds = 0.0
        """Time spent upscaling so far (``__call__``), synchronised on CUDA."""

    def describe(self) -> str:
        """What the protocol records: architecture, scale and the weights' sha256."""
        arch = self.descriptor.architecture.name
        return f"{arch} x{self.scale} sha256:{self.sha256[:16]}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (N, C, H, W) in [-1, 1] -> (N, C, sH, sW) in [-1, 1]."""
        if images.is_cuda:  # sampling's queued kernels are sampling time, not this stage's
            torch.cuda.synchronize(images.device)
        t0 = time.perf_counter()
        x = (images.float() + 1.0) / 2.0
        if self.descriptor.input_channels != x.shape[1]:
            x = x.expand(-1, self.descriptor.input_channels, -1, -1)
        param = next(self.descriptor.model.parameters(), None)
        if param is not None:
            x = x.to(param.device, param.dtype)
        # The descriptor pads to the model's size requirements (window-based models) and
        # crops the output back.
        y = self.descriptor(x).float().clamp(0.0, 1.0)
        if y.shape[1] != self.channels:
            y = y.mean(dim=1, keepdim=True)
        if y.is_cuda:
            torch.cuda.synchronize(y.device)
        self.seconds += time.perf_counter() - t0
        return (y * 2.0 - 1.0).to(images.device)
