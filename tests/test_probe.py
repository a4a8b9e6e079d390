"""Tests for `edgenode probe`: one handshake per origin, the verdict the edge would reach, a hint.

The probe runs its own reactor, so it runs here as a subprocess (`python -m edgenode.tools.cli
probe`) against the real nginx origin (a.test and b.test on one port, no-SNI and
unknown-SNI handshakes rejected) and in-process TLS origins (the tests' reactor thread).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet.protocol import Protocol

from edgenode.tools.cli import main
from edgenode.tools.probe import ProbeUsageError, plan_probe
from tests.support.net import LOOPBACK, free_port
from tests.support.nginx import NginxOrigin
from tests.support.origin import Servers, TLSOrigin
from tests.support.pki import PKI

ROOT = Path(__file__).resolve().parent.parent

JSON_ORIGIN_FIELDS = {
    "address",
    "port",
    "sni",
    "verify_name",
    "verify",
    "client_certificate",
    "verdict",
    "error",
    "tls_version",
    "cipher",
    "certificate",
    "days_left",
    "hint",
    "error_detail",
    "connect_ms",
    "handshake_ms",
}
JSON_CERT_FIELDS = {"subject", "dns_names", "ip_addresses", "issuer", "not_after", "sha256"}


# --- helpers ---------------------------------------------------------------------------------


def write_config(tmp_path: Path, pki: PKI, domains: dict[str, Any]) -> Path:
    """A config trusting the test CA, with short timeouts so failures come back quickly."""
    path = tmp_path / "edgenode.yaml"
    config = {
        "tls": {"ca_file": str(pki.ca_file)},
        "timeouts": {"connect": 5, "tls_handshake": 5},
        "domains": domains,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def at(server: NginxOrigin | TLSOrigin | int, **settings: Any) -> dict[str, Any]:
    """One `origins[]` entry on 127.0.0.1: a server object or a bare port."""
    port = server if isinstance(server, int) else server.port
    return {"address": LOOPBACK, "port": port, **settings}


def sni_on(*origins: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"origin_sni": {"enabled": True}, "origins": list(origins), **settings}


def sni_off(*origins: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"origins": list(origins), **settings}


CLI = [sys.executable, "-m", "edgenode.tools.cli"]


def probe(config: Path, domain: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `edgenode probe` in its own process (it runs its own reactor)."""
    return subprocess.run(
        [*CLI, "probe", domain, "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def probe_json(config: Path, domain: str, *args: str) -> tuple[int, dict[str, Any]]:
    """Exit code and the parsed `--json` document."""
    result = probe(config, domain, "--json", *args)
    assert result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout)


def only_origin(doc: dict[str, Any]) -> dict[str, Any]:
    assert len(doc["origins"]) == 1, doc
    origin: dict[str, Any] = doc["origins"][0]
    return origin


def text_blocks(stdout: str) -> dict[str, dict[str, str]]:
    """The plain-text report as {"127.0.0.1:PORT": {"verdict": "ok", ...}}."""
    blocks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in stdout.splitlines():
        if line.startswith("origin "):
            current = blocks.setdefault(line.removeprefix("origin "), {})
        elif line.startswith("  ") and current is not None:
            key, value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            current[key] = value
        else:
            current = None
    return blocks


# --- verdicts against the real nginx origin ----------------------------------------------------


def test_good_sni_verifies(tmp_path: Path, pki: PKI, nginx_origin: NginxOrigin) -> None:
    """SNI a.test to nginx: exit 0, a.test's certificate, its issuer, TLS version and days left."""
    config = write_config(tmp_path, pki, {"a.test": sni_on(at(nginx_origin))})
    result = probe(config, "A.Test.")  # the name is normalised like the config's
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    block = text_blocks(result.stdout)[f"{LOOPBACK}:{nginx_origin.port}"]
    assert block["sni sent"] == "a.test"
    assert block["verify name"] == "a.test"
    assert block["verdict"] == "ok"
    assert block["dns names"] == "a.test"
    assert "edgenode test CA" in block["issuer"]
    assert block["tls"].startswith("TLSv1.")
    match = re.fullmatch(r"\S+Z \((\d+) days? left\)", block["not after"])
    assert match is not None, block["not after"]
    assert int(match.group(1)) > 0
    assert "hint" not in block
    assert result.stdout.rstrip().endswith("a.test: 1 of 1 origin verified")


def test_sni_off_against_nginx_is_a_rejected_handshake(
    tmp_path: Path, pki: PKI, nginx_origin: NginxOrigin
) -> None:
    """No SNI to nginx (`ssl_reject_handshake on`): tls_failed, and the hint says SNI is off."""
    config = write_config(tmp_path, pki, {"a.test": sni_off(at(nginx_origin))})
    code, doc = probe_json(config, "a.test")
    assert code == 1
    assert doc["ok"] is False
    origin = only_origin(doc)
    assert (origin["sni"], origin["verify_name"]) == (None, "a.test")
    assert origin["verdict"] == "tls_failed"
    assert origin["error"] == "origin_tls_failed"
    assert "unrecognized name" in origin["error_detail"]
    assert origin["certificate"] is None  # the handshake never got that far
    assert origin["hint"].startswith("origin SNI is off (no SNI sent)")
    assert "no default certificate/vhost for a handshake without SNI" in origin["hint"]
    assert "(it rejected the handshake)" in origin["hint"]


def test_unknown_sni_against_nginx_names_the_missing_vhost(
    tmp_path: Path, pki: PKI, nginx_origin: NginxOrigin
) -> None:
    """SNI c.test, which nginx has no block for: the unrecognized_name hint names c.test."""
    domain = sni_on(at(nginx_origin))
    domain["origin_sni"]["value"] = "c.test"
    config = write_config(tmp_path, pki, {"a.test": domain})
    code, doc = probe_json(config, "a.test")
    assert code == 1
    origin = only_origin(doc)
    assert (origin["sni"], origin["verdict"]) == ("c.test", "tls_failed")
    assert origin["hint"] == (
        "the origin has no certificate/vhost for SNI c.test (it rejected the handshake); "
        "set origin_sni.value to a name it serves, or add a vhost for c.test on the origin"
    )


def test_sni_override_reaches_another_vhost(
    tmp_path: Path, pki: PKI, nginx_origin: NginxOrigin
) -> None:
    """`--sni b.test` sends b.test and verifies against it, whatever the domain's SNI."""
    config = write_config(tmp_path, pki, {"a.test": sni_off(at(nginx_origin))})
    code, doc = probe_json(config, "a.test", "--sni", "B.test")
    assert code == 0
    origin = only_origin(doc)
    assert (origin["sni"], origin["verify_name"], origin["verdict"]) == ("b.test", "b.test", "ok")
    assert origin["certificate"]["dns_names"] == ["b.test"]
    assert origin["error"] is None and origin["hint"] is None


# --- verdicts against in-process origins -------------------------------------------------------


def test_sni_off_with_a_default_certificate_is_a_name_mismatch(
    tmp_path: Path, pki: PKI, servers: Servers
) -> None:
    """No SNI to a lenient origin: its default certificate is reported, and SNI off is the hint."""
    origin = servers.tls_origin(
        {"a.test": pki.leaf("a.test")}, pki.leaf("default.test", "www.default.test")
    )
    config = write_config(tmp_path, pki, {"a.test": sni_off(at(origin))})
    code, doc = probe_json(config, "a.test")
    assert code == 1
    result = only_origin(doc)
    assert (result["sni"], result["verify_name"]) == (None, "a.test")
    assert result["verdict"] == "name_mismatch"
    assert result["error"] == "origin_cert_name_mismatch"
    assert result["certificate"]["dns_names"] == ["default.test", "www.default.test"]
    assert result["days_left"] > 0
    assert result["tls_version"] is not None
    assert "origin SNI is off" in result["hint"]
    assert "default.test, www.default.test" in result["hint"]


def test_sni_without_a_vhost_names_the_covered_names(
    tmp_path: Path, pki: PKI, servers: Servers
) -> None:
    """SNI c.test gets the default certificate: the hint lists its names and the setting to fix."""
    origin = servers.tls_origin(
        {"a.test": pki.leaf("a.test")}, pki.leaf("default.test", "www.default.test")
    )
    domain = sni_on(at(origin))
    domain["origin_sni"]["value"] = "c.test"
    config = write_config(tmp_path, pki, {"a.test": domain})
    code, doc = probe_json(config, "a.test")
    assert code == 1
    result = only_origin(doc)
    assert result["verdict"] == "name_mismatch"
    assert result["hint"] == (
        "this certificate covers default.test, www.default.test; set origin_sni.value to one "
        "of them or add a vhost for c.test on the origin"
    )


def test_untrusted_ca_names_the_trust_store_and_the_chain_error(
    tmp_path: Path, pki: PKI, servers: Servers
) -> None:
    """A leaf from a CA the config does not trust: untrusted, with the certificate still shown."""
    origin = servers.tls_origin({"a.test": pki.untrusted_leaf("a.test")})
    config = write_config(tmp_path, pki, {"a.test": sni_on(at(origin))})
    code, doc = probe_json(config, "a.test")
    assert code == 1
    result = only_origin(doc)
    assert result["verdict"] == "untrusted"
    assert result["error"] == "origin_cert_untrusted"
    assert result["certificate"]["dns_names"] == ["a.test"]
    assert "edgenode untrusted CA" in result["certificate"]["issuer"]
    assert f"the CA bundle {pki.ca_file}" in result["hint"]
    assert "unable to get local issuer certificate" in result["hint"]
    assert "tls.ca_file" in result["hint"]


def test_untrusted_intermediate_still_shows_the_leaf(
    tmp_path: Path, pki: PKI, servers: Servers
) -> None:
    """A chain that fails above the leaf (depth 1) still reports the leaf the origin sent."""
    leaf = pki.other_ca.create_child_ca().issue_cert("a.test")
    origin = servers.tls_origin({"a.test": leaf})
    config = write_config(tmp_path, pki, {"a.test": sni_on(at(origin))})
    code, doc = probe_json(config, "a.test")
    assert code == 1
    result = only_origin(doc)
    assert result["verdict"] == "untrusted"
    assert "(depth 1)" in result["error_detail"]
    assert result["certificate"]["dns_names"] == ["a.test"]


def test_json_report_has_every_field_in_config_order(
    tmp_path: Path, pki: PKI, servers: Servers, nginx_origin: NginxOrigin
) -> None:
    """`--json`: one document, origins in config order, each with every documented field."""
    lenient = servers.tls_origin({}, pki.leaf("default.test", "www.default.test"))
    config = write_config(
        tmp_path, pki, {"a.test": sni_on(at(nginx_origin), at(lenient, sni="z.test"))}
    )
    code, doc = probe_json(config, "a.test")
    assert code == 1  # one of the two does not verify
    assert (doc["domain"], doc["origin_protocol"], doc["ok"]) == ("a.test", "https", False)
    assert doc["trust"] == f"the CA bundle {pki.ca_file}"
    assert [(o["port"], o["verdict"]) for o in doc["origins"]] == [
        (nginx_origin.port, "ok"),
        (lenient.port, "name_mismatch"),
    ]
    for origin in doc["origins"]:
        assert set(origin) == JSON_ORIGIN_FIELDS
        assert set(origin["certificate"]) == JSON_CERT_FIELDS
        assert origin["address"] == LOOPBACK
    good, bad = doc["origins"]
    assert good["sni"] == "a.test" and good["days_left"] > 0
    # The per-origin SNI is the setting to change for the second origin.
    assert "set origins[1].sni to one of them" in bad["hint"]
    assert "it does not cover z.test" in bad["error_detail"]


def test_nothing_listening_is_connect_failed(tmp_path: Path, pki: PKI) -> None:
    """A port nothing listens on: connect_failed, exit 1."""
    config = write_config(tmp_path, pki, {"a.test": sni_on(at(free_port()))})
    code, doc = probe_json(config, "a.test")
    assert code == 1
    result = only_origin(doc)
    assert (result["verdict"], result["error"]) == ("connect_failed", "origin_connect_failed")
    assert result["error_detail"] == "TCP connect failed: connection refused"
    assert result["certificate"] is None


def test_silent_origin_is_a_handshake_timeout(tmp_path: Path, pki: PKI, servers: Servers) -> None:
    """An origin that accepts TCP and never answers the ClientHello: timeout, per --timeout."""
    port = servers.listen_tcp(Protocol)
    config = write_config(tmp_path, pki, {"a.test": sni_on(at(port))})
    code, doc = probe_json(config, "a.test", "--timeout", "0.5")
    assert code == 1
    result = only_origin(doc)
    assert (result["verdict"], result["error"]) == ("timeout", "origin_timeout")
    assert result["error_detail"] == "TLS handshake did not complete within 0.5s"
    assert "did not finish the TLS handshake within 0.5s" in result["hint"]


def test_verify_off_is_unverified_but_passes(tmp_path: Path, pki: PKI, servers: Servers) -> None:
    """`verify: false`: the edge would accept any certificate, so the probe says so and exits 0."""
    origin = servers.tls_origin({}, pki.leaf("default.test"))
    config = write_config(tmp_path, pki, {"a.test": sni_off(at(origin), verify=False)})
    code, doc = probe_json(config, "a.test")
    assert code == 0
    result = only_origin(doc)
    assert (result["verify"], result["verdict"]) == (False, "unverified")
    assert result["certificate"]["dns_names"] == ["default.test"]
    assert "verify: false" in result["hint"]


# --- usage ----------------------------------------------------------------------------------


def test_unknown_domain_is_a_usage_error(tmp_path: Path, pki: PKI) -> None:
    """A domain the config does not have: exit 2, listing the domains it does have."""
    domains = {"a.test": sni_on(at(443)), "b.test": sni_on(at(443))}
    config = write_config(tmp_path, pki, domains)
    result = probe(config, "c.test")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "'c.test' is not a domain of" in result.stderr
    assert "configured domains: a.test, b.test" in result.stderr


def test_invalid_config_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config with problems: exit 2 and the problems, before any connection is made."""
    config = tmp_path / "bad.yaml"
    config.write_text("domains:\n  a.test:\n    origins: [{address: 127.0.0.1, port: 70000}]\n")
    assert main(["probe", "a.test", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "domains.a.test.origins[0].port: must be 1..65535, got 70000" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sni", "*.a.test"], "--sni: '*.a.test' is a wildcard"),
        (["--sni", "127.0.0.1"], "--sni: '127.0.0.1' is an IP"),
        (["--timeout", "0"], "--timeout: must be more than 0 seconds"),
    ],
)
def test_bad_options_are_usage_errors(
    tmp_path: Path, pki: PKI, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """An --sni that SNI cannot carry, or a timeout of zero: exit 2, saying why."""
    config = write_config(tmp_path, pki, {"a.test": sni_on(at(443))})
    assert main(["probe", "a.test", "--config", str(config), *args]) == 2
    assert message in capsys.readouterr().err


def test_http_domain_has_nothing_to_probe(
    tmp_path: Path, pki: PKI, capsys: pytest.CaptureFixture[str]
) -> None:
    """An `origin_protocol: http` domain: a note and exit 0, no connection attempted."""
    domain = {"origin_protocol": "http", "origins": [at(free_port())]}
    config = write_config(tmp_path, pki, {"api.test": domain})
    assert main(["probe", "api.test", "--config", str(config)]) == 0
    assert capsys.readouterr().out == "api.test: origin_protocol http: nothing to probe\n"


# --- planning (no network) ------------------------------------------------------------------


def test_plan_uses_each_routes_effective_sni_and_verify_name(tmp_path: Path, pki: PKI) -> None:
    """Targets follow the config order with the edge's SNI / verify name; --sni replaces both."""
    domain = {
        "origin_host": "host.test",
        "origin_sni": {"enabled": True, "value": "dcdn.test"},
        "origins": [at(1001), at(1002, sni="own.test")],
    }
    config = write_config(tmp_path, pki, {"a.test": domain, "n.test": sni_off(at(1003))})
    plan = plan_probe(str(config), "a.test")
    assert [(t.port, t.sni, t.verify_name, t.sni_setting) for t in plan.targets] == [
        (1001, "dcdn.test", "dcdn.test", "origin_sni.value"),
        (1002, "own.test", "own.test", "origins[1].sni"),
    ]
    (no_sni,) = plan_probe(str(config), "n.test").targets
    assert (no_sni.sni, no_sni.verify_name, no_sni.sni_setting) == (None, "n.test", None)
    overridden = plan_probe(str(config), "a.test", sni="x.test", timeout=2.5).targets
    assert {(t.sni, t.verify_name, t.sni_setting) for t in overridden} == {
        ("x.test", "x.test", "--sni")
    }
    assert {(t.connect_timeout, t.handshake_timeout) for t in overridden} == {(2.5, 2.5)}
    for target in overridden:
        assert target.creator.sni == "x.test" and target.creator.verify_name == "x.test"


def test_plan_rejects_an_unknown_domain(tmp_path: Path, pki: PKI) -> None:
    """plan_probe raises ProbeUsageError naming the configured domains."""
    config = write_config(tmp_path, pki, {"a.test": sni_on(at(443))})
    with pytest.raises(ProbeUsageError, match=r"configured domains: a\.test$"):
        plan_probe(str(config), "zz.test")
