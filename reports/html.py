"""Self-contained HTML report: the markdown report's tables (sortable), plots and sample grids.

One file, every image embedded as a ``data:`` URI, no fonts, scripts or styles fetched from
anywhere, so it opens from disk or as a CI artifact. A Content-Security-Policy in the page
forbids network fetches and allows only the page's own script (by hash), so even a string
that escaped escaping could not load or run anything. Jinja2 autoescaping escapes every
string that comes from specs, model names or paths.
"""

from __future__ import annotations

import base64
import hashlib
from importlib import resources
from typing import Any

import jinja2
import markupsafe

from genbench.reports.fmt import sig
from genbench.reports.markdown import DIGITS_NOTE, READING_GUIDE
from genbench.reports.model import Cell, Report, Table, flatten
from genbench.reports.plots import Missing, Plot, all_plots
from genbench.reports.tables import run_summary

SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.tabIndex = 0;
    th.title = (th.title ? th.title + " - " : "") + "click to sort";
    function key(row) {
      var cell = row.cells[col];
      if (cell.hasAttribute("data-num")) return parseFloat(cell.getAttribute("data-num"));
      if (cell.hasAttribute("data-text")) return cell.getAttribute("data-text");
      return null;
    }
    function sort() {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) return (x === null) - (y === null);
        if (typeof x === "number" && typeof y === "number") return dir * (x - y);
        return dir * String(x).localeCompare(String(y));
      });
      rows.forEach(function (r) { body.appendChild(r); });
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
    });
  });
});
""".strip()


def script_hash(script: str) -> str:
    """The CSP source expression allowing exactly this inline script."""
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _cell(cell: Cell) -> dict[str, Any]:
    sort: dict[str, str] = {}
    if isinstance(cell.sort, int | float) and not isinstance(cell.sort, bool):
        sort = {"data-num": repr(float(cell.sort))}
    elif cell.sort is not None:
        sort = {"data-text": str(cell.sort)}
    return {"text": cell.text, "marks": list(cell.marks), "attrs": sort}


def _table(table: Table | None) -> dict[str, Any] | None:
    if table is None:
        return None
    return {
        "columns": table.columns,
        "rows": [[_cell(c) for c in row] for row in table.rows],
        "notes": table.notes,
    }


def _samples(report: Report) -> list[dict[str, Any]]:
    out = []
    for m, label in zip(report.inputs.models, report.labels, strict=True):
        if m.samples is None:
            continue
        grid = report_grid_size(m.run.spec, m.name)
        seeds = m.metrics.sample.seeds.split("-")[0] if m.metrics.sample else ""
        caption = f"{label} (run {m.run.run_id})"
        detail = (
            f"the first {grid} images of the evaluation set (seeds from {seeds})"
            if grid
            else "the first images of the evaluation set"
        )
        out.append(
            {
                "label": label,
                "caption": caption,
                "detail": detail,
                "src": data_uri(m.samples.read_bytes()),
            }
        )
    return out


def _trajectories(report: Report) -> list[dict[str, Any]]:
    out = []
    for m, label in zip(report.inputs.models, report.labels, strict=True):
        sample = m.metrics.sample
        if m.trajectory is None or sample is None or not sample.trajectory_sigmas:
            continue
        levels = ", ".join(sig(s, 3) for s in sample.trajectory_sigmas[:-1])
        out.append(
            {
                "label": label,
                "caption": f"{label} (run {m.run.run_id})",
                "detail": f"one row per seed from {sample.seeds.split('-')[0]}; the x0 the "
                f"model predicts at sigma = {levels} (left to right), then the final sample",
                "src": data_uri(m.trajectory.read_bytes()),
            }
        )
    return out


def report_grid_size(spec: dict[str, Any], model: str) -> int | None:
    """``sample.grid_size`` of a model in the resolved spec, if recorded."""
    entry = spec.get("models", {}).get(model, {})
    value = entry.get("sample", {}).get("grid_size", spec.get("sample", {}).get("grid_size"))
    return value if isinstance(value, int) else None


def render_html(report: Report, figures: list[Plot | Missing] | None = None) -> str:
    """The whole report as one HTML page (``figures``: ``all_plots(report)``, drawn here
    unless given)."""
    figures = all_plots(report) if figures is None else figures
    template_file = resources.files("genbench.reports") / "templates" / "report.html.j2"
    template_text = template_file.read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(template_text)
    inputs = report.inputs
    return template.render(
        generated=report.generated,
        script=SORT_SCRIPT,
        # our own base64 digest (no user text), kept literal so the CSP reads as written
        script_hash=markupsafe.Markup(script_hash(SORT_SCRIPT)),
        guide=READING_GUIDE,
        digits_note=DIGITS_NOTE
        if any(m.metrics.dataset == "digits" for m in inputs.models)
        else "",
        runs=[
            {"summary": run_summary(r), "env": flatten(r.environment.fingerprint()), "id": r.run_id}
            for r in inputs.runs
        ],
        speed_ids=[s.speed_id for s in inputs.speed],
        has_models=bool(inputs.models),
        results=_table(report.results) if inputs.runs else None,
        repeats=_table(report.repeats),
        published=_table(report.published),
        published_note=report.published_note,
        speed=_table(report.speed),
        plots=[
            {"title": f.title, "caption": f.caption, "src": data_uri(f.png), "wide": f.wide}
            for f in figures
            if isinstance(f, Plot)
        ],
        missing=[f for f in figures if not isinstance(f, Plot)],
        samples=_samples(report),
        trajectories=_trajectories(report),
    )
