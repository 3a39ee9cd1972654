"""FD-DINOv2's extractor on random weights written in Meta's release layout
(``dinov2_vitl14_pretrain.pth``: ``cls_token``, a 37 x 37 ``pos_embed``, ``mask_token``,
``blocks.N.ls1.gamma``, ...). A two-block ViT-S/14 keeps the tests fast; the loader builds
whatever ViT/14 the file holds. The features are checked against a forward pass written
here from DINOv2's architecture and EDM2's preprocessing, independently of timm."""

from __future__ import annotations

import dataclasses
import json
import math
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from genbench.eval.dinov2 import WEIGHTS_ENV, build_vit
from genbench.eval.extractors import ExtractorOptions, load_extractor

WIDTH, DEPTH, GRID = 384, 2, 37  # ViT-S/14 widths, two blocks, the release's 518 px grid


def official_state(seed: int = 0, width: int = WIDTH, depth: int = DEPTH) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float | None = None) -> torch.Tensor:
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        return torch.randn(shape, generator=g) * (scale or 1 / math.sqrt(fan_in))

    state = {
        "cls_token": rand(1, 1, width, scale=0.5),
        "pos_embed": rand(1, 1 + GRID * GRID, width, scale=0.5),
        "mask_token": rand(1, width, scale=0.5),
        "patch_embed.proj.weight": rand(width, 3, 14, 14),
        "patch_embed.proj.bias": rand(width, scale=0.1),
        "norm.weight": 1 + rand(width, scale=0.1),
        "norm.bias": rand(width, scale=0.1),
    }
    w = width
    layers = {"norm1": None, "attn.qkv": (3 * w, w), "attn.proj": (w, w), "norm2": None,
              "mlp.fc1": (4 * w, w), "mlp.fc2": (w, 4 * w)}  # fmt: skip
    for i in range(depth):
        b = f"blocks.{i}"
        for name, shape in layers.items():
            weight = 1 + rand(w, scale=0.1) if shape is None else rand(*shape)
            state[f"{b}.{name}.weight"] = weight
            state[f"{b}.{name}.bias"] = rand(weight.shape[0], scale=0.1)
        state[f"{b}.ls1.gamma"] = rand(w, scale=0.3)
        state[f"{b}.ls2.gamma"] = rand(w, scale=0.3)
    return state


def reference_features(sd: dict, images: torch.Tensor) -> torch.Tensor:
    """DINOv2's CLS feature of uint8 images (N, 3, H, W) by EDM2's recipe, written out."""
    x = F.interpolate(images.float(), size=(224, 224), mode="bicubic", antialias=True) / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    x = (x - mean) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    n, d = x.shape[0], sd["cls_token"].shape[-1]
    patches = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    tokens = torch.cat([sd["cls_token"].expand(n, -1, -1), patches.flatten(2).transpose(1, 2)], 1)
    # DINOv2's interpolate_pos_encoding: bicubic at scale (16 + 0.1) / 37, no antialiasing.
    grid = sd["pos_embed"][:, 1:].reshape(1, GRID, GRID, d).permute(0, 3, 1, 2)
    scale = (16 + 0.1) / GRID
    grid = F.interpolate(grid, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    pos = torch.cat([sd["pos_embed"][:, :1], grid.permute(0, 2, 3, 1).reshape(1, 256, d)], 1)
    tokens = tokens + pos
    heads = d // 64
    for i in range(len({k.split(".")[1] for k in sd if k.startswith("blocks.")})):
        b = f"blocks.{i}"
        h = F.layer_norm(tokens, (d,), sd[f"{b}.norm1.weight"], sd[f"{b}.norm1.bias"], 1e-6)
        qkv = F.linear(h, sd[f"{b}.attn.qkv.weight"], sd[f"{b}.attn.qkv.bias"])
        q, k, v = qkv.reshape(n, -1, 3, heads, 64).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(n, -1, d)
        o = F.linear(o, sd[f"{b}.attn.proj.weight"], sd[f"{b}.attn.proj.bias"])
        tokens = tokens + sd[f"{b}.ls1.gamma"] * o
        h = F.layer_norm(tokens, (d,), sd[f"{b}.norm2.weight"], sd[f"{b}.norm2.bias"], 1e-6)
        m = F.gelu(F.linear(h, sd[f"{b}.mlp.fc1.weight"], sd[f"{b}.mlp.fc1.bias"]))
        tokens = tokens + sd[f"{b}.ls2.gamma"] * F.linear(
            m, sd[f"{b}.mlp.fc2.weight"], sd[f"{b}.mlp.fc2.bias"]
        )
    return F.layer_norm(tokens, (d,), sd["norm.weight"], sd["norm.bias"], 1e-6)[:, 0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_random.pth"
    torch.save(official_state(), path)
    return path


def test_features_are_dinov2s_cls_token_after_edm2s_preprocessing(weights: Path) -> None:
    ext = load_extractor("dinov2", "cpu", weights, ExtractorOptions(dims=WIDTH))
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    features, logits = ext(images, logits=False)
    expected = reference_features(official_state(), images)
    assert logits is None and features.shape == (3, WIDTH)
    assert expected.std() > 0.1  # a generic feature, not a constant one
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
    # Float images in [-1, 1] are quantized to the same uint8 first (a PNG's pixels).
    again, _ = ext(images.float() / 127.5 - 1, logits=False)
    torch.testing.assert_close(again, features, rtol=1e-5, atol=1e-5)
    proto = ext.protocol()
    assert (proto["extractor"], proto["resize"], proto["input_size"], proto["dims"]) == (
        "dinov2_vits14",
        "bicubic_antialias",
        224,
        WIDTH,
    )


def test_the_release_layout_builds_vit_l14() -> None:
    """FD-DINOv2's network: 24 blocks, 1024 wide, 16 heads, 303.2M parameters at 224 px."""
    net = build_vit(1024, 24)
    assert sum(p.numel() for p in net.parameters()) == 303_227_904
    assert net.num_features == 1024 and net.blocks[0].attn.num_heads == 16


def test_bench_eval_gives_fd_dinov2_with_its_protocol(cli, weights: Path, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    for name, shift in (("real", 0.0), ("fake", 0.4)):
        folder = tmp_path / name
        folder.mkdir()
        images = (torch.rand(12, 3, 32, 32, generator=g) * 2 - 1 + shift).clamp(-1, 1)
        for i, img in enumerate(images):
            save_image(img, folder / f"{i:02d}.png", normalize=True, value_range=(-1, 1))
    out = tmp_path / "fd.json"
    common = ["--extractor", "dinov2", "--weights", str(weights), "--dims", str(WIDTH),
              "--device", "cpu", "--num-workers", "0"]  # fmt: skip
    run = cli("eval", str(tmp_path / "real"), str(tmp_path / "fake"), *common,
              "--metrics", "fid,kid", "--kid-subset-size", "6", "--out", str(out))  # fmt: skip
    assert run.code == 0, run.err
    record = json.loads(out.read_text())
    assert record["protocol"]["extractor"] == "dinov2_vits14"
    assert record["metrics"]["fid"]["value"] > 0
    no_is = cli("eval", str(tmp_path / "real"), str(tmp_path / "fake"), *common, "--metrics", "is")
    assert no_is.code == 2 and "is needs class logits" in no_is.err


def test_missing_weights_offline_fail_fast_naming_the_options(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import genbench.eval.extractors as extractors
    from genbench.eval.dinov2 import DinoWeights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with socket.socket() as s:  # a port nothing listens on: the network is unreachable
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/dinov2_vitl14_pretrain.pth"
    offline = dataclasses.replace(extractors.EXTRACTORS.get("dinov2"), weights=DinoWeights(url=url))
    monkeypatch.setitem(extractors.EXTRACTORS._items, "dinov2", offline)
    start = time.perf_counter()
    result = cli("eval", "digits:train", "digits:test", "--extractor", "dinov2", "--device", "cpu")
    assert time.perf_counter() - start < 10
    error = result.err.strip().splitlines()[-1]
    assert result.code == 2 and "DINOv2 weights not found" in error
    assert "--weights PATH" in error and WEIGHTS_ENV in error
    bad = tmp_path / "not_dinov2.pth"
    torch.save({"conv.weight": torch.ones(1)}, bad)
    wrong = cli("eval", "digits:train", "digits:test", "--extractor", "dinov2",
                "--weights", str(bad), "--device", "cpu")  # fmt: skip
    assert wrong.code == 2 and "no cls_token / pos_embed in it" in wrong.err
