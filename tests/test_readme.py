"""The README's quick start: exactly two commands, the ones CI and users run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the quick start has one code block"
    return [line for line in blocks[0].splitlines() if line.strip()]


def test_quick_start_has_exactly_two_commands():
    main, tests = _quick_start()
    assert main.endswith("bench run smoke")
    assert tests.endswith("-m pytest")
    for line in (main, tests):
        assert line.startswith("python3 -m venv .venv && ")


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    main, tests = _quick_start()
    # .ci/run greps the README for the two lines; check its patterns pick exactly these
    patterns = re.findall(r"grep -m1 -E '([^']+)' README.md", script)
    assert len(patterns) == 2
    readme = (ROOT / "README.md").read_text().splitlines()
    found = []
    for pattern in patterns:
        out = subprocess.run(
            ["grep", "-m1", "-E", pattern], input="\n".join(readme), capture_output=True, text=True
        )
        found.append(out.stdout.strip())
    assert sorted(found) == sorted([main, tests])
