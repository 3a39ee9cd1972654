"""The git side of ``bench compare``: which revisions to compare, and their code on disk.

Revisions are exported with ``git archive`` into a temporary folder, so the checkout (and
its uncommitted changes) is never touched; ``WORKTREE`` (``.``) is the working tree as it is.
"""

from __future__ import annotations

import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

from genbench.core.errors import GenbenchError

WORKTREE = "."
"""The working tree as it is, uncommitted changes included."""


def git(repo: Path, *args: str) -> str | None:
    """``git -C repo ARGS`` stripped stdout, or None when git fails or is missing."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def repo_root(where: Path | None = None) -> Path:
    """The top of the git checkout containing ``where`` (default: the current directory)."""
    top = git(where or Path.cwd(), "rev-parse", "--show-toplevel")
    if top is None:
        raise GenbenchError(
            "bench compare: comparing revisions needs a git checkout; run it inside one or "
            "give two speed.json files"
        )
    return Path(top)


def default_base(repo: Path) -> str | None:
    """The merge base of HEAD with origin/main; on main itself (the merge base is HEAD) or
    without that remote, HEAD's parent. None when HEAD has no parent."""
    head = git(repo, "rev-parse", "HEAD")
    merge_base = git(repo, "merge-base", "HEAD", "origin/main")
    if merge_base and merge_base != head:
        return merge_base
    return git(repo, "rev-parse", "--verify", "--quiet", "HEAD~1^{commit}")


def resolve_revision(repo: Path, rev: str) -> str:
    """The commit ``rev`` names, or ``WORKTREE``; an unknown revision is a usage error."""
    if rev == WORKTREE:
        return WORKTREE
    sha = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if sha is None:
        raise GenbenchError(f"bench compare: {rev!r} is not a git revision of {repo}")
    return sha


def export_revision(repo: Path, sha: str, dest: Path) -> Path:
    """The tracked files of ``sha`` under ``dest`` (``git archive``; the repo is untouched)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["git", "-C", str(repo), "archive", "--format=tar", sha],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None  # stdout=PIPE
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        tar.extractall(dest, filter="data")
    if proc.wait() != 0:
        raise GenbenchError(f"bench compare: git archive of {sha} failed")
    return dest


def _dirty(repo: Path) -> bool:
    return bool(git(repo, "status", "--porcelain", "--untracked-files=no"))


def source_of(repo: Path, rev: str, tmp: Path, label: str, log: Callable[[str], None]) -> Path:
    """Where ``rev``'s code is: the checkout itself for the working tree (or a clean HEAD),
    else an export of the commit under ``tmp/label``."""
    if rev == WORKTREE or (rev == git(repo, "rev-parse", "HEAD") and not _dirty(repo)):
        return repo
    log(f"compare: exporting {label} {rev[:12]} (git archive)")
    return export_revision(repo, rev, tmp / label)


def same_code(repo: Path, base: str, head: str) -> bool:
    """Whether two resolved revisions are the same code (a clean working tree is HEAD)."""
    head_commit = git(repo, "rev-parse", "HEAD")
    dirty = _dirty(repo)
    as_commit = {
        rev: (head_commit if rev == WORKTREE and not dirty else rev) for rev in (base, head)
    }
    return as_commit[base] == as_commit[head]
