"""``bench speed --train``: the harness's training step against a plain loop of the same
networks, losses and optimisers."""

from __future__ import annotations

import json

import pytest
import torch

from genbench.benchmarks.build import build_untrained
from genbench.benchmarks.plan import Overrides, resolve
from genbench.benchmarks.spec import read_spec
from genbench.benchmarks.speed_format import train_overhead
from genbench.benchmarks.train_speed import PlainLoop, fixed_batch
from genbench.benchmarks.trainer import Trainer
from genbench.store.records import SpeedResult

SMOKE = resolve(*read_spec("smoke"), Overrides()).models
CPU = torch.device("cpu")


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_the_plain_loop_takes_the_same_steps_as_the_trainer(name):
    """The baseline is fair: from the same weights, batch and random draws, two steps of
    the plain loop give the Trainer's weights and EMA (every phase, optimiser, learning
    rate and clipping; DDGAN's lazy R1 joins D's first update)."""
    model = SMOKE[name]
    train = model.train.model_copy(update={"batch_size": 8, "grad_accum": 1})
    gens = [build_untrained(model, 0, CPU) for _ in range(2)]
    batch = fixed_batch(gens[0], 8, 0)
    trainer, plain = Trainer(gens[0], train), PlainLoop(gens[1], train)
    for step in range(2):
        torch.manual_seed(step)
        trainer.train_step(batch)
        torch.manual_seed(step)
        plain(batch)
    for (key, a), (_, b) in zip(
        gens[0].state_dict().items(), gens[1].state_dict().items(), strict=True
    ):
        assert torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4), f"{name}: {key}"
    if trainer.ema is not None:
        mine = [t for sd in trainer.ema.shadow.values() for t in sd.values()]
        mine = [t for t in mine if t.is_floating_point()]
        assert len(mine) == len(plain.shadow) > 0
        for a, b in zip(mine, plain.shadow, strict=True):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # Trained: the weights moved from their initial values.
    fresh = build_untrained(model, 0, CPU).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in gens[1].state_dict().items())


def test_fixed_batch_has_the_data_shape_and_labels():
    gen = build_untrained(SMOKE["dcgan"], 0, CPU)
    batch = fixed_batch(gen, 5, 3)
    shape = gen.data
    assert batch.images.shape == (5, shape.channels, gen.image_size, gen.image_size)
    assert batch.images.min() >= -1 and batch.images.max() <= 1
    assert (batch.labels is None) == (shape.num_classes == 0)
    assert torch.equal(fixed_batch(gen, 5, 3).images, batch.images)


def test_bench_speed_train_times_both_loops_interleaved(cli, tiny_spec, tmp_path):
    out, history = tmp_path / "out", tmp_path / "h.jsonl"
    result = cli(
        "speed",
        str(tiny_spec()),
        "--train",
        "--batch-sizes",
        "8",
        "--repeats",
        "10",
        "--out",
        str(out),
        "--history",
        str(history),
    )
    assert result.code == 0, result.err
    (speed_json,) = out.glob("speed-tiny-*/speed.json")
    doc = json.loads(speed_json.read_text())
    assert doc["complete"] and "plain PyTorch loop" in doc["note"]
    plain, harness = (SpeedResult.model_validate(r) for r in doc["results"])
    assert (plain.task, plain.baseline, harness.task, harness.baseline) == (
        "train",
        "plain",
        "train",
        None,
    )
    for r in (plain, harness):
        assert r.model == "dcgan" and r.batch_size == 8 and len(r.raw_s) == 10
        assert r.images_per_s == pytest.approx(8 / r.median_s) and len(r.warmup_s) == 2
    (line,) = [line for line in result.out.splitlines() if "harness's training step" in line]
    over = train_overhead(harness, plain)
    assert line.startswith(
        f"dcgan batch 8: the harness's training step is {100 * abs(over):.1f}% "
        f"{'slower' if over >= 0 else 'faster'} than a plain loop ("
    )
    assert len(history.read_text().splitlines()) == 2


def test_train_with_sampling_flags_is_refused(cli, tiny_spec, tmp_path):
    result = cli("speed", str(tiny_spec()), "--train", "--fast", "--out", str(tmp_path / "o"))
    assert result.code == 2 and "--train times training steps, which --fast" in result.err
    assert not (tmp_path / "o").exists()


def test_the_overhead_is_the_ratio_of_medians():
    def rec(median: float, baseline: str | None) -> SpeedResult:
        return SpeedResult(
            model="m", batch_size=4, median_s=median, images_per_s=4 / median, baseline=baseline
        )

    assert train_overhead(rec(1.05, None), rec(1.0, "plain")) == pytest.approx(0.05)
    assert train_overhead(rec(0.9, None), rec(1.0, "plain")) == pytest.approx(-0.1)
