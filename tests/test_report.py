"""`bench report`: tables, protocol and device marks, published figures, escaping, outputs.

Run and speed directories are written here by hand (the files `bench run` / `bench speed`
write), so each test states exactly the numbers it expects in the report.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from genbench.core.errors import GenbenchError
from genbench.reports import fmt
from genbench.reports.plots import pareto_front, speed_options, tex_safe
from genbench.reports.published import load_published
from genbench.reports.report import emit_report, load_report, write_run_reports
from genbench.store.records import Timing

DIGITS_PROTOCOL = {
    "extractor": "digits_cnn",
    "weights_sha256": "42eba43a13dfa23c1fcc064eb3de007c2c1ce4ce2878b5e670cd41348313e477",
    "resize": "bilinear_antialias",
    "input_size": 16,
    "dtype": "float32",
    "feature_dim": 64,
    "num_samples": 1000,
    "is_splits": 10,
    "seeds": "0-999",
    "reference": {"dataset": "digits", "split": "train", "count": 1437, "stats_sha256": "ab" * 32},
}
CPU_ENV = {
    "git_commit": "0123456789abcdef0123456789abcdef01234567",
    "torch": "2.14.1",
    "device": "cpu",
    "device_name": "AMD EPYC",
    "torch_threads": 2,
    "world_size": 1,
}
GPU_ENV = {**CPU_ENV, "device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3"}


def timing(images_per_s: float, batch: int = 64, iqr_fraction: float = 0.02) -> dict[str, Any]:
    median = batch / images_per_s
    return {
        "device": "cpu",
        "batch_size": batch,
        "nfe": 1,
        "warmup_s": [0.01],
        "raw_s": [median] * 10,
        "median_s": median,
        "iqr_s": median * iqr_fraction,
        "images_per_s": images_per_s,
        "s_per_50k": 50_000 / images_per_s,
        "ms_per_nfe": median * 1000,
        "peak_memory_bytes": 912388096,
        "precision": "fp32",
    }


def model_files(
    name: str,
    fid: float,
    *,
    protocol: dict[str, Any] | None = None,
    extra_metrics: dict[str, Any] | None = None,
    generator: str = "dcgan",
    dataset: str = "digits",
    nfe: int = 1,
    train_steps: int = 1500,
) -> dict[str, Any]:
    metrics = {
        "model": name,
        "generator": generator,
        "config": {"nz": 64},
        "parameters": 99008,
        "nfe": nfe,
        "dataset": dataset,
        "checkpoint_source": None,
        "train_steps": train_steps,
        "train_time_s": 35.36,
        "sample": {"num_samples": 1000, "seeds": "0-999", "steps": None, "guidance": None},
        "metrics": {"fid": {"value": fid}, "is": {"value": 6.9682, "std": 0.2476}},
        "protocol": copy.deepcopy(protocol or DIGITS_PROTOCOL),
    }
    metrics["metrics"].update(extra_metrics or {})
    return {"metrics": metrics, "timing": timing(24927.3)}


def write_run(
    root: Path,
    run_id: str,
    models: list[dict[str, Any]],
    *,
    env: dict[str, Any] = CPU_ENV,
    status: str = "complete",
    dirs: list[str] | None = None,
) -> Path:
    """A run directory as `bench run` leaves it (metrics, timing, log, sample grid)."""
    run = root / run_id
    run.mkdir(parents=True)
    names = [m["metrics"]["model"] for m in models]
    (run / "run.json").write_text(
        json.dumps(
            {
                "run_id": run_id,
                "benchmark": "smoke",
                "status": status,
                "models": names,
                "started": "2026-11-23T10:00:00+00:00",
            }
        )
    )
    (run / "environment.json").write_text(json.dumps(env))
    (run / "spec.toml").write_text(
        '[benchmark]\nname = "smoke"\ndataset = "digits"\n[sample]\ngrid_size = 16\n'
    )
    for i, m in enumerate(models):
        d = run / (dirs[i] if dirs else m["metrics"]["model"])
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(m["metrics"]))
        if m.get("timing") is not None:
            (d / "timing.json").write_text(json.dumps(m["timing"]))
        log = [
            {
                "step": s,
                "time_s": s / 10,
                "loss_d": 1.0 / s,
                "loss_g": 2.0 - 1.0 / s,
                "images_per_s": 3000.0,
            }
            for s in (50, 100, 150)
        ]
        (d / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        Image.new("L", (40, 40), color=128 + 20 * i).save(d / "samples.png")
    return run


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def _results_lines(markdown: str) -> list[str]:
    """The lines of the results table: the first table after "## Results"."""
    lines = markdown[markdown.index("## Results") :].splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def table_rows(markdown: str, prefix: str | None = None) -> list[list[str]]:
    """Rows of the results table, or of any table whose rows start with ``prefix``."""
    if prefix is not None:
        return [_cells(x) for x in markdown.splitlines() if x.startswith(prefix)]
    return [_cells(x) for x in _results_lines(markdown)[2:]]


def header(markdown: str) -> list[str]:
    return _cells(_results_lines(markdown)[0])


@pytest.fixture
def two_protocols(tmp_path: Path) -> list[Path]:
    """Two runs whose evaluation protocols differ in sample count (and seeds)."""
    small = {**DIGITS_PROTOCOL, "num_samples": 500, "seeds": "0-499"}
    kid = {"kid": {"value": 0.012345, "std": 0.00102}}
    pr = {"pr": {"precision": 0.81234, "recall": 0.4321, "k": 3}}
    a = write_run(tmp_path, "run-a-0001", [model_files("dcgan", 249.3811, extra_metrics=kid)])
    b = write_run(
        tmp_path,
        "run-b-0002",
        [model_files("dcgan", 120.5, protocol=small, extra_metrics={**kid, **pr})],
    )
    return [a, b]


# --------------------------------------------------------------------------- tables


def test_markdown_table_has_every_column_with_sensible_precision(two_protocols):
    md = load_report(two_protocols)
    from genbench.reports.markdown import markdown_report

    text = markdown_report(md)
    assert header(text) == [  # generator and device repeat a value here, so they merge / go
        "run",
        "model",
        "train steps",
        "parameters",
        "NFE",
        "sampling",
        "FID ↓",
        "IS ↑",
        "KID ↓",
        "precision ↑",
        "recall ↑",
        "images/s ↑",
        "s per 50k ↓",
        "train time",
    ]
    a, b = table_rows(text)
    assert a[:6] == ["0001", "dcgan", "1500", "99.0k", "1", "default"]  # the run's tag
    assert a[6:11] == ["249.38 [a]", "6.97 ± 0.25 [a]", "0.0123 ± 0.0010 [a]", "–", "–"]
    assert b[6:11] == [
        "120.50 [b]",
        "6.97 ± 0.25 [b]",
        "0.0123 ± 0.0010 [b]",
        "0.812 [b]",
        "0.432 [b]",
    ]
    # one timing setup: no speed marks; 3 significant figures and the IQR of the repeats
    assert a[11:] == ["24,900 (IQR 2.0%)", "2.0 s", "35.4 s"]


def test_different_protocols_are_marked_and_the_note_says_what_differs(two_protocols):
    text = emit_report(two_protocols)
    assert "were measured under different evaluation protocols" in text
    notes = [line for line in text.splitlines() if line.startswith("- [")]
    assert notes == ["- [a] num_samples=1000", "- [b] num_samples=500"]
    shared = next(line for line in text.splitlines() if line.startswith("- Shared by all:"))
    assert "extractor=digits_cnn" in shared and "reference.split=train" in shared
    assert "seeds" not in shared  # the seed range is not part of the comparability key


def test_one_protocol_no_marks_and_repeats_get_mean_sd_and_min(tmp_path):
    other_seeds = {**DIGITS_PROTOCOL, "seeds": "1000-1999"}
    runs = [
        write_run(tmp_path, "run-a-0001", [model_files("dcgan", 10.0)]),
        write_run(tmp_path, "run-b-0002", [model_files("dcgan", 12.0, protocol=other_seeds)]),
    ]
    text = emit_report(runs)
    rows = table_rows(text)
    assert [r[6] for r in rows] == ["10.00", "12.00"]  # same protocol: no [a]/[b]
    assert "different evaluation protocols" not in text
    assert "Evaluation protocol of every quality value: dtype=float32" in text
    assert "## Repeated runs" in text
    (rep,) = table_rows(text, "| dcgan |")
    # mean 11, sample sd sqrt(2) = 1.41, min 10
    assert rep == ["dcgan", "dcgan", "2", "11.00 ± 1.41", "10.00", "6.97 ± 0.00", "24,900 ± 0"]


def test_speed_values_from_different_devices_are_marked(tmp_path):
    runs = [
        write_run(tmp_path, "run-a-0001", [model_files("dcgan", 10.0)]),
        write_run(tmp_path, "run-b-0002", [model_files("dcgan", 10.0)], env=GPU_ENV),
    ]
    text = emit_report(runs)
    a, b = table_rows(text)
    i = header(text).index("images/s ↑")
    assert a[i : i + 2] == ["24,900 (IQR 2.0%) [t1]", "2.0 s [t1]"]
    assert b[i : i + 2] == ["24,900 (IQR 2.0%) [t2]", "2.0 s [t2]"]
    # quality values from different devices are marked too, the device named as the cause
    assert (a[6], b[6]) == ("10.00 [a]", "10.00 [b]")
    assert "- [a] measured_on=AMD EPYC" in text and "- [b] measured_on=NVIDIA H100" in text
    assert b[-1] == "NVIDIA H100 80GB HBM3"
    assert "measured on different devices or timing setups" in text
    assert "- [t1] device=AMD EPYC (2 threads)" in text
    assert "- [t2] device=NVIDIA H100 80GB HBM3" in text
    assert "## Repeated runs" not in text  # different devices are not repeats


def test_older_runs_without_kid_pr_or_timing_render_with_dashes(tmp_path):
    files = model_files("dcgan", 50.0)
    files["timing"] = None
    del files["metrics"]["metrics"]["is"]
    run = write_run(tmp_path, "run-a-0001", [files])
    text = emit_report([run])
    (row,) = table_rows(text)
    assert header(text)[:2] == ["model", "train steps"]  # one run: no run column
    assert header(text)[4:7] == ["sampling", "FID ↓", "IS ↑"]
    assert row[4:] == ["default", "50.00", "–", "–", "–", "35.4 s"]
    assert "Not computed in these runs: KID, precision, recall" in text


def test_bits_per_dim_column_when_a_model_reports_it(tmp_path):
    files = model_files("ddpm", 30.0, generator="ddpm", nfe=1000)
    files["metrics"]["extra"] = {"bits_per_dim": {"value": 3.7519}}
    run = write_run(tmp_path, "run-a-0001", [files, model_files("dcgan", 40.0)])
    text = emit_report([run])
    cols = header(text)
    assert "bits/dim ↓" in cols
    rows = {r[0]: r for r in table_rows(text)}
    i = cols.index("bits/dim ↓")
    assert rows["ddpm"][i] == "3.752" and rows["dcgan"][i] == "–"
    assert rows["ddpm"][cols.index("NFE")] == "1000"


def test_sampling_settings_show_the_guidance_scale(tmp_path):
    files = model_files("edm", 30.0, generator="edm", nfe=22)
    files["metrics"]["sample"].update(steps=6, guidance=1.5)
    run = write_run(tmp_path, "run-a-0001", [files, model_files("dcgan", 40.0)])
    text = emit_report([run])
    rows = {r[0]: r for r in table_rows(text)}
    i = header(text).index("sampling")
    assert rows["edm"][i] == "steps 6, guidance s = 1.5" and rows["dcgan"][i] == "default"


def test_incomplete_run_is_labelled(tmp_path):
    run = write_run(tmp_path, "run-a-0001", [model_files("dcgan", 10.0)], status="running")
    assert "running: incomplete, only finished models are shown" in emit_report([run])


def test_markdown_cells_cannot_break_the_table(tmp_path):
    files = model_files("a|b<i>", 10.0)
    run = write_run(tmp_path, "run-a-0001", [files], dirs=["ab"])
    text = emit_report([run])
    (row,) = table_rows(text)
    assert len(row) == len(header(text))
    assert row[0] == "a\\|b&lt;i&gt; (dcgan)"


# --------------------------------------------------------------------------- published


def test_published_figures_have_citations_protocols_and_the_issue_values():
    figures = {f.id: f for f in load_published()}
    assert len(figures) == 7
    ddpm = figures["ddpm-ho2020"]
    assert (ddpm.fid, ddpm.is_, ddpm.nfe) == (3.17, 9.46, 1000)
    assert (ddpm.protocol.num_samples, ddpm.protocol.reference_split) == (50000, "train")
    iddpm = figures["iddpm-nichol2021"]
    assert (iddpm.fid, iddpm.nfe, iddpm.verified) == ((2.90, 3.19), 4000, True)
    assert (figures["ddgan-xiao2022"].fid, figures["ddgan-xiao2022"].nfe) == (3.75, 4)
    assert figures["ddgan-xiao2022"].protocol.fid_implementation == "pytorch-fid"
    assert (figures["edm-karras2022-uncond"].fid, figures["edm-karras2022-cond"].fid) == (
        1.97,
        1.79,
    )
    assert figures["edm-karras2022-cond"].nfe == 35
    assert (figures["vdpm-tqch-w0"].fid, figures["vdpm-tqch-w0"].is_) == (2.58, 9.76)
    assert figures["vdpm-tqch-w0"].nfe == "not stated"
    # the unverifiable StudioGAN 50k-vs-train figure is gone; the checked 10k-vs-test one stays
    assert "dcgan-studiogan-50k-train" not in figures
    dcgan = figures["dcgan-studiogan-10k-test"]
    assert (dcgan.fid, dcgan.protocol.num_samples, dcgan.protocol.reference_split) == (
        49.03,
        10000,
        "test",
    )
    for f in figures.values():
        assert f.citation and f.source and f.verification and f.sampler
        assert f.verified  # every shipped figure was checked against its source
        assert "http" not in f.citation + f.source  # the HTML report must not link out


def test_published_shown_only_when_dataset_and_protocol_match(tmp_path, monkeypatch):
    inception = {
        "extractor": "pytorch_fid_inception_v3",
        "weights_sha256": "cd" * 32,
        "resize": "bilinear",
        "input_size": 299,
        "dtype": "float32",
        "feature_dim": 2048,
        "num_samples": 50000,
        "is_splits": 10,
        "seeds": "0-49999",
        "reference": {
            "dataset": "cifar10",
            "split": "train",
            "count": 50000,
            "stats_sha256": "ef" * 32,
        },
    }
    matching = write_run(
        tmp_path,
        "run-a-0001",
        [model_files("ddpm", 3.5, protocol=inception, dataset="cifar10", generator="ddpm")],
    )
    text = emit_report([matching])
    rows = table_rows(text, "| DDPM (L_simple) |")
    assert rows and rows[0][1:5] == ["3.17", "9.46", "ancestral, all T = 1000 steps", "1000"]
    assert "| improved DDPM (variants) | 2.90–3.19 |" in text
    assert "NOT VERIFIED" not in text
    assert "not measured by genbench" in text
    assert "StudioGAN, 2020 README" not in text  # 10k-vs-test protocol: not this run's
    # a figure nobody could check (a user's own file may hold one) says so, with the reason
    figures = [
        f.model_copy(update={"verified": False, "verification": "table not reachable"})
        if f.id == "iddpm-nichol2021"
        else f
        for f in load_published()
    ]
    monkeypatch.setattr("genbench.reports.report.load_published", lambda: figures)
    text = emit_report([matching])
    assert "NOT VERIFIED" in text and "iddpm-nichol2021: table not reachable" in text
    monkeypatch.undo()
    digits = write_run(tmp_path, "run-b-0002", [model_files("dcgan", 10.0)])
    text = emit_report([digits])
    assert "| DDPM (L_simple) |" not in text
    assert "published figure(s) in vendor/published.toml (data sets: cifar10) are not shown" in (
        text
    )


def test_malformed_published_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "p.toml"
    text = (Path(__file__).parent.parent / "vendor" / "published.toml").read_text()
    bad.write_text(text.replace('id = "ddpm-ho2020"', 'id = "ddpm-ho2020"\ntypo = 1', 1))
    with pytest.raises(GenbenchError, match=r"figure\.0\.typo: Extra inputs are not permitted"):
        load_published(bad)


# --------------------------------------------------------------------------- HTML


def test_html_escapes_every_user_string_and_fetches_nothing(tmp_path):
    evil = "<script>alert(1)</script>"
    files = model_files(evil, 10.0, generator="<b>gen</b>")
    files["metrics"]["config"] = {"note": evil}
    run = write_run(tmp_path, "run-<img src=x onerror=alert(2)>", [files], dirs=["evil"])
    cost = write_run(tmp_path, "run-b-0002", [model_files("cost $5 $x", 11.0)])
    out = tmp_path / "out"
    assert emit_report([run, cost], "html", out).startswith(f"wrote {out / 'report.html'}\n")
    html = (out / "report.html").read_text()
    assert evil not in html and "<b>gen</b>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;gen&lt;/b&gt;" in html
    assert html.count("<script") == 1  # only the page's own sorting script
    # self-contained: every image is inline, nothing links or loads from elsewhere
    srcs = re.findall(r'\ssrc="([^"]*)"', html)
    assert len(srcs) >= 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http:" not in html and "https:" not in html and " href=" not in html
    assert "url(" not in html and "@import" not in html
    assert "default-src 'none'; img-src data:" in html


def test_html_has_sortable_tables_plots_and_sample_grids(two_protocols):
    from genbench.reports.html import render_html

    html = render_html(load_report(two_protocols))
    assert html.count('<table class="sortable">') == 1  # results (no repeats, no published)
    for title in (
        "FID against sampling time",
        "FID against network evaluations per image (NFE)",
        "FID against training time",
        "Sampling throughput by model (batch size 64)",  # one batch size: bars
        "Training losses and logged statistics",
    ):
        assert f'alt="{title}"' in html
    assert "Sampling speed across commits: not drawn (no speed history file" in html
    assert html.count('alt="samples of dcgan @') == 2
    assert 'data-num="249.3811"' in html  # sort by the raw value, not the rounded text
    assert '<span class="mark">[b]</span>' in html


def test_labels_with_dollar_signs_do_not_break_plots():
    assert tex_safe("cost $5 $x") == r"cost \$5 \$x"


def test_speed_series_labels_name_only_options_in_use():
    def record(**fast):
        return Timing(batch_size=8, median_s=0.1, images_per_s=80.0, **fast)

    on = record(precision="bf16", compile="none", channels_last=True, cuda_graphs=False)
    assert speed_options(on) == ["bf16", "channels_last"]
    assert speed_options(record(compile="max-autotune")) == ["compile=max-autotune"]
    assert speed_options(record()) == []


def test_pareto_front_keeps_only_points_no_other_beats_on_both_axes():
    pts = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (2.0, 2.5), (5.0, 1.0)]
    assert pareto_front(pts) == [(1.0, 5.0), (2.0, 2.5), (4.0, 1.0)]


@pytest.mark.parametrize(
    ("fn", "value", "text"),
    [
        (fmt.sig, 24927.3, "24,900"),
        (fmt.sig, 0.012345, "0.0123"),
        (fmt.sig, 7.0, "7.00"),
        (fmt.duration, 2.0058, "2.0 s"),
        (fmt.duration, 0.25, "250 ms"),
        (fmt.duration, 300.0, "5.0 min"),
        (fmt.duration, 10_800.0, "3.0 h"),
        (fmt.duration, 345_600.0, "4.0 days"),
        (fmt.count, 99008, "99.0k"),
        (fmt.count, 35_740_000, "35.74M"),
        (fmt.memory, 912388096, "870 MiB"),
        (fmt.fixed, float("nan"), "–"),
        (fmt.fixed, None, "–"),
    ],
)
def test_number_formatting(fn, value, text):
    assert fn(value) == text


# --------------------------------------------------------------------------- speed


def speed_record(batch: int, ips: float, **over: Any) -> dict[str, Any]:
    record = {
        "commit": "c0ffee1234",
        "machine": "m4ch1ne0000",
        "timestamp": "2026-11-23T10:00:00",
        "model": "dcgan",
        "generator": "dcgan",
        "batch_size": batch,
        "steps": None,
        "nfe": 1,
        "precision": "fp32",
        "channels_last": False,
        "compile": "none",
        "device": "cpu",
        "raw_s": [batch / ips] * 5,
        "median_s": batch / ips,
        "iqr_s": 0.01 * batch / ips,
        "images_per_s": ips,
        "s_per_50k": 50_000 / ips,
        "ms_per_nfe": 1000 * batch / ips,
        "peak_memory_bytes": 2**30,
        "warmup_s": [0.5],
        "time_to_first_image_s": 0.6,
    }
    record.update(over)
    return record


def test_speed_directories_and_history(tmp_path):
    speed = tmp_path / "speed-1"
    speed.mkdir()
    records = [speed_record(16, 4000.0), speed_record(64, 9000.0)]
    (speed / "speed.json").write_text(
        json.dumps({"kind": "speed", "environment": CPU_ENV, "results": records})
    )
    history = tmp_path / "history.jsonl"
    lines = [
        speed_record(64, 8000.0, commit="aaaa1111", timestamp="2026-11-01T00:00:00"),
        speed_record(64, 9000.0, commit="bbbb2222", timestamp="2026-11-02T00:00:00"),
    ]
    history.write_text("".join(json.dumps(r) + "\n" for r in lines))
    run = write_run(tmp_path, "run-a-0001", [model_files("dcgan", 10.0)])
    text = emit_report([run, speed], history=history)
    rows = table_rows(text, "| speed-1 |")
    assert [r[3] for r in rows] == ["16", "64"]
    assert rows[0][6:9] == ["fp32", "no", "none"]
    assert [r[9] for r in rows] == ["4,000 (IQR 1.0%)", "9,000 (IQR 1.0%)"]
    assert rows[0][12:15] == ["1.0 GiB", "500 ms", "600 ms"]
    out = tmp_path / "both"
    emit_report([run, speed], "both", out, history)
    html = (out / "report.html").read_text()
    assert 'alt="Sampling speed across commits"' in html
    assert 'alt="Sampling throughput by model and batch size"' in html
    assert "not drawn" not in html
    assert (out / "report.md").read_text().startswith("# genbench report")


# --------------------------------------------------------------------------- CLI


def test_cli_report_outputs_and_usage_errors(cli, two_protocols, tmp_path):
    runs = list(map(str, two_protocols))
    printed = cli("report", *runs)
    assert printed.code == 0 and printed.out.startswith("# genbench report")
    target = tmp_path / "r.html"
    made = cli("report", *runs, "--format", "html", "--out", str(target))
    assert made.code == 0 and target.stat().st_size > 10_000
    assert made.out.splitlines()[:2] == [f"wrote {target}", f"wrote {tmp_path / 'r-results.csv'}"]
    assert made.out.splitlines()[2].startswith(f"wrote {tmp_path / 'r-figures'}/ (")
    for args, message in [
        (["--format", "html"], "--format html: give --out PATH"),
        (["--format", "pdf"], "--format: unknown format 'pdf'; valid choices: md, html, both"),
        (["--out", str(tmp_path / "r.txt")], "a md report is written to a file ending in .md"),
        (["--format", "both", "--out", str(target)], "but this is a file; give a directory"),
        (["--history", str(tmp_path / "none.jsonl")], "no such file"),
    ]:
        bad = cli("report", *runs, *args)
        assert bad.code == 2 and message in bad.err, (args, bad.err)
        assert len(bad.err.strip().splitlines()) == 1
    broken = tmp_path / "broken.jsonl"
    good = {"model": "a", "batch_size": 8, "median_s": 0.1, "images_per_s": 80.0}
    broken.write_text(json.dumps(good) + "\nnot json\n")
    bad = cli("report", *runs, "--history", str(broken))
    assert bad.code == 2 and f"{broken}:2: not a JSON object" in bad.err
    broken.write_text('{"images_per_s": 1}\n')  # a line that is not a speed result
    bad = cli("report", *runs, "--history", str(broken))
    assert bad.code == 2 and f"{broken}:1: not a valid SpeedResult (batch_size:" in bad.err
    assert not (tmp_path / "r.txt").exists()


def test_report_overwrites_nothing_but_its_own_file(cli, two_protocols):
    run = two_protocols[0]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert cli("report", str(run), "--out", str(run)).code == 0  # md into the run directory
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert set(after) - set(before) == {run / "report.md", run / "report-results.csv"}
    assert all(after[p] == data for p, data in before.items())
    assert not list(run.rglob("*.partial"))


def test_write_run_reports_survives_an_unreadable_history(two_protocols, tmp_path):
    history = tmp_path / "h.jsonl"
    history.write_text("garbage\n")
    md, html = write_run_reports(two_protocols[0], history)
    assert md.read_text().startswith("# genbench report")
    assert "the speed history could not be read" in html.read_text()


def test_bench_run_writes_report_md_and_html(cli, tiny_spec, tmp_path):
    out = tmp_path / "runs"
    result = cli("run", str(tiny_spec(steps=5, num_samples=64)), "--out", str(out))
    assert result.code == 0, result.err
    (run,) = list(out.iterdir())
    md = (run / "report.md").read_text()
    assert md in result.out  # what `bench run` prints is the stored report
    metrics = json.loads((run / "dcgan" / "metrics.json").read_text())
    (row,) = table_rows(md)
    assert row[0] == "dcgan" and row[5] == f"{metrics['metrics']['fid']['value']:,.2f}"
    html = (run / "report.html").read_text()
    assert 'alt="samples of dcgan"' in html and 'alt="FID against sampling time"' in html
    assert f"report:  {run / 'report.html'}" in result.out


def test_fid_against_training_time_draws_one_line_per_model_across_runs(two_protocols):
    from genbench.reports.plots import Missing, Plot, fid_vs_train_time

    report = load_report(two_protocols)
    plot = fid_vs_train_time(report)
    assert isinstance(plot, Plot) and plot.png.startswith(b"\x89PNG")
    for m in report.inputs.models:
        m.metrics.train_time_s = None
    missing = fid_vs_train_time(report)
    assert isinstance(missing, Missing) and "training time" in missing.reason


def test_report_writes_a_results_csv_and_each_figure_as_png_and_svg(two_protocols, tmp_path):
    import csv

    out = tmp_path / "paper"
    printed = emit_report(two_protocols, "both", out)
    rows = list(csv.reader((out / "report-results.csv").open(encoding="utf-8")))
    head, a, b = rows
    assert head[:3] == ["run", "model", "train steps"] and "FID ↓" in head
    fid = head.index("FID ↓")
    # the whole run id, and the numbers themselves: unrounded, no protocol marks
    assert (a[0], a[1], a[2], a[fid]) == ("run-a-0001", "dcgan", "1500", "249.3811")
    assert (b[0], b[fid], b[head.index("precision ↑")]) == ("run-b-0002", "120.5", "0.81234")
    assert a[head.index("precision ↑")] == ""  # not measured in that run
    figures = sorted((out / "report-figures").iterdir())
    pngs = [p for p in figures if p.suffix == ".png"]
    svgs = [p for p in figures if p.suffix == ".svg"]
    assert len(pngs) >= 3 and [p.stem for p in pngs] == [p.stem for p in svgs]
    html = (out / "report.html").read_text()
    for png, svg in zip(pngs, svgs, strict=True):
        assert png.read_bytes().startswith(b"\x89PNG") and b"<svg" in svg.read_bytes()[:400]
        # the same PNG as the one embedded in the page
        assert base64.b64encode(png.read_bytes()).decode() in html
    assert (
        f"wrote {out / 'report-figures'}/ ({len(pngs)} figures, each as .png and .svg)" in printed
    )


def test_a_folder_of_runs_reports_every_run_found_under_it(cli, tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "smoke-20261203-100000-aaaa", [model_files("dcgan", 10.0)])
    write_run(runs / "older", "smoke-20261202-100000-bbbb", [model_files("dcgan", 12.0)])
    (runs / "notes").mkdir()  # neither a run nor holding one: skipped
    result = cli("report", str(runs))
    assert result.code == 0, result.err
    assert [r[0] for r in table_rows(result.out)] == ["bbbb", "aaaa"]  # path order
    assert "from 2 run(s)" in result.out
    empty = cli("report", str(runs / "notes"))
    assert empty.code == 2 and "and none is under it" in empty.err


def test_noisy_timings_are_flagged_in_the_table_the_notes_and_the_speed_output(tmp_path):
    from genbench.benchmarks.speed_format import format_table, speedups
    from genbench.store.records import SpeedResult

    quiet = model_files("dcgan", 10.0)
    loud = model_files("ddpm", 20.0, generator="ddpm")
    loud["timing"] = timing(400.0, iqr_fraction=0.25)
    edge = model_files("edm", 30.0, generator="edm")
    edge["timing"] = timing(500.0, iqr_fraction=0.10)  # exactly 10%: not above it
    loaded = model_files("vdpm", 40.0, generator="vdpm")  # tight, but on a busy machine
    loaded["timing"] = {**timing(300.0), "load_average": 5.2, "threads": 2}
    calm = model_files("ddgan", 50.0, generator="ddgan")  # its own 2 threads: load 2, fine
    calm["timing"] = {**timing(200.0), "load_average": 1.9, "threads": 2}
    text = emit_report([write_run(tmp_path, "run-a-0001", [quiet, loud, edge, loaded, calm])])
    rows = {r[0]: r for r in table_rows(text)}
    i = header(text).index("images/s ↑")
    assert rows["ddpm"][i] == "400 (IQR 25%, noisy)"
    assert rows["dcgan"][i] == "24,900 (IQR 2.0%)" and rows["edm"][i] == "500 (IQR 10%)"
    assert rows["vdpm"][i] == "300 (IQR 2.0%, noisy)" and rows["ddgan"][i] == "200 (IQR 2.0%)"
    assert (
        "2 of 5 timings spread more than 10% of their median or ran on a machine loaded "
        "beyond their threads, and are marked noisy"
    ) in text

    ours = SpeedResult.model_validate(speed_record(16, 4000.0))
    stock = SpeedResult.model_validate(
        {**speed_record(16, 2000.0), "iqr_s": 0.2 * 16 / 2000.0, "baseline": "diffusers",
         "generator": "diffusers.DDPMPipeline"}
    )  # fmt: skip
    table = format_table([ours, stock])
    assert table.splitlines()[-1] == (
        "noisy: rerun on a quiet machine (1 of 2 results spread more than 10% of their median "
        "or ran on a machine loaded beyond their threads)"
    )
    assert sum(" noisy" in line for line in table.splitlines()[2:-1]) == 1
    (ratio,) = speedups([ours, stock])
    assert ratio.startswith("dcgan batch 16") and ratio.endswith(
        "(noisy: rerun on a quiet machine)"
    )


USERS_FIGURE = """
[[figure]]
id = "{id}"
model = "Our lab's DDPM (digits)"
generator = "ddpm"
dataset = "digits"
conditional = false
fid = 7.5
sampler = "ddim10"
nfe = 10
citation = "Us. A digits DDPM. Lab report 2026"
source = "table 2"
verified = false
verification = "our own run, not re-checked"
[figure.protocol]
num_samples = 1000
reference_split = "train"
extractor = "digits_cnn"
feature_dim = 64
fid_implementation = "genbench 0.x"
"""


def test_users_published_figures_stand_beside_the_shipped_ones(cli, tmp_path):
    run = write_run(tmp_path, "run-a-0001", [model_files("dcgan", 10.0)])
    mine = tmp_path / "mine.toml"
    mine.write_text(USERS_FIGURE.format(id="lab-ddpm"))
    result = cli("report", str(run), "--published", str(mine))
    assert result.code == 0, result.err
    (row,) = table_rows(result.out, "| Our lab's DDPM")
    assert row[0] == "Our lab's DDPM (digits) [mine.toml]" and row[1] == "7.50"
    assert row[-1] == "NOT VERIFIED" and "come from that file of the user's" in result.out
    assert "Our lab's DDPM" not in cli("report", str(run)).out  # only when asked for

    # Validated like the shipped file: a missing field, an id already used, no file.
    broken = tmp_path / "broken.toml"
    broken.write_text(USERS_FIGURE.format(id="x").replace('sampler = "ddim10"\n', ""))
    clash = tmp_path / "clash.toml"
    clash.write_text(USERS_FIGURE.format(id="ddpm-ho2020"))
    for path, message in (
        (broken, f"{broken}: figure.0.sampler: Field required"),
        (clash, "figure id 'ddpm-ho2020' is already used by vendor/published.toml"),
        (tmp_path / "none.toml", "--published"),
    ):
        bad = cli("report", str(run), "--published", str(path))
        assert bad.code == 2 and message in bad.err, bad.err
        assert len(bad.err.strip().splitlines()) == 1


def test_learning_rates_are_drawn_on_their_own_axis(tmp_path):
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from genbench.reports.plots import STYLE, training_losses

    run = write_run(tmp_path, "run-a-0001", [model_files("dcgan", 10.0)])
    log = run / "dcgan" / "train_log.jsonl"
    rows = [
        {"step": s, "loss_d": 1.0 / s, "loss_g": 2.0, "lr_D": 2e-4 * s / 150, "lr_G": 2e-4}
        for s in (50, 100, 150)
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot = training_losses(load_report([run]))
    with matplotlib.rc_context(STYLE):
        fig = Figure()
        FigureCanvasAgg(fig)
        plot.draw(fig)
    main, twin = fig.axes  # one panel and its twin
    assert [line.get_label() for line in main.get_lines()] == ["loss_d", "loss_g"]
    assert [line.get_label() for line in twin.get_lines()] == ["lr_D", "lr_G"]
    assert twin.get_ylabel() == "learning rate (dotted)"
    assert max(max(line.get_ydata()) for line in twin.get_lines()) == pytest.approx(2e-4)


def test_one_batch_size_draws_one_bar_per_model_with_its_spread(tmp_path):
    """With every timing at one batch size, a line plot would stack points on one x: the
    throughput plot is a bar per model instead, fastest on top, IQR whiskers, noisy bars
    hatched; several batch sizes keep the lines."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.container import BarContainer
    from matplotlib.figure import Figure

    from genbench.reports.plots import STYLE, throughput

    quiet = model_files("dcgan", 10.0)
    loud = model_files("ddpm", 20.0, generator="ddpm")
    loud["timing"] = timing(400.0, iqr_fraction=0.25)
    edm = model_files("edm", 30.0, generator="edm")
    edm["timing"] = timing(500.0, iqr_fraction=0.04)
    plot = throughput(load_report([write_run(tmp_path, "run-a-0001", [quiet, loud, edm])]))
    batch = quiet["timing"]["batch_size"]
    assert plot.title == f"Sampling throughput by model (batch size {batch})"
    with matplotlib.rc_context(STYLE):
        fig = Figure()
        FigureCanvasAgg(fig)
        plot.draw(fig)
    (ax,) = fig.axes
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names == ["ddpm", "edm", "dcgan"]  # bottom-up: the fastest on top
    assert ax.get_xlabel().endswith("\nbench run; AMD EPYC (2 threads)")  # shared: said once
    assert [b.get_width() for b in bars] == pytest.approx([400.0, 500.0, 24927.3])
    assert [bool(b.get_hatch()) for b in bars] == [True, False, False]  # ddpm: IQR 25%
    assert ax.get_xscale() == "log"  # 24,927 / 400 > 20
    # the whisker of edm spans its IQR: 500 images/s at median -+ 2% of the time
    err = bars.errorbar.lines[2][0].get_segments()[1]
    assert err[0][0] == pytest.approx(500 / 1.02) and err[1][0] == pytest.approx(500 / 0.98)
    labels = [t.get_text() for t in ax.texts]
    assert labels == [" 400/s (noisy)", " 500/s", " 24,927/s"]

    other = model_files("vdpm", 40.0, generator="vdpm")
    other["timing"] = {**timing(300.0), "batch_size": 2 * batch}
    lines = throughput(load_report([write_run(tmp_path, "run-b-0001", [quiet, other])]))
    assert lines.title == "Sampling throughput by model and batch size"
