"""Bounded network access for downloads of data sets and weights: never a hang offline.

torchvision's and torch hub's downloads call ``urlopen`` without a timeout, so the
process-wide socket default is the only handle; host look-ups are not covered by it and are
bounded separately. Failures become one-line reasons for the user-facing error.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` of ``exc`` on one line, shortened to ``limit`` characters."""
    # A bare URLError keeps the useful part (refused, timed out, unknown host) in ``reason``.
    detail = exc.reason if type(exc) is urllib.error.URLError else exc
    text = " ".join(f"{type(exc).__name__}: {detail}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Sockets created inside the block time out after ``seconds``; restored afterwards."""
    # torch.hub's download calls urlopen without a timeout: the process-wide default is the
    # only handle, and it bounds the connect and every read.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def check_host_resolves(url: str, timeout_s: float) -> None:
    """Raise ``TimeoutError`` when the host ``urlopen`` would connect to for ``url`` (the
    proxy's, when one applies) does not resolve within ``timeout_s``."""
    # Socket timeouts do not cover getaddrinfo, which can hang for tens of seconds when no
    # DNS server answers. Resolve in a daemon thread and stop waiting at the deadline; the
    # look-up's own failure (unknown host) is left for urlopen to report.
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        host = urllib.parse.urlsplit(proxy).hostname or host
    if not host:
        return

    def look_up() -> None:
        with suppress(OSError):
            socket.getaddrinfo(host, None)

    worker = threading.Thread(target=look_up, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError(f"looking up {host} took more than {timeout_s:g} s")


def local_or_download(
    weights: str | os.PathLike[str] | None,
    env_var: str,
    cached: Path,
    download: Callable[[Path], None],
    what: str,
    hint: str,
) -> Path:
    """A weights file, looked for in order: ``weights`` (an explicit path), ``$env_var``, the
    ``cached`` copy, else ``download(cached)``. Any miss is a one-line ``GenbenchError``
    naming ``what`` and ending in ``hint`` (how to fix it)."""
    from genbench.core.errors import GenbenchError

    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise GenbenchError(f"{what} not found at {path}: {hint}")
        return path
    env = os.environ.get(env_var, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise GenbenchError(f"{env_var}={env} is not a file: {hint}")
        return path
    if not cached.is_file():
        try:
            download(cached)
        except Exception as exc:
            raise GenbenchError(
                f"{what} not found (looked in {cached}) and download failed "
                f"({one_line(exc)}): {hint}"
            ) from exc
    return cached
