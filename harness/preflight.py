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
        if path:
            check_sqlite_file(Path(path), f"--tracking-uri {shown}")


SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file


def check_sqlite_file(path: Path, what: str) -> None:
    """An existing, non-empty file a SQLite URL points at must be a SQLite database: another file (a
    text file, a results JSON) gave SQLAlchemy's 'file is not a database' traceback (issue 15.8)."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return  # created by the store on first use (a folder is refused by SQLite itself, by name)
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if head != SQLITE_MAGIC:
        raise ConfigError(f"{what}: {path} is not a SQLite database (it does not start with the SQLite header); "
                          "point the URL at a new file or an existing store")


def check_optuna_storage(url: str) -> None:
    """`emmil sweep --storage`: an SQLAlchemy URL Optuna can open, checked before the parent run opens
    (garbage gave a traceback and left the parent run RUNNING, issue 15.8)."""
    from harness.tracking import redact_uri

    shown = redact_uri(url)
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy raises ArgumentError (and ValueError for bad ports)
        raise ConfigError(f"--storage {shown}: not a database URL; expected an SQLAlchemy URL such as "
                          "sqlite:////abs/path/optuna.db or postgresql://user@host/db") from None
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)  # make_url has already percent-decoded it, as SQLAlchemy opens it
        if not path.parent.is_dir():
            raise ConfigError(f"--storage {shown}: folder of the SQLite file does not exist")
        check_sqlite_file(path, f"--storage {shown}")


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
