"""The manifest of official checkpoints (``vendor/checkpoints.toml``): every entry names a
loader genbench has and a shipped spec entry of that generator, states where its sha256 and
licence come from, and a malformed file is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

from genbench.benchmarks.spec import read_spec
from genbench.core.errors import GenbenchError
from genbench.core.manifest import load_manifest, manifest_path
from genbench.eval.extractors import EXTRACTORS
from genbench.generators import GENERATORS


def test_every_entry_names_a_loader_and_a_spec_entry_that_fits() -> None:
    entries = load_manifest()
    assert {e.id for e in entries} >= {
        "edm-cifar10-32x32-cond-vp",
        "ddgan-cifar10-netG-1200",
        "guided-diffusion-64x64",
        "google-ddpm-cifar10-32",
        "pytorch-fid-inception",
        "dinov2-vitl14",
    }
    for e in entries:
        registry = GENERATORS if e.kind == "generator" else EXTRACTORS
        assert e.loads_as in registry, e.id
        if e.spec:
            spec_name, model = e.spec.split(":")
            spec = read_spec(spec_name)[0]
            assert spec.models[model].generator == e.loads_as, e.id
    # A hash is either absent (and says so) or a full sha256 naming its public record.
    inception = next(e for e in entries if e.id == "pytorch-fid-inception")
    assert inception.sha256.startswith("6726825d")  # the torch hub prefix in its file name
    assert inception.file.endswith("-6726825d.pth")
    assert all(e.sha256 or e.sha256_source.startswith("none published") for e in entries)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('sha256 = ""', 'sha256 = "abc"', 1), "checkpoint.0.sha256: String should match"),
        (("notes = ", "note = ", 1), "checkpoint.0.note: Extra inputs are not permitted"),
        (('url = "https://nv', 'url = "http://nv', 1), "checkpoint.0.url: String should match"),
    ],
)
def test_a_malformed_manifest_is_one_line(tmp_path: Path, edit: tuple, message: str) -> None:
    bad = tmp_path / "checkpoints.toml"
    bad.write_text(manifest_path().read_text().replace(*edit))
    with pytest.raises(GenbenchError) as exc:
        load_manifest(bad)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    twice = tmp_path / "twice.toml"
    text = manifest_path().read_text()
    twice.write_text(text + text[text.index("\n[[checkpoint]]") :])
    with pytest.raises(GenbenchError, match="duplicate checkpoint id 'edm-cifar10-32x32-cond-vp'"):
        load_manifest(twice)
