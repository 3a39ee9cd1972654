"""The pytorch-fid Inception extractor: weights resolution and checks, conformance with
pytorch-fid's own ``InceptionV3`` and clean-fid's resize on the same (random) weights, and
FID through it: batch-size independence, shard merging, FID(A, A). Never touches the
network."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cleanfid.resize import build_resizer
from pytorch_fid import inception as pytorch_fid_inception
from torch import nn

from genbench.core.errors import GenbenchError
from genbench.eval import extractors
from genbench.eval.evaluator import Evaluator
from genbench.eval.extractors import (
    EXTRACTORS,
    ExtractorLoader,
    ExtractorOptions,
    FeatureExtractor,
    file_sha256,
    load_extractor,
)
from genbench.eval.inception import (
    FID_WEIGHTS_NAME,
    WEIGHTS_ENV,
    FIDInception,
    InceptionWeights,
    load_fid_inception,
    random_state_dict,
)
from genbench.eval.reference import ReferenceStats, accumulate

FIXES = ("--inception-weights", WEIGHTS_ENV)
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def random_fid_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in pytorch-fid's format with random values, built offline."""
    return random_state_dict(seed)


def images(n: int, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=gen) * 2 - 1


def hub_name(prefix: str) -> str:
    """A torch hub file name like pytorch-fid's, promising sha256 prefix ``prefix``."""
    return f"pt_inception-2015-12-05-{prefix}.pth"


def with_weights(weights: InceptionWeights) -> ExtractorLoader:
    """The registered ``inception`` loader, looking for its weights through ``weights``."""
    return dataclasses.replace(EXTRACTORS.get("inception"), weights=weights)


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    return random_fid_inception_state_dict()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory, state_dict) -> Path:
    """The random weights under a name of the user's choosing (no hub prefix to check)."""
    path = tmp_path_factory.mktemp("weights") / "random_fid_inception.pth"
    torch.save(state_dict, path)
    return path


@pytest.fixture(scope="module")
def weights_sha256(weights_file: Path) -> str:
    return file_sha256(weights_file)


@pytest.fixture(scope="module")
def extractor(weights_file: Path) -> FeatureExtractor:
    """The default protocol: quantized input, bilinear resize, 2048-d."""
    return load_extractor("inception", weights=weights_file)


@pytest.fixture(scope="module")
def exact(weights_file: Path) -> FeatureExtractor:
    """Float input taken as it is (no uint8 rounding), to compare with float references."""
    return load_extractor(
        "inception", weights=weights_file, options=ExtractorOptions(quantize=False)
    )


@pytest.fixture(scope="module")
def pytorch_fid_blocks(state_dict) -> nn.Module:
    """pytorch-fid's own ``InceptionV3([0, 1, 2, 3])`` (every --dims block, of [0, 1] images)
    on the random weights."""
    with mock.patch.object(
        pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state_dict
    ):
        net = pytorch_fid_inception.InceptionV3(
            [0, 1, 2, 3], resize_input=True, normalize_input=True
        )
    return net.eval()


def pytorch_fid_features(net: nn.Module, x01: torch.Tensor) -> list[torch.Tensor]:
    """pytorch-fid's features for each block: its get_activations' spatial average."""
    with torch.no_grad():
        return [F.adaptive_avg_pool2d(out, (1, 1)).flatten(1) for out in net(x01)]


@pytest.fixture
def hub_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty torch hub cache, no ``$BENCH_INCEPTION_WEIGHTS`` and no proxies; returns the
    cache's checkpoints folder (not created)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case something called set_dir
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    return Path(torch.hub.get_dir()) / "checkpoints"


def link(target: Path, path: Path) -> Path:
    """Symlink ``path`` -> ``target`` (the weights are 96 MB: no copies); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


def closed_port() -> int:
    """A local TCP port with nothing listening on it (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the extractor ---------------------------------------------------------------------------


def test_registered_with_pytorch_fid_protocol(
    extractor: FeatureExtractor, weights_sha256: str
) -> None:
    assert "inception" in EXTRACTORS.names()
    assert extractor.id == "pytorch_fid_inception_v3"
    assert (extractor.feature_dim, extractor.num_classes, extractor.input_size) == (2048, 1008, 299)
    assert extractor.resize == "bilinear"
    assert extractor.weights_sha256 == weights_sha256
    assert not extractor.training
    assert not any(p.requires_grad for p in extractor.parameters())
    # On CPU the batch norms are folded into the convolutions (test_matches_pytorch_fid
    # checks the features), and the weights are stored channels-last.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in extractor.modules())
    convs = [m for m in extractor.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 94 and all(c.bias is not None for c in convs)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert os.path.basename(pytorch_fid_inception.FID_WEIGHTS_URL) == FID_WEIGHTS_NAME
    assert InceptionWeights().sha256_prefix == "6726825d"


@pytest.mark.parametrize(("n", "size"), [(2, 32), (1, 320)], ids=["upsample", "downsample"])
def test_matches_pytorch_fid(
    exact: FeatureExtractor,
    pytorch_fid_blocks: nn.Module,
    state_dict: dict[str, torch.Tensor],
    n: int,
    size: int,
) -> None:
    x = images(n, size=size)
    x01 = (x + 1) / 2  # pytorch-fid's input range
    features, logits = exact(x)
    assert features.shape == (n, 2048) and logits.shape == (n, 1008)
    assert features.dtype == logits.dtype == torch.float32
    assert features.isfinite().all() and logits.isfinite().all()
    ref_features = pytorch_fid_features(pytorch_fid_blocks, x01)[3]
    # The Inception Score's logits: pool3 times the fc weights, without the fc bias.
    ref_logits = F.linear(ref_features, state_dict["fc.weight"])
    torch.testing.assert_close(features, ref_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    if size < 299:
        # The check can see a scaling mistake: [0, 1] inputs give clearly different features.
        assert (exact(x01[:1])[0] - ref_features[:1]).abs().max() > 1e-2


def test_uint8_images_match_pytorch_fid_folder_path(
    extractor: FeatureExtractor, pytorch_fid_blocks: nn.Module
) -> None:
    # pytorch-fid's folder path: uint8 pixels -> ToTensor (u / 255) -> InceptionV3.
    u8 = torch.randint(0, 256, (1, 3, 32, 32), generator=torch.Generator().manual_seed(3))
    u8 = u8.to(torch.uint8)
    ref = pytorch_fid_features(pytorch_fid_blocks, u8.float() / 255)[3]
    torch.testing.assert_close(extractor(u8)[0], ref, rtol=1e-5, atol=1e-5)
    # Floats are rounded to the same uint8 first (default protocol: quantize).
    assert torch.equal(extractor.prepare(u8.float() / 127.5 - 1), extractor.prepare(u8))


def test_every_dims_matches_pytorch_fid(
    extractor: FeatureExtractor, pytorch_fid_blocks: nn.Module, small: FeatureExtractor
) -> None:
    x = images(1, seed=4)
    refs = pytorch_fid_features(pytorch_fid_blocks, (x + 1) / 2)
    with torch.no_grad():
        for dims, ref in zip((64, 192, 768, 2048), refs, strict=True):
            net = FIDInception(extractor.net.blocks, extractor.net.fc, dims)
            features, logits = net(extractor.preprocess(x), logits=dims == 2048)
            assert features.shape == (1, dims) and (logits is None) == (dims != 2048)
            torch.testing.assert_close(features, ref, rtol=1e-5, atol=1e-5)
    assert small.feature_dim == 64 and small.protocol()["dims"] == 64
    with pytest.raises(GenbenchError, match=r"dims 100 is not offered.*2048, 768, 192, 64"):
        load_extractor("inception", options=ExtractorOptions(dims=100))


def test_without_logits_only_the_feature_block_runs(small: FeatureExtractor) -> None:
    calls = []
    hook = small.net.blocks[1].register_forward_hook(lambda *args: calls.append(1))
    try:
        features, logits = small(images(1, seed=5), logits=False)
        assert logits is None and calls == []
        with_logits, out = small(images(1, seed=5))
        assert out is not None and calls == [1]
    finally:
        hook.remove()
    torch.testing.assert_close(features, with_logits, rtol=0, atol=0)


def test_clean_resize_is_clean_fids(weights_file: Path, extractor: FeatureExtractor) -> None:
    clean = load_extractor(
        "inception", weights=weights_file, options=ExtractorOptions(resize="clean")
    )
    assert clean.protocol()["resize"] == "clean"
    u8 = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(6))
    u8 = u8.to(torch.uint8)
    resizer = build_resizer("clean")  # PIL bicubic on float32 channels, clean-fid's own
    expected = np.stack([resizer(a) for a in u8.permute(0, 2, 3, 1).numpy()])
    expected = torch.from_numpy(expected).permute(0, 3, 1, 2) / 255 * 2 - 1
    torch.testing.assert_close(clean.prepare(u8), expected, rtol=0, atol=1e-6)
    assert (clean.prepare(u8) - extractor.prepare(u8)).abs().max() > 0.05  # not bilinear


def test_protocol_records_the_settings(extractor: FeatureExtractor) -> None:
    proto = extractor.protocol()
    assert proto["resize"] == "bilinear" and proto["dims"] == proto["feature_dim"] == 2048
    assert proto["quantize"] is True
    assert proto["tf32"] is False and extractor.allow_tf32  # allowed, but not on a CPU


def test_batch_size_independent(
    extractor: FeatureExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On CPU a batch is run in chunks of CPU_CHUNK images: 2 here, so 3 images take 2 + 1.
    monkeypatch.setattr(extractors, "CPU_CHUNK", 2)
    x = images(3, seed=1)
    features, logits = extractor(x)
    assert features.shape == (3, 2048) and logits.shape == (3, 1008)
    assert extractor(x, logits=False)[1] is None
    torch.testing.assert_close(extractor(x, logits=False)[0], features, rtol=1e-5, atol=1e-5)
    singles = [extractor(x[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(torch.cat([f for f, _ in singles]), features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([lg for _, lg in singles]), logits, rtol=1e-5, atol=1e-5)


def test_grey_is_repeated_to_rgb(extractor: FeatureExtractor) -> None:
    grey = images(1, channels=1, seed=2)
    torch.testing.assert_close(extractor(grey), extractor(grey.expand(-1, 3, -1, -1)))


# --- FID through the Inception (random weights, 64-d: full-rank covariances from 80 images) ---

# One of the random network's 64 block-0 channels is almost constant (variance ~1e-12), so
# SciPy's sqrtm inside pytorch-fid warns that the product is near singular: the case whose
# handling FID must share with pytorch-fid.
near_singular = pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")


@pytest.fixture(scope="module")
def small(weights_file: Path) -> FeatureExtractor:
    return load_extractor("inception", weights=weights_file, options=ExtractorOptions(dims=64))


def smooth_images(n: int, cells: int, gen: torch.Generator, spread: float) -> torch.Tensor:
    """Smooth 32 px images in [-1, 1] with a random contrast and colour each: block 0's
    spatially averaged features then vary from image to image in every direction."""
    base = F.interpolate(torch.rand(n, 3, cells, cells, generator=gen), size=32, mode="bilinear")
    contrast = torch.rand(n, 1, 1, 1, generator=gen) * spread + 0.1
    offset = torch.rand(n, 3, 1, 1, generator=gen) - 0.5
    return ((base - 0.5) * contrast + offset).clamp(-0.5, 0.5) * 2


@pytest.fixture(scope="module")
def fid_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two sets of 80 images from different distributions."""
    gen = torch.Generator().manual_seed(7)
    return smooth_images(80, 8, gen, 1.5), smooth_images(80, 4, gen, 0.5)


@pytest.fixture(scope="module")
def by_batch_size(small: FeatureExtractor, fid_images) -> dict[int, Evaluator]:
    """FID evaluators of the second set against the first, streamed in batches of 7 and 64."""
    stats, kept = accumulate(small, fid_images[0].split(50))
    reference = ReferenceStats.from_accumulated(stats, kept, {"folder": "a"})
    out = {}
    for batch in (7, 64):
        out[batch] = Evaluator(small, reference, ["fid"])
        for chunk in fid_images[1].split(batch):
            out[batch].update(chunk)
    return out


@near_singular
def test_fid_is_batch_size_independent(by_batch_size: dict[int, Evaluator]) -> None:
    fid7, fid64 = (by_batch_size[b].compute()["fid"]["value"] for b in (7, 64))
    assert fid7 == pytest.approx(fid64, rel=1e-6)
    assert fid7 > 1.0  # far from zero, so the relative check means something


@near_singular
def test_fid_of_a_set_with_itself_is_zero(by_batch_size: dict[int, Evaluator]) -> None:
    # The same 80 images, streamed in batches of 64 (as the reference) and of 7.
    stats64 = by_batch_size[64].stats
    itself = ReferenceStats.from_accumulated(stats64, None, {"folder": "b"})
    ev = Evaluator(by_batch_size[7].extractor, itself, ["fid"])
    ev.stats = by_batch_size[7].stats
    assert abs(ev.compute()["fid"]["value"]) < 1e-6


@near_singular
def test_fid_of_merged_shards_equals_one_pass(small: FeatureExtractor, fid_images) -> None:
    # Two processes' shards are sums of their own features; merging them is one pass.
    features = [small(batch, logits=False)[0] for batch in fid_images[1].split(20)]
    reference = (np.zeros(64), np.eye(64))
    whole, first, second = (Evaluator(small, reference, ["fid"]) for _ in range(3))
    for i, f in enumerate(features):
        whole.accumulate(f)
        (first if i < 2 else second).accumulate(f)
    merged = first.merge(second)
    assert (merged.stats.count, first.stats.count) == (80, 40)
    expected = whole.compute()["fid"]["value"]
    assert merged.compute()["fid"]["value"] == pytest.approx(expected, rel=1e-12)
    assert expected > 1.0


# --- where the weights come from -------------------------------------------------------------


@pytest.mark.parametrize("source", ["explicit", "env", "hub"])
def test_weights_resolution_order(
    source: str,
    hub_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    weights_file: Path,
    weights_sha256: str,
) -> None:
    # The chosen source holds the weights; every source after it in the order holds garbage,
    # so loading succeeds only if the order is right. The names carry the weights' own hash
    # prefix, so the hub-name check runs and passes.
    name = hub_name(weights_sha256[:8])
    garbage = tmp_path / "garbage" / name
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a state dict")
    order = ["explicit", "env", "hub"]
    files = {s: weights_file if s == source else garbage for s in order[order.index(source) :]}
    explicit = None
    if "explicit" in files:
        explicit = link(files["explicit"], tmp_path / "explicit" / name)
    if "env" in files:
        monkeypatch.setenv(WEIGHTS_ENV, str(link(files["env"], tmp_path / "env" / name)))
    link(files["hub"], hub_dir / name)

    loaded = with_weights(InceptionWeights(file_name=name))("cpu", explicit)
    assert loaded.weights_sha256 == weights_sha256


def test_missing_explicit_or_env_file_is_a_one_line_error(
    hub_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(GenbenchError, match="not found") as info:
        load_extractor("inception", weights=missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    monkeypatch.setenv(WEIGHTS_ENV, str(missing))
    with pytest.raises(GenbenchError, match=f"{WEIGHTS_ENV}={missing} is not a file"):
        load_extractor("inception")


@pytest.mark.parametrize("source", ["explicit", "hub"])
def test_wrong_hash_prefix_is_refused(source: str, hub_dir: Path, weights_file: Path) -> None:
    path = link(weights_file, hub_dir / FID_WEIGHTS_NAME)
    with pytest.raises(GenbenchError, match="starting with 6726825d") as info:
        load_extractor("inception", weights=path if source == "explicit" else None)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert all(fix in message for fix in FIXES)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ({"fc.weight": torch.zeros(1008, 2048)}, "do not fit pytorch-fid's FID Inception"),
        ([1, 2, 3], "hold a list, not a state dict"),
        (b"not a torch file", "cannot read Inception weights"),
    ],
    ids=["wrong-keys", "not-a-dict", "not-torch"],
)
def test_unusable_weights_are_a_one_line_error(tmp_path: Path, content, error: str) -> None:
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(GenbenchError, match=error) as info:
        load_extractor("inception", weights=path)
    assert "\n" not in str(info.value)


def test_wrong_shapes_are_a_one_line_error(tmp_path: Path, state_dict) -> None:
    path = tmp_path / "wrong_shape.pth"
    torch.save({**state_dict, "fc.weight": torch.zeros(1000, 2048)}, path)
    with pytest.raises(GenbenchError, match=r"size mismatch for fc\.weight") as info:
        load_extractor("inception", weights=path)
    assert "\n" not in str(info.value)


# --- downloading -----------------------------------------------------------------------------


def test_unreachable_download_fails_fast_naming_both_fixes(hub_dir: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/{FID_WEIGHTS_NAME}"
    start = time.perf_counter()
    with pytest.raises(GenbenchError, match="download failed") as info:
        with_weights(InceptionWeights(url=url))("cpu")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert str(hub_dir / FID_WEIGHTS_NAME) in message and "\n" not in message
    assert all(fix in message for fix in FIXES)
    assert socket.getdefaulttimeout() is None
    assert not hub_dir.exists() or not any(hub_dir.iterdir())


def test_stalled_download_times_out(hub_dir: Path) -> None:
    # A server that accepts connections (into the backlog) but never answers.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/{FID_WEIGHTS_NAME}"
        start = time.perf_counter()
        with pytest.raises(GenbenchError, match="timed out"):
            InceptionWeights(url=url, timeout_s=0.5).resolve(None)
        assert time.perf_counter() - start < 5
    assert socket.getdefaulttimeout() is None


def test_hanging_host_lookup_times_out(hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Socket timeouts do not bound DNS look-ups; a resolver that never answers must not hang.
    release = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: release.wait(10))
    start = time.perf_counter()
    try:
        with pytest.raises(GenbenchError, match=r"looking up weights\.example took more than"):
            InceptionWeights(url="https://weights.example/x.pth", timeout_s=0.3).resolve(None)
    finally:
        release.set()
    assert time.perf_counter() - start < 5


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def file_server(weights_file: Path) -> Iterator[str]:
    """Base URL of a local HTTP server serving ``weights_file``'s folder."""
    handler = functools.partial(_QuietHandler, directory=str(weights_file.parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()
        thread.join()


def test_download_fills_the_hub_cache_and_checks_the_prefix(
    hub_dir: Path, file_server: str, weights_file: Path, weights_sha256: str
) -> None:
    url = f"{file_server}/{weights_file.name}"
    name = hub_name(weights_sha256[:8])
    assert InceptionWeights(file_name=name, url=url).resolve(None) == hub_dir / name
    assert file_sha256(hub_dir / name) == weights_sha256
    # pytorch-fid's name promises another hash: the download is refused and nothing is kept.
    with pytest.raises(GenbenchError, match="invalid hash value"):
        InceptionWeights(url=url).resolve(None)
    assert sorted(p.name for p in hub_dir.iterdir()) == [name]


def test_inception_score_logits_are_torch_fidelitys_default(tmp_path: Path, state_dict):
    """IS comes from pool3 x W without the fc bias (Salimans et al.'s code, OpenAI's
    evaluator, torch-fidelity's default ``logits_unbiased``): on the same images and weights
    our IS equals torch-fidelity's to 1e-6 relative. The fc layer is scaled and given a large
    bias so the logits are informative and the bias would show."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_isc import isc_features_to_metric

    from genbench.eval.metrics import inception_score

    weights = dict(state_dict)
    gen = torch.Generator().manual_seed(3)
    weights["fc.weight"] = weights["fc.weight"] * 5
    weights["fc.bias"] = torch.randn(1008, generator=gen) * 5
    path = tmp_path / "informative_fc.pth"
    torch.save(weights, path)
    theirs = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
    )
    # Images of different brightness, so the random network's features differ between them.
    level = torch.randint(0, 256, (20, 3, 1, 1), generator=gen).float()
    noise = torch.randn(20, 3, 299, 299, generator=gen) * 40
    pixels = (level + noise).clamp(0, 255).to(torch.uint8)
    with torch.no_grad():
        features_ref, logits_ref = theirs(pixels)
        # The same input tensor for both networks: torch-fidelity's own preprocessing at 299
        # px (its resize is the identity there), so only the networks and the logits differ.
        features, logits = load_fid_inception(path)((pixels.float() - 128) / 128)
    torch.testing.assert_close(features, features_ref, rtol=1e-4, atol=1e-4)
    ref = isc_features_to_metric(logits_ref, splits=5, shuffle=False)["inception_score_mean"]
    mean, _ = inception_score(logits, 5)
    assert mean > 1.001  # not the degenerate 1 of identical predictions
    assert mean == pytest.approx(ref, rel=1e-6)
    biased, _ = inception_score(logits + weights["fc.bias"], 5)
    assert abs(biased / ref - 1) > 1e-3  # the bias would have been visible


def test_protocol_records_which_is_logits(small: FeatureExtractor) -> None:
    """A value of IS says it came from the unbiased logits; FID alone records nothing."""
    assert Evaluator(small, None, ["is"]).protocol()["is_logits"] == "unbiased"
    assert "is_logits" not in Evaluator(small, (np.zeros(64), np.eye(64)), ["fid"]).protocol()
