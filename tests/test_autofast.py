"""``--fast``: the fastest fast paths within tolerance, chosen once per machine, recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from genbench.benchmarks import autofast, fastpath
from genbench.benchmarks.autofast import choose, measure_on_copies, paths_of, search
from genbench.benchmarks.fastpath import FastPaths, prepare_sampler
from genbench.benchmarks.plan import Overrides, resolve
from genbench.benchmarks.sampling import labels_for
from genbench.benchmarks.spec import read_spec
from genbench.core.errors import GenbenchError
from genbench.generators import GENERATORS, DataShape
from tests.trainkit import wake

CPU = torch.device("cpu")
REFERENCE = torch.linspace(-1, 1, 48).reshape(3, 1, 4, 4)


def _fake(outcomes: dict[FastPaths, tuple[float, float] | Exception]):
    """A ``Measure`` giving REFERENCE + offset after ``seconds`` per path (or raising)."""
    calls: list[tuple[FastPaths, float | None]] = []

    def measure(paths: FastPaths, best_s: float | None):
        calls.append((paths, best_s))
        outcome = outcomes[paths]
        if isinstance(outcome, Exception):
            raise outcome
        offset, seconds = outcome
        return REFERENCE + offset, [seconds] * 3

    return measure, calls


def test_the_fastest_path_within_its_tolerance_wins():
    bf16 = FastPaths(precision="bf16")
    measure, calls = _fake(
        {
            FastPaths(): (0.0, 1.0),
            FastPaths(channels_last=True): (1e-4, 0.9),
            bf16: (0.04, 0.5),  # within bf16's 5e-2
            FastPaths(precision="bf16", channels_last=True): (0.2, 0.1),  # fastest, but off
            FastPaths(precision="bf16", compile="default"): RuntimeError("no compiler\nmore"),
        }
    )
    chosen, candidates = search(CPU, measure)
    assert chosen == bf16
    by_paths = {paths_of(c): c for c in candidates}
    assert list(by_paths) == [p for p, _ in calls]  # every candidate measured is recorded
    off = by_paths[FastPaths(precision="bf16", channels_last=True)]
    assert not off.within_tolerance and off.mean_abs_diff == pytest.approx(0.2)
    assert by_paths[bf16].within_tolerance and by_paths[bf16].median_s == 0.5
    failed = by_paths[FastPaths(precision="bf16", compile="default")]
    assert failed.error == "RuntimeError: no compiler" and not failed.within_tolerance
    # Each candidate after the first is told the best median so far (to stop early).
    assert [best for _, best in calls] == [None, 1.0, 0.9, 0.5, 0.5]


def test_fp32_eager_is_chosen_when_nothing_else_matches_or_is_faster():
    nan = float("nan")
    measure, _ = _fake(
        {
            FastPaths(): (0.0, 1.0),
            FastPaths(channels_last=True): (0.0, 1.2),
            FastPaths(precision="bf16"): (nan, 0.1),  # non-finite images never qualify
            FastPaths(precision="bf16", channels_last=True): (0.3, 0.1),
            FastPaths(compile="default"): (2e-3, 0.2),  # above fp32's 1e-3
        }
    )
    chosen, candidates = search(CPU, measure)
    assert chosen == FastPaths()
    assert [c.within_tolerance for c in candidates] == [True, True, False, False, False]


def test_a_failing_fp32_eager_reference_is_an_error():
    measure, _ = _fake({FastPaths(): RuntimeError("boom")})
    with pytest.raises(RuntimeError, match="boom"):
        search(CPU, measure)
    measure, _ = _fake({FastPaths(): (float("nan"), 1.0)})
    with pytest.raises(GenbenchError, match="fp32 eager sampling gave non-finite images"):
        search(CPU, measure, stages=())


# --------------------------------------------------------------------------- real models

SMOKE = resolve(*read_spec("smoke"), Overrides()).models
SHAPE = DataShape(channels=1, image_size=16, num_classes=10)


def _gen(name: str):
    model = SMOKE[name]
    torch.manual_seed(0)
    return model, wake(GENERATORS.get(model.generator)(model.config, SHAPE, CPU))


def _images(gen, model, seeds, paths: FastPaths) -> torch.Tensor:
    import copy

    gen = copy.deepcopy(gen)
    gen.eval()
    labels = labels_for(gen, seeds)
    return prepare_sampler(gen, paths, lambda: gen.sample(seeds, labels, model.settings))()


@pytest.mark.parametrize("bf16_tolerance", [fastpath.TOLERANCE["bf16"], 0.0])
def test_fast_only_picks_a_path_whose_images_match_fp32_eager(monkeypatch, bf16_tolerance):
    """On a real model, with bf16 made to look fastest: it is chosen only when its images
    are within its tolerance, and the chosen path reproduces fp32 eager's images."""
    model, gen = _gen("ddpm")
    model = model.with_settings("test", steps=3)
    seeds = [0, 1, 2]
    monkeypatch.setattr(autofast, "STAGES", ("eager",))  # compile takes a minute on CPU
    monkeypatch.setitem(fastpath.TOLERANCE, "bf16", bf16_tolerance)
    real = measure_on_copies(gen, seeds, labels_for(gen, seeds), model.settings)

    def bf16_looks_fastest(paths: FastPaths, best_s):
        images, seconds = real(paths, None)
        return images, [0.001 if paths.precision == "bf16" else 1.0] * len(seconds)

    monkeypatch.setattr(autofast, "measure_on_copies", lambda *a: bf16_looks_fastest)
    choice = choose(
        gen,
        generator=model.generator,
        config=model.config.model_dump(mode="json"),
        seeds=seeds,
        labels=labels_for(gen, seeds),
        settings=model.settings,
    )
    chosen = paths_of(choice.paths)
    assert (chosen.precision == "bf16") == (bf16_tolerance > 0)
    eager = _images(gen, model, seeds, FastPaths())
    diff = (_images(gen, model, seeds, chosen).float() - eager).abs().mean().item()
    assert diff <= chosen.tolerance
    assert len(choice.candidates) == 4 and choice.cache == "chosen"
    for c in choice.candidates:  # what was recorded is what the images show
        mine = (_images(gen, model, seeds, paths_of(c)).float() - eager).abs().mean().item()
        assert c.mean_abs_diff == pytest.approx(mine, abs=1e-6)
        assert c.within_tolerance == (mine <= c.tolerance)


def _spec(tiny_spec, timing: str):
    spec = tiny_spec(steps=0, num_samples=20)
    spec.write_text(spec.read_text().replace("batch_size = 16\n", f"batch_size = 4\n{timing}"))
    return spec


def test_bench_speed_fast_records_the_choice_and_reuses_it(cli, tiny_spec, tmp_path, monkeypatch):
    monkeypatch.setattr(autofast, "STAGES", ("eager",))
    spec = _spec(tiny_spec, "")
    outcomes = []
    for _ in range(2):
        result = cli(
            "speed",
            str(spec),
            "--fast",
            "--repeats",
            "10",
            "--out",
            str(tmp_path / "out"),
            "--history",
            str(tmp_path / "h.jsonl"),
        )
        assert result.code == 0, result.err
        outcomes.append(result)
    records = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert len(records) == 2
    first, second = (r["fast_choice"] for r in records)
    assert (first["cache"], second["cache"]) == ("chosen", "hit")
    assert first["paths"] == second["paths"] and first["key"] == second["key"]
    for r in records:  # the timed paths are the chosen ones
        paths = {k: r[k] for k in ("precision", "channels_last", "compile", "cuda_graphs")}
        assert paths == r["fast_choice"]["paths"]
        assert len(r["fast_choice"]["candidates"]) == 4
    (cache,) = (Path(os.environ["BENCH_CACHE_DIR"]) / "fast").glob("*.json")
    assert first["key"] in json.loads(cache.read_text())
    assert "(--fast)" in outcomes[0].out and "--fast: dcgan batch 4:" in outcomes[0].out
    assert "chosen now; tried fp32 " in outcomes[0].out
    assert "from this machine's cache" in outcomes[1].out


def test_a_spec_may_ask_for_fast_and_bench_run_records_it(cli, tiny_spec, tmp_path, monkeypatch):
    monkeypatch.setattr(autofast, "STAGES", ("eager",))
    result = cli("run", str(_spec(tiny_spec, "fast = true\n")), "--out", str(tmp_path))
    assert result.code == 0, result.err
    (timing_json,) = tmp_path.glob("tiny-*/dcgan/timing.json")
    timing = json.loads(timing_json.read_text())
    choice = timing["fast_choice"]
    assert choice["cache"] == "chosen" and len(choice["candidates"]) == 4
    assert timing["precision"] == choice["paths"]["precision"]
    assert timing["channels_last"] == choice["paths"]["channels_last"]


@pytest.mark.parametrize(
    ("where", "args", "message"),
    [
        ('fast = true\nprecision = "bf16"\n', (), "fast = true chooses precision itself"),
        ("", ("--fast", "--channels-last"), "--fast chooses the fast paths itself; drop "),
        (
            "fast = true\n",
            ("--precision", "bf16"),
            "the spec's timing.fast = true chooses the fast paths itself; drop the explicit "
            "ones (bf16)",
        ),
    ],
)
def test_fast_with_explicit_paths_is_refused_in_one_line(
    cli, tiny_spec, tmp_path, where, args, message
):
    result = cli("speed", str(_spec(tiny_spec, where)), "--out", str(tmp_path / "o"), *args)
    assert result.code == 2 and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
