"""The documentation stays true: docs/cli.md names every command and option of the real
``bench`` app (and none it lacks), the README stays short and links only to files that
exist."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from genbench.cli import app

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")


def _commands() -> dict[str, set[str]]:
    """Every command of the app and the option spellings it accepts (--help aside)."""
    group = typer.main.get_command(app)
    out = {}
    for name, command in group.commands.items():
        flags = set()
        for param in command.params:
            for opt in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())):
                if opt.startswith("--"):
                    flags.add(opt)
        out[name] = flags
    return out


def _sections() -> dict[str, str]:
    """docs/cli.md's ``## `bench NAME ...` `` sections by command name."""
    parts = re.split(r"^## `bench ([a-z-]+)[^`]*`\s*$", CLI_MD, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_command_has_a_section():
    assert set(_sections()) == set(_commands())


def test_every_option_is_documented_and_every_documented_option_exists():
    sections = _sections()
    for name, flags in _commands().items():
        documented = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", sections[name]))
        assert flags - documented == set(), f"bench {name}: undocumented {flags - documented}"
        assert documented - flags == set(), f"bench {name}: no such option {documented - flags}"


def test_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to missing {target}"
    for doc in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
