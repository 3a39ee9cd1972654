"""nox sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s layers``, ``nox -s smoke``,
``nox -s speed``.

The sessions run in the current environment (``venv_backend="none"``): a fresh nox venv
would copy the 5 GB CUDA build of torch every time. Activate the project venv first
(``. .venv/bin/activate``, see the README's quick start).
"""

import nox

nox.options.sessions = ["lint", "layers", "tests"]


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The test suite (CPU; GPU tests skip without CUDA)."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(venv_backend="none")
def layers(session: nox.Session) -> None:
    """The import-layer contracts (import-linter) on the built wheel, as CI checks them."""
    session.run(".ci/lint-layers", external=True)


@nox.session(venv_backend="none")
def smoke(session: nox.Session) -> None:
    """The smoke benchmark on the embedded digits data set."""
    session.run("bench", "run", "smoke", *session.posargs)


@nox.session(venv_backend="none")
def speed(session: nox.Session) -> None:
    """CPU sampling-speed check of the smoke models against the merge base (as CI runs it)."""
    args = session.posargs or ["--spec", "smoke", "--device", "cpu", "--batch-sizes", "16"]
    session.run("bench", "compare", *args)
