"""nox sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s layers``, ``nox -s smoke``,
``nox -s speed``, and on a CUDA machine ``nox -s gpu``.

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


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """On a CUDA machine, in one go: the ``gpu`` tests (one line per test as it ends, a
    JUnit file, so a time limit loses no names), then the CIFAR-10 speed figures (stock
    pipeline, bf16 + compile with a cold and a warm compile cache, + channels-last + CUDA
    graphs) and the evaluator's speed, into ``gpu-check/``. ``nox -s gpu -- 50`` times 50
    sampling steps instead of 10 (image-NFE/s does not depend on it at batch 1024)."""
    out = "gpu-check"
    steps = session.posargs[0] if session.posargs else "10"
    session.run(  # a failing test must not cost the figures: exit 1 goes on
        "python",
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-v",
        "-rA",
        f"--junitxml={out}/gpu-tests.xml",
        success_codes=[0, 1],
    )
    speed = ("bench", "speed", "speed-cifar10", "--device", "cuda", "--steps", steps)
    speed += ("--out", out, "--history", f"{out}/speed_history.jsonl")
    bf16 = ("--precision", "bf16", "--compile", "default")
    session.run(*speed, *bf16, "--baseline", "diffusers")
    session.run(*speed, *bf16)  # the same compiled case from a warm cache
    session.run(*speed, *bf16, "--channels-last", "--cuda-graphs")
    session.run(
        "bench",
        "eval-speed",
        "--device",
        "cuda",
        "--random-weights",
        "--num-images",
        "20000",
        "--out",
        f"{out}/eval_speed.json",
    )
