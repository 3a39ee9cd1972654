"""Quality during training: ``[evaluate] every = "N steps"`` measures FID on its own seeds
in the middle of training, stores it in ``train_eval.jsonl`` with its own protocol, and the
report draws FID against training images seen."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from genbench.benchmarks.spec import EVERY_SEED_OFFSET, EvaluateSection, parse_every
from genbench.generators import Batch, DataShape
from genbench.generators.edm import EDM, EDMConfig
from tests.test_edm import TINY as EDM_TINY
from tests.trainkit import trainer, wake


def _with_every(spec_text: str) -> str:
    return spec_text.replace(
        '[evaluate]\nextractor = "digits"\n',
        '[evaluate]\nextractor = "digits"\nevery = "5 steps"\nevery_samples = 40\n',
    )


def test_every_is_a_step_interval():
    assert parse_every("2000 steps") == 2000 and parse_every(" 1 step ") == 1
    assert EvaluateSection(every="5 steps").every_steps == 5
    assert EvaluateSection().every_steps is None
    for bad in ("2000", "2000 stps", "0 steps", "2 kimg"):
        with pytest.raises(ValueError, match='write it as "2000 steps"'):
            EvaluateSection(every=bad)


def test_a_bad_interval_is_a_one_line_usage_error(cli, tiny_spec):
    spec = tiny_spec(steps=10)
    spec.write_text(
        spec.read_text().replace('extractor = "digits"', 'extractor = "digits"\nevery = "5 stps"')
    )
    result = cli("run", str(spec), "--dry-run")
    assert result.code == 2
    assert "evaluate.every" in result.err and "write it as" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_fid_during_training_is_stored_and_leaves_training_untouched(cli, tiny_spec, tmp_path):
    spec = tiny_spec(steps=10, num_samples=64)
    with_every = tmp_path / "every.toml"
    with_every.write_text(_with_every(spec.read_text()))
    results = {}
    for name, path in (("plain", spec), ("every", with_every)):
        out = tmp_path / name
        result = cli("run", str(path), "--out", str(out))
        assert result.code == 0, result.err
        (run,) = out.iterdir()
        results[name] = run
    plain, every = results["plain"], results["every"]
    assert not (plain / "dcgan" / "train_eval.jsonl").exists()
    lines = [json.loads(x) for x in (every / "dcgan" / "train_eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [5, 10]
    assert [e["images"] for e in lines] == [5 * 32, 10 * 32]  # the spec's batch of 32
    assert 0 < lines[0]["time_s"] < lines[1]["time_s"]
    for e in lines:
        fid = e["metrics"]["fid"]["value"]
        assert isinstance(fid, float) and fid > 0
        # its own protocol: its own seeds and sample count, the run's extractor
        last = EVERY_SEED_OFFSET + 39
        assert e["protocol"]["seeds"] == f"{EVERY_SEED_OFFSET}-{last}"
        assert e["protocol"]["num_samples"] == 40 and e["protocol"]["extractor"] == "digits_cnn"
    # Training (and so the final result) is exactly what it is without the evaluations.
    a, b = (json.loads((r / "dcgan" / "metrics.json").read_text()) for r in (plain, every))
    assert a["metrics"]["fid"]["value"] == b["metrics"]["fid"]["value"]
    assert a["metrics"]["is"]["value"] == b["metrics"]["is"]["value"]
    log_a, log_b = (
        [
            {k: v for k, v in json.loads(x).items() if k not in ("time_s", "images_per_s")}
            for x in (r / "dcgan" / "train_log.jsonl").read_text().splitlines()
        ]
        for r in (plain, every)
    )
    assert log_a == log_b
    # The report draws it; it is opt-in, so a run without it does not mention it.
    assert 'alt="FID during training"' in (every / "report.html").read_text()
    assert "FID during training" not in (plain / "report.html").read_text()


def test_evaluation_sees_the_ema_weights_and_training_gets_its_own_back():
    data = DataShape(1, 16, 0)
    torch.manual_seed(0)
    gen = wake(EDM(EDMConfig(**EDM_TINY), data, torch.device("cpu")))
    twin = EDM(EDMConfig(**EDM_TINY), data, torch.device("cpu"))
    twin.load_state_dict(gen.state_dict())
    images = torch.rand(8, 1, 16, 16) * 2 - 1
    seen: list[int] = []

    def evaluate(step: int) -> str:
        live = t.ema.shadow["net"]  # the averaged weights are in the network now
        assert all(torch.equal(v, live[k]) for k, v in gen.net.state_dict().items())
        torch.rand(5)  # an evaluation's own draws must not shift training's
        seen.append(step)
        return "ok"

    t = trainer(gen, 8, steps=6, ema_decay=0.5)
    torch.manual_seed(1)
    t.fit(itertools.repeat(Batch(images)), "edm", every=(2, evaluate))
    u = trainer(twin, 8, steps=6, ema_decay=0.5)
    torch.manual_seed(1)
    u.fit(itertools.repeat(Batch(images)), "edm")
    assert seen == [2, 4, 6]
    # the same training as without evaluations, to the bit (EMA weights loaded after both)
    assert all(torch.equal(v, twin.net.state_dict()[k]) for k, v in gen.net.state_dict().items())
    assert t.ema.shadow["net"].keys() == u.ema.shadow["net"].keys()


def test_the_logs_images_per_s_leave_out_evaluations(tmp_path):
    """A line's images/s is over the training time since the previous line (its time_s),
    not the wall clock: an evaluation between two lines does not lower it."""
    import time

    data = DataShape(1, 16, 0)
    torch.manual_seed(0)
    gen = EDM(EDMConfig(**EDM_TINY), data, torch.device("cpu"))
    images = torch.rand(8, 1, 16, 16) * 2 - 1

    def evaluate(step: int) -> str:
        time.sleep(0.3)  # several tiny training steps long: the wall clock would show it
        return "ok"

    log = tmp_path / "train_log.jsonl"
    t = trainer(gen, 8, steps=6, log_every=2)
    t.fit(itertools.repeat(Batch(images)), "edm", log_path=log, every=(2, evaluate))
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6]
    before = 0.0
    for line in lines:
        trained = line["time_s"] - before
        # time_s is rounded to 1e-4 s: the bounds allow for that, and nothing else
        assert 2 * 8 / (trained + 2e-4) <= line["images_per_s"] <= 2 * 8 / (trained - 2e-4)
        before = line["time_s"]


def test_non_finite_samples_in_an_evaluation_are_recorded_and_training_goes_on(
    cli, tiny_spec, tmp_path, monkeypatch
):
    """NaN images from the evaluation seeds at the first evaluation: that line records the
    reason and no FID, the next evaluation and the final result are measured as usual."""
    from genbench.generators.dcgan import DCGAN

    sample, calls = DCGAN.sample, []

    def nan_at_first_evaluation(self, seeds, labels=None, settings=None):
        images = sample(self, seeds, labels, settings)
        if seeds[0] >= EVERY_SEED_OFFSET:
            calls.append(seeds[0])
            if len(calls) == 1:
                return torch.full_like(images, float("nan"))
        return images

    monkeypatch.setattr(DCGAN, "sample", nan_at_first_evaluation)
    spec = tmp_path / "every.toml"
    spec.write_text(_with_every(tiny_spec(steps=10, num_samples=64).read_text()))
    result = cli("run", str(spec), "--out", str(tmp_path / "out"))
    assert result.code == 0, result.err
    (run,) = (tmp_path / "out").iterdir()
    first, second = (
        json.loads(x) for x in (run / "dcgan" / "train_eval.jsonl").read_text().splitlines()
    )
    assert first["step"] == 5 and first["metrics"] == {} and "NaN" in first["error"]
    assert first["protocol"]["num_samples"] == 40  # the count asked for, not where it stopped
    assert second["step"] == 10 and second["error"] is None
    assert second["metrics"]["fid"]["value"] > 0
    metrics = json.loads((run / "dcgan" / "metrics.json").read_text())
    assert metrics["metrics"]["fid"]["value"] > 0  # the model itself is measured
    assert 'alt="FID during training"' in (run / "report.html").read_text()
