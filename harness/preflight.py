"""Checks run before any work starts (issue 6): an address nobody listens on is a user error, named
in seconds, not a traceback after minutes of retries.

Measured without these checks on the 2-core dev machine: `--tracking-uri http://127.0.0.1:1` ended in
an MlflowException traceback after 4 min 15 s (MLflow's HTTP retries); `--address 127.0.0.1:1` made
`ray.init` wait on the GCS for more than 5 minutes (killed by `timeout 300`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from emmil.errors import ConfigError

PROBE_TIMEOUT_S = 5.0
_HTTP_PORTS = {"http": 80, "https": 443}


def tcp_reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to host:port opens within `timeout` seconds, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def check_tracking_uri(uri: str | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """http(s) tracking server: something must listen on its host:port; sqlite: its folder must exist.

    Other schemes (databricks, postgresql, ...) are left to MLflow. The message shows the URI with
    its password redacted.
    """
    if not uri:
        return
    from harness.tracking import redact_uri

    parts = urlsplit(uri)
    shown = redact_uri(uri)
    if parts.scheme in _HTTP_PORTS:
        try:
            port = parts.port or _HTTP_PORTS[parts.scheme]
        except ValueError:
            raise ConfigError(f"--tracking-uri {shown}: invalid port") from None
        if not parts.hostname:
            raise ConfigError(f"--tracking-uri {shown}: no host")
        reason = tcp_reachable(parts.hostname, port, timeout)
        if reason is not None:
            raise ConfigError(f"--tracking-uri {shown}: tracking server unreachable ({reason}); start it "
                              "(e.g. mlflow server --host 127.0.0.1) or omit --tracking-uri for the local store")
    elif parts.scheme == "sqlite":
        from urllib.parse import unquote

        path = unquote(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else ""  # as SQLAlchemy reads it
        if path and not Path(path).parent.is_dir():  # sqlite:////abs/file -> /abs/file
            raise ConfigError(f"--tracking-uri {shown}: folder of the SQLite file does not exist")


def check_ray_address(address: str | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """`--address` (or $RAY_ADDRESS) host:port or ray://host:port must accept a TCP connection.

    "auto" and "local" are Ray's own keywords and are not probed.
    """
    given = address if address else os.environ.get("RAY_ADDRESS")
    if not given or given in ("auto", "local"):
        return
    where = "--address" if address else "$RAY_ADDRESS"
    text = given if "://" in given else f"ray://{given}"
    parts = urlsplit(text)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ConfigError(f"{where} {given!r}: expected HOST:PORT (e.g. 127.0.0.1:6379), 'auto' or 'local'")
    reason = tcp_reachable(host, port, timeout)
    if reason is not None:
        raise ConfigError(f"{where} {given}: Ray cluster unreachable ({reason}); start it with "
                          "`ray start --head` or omit --address for a private local instance")
