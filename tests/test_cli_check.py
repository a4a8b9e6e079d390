"""Tests for `edgenode check`: a summary line and exit 0, or every problem and exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgenode.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "etc" / "edgenode.yaml"
BROKEN_CONFIGS = Path(__file__).resolve().parent / "configs"

SAMPLE_SUMMARY = "3 domains, 5 origins, listen tcp:8080, admin tcp:8081:interface=127.0.0.1"


def test_check_valid_config_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """A valid config: exit 0 and one line naming the file and what it configures."""
    assert main(["check", str(SAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out == f"edgenode: {SAMPLE} is valid: {SAMPLE_SUMMARY}\n"
    assert err == ""


def test_check_counts_in_the_singular(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One domain with one origin reads '1 domain, 1 origin'."""
    config = tmp_path / "one.yaml"
    config.write_text("domains:\n  www.example.com:\n    origins: [{address: 203.0.113.10}]\n")
    assert main(["check", str(config)]) == 0
    assert "is valid: 1 domain, 1 origin, listen tcp:8080" in capsys.readouterr().out


def test_check_invalid_config_prints_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid config: exit 1, nothing on stdout, each problem on its own stderr line."""
    config = tmp_path / "bad.yaml"
    config.write_text(
        "listen: 'tcp:abc'\n"
        "domains:\n"
        "  www.example.com:\n"
        "    origin_sni: {value: '*.example.com'}\n"
        "    origins: [{address: 203.0.113.10, port: 70000}]\n"
    )
    assert main(["check", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"edgenode: {config} has 3 problems:"
    assert lines[1].startswith("  listen: 'tcp:abc' is not a valid Twisted endpoint string")
    assert lines[2] == (
        "  domains.www.example.com.origin_sni.value: '*.example.com' is a wildcard; "
        "origin SNI needs a specific domain name"
    )
    assert lines[3] == "  domains.www.example.com.origins[0].port: must be 1..65535, got 70000"


@pytest.mark.parametrize("name", ["16-sni-wildcard.yaml", "28-yaml-syntax-error.yaml"])
def test_check_broken_corpus_configs_fail(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Configs from the broken corpus exit 1 with their problem on stderr."""
    assert main(["check", str(BROKEN_CONFIGS / name)]) == 1
    assert "has 1 problem:" in capsys.readouterr().err


def test_check_missing_file_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that does not exist is a failed check (1), with the reason printed."""
    missing = tmp_path / "missing.yaml"
    assert main(["check", str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"edgenode: {missing} has 1 problem:" in err
    assert "No such file or directory" in err


@pytest.mark.parametrize("argv", [[], ["check"], ["check", "a.yaml", "b.yaml"], ["nonsense"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Missing or unknown arguments are usage errors: exit 2 with usage on stderr."""
    assert main(argv) == 2
    assert "usage: edgenode" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """--help lists the check command and exits 0."""
    assert main(["--help"]) == 0
    assert "check" in capsys.readouterr().out


def test_module_runs_as_a_script() -> None:
    """`python -m edgenode.tools.cli check etc/edgenode.yaml` works from the project root."""
    result = subprocess.run(
        [sys.executable, "-m", "edgenode.tools.cli", "check", "etc/edgenode.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"edgenode: etc/edgenode.yaml is valid: {SAMPLE_SUMMARY}\n"
