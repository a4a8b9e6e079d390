"""The twistd service as an operator starts it: bad configs, help, a taken port."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.net import free_port

_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def _twistd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "edgenode.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_error_at_start_prints_problems_and_exits_1(tmp_path) -> None:
    """A broken config stops startup with exit 1 and every problem printed, no traceback."""
    path = _write(
        tmp_path,
        {
            "listen": f"tcp:{free_port()}:interface=127.0.0.1",
            "domains": {
                "a.test": {
                    "origin_sni": {"enabled": True, "value": "*.a.test"},
                    "origins": [{"address": "127.0.0.1", "port": 70000}],
                }
            },
        },
    )
    done = _twistd("edgenode", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "domains.a.test.origin_sni.value" in out and "wildcard" in out
    assert "domains.a.test.origins[0].port" in out
    assert "Traceback" not in out


def test_port_in_use_stops_startup(tmp_path, pki) -> None:
    """If the client port is taken, the edge does not start (and says why)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = _write(
            tmp_path,
            {
                "listen": f"tcp:{port}:interface=127.0.0.1",
                "admin": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
                "tls": {"ca_file": str(pki.ca_file)},
                "domains": {"a.test": {"origins": [{"address": "127.0.0.1", "port": 9}]}},
            },
        )
        done = _twistd(
            "--logfile",
            str(tmp_path / "twistd.log"),
            "edgenode",
            "--config",
            str(path),
            cwd=tmp_path,
        )
    assert done.returncode != 0
    assert "Address already in use" in (tmp_path / "twistd.log").read_text() + done.stderr


def test_help_lists_every_option(tmp_path) -> None:
    """`twistd edgenode --help` documents --config, --listen and --admin-listen."""
    done = _twistd("edgenode", "--help", cwd=tmp_path)
    assert done.returncode == 0
    for option in ("--config", "--listen", "--admin-listen", "--demo"):
        assert option in done.stdout
