"""Tests for edgenode.config: YAML in; a frozen Config, or a ConfigError listing every problem."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgenode.config import (
    STDOUT,
    Config,
    Domain,
    Origin,
    OriginSNI,
    Timeouts,
    apply_overrides,
    config_from_mapping,
    load_config,
    parse_config,
)
from edgenode.errors import ConfigError, Problem

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "etc" / "edgenode.yaml"
BROKEN_CONFIGS = Path(__file__).resolve().parent / "configs"
EXPECT_PREFIX = "# expect: "

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def minimal(**domain_settings: Any) -> dict[str, Any]:
    """The smallest valid config data: one domain, one origin; `domain_settings` added to it."""
    domain: dict[str, Any] = {"origins": [{"address": "203.0.113.10"}], **domain_settings}
    return {"domains": {"www.example.com": domain}}


def problems_of(data: object, base_dir: Path = BROKEN_CONFIGS) -> tuple[Problem, ...]:
    """The problems a config (YAML text, or data) is rejected with; fails if it is accepted."""
    with pytest.raises(ConfigError) as caught:
        if isinstance(data, str):
            parse_config(data, base_dir=base_dir)
        else:
            config_from_mapping(data, base_dir=base_dir)  # type: ignore[arg-type]
    return caught.value.problems


def assert_reported(problems: tuple[Problem, ...], path: str, substring: str) -> None:
    matching = [p for p in problems if p.path == path and substring in p.message]
    assert matching, f"no problem at {path!r} containing {substring!r} in:\n" + "\n".join(
        map(str, problems)
    )


def only_domain(config: Config) -> Domain:
    (domain,) = config.domains.values()
    return domain


# --- The sample config -----------------------------------------------------------------------


def test_sample_config_loads() -> None:
    """etc/edgenode.yaml is valid and reads as the SPEC §3 example describes."""
    config = load_config(SAMPLE)
    assert config.source == SAMPLE
    assert config.listen == "tcp:8080"
    assert config.admin.listen == "tcp:8081:interface=127.0.0.1"
    assert config.admin.token_file == SAMPLE.parent / "admin.token"
    assert config.access_log == SAMPLE.parent / "logs" / "access.log"
    assert config.tls.ca_file is None
    assert config.tls.min_version == "1.2"
    assert list(config.domains) == ["www.example.com", "img.example.com", "api.example.com"]
    www = config.domains["www.example.com"]
    first, second = www.origins
    assert first == Origin(address="203.0.113.10", port=443, priority=1, weight=10)
    assert www.sni_for(first) == "dcdn.example.com"
    assert www.sni_for(second) == "other.example.com"
    api = config.domains["api.example.com"]
    assert api.origin_protocol == "http"
    assert api.origins[0].port == 8080
    assert api.timeouts.response_header == 60


def test_config_objects_are_frozen() -> None:
    """Nothing downstream can change a loaded config."""
    config = load_config(SAMPLE)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.listen = "tcp:9090"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.domains["new.example.com"] = config.domains["www.example.com"]  # type: ignore[index]


# --- One file per broken config --------------------------------------------------------------


def broken_config_cases() -> list[Any]:
    cases = []
    for path in sorted(BROKEN_CONFIGS.glob("*.yaml")):
        first_line = path.read_text(encoding="utf-8").partition("\n")[0]
        assert first_line.startswith(EXPECT_PREFIX), f"{path.name} has no '# expect:' line"
        expected_path, _, substring = first_line.removeprefix(EXPECT_PREFIX).partition(": ")
        cases.append(pytest.param(path, expected_path, substring, id=path.stem))
    return cases


def test_there_are_at_least_30_broken_configs() -> None:
    """The broken-config corpus covers the SPEC §3 rules with at least 30 files."""
    assert len(broken_config_cases()) >= 30


@pytest.mark.parametrize(("path", "expected_path", "substring"), broken_config_cases())
def test_broken_config_is_rejected_with_its_path(
    path: Path, expected_path: str, substring: str
) -> None:
    """Each broken config names the problem its first line expects, at the expected path."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert_reported(caught.value.problems, expected_path, substring)


# --- Validation rules ------------------------------------------------------------------------


def test_unknown_keys_are_reported_everywhere_with_accepted_keys() -> None:
    """An unknown key at any level names its path and lists the keys accepted there."""
    data = minimal(colour="blue")
    data["tls"] = {"ca": None}
    data["limits"] = {"max_headers": 1}
    data["domains"]["www.example.com"]["origin_sni"] = {"enabled": True, "valu": "a.example"}
    data["domains"]["www.example.com"]["origins"][0]["wieght"] = 1
    found = problems_of(data)
    assert_reported(found, "domains.www.example.com.colour", "accepted keys: origin_protocol")
    assert_reported(found, "tls.ca", "accepted keys: ca_file, min_version")
    assert_reported(found, "limits.max_headers", "did you mean 'max_header_bytes'?")
    assert_reported(found, "domains.www.example.com.origin_sni.valu", "accepted keys: enabled")
    assert_reported(found, "domains.www.example.com.origins[0].wieght", "did you mean 'weight'?")


def test_non_string_keys_are_unknown_keys() -> None:
    """A key YAML reads as a number is reported, not crashed on."""
    found = problems_of("80: tcp\n" + yaml.safe_dump(minimal()))
    assert_reported(found, "80", "unknown key 80")


@pytest.mark.parametrize(
    ("data", "path", "substring"),
    [
        ({"listen": 8080}, "listen", "must be a Twisted endpoint string"),
        ({"admin": ["tcp:8081"]}, "admin", "must be a mapping of admin settings"),
        ({"admin": {"token_file": ""}}, "admin.token_file", "must be a file path"),
        ({"timeouts": {"idle": True}}, "timeouts.idle", "got true"),
        ({"timeouts": {"idle": float("nan")}}, "timeouts.idle", "positive number"),
        ({"timeouts": {"idle": float("inf")}}, "timeouts.idle", "positive number"),
        ({"timeouts": {"idle": 0}}, "timeouts.idle", "positive number"),
        ({"timeouts": {"idle": 10**400}}, "timeouts.idle", "positive number"),
        ({"limits": {"client_idle_timeout": "60"}}, "limits.client_idle_timeout", "got '60'"),
        ({"limits": {"max_header_bytes": 2_000_000}}, "limits.max_header_bytes", "1024..1048576"),
        ({"limits": {"max_body_bytes": 1.5}}, "limits.max_body_bytes", "must be an integer"),
        ({"tls": {"min_version": 1.1}}, "tls.min_version", "must be '1.2' or '1.3', got 1.1"),
        ({"tls": {"ca_file": 5}}, "tls.ca_file", "must be the path of a PEM file"),
        ({"tls": {"ca_file": "."}}, "tls.ca_file", "is not a regular file"),
        ({"access_log": ""}, "access_log", "must be a file path"),
        ({"domains": None}, "domains", "no domains configured"),
        ({"domains": {}}, "domains", "no domains configured"),
        ({"domains": {"www.example.com": None}}, "domains.www.example.com", "must be a mapping"),
        ({"domains": {5: {"origins": [{"address": "a"}]}}}, "domains.5", "must be text"),
    ],
)
def test_wrong_values_are_rejected(data: dict[str, Any], path: str, substring: str) -> None:
    """Wrong types and out-of-range values are reported at their path with the bad value."""
    found = problems_of({**minimal(), **data})
    assert_reported(found, path, substring)


@pytest.mark.parametrize(
    ("origin", "path", "substring"),
    [
        ({"address": "203.0.113.10", "port": 70000}, "port", "must be 1..65535, got 70000"),
        ({"address": "203.0.113.10", "port": 443.0}, "port", "must be an integer"),
        ({"address": "203.0.113.10", "port": False}, "port", "got false"),
        ({"address": "203.0.113.10", "weight": 1001}, "weight", "must be 1..1000, got 1001"),
        ({"address": "203.0.113.10", "priority": "1"}, "priority", "must be an integer"),
        ({"address": None}, "address", "must be a host name or IP address, e.g."),
        ({"address": "-bad-.example"}, "address", "starts or ends with '-'"),
        ({"address": "203.0.113.10", "sni": "*.example.com"}, "sni", "is a wildcard"),
        ({"address": "203.0.113.10", "sni": "[::1]"}, "sni", "is an IP literal"),
        ({"address": "203.0.113.10", "sni": 5}, "sni", "is not a string"),
    ],
)
def test_bad_origins_are_rejected(origin: dict[str, Any], path: str, substring: str) -> None:
    """Origin fields are checked one by one, each problem at `origins[i].<key>`."""
    data = minimal()
    data["domains"]["www.example.com"]["origins"].append(origin)
    found = problems_of(data)
    assert_reported(found, f"domains.www.example.com.origins[1].{path}", substring)


@pytest.mark.parametrize(
    ("value", "substring"),
    [
        ("*.example.com", "'*.example.com' is a wildcard; origin SNI needs a specific domain name"),
        ("203.0.113.10", "is an IP literal; RFC 6066 forbids IP addresses in SNI"),
        ("2001:db8::1", "is an IP literal"),
        ("[2001:db8::1]", "is an IP literal"),
        ("a..example.com", "empty label"),
        ("x" * 64 + ".example.com", "a label is at most 63"),
        (".".join(["x" * 63] * 4), "a domain name is at most 253"),
        ("bad_name.example.com", "contains '_'"),
        ("", "is empty"),
    ],
)
def test_bad_origin_sni_values_are_rejected(value: str, substring: str) -> None:
    """Every kind of bad SNI value is reported at origin_sni.value."""
    found = problems_of(minimal(origin_sni={"enabled": True, "value": value}))
    assert_reported(found, "domains.www.example.com.origin_sni.value", substring)


def test_duplicate_yaml_keys_are_reported_with_lines() -> None:
    """Duplicate keys at any depth are problems, with both line numbers."""
    text = """\
listen: "tcp:8080"
domains:
  www.example.com:
    origins:
      - address: 203.0.113.10
        port: 443
        port: 8443
listen: "tcp:8090"
"""
    found = problems_of(text)
    assert_reported(found, "listen", "duplicate key 'listen' at line 8, column 1 (first at line 1)")
    assert_reported(found, "domains.www.example.com.origins[0].port", "at line 7")


def test_yaml_merge_keys_are_not_duplicates() -> None:
    """`<<: *anchor` then an explicit key overrides the merged one, as YAML intends."""
    text = """\
domains:
  a.example.com: &base
    verify: false
    origins: [{address: 203.0.113.10}]
  b.example.com:
    <<: *base
    verify: true
"""
    config = parse_config(text, base_dir=BROKEN_CONFIGS)
    assert config.domains["a.example.com"].verify is False
    assert config.domains["b.example.com"].verify is True
    assert config.domains["b.example.com"].origins == config.domains["a.example.com"].origins


def test_duplicate_domains_after_normalisation() -> None:
    """Names that differ only in case, trailing dot or IDN spelling are the same domain."""
    data = {
        "domains": {
            "bücher.example": {"origins": [{"address": "203.0.113.10"}]},
            "XN--BCHER-KVA.example.": {"origins": [{"address": "203.0.113.11"}]},
        }
    }
    found = problems_of(data)
    assert_reported(
        found, "domains.XN--BCHER-KVA.example.", "is the same domain as 'bücher.example'"
    )


def test_domain_names_are_normalised() -> None:
    """Domain keys become lower-case A-labels without a trailing dot."""
    config = config_from_mapping(
        {"domains": {"Bücher.Example.": {"origins": [{"address": "203.0.113.10"}]}}},
        base_dir=BROKEN_CONFIGS,
    )
    assert list(config.domains) == ["xn--bcher-kva.example"]
    assert only_domain(config).origin_host == "xn--bcher-kva.example"


def test_empty_origins_and_bad_endpoint_and_missing_ca_file() -> None:
    """Three rules from SPEC §3, each reported at its own path."""
    data = minimal(origins=[])
    data["admin"] = {"listen": "tcp:port=8081:nonsense=1"}
    data["tls"] = {"ca_file": "missing-ca.pem"}
    found = problems_of(data)
    assert_reported(found, "domains.www.example.com.origins", "must list at least one origin")
    assert_reported(found, "admin.listen", "not a valid Twisted endpoint string")
    assert_reported(found, "admin.listen", "e.g. 'tcp:8080:interface=127.0.0.1'")
    assert_reported(found, "tls.ca_file", "'missing-ca.pem'")
    assert_reported(found, "tls.ca_file", str(BROKEN_CONFIGS / "missing-ca.pem"))


def test_yaml_syntax_error_has_line_and_column() -> None:
    """A YAML syntax error is one problem at '(yaml)' with its line and column."""
    found = problems_of("domains: {www.example.com: [\n")
    assert len(found) == 1
    assert found[0].path == "(yaml)"
    assert "line 2, column 1" in found[0].message


@pytest.mark.parametrize(
    ("text", "substring"),
    [
        pytest.param("a: 2024-02-30\n", "cannot be read", id="impossible-date"),
        pytest.param("a: !!python/object:os.system {}\n", "line 1", id="python-tag"),
        pytest.param("a: !!binary 'a'\n", "line 1", id="bad-base64"),
        pytest.param("a: \x00\n", "unacceptable character", id="nul-character"),
        pytest.param("[" * 1000, "nested too deeply", id="deep-nesting"),
    ],
)
def test_unreadable_yaml_is_a_config_error(text: str, substring: str) -> None:
    """Whatever PyYAML trips over becomes a '(yaml)' problem, never another exception."""
    found = problems_of(text)
    assert_reported(found, "(yaml)", substring)


def test_alias_bombs_are_reported_quickly() -> None:
    """Nested aliases (a "billion laughs") do not blow up the messages or the duplicate check."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 12)]
    lines.append("listen: *a11")
    found = problems_of("\n".join(lines) + "\n")
    assert_reported(found, "listen", "must be a Twisted endpoint string")
    assert all(len(str(problem)) < 1000 for problem in found)


def test_several_problems_are_reported_at_once() -> None:
    """One ConfigError lists every problem, in a message of one line each."""
    text = """\
listen: "tcp:abc"
domains:
  www.example.com:
    origin_sni:
      value: "*.example.com"
    origins:
      - address: 203.0.113.10
      - address: 203.0.113.11
        port: 70000
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, base_dir=BROKEN_CONFIGS, source="etc/edgenode.yaml")
    err = caught.value
    assert [problem.path for problem in err.problems] == [
        "listen",
        "domains.www.example.com.origin_sni.value",
        "domains.www.example.com.origins[1].port",
    ]
    assert str(err).splitlines() == [
        "etc/edgenode.yaml has 3 problems:",
        "  listen: 'tcp:abc' is not a valid Twisted endpoint string (ValueError: invalid literal"
        " for int() with base 10: 'abc'); e.g. 'tcp:8080:interface=127.0.0.1'",
        "  domains.www.example.com.origin_sni.value: '*.example.com' is a wildcard; origin SNI"
        " needs a specific domain name",
        "  domains.www.example.com.origins[1].port: must be 1..65535, got 70000",
    ]


def test_load_config_of_a_missing_file_is_one_problem(tmp_path: Path) -> None:
    """A file that cannot be read is a ConfigError with one problem, not an OSError."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert caught.value.source == str(missing)
    (problem,) = caught.value.problems
    assert "cannot read the config file (No such file or directory)" in problem.message


def test_load_config_of_a_non_utf8_file(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are a ConfigError too."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("listen: 'tcp:8080' # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="the file is not UTF-8 text"):
        load_config(path)


# --- Effective values ------------------------------------------------------------------------


def test_per_origin_sni_wins_over_the_domains() -> None:
    """origins[].sni is sent to that origin; the others get origin_sni.value."""
    data = minimal(origin_sni={"enabled": True, "value": "Dcdn.Example.com."})
    data["domains"]["www.example.com"]["origins"].append(
        {"address": "203.0.113.11", "sni": "other.example.com"}
    )
    domain = only_domain(config_from_mapping(data, base_dir=BROKEN_CONFIGS))
    first, second = domain.origins
    assert domain.origin_sni == OriginSNI(enabled=True, value="dcdn.example.com")
    assert (domain.sni_for(first), domain.verify_name_for(first)) == ("dcdn.example.com",) * 2
    assert (domain.sni_for(second), domain.verify_name_for(second)) == ("other.example.com",) * 2


@pytest.mark.parametrize(
    ("domain_settings", "sni", "verify_name"),
    [
        ({}, None, "www.example.com"),
        ({"origin_host": "origin.example.net"}, None, "origin.example.net"),
        ({"origin_sni": {"enabled": True}}, "www.example.com", "www.example.com"),
        ({"origin_sni": {}}, "www.example.com", "www.example.com"),
        (
            {"origin_sni": {"enabled": True}, "origin_host": "Origin.Example.NET."},
            "origin.example.net",
            "origin.example.net",
        ),
        ({"origin_sni": {"value": "dcdn.example.com"}}, "dcdn.example.com", "dcdn.example.com"),
        (
            {"origin_sni": {"enabled": False, "value": "dcdn.example.com"}},
            None,
            "www.example.com",
        ),
        ({"origin_host": "203.0.113.99"}, None, "203.0.113.99"),
        ({"origin_host": "[2001:db8::99]"}, None, "2001:db8::99"),
        ({"origin_protocol": "http"}, None, "www.example.com"),
    ],
)
def test_effective_sni_and_verify_name(
    domain_settings: dict[str, Any], sni: str | None, verify_name: str
) -> None:
    """SNI: enabled with or without a value, or none; the verify name falls back to origin_host."""
    domain = only_domain(config_from_mapping(minimal(**domain_settings), base_dir=BROKEN_CONFIGS))
    origin = domain.origins[0]
    assert domain.sni_for(origin) == sni
    assert domain.verify_name_for(origin) == verify_name


def test_sni_fallback_to_an_ip_origin_host_is_fine_when_every_origin_has_its_own() -> None:
    """origin_host is only checked as SNI if some origin would actually send it."""
    data = minimal(origin_host="203.0.113.10", origin_sni={"enabled": True})
    data["domains"]["www.example.com"]["origins"][0]["sni"] = "origin.example.com"
    domain = only_domain(config_from_mapping(data, base_dir=BROKEN_CONFIGS))
    assert domain.sni_for(domain.origins[0]) == "origin.example.com"


def test_origin_defaults_depend_on_the_protocol() -> None:
    """Port 443 for https, 80 for http; priority 1, weight 1; addresses normalised."""
    data = {
        "domains": {
            "s.example.com": {"origins": [{"address": "Origin.Example.com."}]},
            "p.example.com": {
                "origin_protocol": "http",
                "origins": [{"address": "[2001:DB8::1]"}],
            },
        }
    }
    config = config_from_mapping(data, base_dir=BROKEN_CONFIGS)
    assert config.domains["s.example.com"].origins == (
        Origin(address="origin.example.com", port=443),
    )
    assert config.domains["p.example.com"].origins == (Origin(address="2001:DB8::1", port=80),)


def test_per_domain_timeouts_override_the_global_ones() -> None:
    """A domain's timeouts are the global ones with its own keys replaced."""
    data = minimal(timeouts={"response_header": 90, "body_idle": 0.5})
    data["timeouts"] = {"connect": 3}
    data["domains"]["other.example.com"] = {"origins": [{"address": "203.0.113.12"}]}
    config = config_from_mapping(data, base_dir=BROKEN_CONFIGS)
    assert config.timeouts == Timeouts(connect=3)
    assert config.domains["www.example.com"].timeouts == Timeouts(
        connect=3, response_header=90, body_idle=0.5
    )
    assert config.domains["other.example.com"].timeouts == config.timeouts


def test_min_version_accepts_yaml_numbers() -> None:
    """`min_version: 1.3` (a YAML float) reads as the string '1.3'."""
    config = parse_config(
        "tls: {min_version: 1.3}\n" + yaml.safe_dump(minimal()), base_dir=BROKEN_CONFIGS
    )
    assert config.tls.min_version == "1.3"


@pytest.mark.parametrize(("value", "expected"), [("-", STDOUT), (None, None)])
def test_access_log_stdout_and_none(value: str | None, expected: str | None) -> None:
    """'-' means stdout and null means no access log."""
    config = config_from_mapping({**minimal(), "access_log": value}, base_dir=BROKEN_CONFIGS)
    assert config.access_log == expected


def test_relative_paths_are_resolved_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """token_file, access_log and ca_file are relative to the config file, not the cwd."""
    conf = tmp_path / "conf"
    (conf / "pki").mkdir(parents=True)
    (conf / "pki" / "ca.pem").write_text(PEM)
    data = {
        **minimal(),
        "admin": {"token_file": "secrets/admin.token"},
        "access_log": "../logs/access.log",
        "tls": {"ca_file": "pki/ca.pem"},
    }
    (conf / "edge.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/edge.yaml")
    assert config.admin.token_file == conf / "secrets" / "admin.token"
    assert config.access_log == tmp_path / "logs" / "access.log"
    assert config.tls.ca_file == conf / "pki" / "ca.pem"
    assert config.source == Path("conf/edge.yaml")


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    """An absolute path does not move with the config."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(PEM)
    data = {**minimal(), "tls": {"ca_file": str(ca_file)}, "access_log": "/var/log/edge.log"}
    config = config_from_mapping(data, base_dir=Path("/elsewhere"))
    assert config.tls.ca_file == ca_file
    assert config.access_log == Path("/var/log/edge.log")
    assert config.admin.token_file == Path("/elsewhere/admin.token")
    assert config.source is None


# --- workers ----------------------------------------------------------------------------------


def test_workers_default_to_one_and_take_a_number_or_auto(monkeypatch) -> None:
    """`workers` is 1 by default, a number of processes, or "auto": one per CPU core."""
    assert config_from_mapping(minimal(), base_dir=BROKEN_CONFIGS).workers == 1
    assert load_config(SAMPLE).workers == 1
    data = {**minimal(), "workers": 4}
    assert config_from_mapping(data, base_dir=BROKEN_CONFIGS).workers == 4
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    data = {**minimal(), "workers": "auto"}
    assert config_from_mapping(data, base_dir=BROKEN_CONFIGS).workers == 6


@pytest.mark.parametrize("value", [0, -1, 1025, True, "2", 1.5, "many", None])
def test_bad_workers_values_are_problems(value: object) -> None:
    """Anything but 1..1024 or "auto" is a problem that says what is accepted."""
    problems = problems_of({**minimal(), "workers": value})
    assert_reported(problems, "workers", "must be a number of worker processes 1..1024, or 'auto'")


def test_workers_need_a_tcp_listen_endpoint() -> None:
    """More than one worker needs a tcp:/tcp6: listener the supervisor can bind and share."""
    data = {**minimal(), "workers": 2, "listen": "unix:/run/edge.sock"}
    assert_reported(problems_of(data), "workers", "needs a 'tcp:' or 'tcp6:' listen endpoint")
    for listen in ("tcp:8080:interface=127.0.0.1:backlog=512", "tcp6:8080"):
        data = {**minimal(), "workers": 2, "listen": listen}
        assert config_from_mapping(data, base_dir=BROKEN_CONFIGS).workers == 2
    data = {**minimal(), "workers": 1, "listen": "unix:/run/edge.sock"}
    assert config_from_mapping(data, base_dir=BROKEN_CONFIGS).workers == 1


def test_command_line_overrides_are_checked_together() -> None:
    """--workers and --listen apply over the file, and must still make a runnable pair."""
    config = config_from_mapping(minimal(), base_dir=BROKEN_CONFIGS)
    assert apply_overrides(config, {"workers": "3"}).workers == 3
    assert apply_overrides(config, {"listen": "unix:/run/edge.sock"}).workers == 1
    with pytest.raises(ConfigError) as caught:
        apply_overrides(config, {"workers": "2", "listen": "unix:/run/edge.sock"})
    assert_reported(caught.value.problems, "workers", "'tcp:' or 'tcp6:'")
    with pytest.raises(ConfigError) as caught:
        apply_overrides(config, {"workers": "0"})
    assert_reported(caught.value.problems, "--workers", "1..1024")


# --- Whatever the input: a Config or a ConfigError ------------------------------------------

KNOWN_KEYS = [
    *("listen", "workers", "admin", "access_log", "tls", "timeouts", "limits", "domains"),
    *("token_file", "ca_file", "min_version", "connect", "idle", "max_header_bytes"),
    *("origin_protocol", "origin_host", "origin_sni", "enabled", "value", "verify", "origins"),
    *("address", "port", "priority", "weight", "sni", "www.example.com", "*.example.com"),
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["tcp:8080", "-", "1.2", "https", "http", "203.0.113.10", "[::1]", "a..b"]),
)
KEYS = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=10), st.integers(), st.none())
NESTED = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=5)
    ),
    max_leaves=30,
)


def accepts_or_config_error(build: Any) -> None:
    try:
        config = build()
    except ConfigError as err:
        assert err.problems
        assert all(isinstance(problem, Problem) for problem in err.problems)
        str(err)
    else:
        assert isinstance(config, Config)
        assert config.domains


HYPOTHESIS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(NESTED)
def test_arbitrary_data_gives_config_or_config_error(data: object) -> None:
    """config_from_mapping turns any nested data into a Config or a ConfigError."""
    accepts_or_config_error(lambda: config_from_mapping(data, base_dir=BROKEN_CONFIGS))  # type: ignore[arg-type]


def paths_in(data: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists."""
    paths = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            paths += paths_in(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            paths += paths_in(value, (*prefix, index))
    return paths


SAMPLE_DATA = yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))
SAMPLE_PATHS = paths_in(SAMPLE_DATA)[1:]


@st.composite
def mutated_samples(draw: st.DrawFn) -> object:
    """The sample config with one value replaced by arbitrary data, or one key removed."""
    data = copy.deepcopy(SAMPLE_DATA)
    path = draw(st.sampled_from(SAMPLE_PATHS))
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(NESTED)
    return data


@HYPOTHESIS
@given(mutated_samples())
def test_mutated_sample_gives_config_or_config_error(data: object) -> None:
    """Arbitrary data at any point of a valid config still gives a Config or a ConfigError."""
    accepts_or_config_error(lambda: config_from_mapping(data, base_dir=BROKEN_CONFIGS))  # type: ignore[arg-type]


@HYPOTHESIS
@given(st.one_of(NESTED, mutated_samples()))
def test_arbitrary_yaml_documents_give_config_or_config_error(data: object) -> None:
    """Any YAML document gives a Config or a ConfigError from parse_config."""
    text = yaml.safe_dump(data, allow_unicode=True)
    accepts_or_config_error(lambda: parse_config(text, base_dir=BROKEN_CONFIGS))


YAML_ISH_TEXT = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=":-[]{}&*!|>'\"%@`#,? \n\tabc0123.", max_size=200),
    st.lists(
        st.sampled_from(
            [
                "domains:",
                "  www.example.com:",
                "    origins:",
                "      - address: x",
                "listen: tcp:1",
                "  - ",
                "&a",
                "*a",
                "<<: *a",
                "? ",
                ": ",
                "!!int x",
            ]
        ),
        max_size=12,
    ).map("\n".join),
)


@HYPOTHESIS
@given(YAML_ISH_TEXT)
def test_arbitrary_text_gives_config_or_config_error(text: str) -> None:
    """parse_config turns any text into a Config or a ConfigError, never another exception."""
    accepts_or_config_error(lambda: parse_config(text, base_dir=BROKEN_CONFIGS))
