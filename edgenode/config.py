"""YAML -> frozen, validated config objects; nothing else in edgenode sees raw YAML.

SPEC §3 is the authority. Where it is silent, the loader follows these rules:

- Problems are collected, then raised once as a `ConfigError`; nothing else is raised.
  Each names a dotted path (`domains.www.example.com.origins[1].port`), with domain
  keys as written in the file, the bad value, and what would be accepted.
- Duplicate keys in any YAML mapping are problems (`<<` merge keys excepted).
- `domains` must hold at least one domain: an edge without one answers 421 to everything.
  Wildcard domains (`*.example.com`) are not supported in this version.
- With `cluster` (SPEC §9) the domains come from etcd, so a `domains` key is a problem and
  the file needs none. Each etcd document is read by `parse_domain_document` with exactly
  the rules of one `domains:` entry; `load_domains_file` reads `edgenode push`'s file.
  `cluster.etcd.endpoints` are `http://host:port` URLs; `token_file` must hold a token;
  the directory of `cache_file` must exist.
- A null `admin`, `tls`, `timeouts`, `limits` or domain `timeouts` block means "all
  defaults" (its keys are commented out). A null `origin_sni` block is a problem: whether
  it meant on or off is unclear, as a present block turns SNI on.
- `origin_sni` enabled without `value` sends `origin_host`, so that must then be valid SNI
  (a domain name, not an IP literal) unless every origin has its own `sni`.
- `origin_sni.enabled` and `origins[].sni` are problems on an `http` domain.
- `origin_host` and `origins[].address` may be IP literals, kept as written with the
  brackets of IPv6 removed; names are normalised (`edgenode.hostnames`).
- `listen` and `admin.listen` are read as Twisted reads them, binding nothing
  (`edgenode.endpoints`); TCP and SSL ports must also be 0..65535.
- Timeouts are finite numbers of seconds above 0; `tls.ca_file` must exist and hold at
  least one PEM certificate; `tls.min_version` also takes the YAML numbers 1.2 and 1.3.
- `workers` is 1..1024 or "auto" (one per CPU core, resolved when loading); more than one
  needs a `tcp:`/`tcp6:` listen endpoint, which the supervisor binds and shares.
- `listen_tls` (SPEC §8) must be a `tcp:`/`tcp6:` endpoint: the edge does TLS itself, so
  Twisted's `ssl:` endpoints are refused. Certificates are read and checked here
  (`edgenode.certificates`), once; listing them without `listen_tls` is allowed (a
  `--listen-tls` may come), `listen_tls` without them is a problem.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import reprlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import attrs
import yaml

from edgenode.certificates import CertificateProblem, EdgeCertificate, read_certificate
from edgenode.endpoints import ENDPOINT_EXAMPLE, EndpointError, parse_server_endpoint
from edgenode.errors import ConfigError, Problem
from edgenode.hostnames import is_ip_literal, normalize_hostname, strip_ip_brackets, validate_sni

STDOUT: Literal["-"] = "-"  # access_log value meaning "write to stdout"


@attrs.frozen
class Timeouts:
    """Back-to-origin timeouts in seconds (SPEC §3 `timeouts`)."""

    connect: float = 5.0
    tls_handshake: float = 5.0
    response_header: float = 30.0
    body_idle: float = 30.0
    idle: float = 60.0


@attrs.frozen
class Limits:
    """Client-side limits and origin concurrency (SPEC §3 `limits`)."""

    client_header_timeout: float = 10.0
    client_idle_timeout: float = 60.0
    max_header_bytes: int = 16384
    max_body_bytes: int = 104857600  # 0 = no limit
    origin_max_connections: int = 256
    origin_queue_timeout: float = 5.0


@attrs.frozen
class TLSSettings:
    """How origins are verified (the trust store and the lowest TLS version offered), and
    the certificates the edge offers its own clients (SPEC §8)."""

    ca_file: Path | None = None  # None = the system trust store
    min_version: Literal["1.2", "1.3"] = "1.2"
    certificates: tuple[EdgeCertificate, ...] = ()
    client_min_version: Literal["1.2", "1.3"] = "1.2"
    unknown_sni: Literal["default", "reject"] = "default"


@attrs.frozen
class AdminSettings:
    listen: str = "tcp:8081:interface=127.0.0.1"
    token_file: Path = Path("admin.token")


@attrs.frozen
class EtcdSettings:
    """Where a fleet edge reads its domains (SPEC §9 `cluster.etcd`)."""

    endpoints: tuple[str, ...]  # http:// base URLs, tried in turn
    prefix: str = "/edgenode/"  # domains live at <prefix>domains/<name>
    token_file: Path | None = None  # a file holding an etcd auth token
    cache_file: Path = Path("cluster-cache.json")  # the last applied domain set
    startup_timeout: float = 10.0  # seconds to reach etcd at start when there is no cache

    @property
    def domains_prefix(self) -> str:
        """The prefix of the domain keys: `<prefix>domains/`."""
        return self.prefix + "domains/"


@attrs.frozen
class ClusterSettings:
    """A fleet edge's cluster block: its domains come from etcd, not from this file."""

    etcd: EtcdSettings


@attrs.frozen
class OriginSNI:
    enabled: bool = False
    value: str | None = None  # normalised; None = use the domain's origin_host


@attrs.frozen
class HealthCheck:
    """Active checks of every origin of a domain (SPEC §10 `health_check`)."""

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 2.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expect_status: tuple[int, int] = (200, 399)  # inclusive range

    def expects(self, status: int) -> bool:
        return self.expect_status[0] <= status <= self.expect_status[1]


@attrs.frozen
class Passive:
    """Ejection of an origin that fails real traffic (SPEC §10 `passive`)."""

    consecutive_failures: int = 5
    ejection_time: float = 30.0


@attrs.frozen
class Origin:
    """One origin server of a domain, as the operator configured it."""

    address: str  # IP literal or DNS name to connect to (normalised)
    port: int
    priority: int = 1
    weight: int = 1
    sni: str | None = None  # normalised; None = inherit from the domain
    client_certificate: EdgeCertificate | None = None  # mTLS; None = the domain's


@attrs.frozen
class Domain:
    """One accelerated domain: how to reach its origins and what to tell them."""

    name: str  # normalised: lower case, no trailing dot, A-label
    origins: tuple[Origin, ...]
    origin_protocol: Literal["https", "http"] = "https"
    origin_host: str = ""  # Host header sent back-to-origin; the loader fills in `name`
    origin_sni: OriginSNI = OriginSNI()
    verify: bool = True
    timeouts: Timeouts = Timeouts()
    https_redirect: bool = False  # plain-HTTP requests get 308 to https:// (SPEC §8)
    health_check: HealthCheck | None = None  # SPEC §10; None = no active checks
    passive: Passive | None = None  # SPEC §10; None = no passive ejection
    client_certificate: EdgeCertificate | None = None  # mTLS to every origin (SPEC §10)

    def sni_for(self, origin: Origin) -> str | None:
        """The SNI sent to `origin`: its own, else the domain's when enabled, else none."""
        if self.origin_protocol != "https":
            return None
        if origin.sni is not None:
            return origin.sni
        if self.origin_sni.enabled:
            return self.origin_sni.value or self.origin_host
        return None

    def client_certificate_for(self, origin: Origin) -> EdgeCertificate | None:
        """The certificate presented to `origin`: its own, else the domain's (https only)."""
        if self.origin_protocol != "https":
            return None
        return origin.client_certificate or self.client_certificate

    def verify_name_for(self, origin: Origin) -> str:
        """The name the certificate must cover: the SNI sent, else origin_host."""
        return self.sni_for(origin) or self.origin_host


@attrs.frozen
class Config:
    """A complete, validated edgenode config. Built only by `load_config`/`parse_config`."""

    listen: str = "tcp:8080"
    listen_tls: str | None = None  # the HTTPS listener (SPEC §8); None = no HTTPS
    admin: AdminSettings = AdminSettings()
    access_log: Path | Literal["-"] | None = None  # None = no access log
    tls: TLSSettings = TLSSettings()
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    workers: int = 1  # worker processes; 1 = this process serves, no supervisor
    cluster: ClusterSettings | None = None  # set: domains come from etcd (SPEC §9)
    domains: Mapping[str, Domain] = attrs.field(
        factory=lambda: MappingProxyType({}), converter=lambda d: MappingProxyType(dict(d))
    )
    source: Path | None = None  # the file it was read from, if any


# --- Loading -------------------------------------------------------------------------------
#
# Every reader below records problems instead of raising, and returns a stand-in value so
# that reading can go on and find the next problem. The stand-ins never escape: any problem
# means a ConfigError, raised once with all of them.

_ABSENT: Final = object()  # a key that is not in its mapping
_YAML_PATH: Final = "(yaml)"  # the path of problems in the YAML text itself
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"

_TOP_LEVEL_KEYS: Final = (
    "listen",
    "listen_tls",
    "workers",
    "admin",
    "access_log",
    "tls",
    "timeouts",
    "limits",
    "cluster",
    "domains",
)
_ADMIN_KEYS: Final = ("listen", "token_file")
_TLS_KEYS: Final = ("ca_file", "min_version", "certificates", "client_min_version", "unknown_sni")
_CERTIFICATE_KEYS: Final = ("cert_file", "key_file")
_UNKNOWN_SNI: Final = ("default", "reject")
_TIMEOUT_KEYS: Final = tuple(field.name for field in attrs.fields(Timeouts))
_DOMAIN_KEYS: Final = (
    "origin_protocol",
    "origin_host",
    "origin_sni",
    "verify",
    "timeouts",
    "https_redirect",
    "health_check",
    "passive",
    "client_certificate",
    "origins",
)
_HEALTH_CHECK_KEYS: Final = tuple(field.name for field in attrs.fields(HealthCheck))
_PASSIVE_KEYS: Final = tuple(field.name for field in attrs.fields(Passive))
_ORIGIN_SNI_KEYS: Final = ("enabled", "value")
_CLUSTER_KEYS: Final = ("etcd",)
_ETCD_KEYS: Final = ("endpoints", "prefix", "token_file", "cache_file", "startup_timeout")
_ETCD_ENDPOINT_EXAMPLE: Final = "'http://127.0.0.1:2379'"
_ORIGIN_KEYS: Final = ("address", "port", "priority", "weight", "sni", "client_certificate")
_PROTOCOLS: Final = ("https", "http")
_TLS_VERSIONS: Final = ("1.2", "1.3")
_PEM_CERTIFICATE: Final = b"-----BEGIN CERTIFICATE-----"
MAX_WORKERS: Final = 1024

_DEFAULT_CONFIG: Final = Config()
_DEFAULT_ADMIN: Final = AdminSettings()
_DEFAULT_TLS: Final = TLSSettings()

_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel = 3
_SHORT_REPR.maxstring = 80
_SHORT_REPR.maxother = 80
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 4


def load_config(path: str | Path) -> Config:
    """Read and validate the config file at `path`; relative paths in it are relative to it.

    Raises `ConfigError` (never anything else) listing every problem, including a file that
    cannot be read or is not UTF-8.
    """
    return load_config_and_text(path)[0]


def load_config_and_text(path: str | Path) -> tuple[Config, str]:
    """`load_config`, and the text it validated: a supervisor hands that text to its workers,
    so that they run exactly what it checked, whatever happens to the file afterwards."""
    source = str(path)
    text = _read_config_text(Path(path), source)
    return parse_config(text, base_dir=Path(path).parent, source=source), text


def _read_config_text(path: Path, source: str) -> str:
    """The config file's text; a file that cannot be read or decoded is a `ConfigError`."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        reason = f"the file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
    except OSError as exc:
        reason = (
            f"cannot read the config file ({exc.strerror or exc}); give the path of a YAML file"
        )
    except ValueError as exc:  # e.g. a NUL character in the path
        reason = f"cannot read the config file ({exc}); give the path of a YAML file"
    raise ConfigError([Problem("", reason)], source=source)


def parse_config(text: str, *, base_dir: Path, source: str | None = None) -> Config:
    """Validate the YAML document `text` into a `Config`, or raise `ConfigError` with every problem.

    The YAML must be one document (`yaml.safe_load` rules, YAML 1.1: `yes`/`no` are booleans).
    A key given twice in one mapping is a problem (plain PyYAML silently keeps the last).
    Relative paths are resolved against `base_dir`; `source` names the text in messages.
    """
    problems: list[Problem] = []
    data = _load_yaml(text, problems)
    if data is _ABSENT:
        raise ConfigError(problems, source=source)
    return _build_config(data, Path(base_dir), source, problems)


def config_from_mapping(
    data: Mapping[str, Any], *, base_dir: Path, source: str | None = None
) -> Config:
    """Validate already-parsed config data (as `yaml.safe_load` would give) into a `Config`.

    The same rules as `parse_config`, for configs built in memory (the demo, tests).
    Whatever `data` holds, the result is a `Config` or a `ConfigError`.
    """
    return _build_config(data, Path(base_dir), source, [])


def _build_config(
    data: object, base_dir: Path, source: str | None, problems: list[Problem]
) -> Config:
    """Read the top-level mapping, then raise once if anything (so far or now) was wrong."""
    config = Config()
    if data is None:
        problems.append(
            Problem(
                "",
                f"the config is empty; expected a mapping with the keys {_list(_TOP_LEVEL_KEYS)}",
            )
        )
    elif not isinstance(data, Mapping):
        problems.append(Problem("", f"the config must be a mapping of settings, got {_show(data)}"))
    else:
        top = _Section(data, "", problems, Path(os.path.abspath(base_dir)))
        config = _read_config(top, Path(source) if source is not None else None)
    if problems:
        raise ConfigError(problems, source=source)
    return config


# --- YAML ----------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also finds keys given twice in one mapping.

    PyYAML keeps the last of duplicate keys without a word; for a config that silently
    drops settings. The check walks the composed node tree, so each duplicate is reported
    with its dotted path and both line numbers, and all of them are reported at once.
    """

    def duplicate_key_problems(self, root: yaml.Node) -> list[Problem]:
        problems: list[Problem] = []
        visited: set[int] = set()  # anchors and aliases may share (or loop back to) a node
        stack: list[tuple[yaml.Node, str]] = [(root, "")]
        while stack:
            node, path = stack.pop()
            if id(node) in visited:
                continue
            visited.add(id(node))
            children: list[tuple[yaml.Node, str]] = []
            if isinstance(node, yaml.MappingNode):
                children = self._mapping_children(node, path, problems)
            elif isinstance(node, yaml.SequenceNode):
                children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            stack.extend(reversed(children))
        return problems

    @staticmethod
    def _mapping_children(
        node: yaml.MappingNode, path: str, problems: list[Problem]
    ) -> list[tuple[yaml.Node, str]]:
        first_seen: dict[tuple[str, str], yaml.Mark] = {}
        children: list[tuple[yaml.Node, str]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *anchor` merges; later keys override on purpose
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key_path = _join(path, key_node.value)
            identity = (key_node.tag, key_node.value)
            first = first_seen.setdefault(identity, key_node.start_mark)
            if first is not key_node.start_mark:
                here = key_node.start_mark
                problems.append(
                    Problem(
                        key_path,
                        f"duplicate key {key_node.value!r} at line {here.line + 1}, column "
                        f"{here.column + 1} (first at line {first.line + 1}); give each key once",
                    )
                )
            children.append((value_node, key_path))
        return children


def _load_yaml(text: str, problems: list[Problem]) -> object:
    """The YAML document in `text`, or `_ABSENT` after recording why it cannot be read."""
    if not isinstance(text, str):
        problems.append(Problem(_YAML_PATH, f"expected YAML text, got {_show(text)}"))
        return _ABSENT
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)  # the reader rejects unprintable characters right away
        node = loader.get_single_node()
        if node is None:
            return None
        problems.extend(loader.duplicate_key_problems(node))
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        problems.append(Problem(_YAML_PATH, _describe_marked_yaml_error(exc)))
    except yaml.YAMLError as exc:
        problems.append(Problem(_YAML_PATH, f"YAML error: {_one_line(str(exc))}"))
    except RecursionError:
        problems.append(Problem(_YAML_PATH, "the YAML is nested too deeply to read"))
    except (ValueError, TypeError, OverflowError) as exc:
        # PyYAML lets a few constructor errors through, e.g. the date 2024-02-30.
        problems.append(
            Problem(_YAML_PATH, f"a YAML value cannot be read ({exc}); quote it if it is text")
        )
    finally:
        if loader is not None:
            loader.dispose()
    return _ABSENT


def _describe_marked_yaml_error(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    what = "; ".join(part for part in (exc.context, exc.problem) if part) or _one_line(str(exc))
    if mark is None:
        return f"YAML syntax error: {what}"
    return f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {what}"


# --- Reading mappings ----------------------------------------------------------------------


@attrs.define
class _Section:
    """One mapping of the raw config: its data, the path that leads to it, and the problems."""

    data: Mapping[Any, Any]
    path: str
    problems: list[Problem]
    base_dir: Path

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def get(self, key: str) -> object:
        return self.data.get(key, _ABSENT)

    def report(self, key: str, message: str) -> None:
        """Record a problem with the value at `key` of this mapping."""
        self.problems.append(Problem(self.at(key), message))

    def check_keys(self, accepted: Sequence[str]) -> None:
        """Report each key that is not one of `accepted`, suggesting the closest accepted one."""
        for key in self.data:
            if isinstance(key, str) and key in accepted:
                continue
            hint = ""
            if isinstance(key, str):
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.report(
                str(key), f"unknown key {_show(key)}{hint}; accepted keys: {_list(accepted)}"
            )

    def section(self, key: str, what: str) -> _Section | None:
        """The mapping under `key` as a `_Section`; None when absent, null or not a mapping."""
        value = self.get(key)
        if value is _ABSENT or value is None:
            return None
        if not isinstance(value, Mapping):
            self.report(key, f"must be a mapping of {what}, got {_show(value)}")
            return None
        return _Section(value, self.at(key), self.problems, self.base_dir)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is _ABSENT:
            return default
        if not isinstance(value, bool):
            self.report(key, f"must be true or false, got {_show(value)}")
            return default
        return value

    def integer(self, key: str, default: int, minimum: int, maximum: int | None = None) -> int:
        value = self.get(key)
        if value is _ABSENT:
            return default
        accepted = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
        if not isinstance(value, int) or isinstance(value, bool):
            self.report(key, f"must be an integer ({accepted}), got {_show(value)}")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            self.report(key, f"must be {accepted}, got {_show(value)}")
            return default
        return value

    def seconds(self, key: str, default: float) -> float:
        value = self.get(key)
        if value is _ABSENT:
            return default
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                seconds = float(value)
            except OverflowError:
                seconds = math.inf
            if math.isfinite(seconds) and seconds > 0:
                return seconds
        self.report(key, f"must be a positive number of seconds, e.g. 5 or 0.5, got {_show(value)}")
        return default

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self.get(key)
        if value is _ABSENT:
            return default
        if not isinstance(value, str) or value not in choices:
            self.report(key, f"must be {_alternatives(choices)}, got {_show(value)}")
            return default
        return value

    def endpoint(self, key: str, default: str) -> str:
        """A Twisted server endpoint string, parsed (never listened on) to prove it is valid."""
        value = self.get(key)
        if value is _ABSENT:
            return default
        if not isinstance(value, str):
            self.report(
                key, f"must be a Twisted endpoint string, {ENDPOINT_EXAMPLE}, got {_show(value)}"
            )
            return default
        try:
            parse_server_endpoint(value)
        except EndpointError as exc:
            self.report(key, str(exc))
            return default
        return value

    def file_path(self, key: str, default: Path) -> Path:
        value = self.get(key)
        if value is _ABSENT:
            return self.resolve(default)
        if not isinstance(value, str) or not value.strip():
            self.report(
                key, f"must be a file path (relative to the config's directory), got {_show(value)}"
            )
            return default
        return self.resolve(Path(value))

    def resolve(self, path: Path) -> Path:
        """`path` made absolute against the config's directory (SPEC §3)."""
        return Path(os.path.normpath(self.base_dir / path))


# --- The config, section by section --------------------------------------------------------


def _read_config(top: _Section, source: Path | None) -> Config:
    top.check_keys(_TOP_LEVEL_KEYS)
    timeouts = _read_timeouts(top.section("timeouts", "timeout names to seconds"), Timeouts())
    listen = top.endpoint("listen", _DEFAULT_CONFIG.listen)
    workers = _read_workers(top)
    if workers > 1 and not _shareable(listen):
        top.report("workers", workers_listen_problem(workers, listen))
    cluster = _read_cluster(top)
    config = Config(
        listen=listen,
        listen_tls=_read_listen_tls(top),
        workers=workers,
        admin=_read_admin(top),
        access_log=_read_access_log(top),
        tls=_read_tls(top),
        timeouts=timeouts,
        limits=_read_limits(top.section("limits", "limit names to values")),
        cluster=cluster,
        domains=_read_domains(top, timeouts) if top.get("cluster") is _ABSENT else _no_domains(top),
        source=source,
    )
    if not any(p.path.startswith("tls.certificates") for p in top.problems):
        # A broken certificate is reported once: not again as "no certificate" for
        # listen_tls and for each redirecting domain it would have covered.
        top.problems.extend(https_problems(config))
    return config


def _read_listen_tls(top: _Section) -> str | None:
    value = top.get("listen_tls")
    if value is _ABSENT or value is None:
        return None
    listen_tls = top.endpoint("listen_tls", "")
    if listen_tls and not _shareable(listen_tls):
        top.report("listen_tls", listen_tls_problem(listen_tls))
    return listen_tls or None


def listen_tls_problem(listen_tls: str) -> str:
    return (
        f"must be a 'tcp:' or 'tcp6:' endpoint (the edge does TLS itself, with the "
        f"certificates of tls.certificates), got {listen_tls!r}; e.g. 'tcp:8443'"
    )


def https_problems(config: Config) -> list[Problem]:
    """What SPEC §8 asks of the config as a whole: certificates for an HTTPS listener, and
    one covering each domain that redirects to HTTPS."""
    problems = []
    certificates = config.tls.certificates
    if config.listen_tls is not None and not certificates:
        problems.append(
            Problem(
                "listen_tls",
                f"{config.listen_tls!r} needs at least one certificate in tls.certificates "
                "(cert_file and key_file); add one, or remove listen_tls",
            )
        )
    for name, domain in config.domains.items():
        problem = _redirect_problem(f"domains.{name}", domain, certificates)
        if problem is not None:
            problems.append(problem)
    return problems


def _redirect_problem(
    path: str, domain: Domain, certificates: tuple[EdgeCertificate, ...]
) -> Problem | None:
    """`https_redirect` on a domain that no certificate of this edge covers."""
    name = domain.name
    if not domain.https_redirect or any(c.covers(name) for c in certificates):
        return None
    return Problem(
        f"{path}.https_redirect",
        f"true, but no certificate in tls.certificates covers {name!r}, so the "
        "redirect would lead to a certificate error; add a certificate with "
        f"{name!r} (or a wildcard covering it) as a DNS name, or set it to false",
    )


def apply_overrides(config: Config, overrides: Mapping[str, str]) -> Config:
    """`config` with the command line's `listen`, `admin.listen` and `workers` in place of
    the file's; raises `ConfigError` when the result cannot run (workers on a unix socket)."""
    source = str(config.source) if config.source is not None else None
    if "listen" in overrides:
        config = attrs.evolve(config, listen=overrides["listen"])
    if "listen_tls" in overrides:
        config = attrs.evolve(config, listen_tls=overrides["listen_tls"])
        problems = https_problems(config)
        if not _shareable(overrides["listen_tls"]):
            problems.insert(0, Problem("--listen-tls", listen_tls_problem(overrides["listen_tls"])))
        if problems:
            raise ConfigError(problems, source=source)
    if "admin.listen" in overrides:
        config = attrs.evolve(
            config, admin=attrs.evolve(config.admin, listen=overrides["admin.listen"])
        )
    if "workers" in overrides:
        value = overrides["workers"]
        try:
            workers = workers_count(int(value) if value.strip().isdigit() else value)
        except ValueError as exc:
            raise ConfigError([Problem("--workers", str(exc))], source=source) from None
        config = attrs.evolve(config, workers=workers)
    if config.workers > 1 and not _shareable(config.listen):
        problem = Problem("workers", workers_listen_problem(config.workers, config.listen))
        raise ConfigError([problem], source=source)
    return config


def _read_workers(top: _Section) -> int:
    value = top.get("workers")
    if value is _ABSENT:
        return _DEFAULT_CONFIG.workers
    try:
        return workers_count(value)
    except ValueError as exc:
        top.report("workers", str(exc))
        return _DEFAULT_CONFIG.workers


def workers_count(value: object) -> int:
    """The number of worker processes `value` asks for: 1..MAX_WORKERS, or "auto" (one per
    CPU core). Raises ValueError saying what is accepted."""
    if value == "auto" and isinstance(value, str):
        return max(1, os.cpu_count() or 1)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
        return value
    raise ValueError(
        f"must be a number of worker processes 1..{MAX_WORKERS}, or 'auto' (one per CPU core, "
        f"{os.cpu_count() or 1} here), got {_show(value)}"
    )


def workers_listen_problem(workers: int, listen: str) -> str:
    """Why `workers` > 1 cannot share `listen` (which is not a tcp:/tcp6: endpoint)."""
    return (
        f"{workers} workers share a listener that the supervisor binds itself (a TCP "
        f"port), which needs a 'tcp:' or 'tcp6:' listen endpoint, got {listen!r}; "
        "use e.g. 'tcp:8080:interface=0.0.0.0', or workers: 1"
    )


def _read_admin(top: _Section) -> AdminSettings:
    admin = top.section("admin", "admin settings")
    if admin is None:
        return AdminSettings(token_file=top.resolve(_DEFAULT_ADMIN.token_file))
    admin.check_keys(_ADMIN_KEYS)
    return AdminSettings(
        listen=admin.endpoint("listen", _DEFAULT_ADMIN.listen),
        token_file=admin.file_path("token_file", _DEFAULT_ADMIN.token_file),
    )


def _read_access_log(top: _Section) -> Path | Literal["-"] | None:
    """`-` is stdout, null (or no key) is no access log, anything else a file path."""
    value = top.get("access_log")
    if value is _ABSENT or value is None:
        return None
    if value == STDOUT:
        return STDOUT
    if not isinstance(value, str) or not value.strip():
        top.report(
            "access_log",
            f"must be a file path, '-' for stdout, or null for no access log, got {_show(value)}",
        )
        return None
    return top.resolve(Path(value))


def _read_tls(top: _Section) -> TLSSettings:
    tls = top.section("tls", "TLS settings")
    if tls is None:
        return TLSSettings()
    tls.check_keys(_TLS_KEYS)
    unknown_sni = tls.choice("unknown_sni", _DEFAULT_TLS.unknown_sni, _UNKNOWN_SNI)
    return TLSSettings(
        ca_file=_read_ca_file(tls),
        min_version=_read_tls_version(tls, "min_version"),
        certificates=_read_certificates(tls),
        client_min_version=_read_tls_version(tls, "client_min_version"),
        unknown_sni="reject" if unknown_sni == "reject" else "default",
    )


def _read_certificates(tls: _Section) -> tuple[EdgeCertificate, ...]:
    """The edge's certificates, each read and checked (edgenode.certificates)."""
    value = tls.get("certificates")
    if value is _ABSENT or value is None:
        return ()
    example = "[{cert_file: certs/shop.pem, key_file: certs/shop.key}]"
    if not isinstance(value, list):
        tls.report(
            "certificates", f"must be a list of certificates, e.g. {example}, got {_show(value)}"
        )
        return ()
    certificates: list[EdgeCertificate] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        path = f"{tls.at('certificates')}[{i}]"
        if not isinstance(item, Mapping):
            tls.problems.append(
                Problem(path, f"must be a mapping with cert_file and key_file, got {_show(item)}")
            )
            continue
        entry = _Section(item, path, tls.problems, tls.base_dir)
        cert = _read_certificate_pair(entry, purpose="server")
        if cert is None:
            continue
        if cert.fingerprint in seen:
            entry.report(
                "cert_file",
                f"{cert.cert_file} is the same certificate as "
                f"certificates[{seen[cert.fingerprint]}]; list each certificate once",
            )
            continue
        seen[cert.fingerprint] = i
        certificates.append(cert)
    return tuple(certificates)


def _read_ca_file(tls: _Section) -> Path | None:
    """A readable PEM bundle with at least one certificate; null means the system store."""
    value = tls.get("ca_file")
    if value is _ABSENT or value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        tls.report(
            "ca_file",
            "must be the path of a PEM file of CA certificates, or null for the system "
            f"trust store, got {_show(value)}",
        )
        return None
    path = tls.resolve(Path(value))
    problem = _ca_file_problem(path)
    if problem is not None:
        tls.report("ca_file", f"{value!r} ({path}) {problem}")
    return path


def _ca_file_problem(path: Path) -> str | None:
    accepted = "give a PEM file of CA certificates, or null for the system trust store"
    if not path.is_file():
        state = "is not a regular file" if path.exists() else "does not exist"
        return f"{state}; {accepted}"
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return f"cannot be read ({reason}); {accepted}"
    if _PEM_CERTIFICATE not in data:
        return f"contains no PEM certificate ('{_PEM_CERTIFICATE.decode()}'); {accepted}"
    return None


def _read_certificate_pair(
    entry: _Section, *, purpose: Literal["server", "client"]
) -> EdgeCertificate | None:
    """`{cert_file, key_file}`, read and checked (edgenode.certificates); None if bad."""
    entry.check_keys(_CERTIFICATE_KEYS)
    missing = [key for key in _CERTIFICATE_KEYS if entry.get(key) in (_ABSENT, None)]
    for key in missing:
        entry.report(key, "is required: a PEM file's path (relative to the config's directory)")
    if missing:
        return None
    cert_file = entry.file_path("cert_file", Path())
    key_file = entry.file_path("key_file", Path())
    try:
        return read_certificate(cert_file, key_file, purpose=purpose)
    except CertificateProblem as problem:
        entry.report(problem.key, problem.message)
        return None


def _read_tls_version(tls: _Section, key: str) -> Literal["1.2", "1.3"]:
    """ "1.2" or "1.3"; the YAML numbers 1.2 and 1.3 are accepted and read as those strings."""
    value = tls.get(key)
    if value is _ABSENT:
        return "1.2"
    if isinstance(value, float) and value in (1.2, 1.3):
        value = str(value)
    if value == "1.2" and isinstance(value, str):
        return "1.2"
    if value == "1.3" and isinstance(value, str):
        return "1.3"
    tls.report(key, f"must be {_alternatives(_TLS_VERSIONS)}, got {_show(value)}")
    return "1.2"


def _read_timeouts(section: _Section | None, base: Timeouts) -> Timeouts:
    """`base` with the keys `section` sets replaced; every value a positive number of seconds."""
    if section is None:
        return base
    section.check_keys(_TIMEOUT_KEYS)
    return Timeouts(**{key: section.seconds(key, getattr(base, key)) for key in _TIMEOUT_KEYS})


def _read_limits(limits: _Section | None) -> Limits:
    """Limits; max_header_bytes is 1 KiB..1 MiB, max_body_bytes 0 (no limit) or more."""
    if limits is None:
        return Limits()
    limits.check_keys([field.name for field in attrs.fields(Limits)])
    defaults = Limits()
    return Limits(
        client_header_timeout=limits.seconds(
            "client_header_timeout", defaults.client_header_timeout
        ),
        client_idle_timeout=limits.seconds("client_idle_timeout", defaults.client_idle_timeout),
        max_header_bytes=limits.integer(
            "max_header_bytes", defaults.max_header_bytes, 1024, 1048576
        ),
        max_body_bytes=limits.integer("max_body_bytes", defaults.max_body_bytes, 0),
        origin_max_connections=limits.integer(
            "origin_max_connections", defaults.origin_max_connections, 1
        ),
        origin_queue_timeout=limits.seconds("origin_queue_timeout", defaults.origin_queue_timeout),
    )


# --- The cluster (SPEC §9) -----------------------------------------------------------------


def _read_cluster(top: _Section) -> ClusterSettings | None:
    """`cluster.etcd`; None when the file has no `cluster` (its domains are its own)."""
    value = top.get("cluster")
    if value is _ABSENT:
        return None
    if value is None:
        top.report(
            "cluster",
            "is empty; give 'etcd' (endpoints: [...]), or remove cluster to read domains "
            "from this file",
        )
        return None
    cluster = top.section("cluster", "cluster settings ('etcd')")
    if cluster is None:
        return None
    cluster.check_keys(_CLUSTER_KEYS)
    etcd = cluster.section("etcd", "etcd settings")
    if etcd is None:
        if cluster.get("etcd") is _ABSENT or cluster.get("etcd") is None:
            cluster.report("etcd", f"is required: e.g. {{endpoints: [{_ETCD_ENDPOINT_EXAMPLE}]}}")
        return None
    etcd.check_keys(_ETCD_KEYS)
    defaults = EtcdSettings(endpoints=())
    return ClusterSettings(
        EtcdSettings(
            endpoints=_read_etcd_endpoints(etcd),
            prefix=_read_etcd_prefix(etcd, defaults.prefix),
            token_file=_read_token_file(etcd),
            cache_file=_read_cache_file(etcd, defaults.cache_file),
            startup_timeout=etcd.seconds("startup_timeout", defaults.startup_timeout),
        )
    )


def _read_etcd_endpoints(etcd: _Section) -> tuple[str, ...]:
    """One or more etcd client URLs, `http://host:port`, each given once."""
    value = etcd.get("endpoints")
    accepted = f"a list of etcd client URLs, e.g. [{_ETCD_ENDPOINT_EXAMPLE}]"
    if value is _ABSENT or value is None:
        etcd.report("endpoints", f"is required: {accepted}")
        return ()
    if isinstance(value, str):
        value = [value]  # one endpoint written without the brackets
    if not isinstance(value, list) or not value:
        etcd.report("endpoints", f"must be {accepted}, got {_show(value)}")
        return ()
    endpoints: list[str] = []
    for i, item in enumerate(value):
        path = f"{etcd.at('endpoints')}[{i}]"
        problem = _etcd_endpoint_problem(item)
        if problem is not None:
            etcd.problems.append(Problem(path, problem))
            continue
        endpoint = str(item).rstrip("/")
        if endpoint in endpoints:
            etcd.problems.append(Problem(path, f"{item!r} is listed twice; give each once"))
            continue
        endpoints.append(endpoint)
    return tuple(endpoints)


def _etcd_endpoint_problem(value: object) -> str | None:
    accepted = f"an etcd client URL such as {_ETCD_ENDPOINT_EXAMPLE} (http://host:port)"
    if not isinstance(value, str):
        return f"must be {accepted}, got {_show(value)}"
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError as exc:
        return f"{value!r} is not a URL ({exc}); give {accepted}"
    if url.scheme != "http":
        return (
            f"{value!r} must use http:// (the edge talks to etcd's HTTP/JSON gateway in clear; "
            f"keep etcd on a private network), e.g. {_ETCD_ENDPOINT_EXAMPLE}"
        )
    if not url.hostname or url.username or url.password:
        return f"{value!r} needs a host and nothing else before it; give {accepted}"
    if url.path not in ("", "/") or url.query or url.fragment:
        return f"{value!r} must have no path, query or fragment; give {accepted}"
    if port == 0:
        return f"{value!r} has port 0; give {accepted}"
    return None


def _read_etcd_prefix(etcd: _Section, default: str) -> str:
    """The key prefix of this fleet: text ending in '/' (keys are <prefix>domains/<name>)."""
    value = etcd.get("prefix")
    if value is _ABSENT:
        return default
    if not isinstance(value, str) or not value.endswith("/") or "\0" in value:
        etcd.report(
            "prefix",
            f"must be a key prefix ending in '/', e.g. {default!r} (domains are then at "
            f"'{default}domains/<name>'), got {_show(value)}",
        )
        return default
    return value


def _read_token_file(etcd: _Section) -> Path | None:
    """A readable file holding the etcd auth token; null or absent means no auth."""
    value = etcd.get("token_file")
    if value is _ABSENT or value is None:
        return None
    path = etcd.file_path("token_file", Path())
    if path == Path():
        return None  # reported: not a path
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        etcd.report(
            "token_file",
            f"{value!r} ({path}) cannot be read ({reason}); give a file holding the etcd "
            "auth token, or null for an etcd without authentication",
        )
        return path
    if not token:
        etcd.report("token_file", f"{value!r} ({path}) is empty; put the etcd auth token in it")
    return path


def _read_cache_file(etcd: _Section, default: Path) -> Path:
    """Where the last applied domain set is kept; its directory must exist."""
    path = etcd.file_path("cache_file", default)
    if not path.parent.is_dir():
        etcd.report(
            "cache_file",
            f"{str(path)!r}: the directory {str(path.parent)!r} does not exist; give a path in "
            "an existing, writable directory",
        )
    return path


def _no_domains(top: _Section) -> dict[str, Domain]:
    """With `cluster` (even one with problems), domains live in etcd: a `domains` key here
    is a problem, and none is needed."""
    if top.get("domains") is not _ABSENT:
        top.report(
            "domains",
            "must be absent when cluster is set: domains come from etcd, at "
            "'<prefix>domains/<name>'; move them to a file for `edgenode push`, or remove "
            "cluster",
        )
    return {}


# --- Domains and origins -------------------------------------------------------------------


def _read_domains(top: _Section, timeouts: Timeouts) -> dict[str, Domain]:
    """Domains by normalised name; at least one, no two with the same normalised name.

    An edge without domains would answer 421 to every request, so that is a problem too.
    Paths name a domain by its key as written, so the operator can find it in the file.
    """
    value = top.get("domains")
    if value is _ABSENT or value is None or (isinstance(value, Mapping) and not value):
        top.report(
            "domains",
            "no domains configured; add at least one accelerated domain, "
            "e.g. 'www.example.com: {origins: [{address: 203.0.113.10}]}'",
        )
        return {}
    domains = top.section("domains", "domain names to domain settings")
    if domains is None:
        return {}
    result: dict[str, Domain] = {}
    written_as: dict[str, object] = {}
    for key, value in domains.data.items():
        path = domains.at(str(key))
        name = _read_domain_name(key, path, domains.problems)
        domain = _read_domain(value, path, name, timeouts, domains)
        if name is None or domain is None:
            continue
        if name in written_as:
            domains.report(
                str(key),
                f"{key!r} is the same domain as {written_as[name]!r} (both are {name!r} once "
                "normalised); give each domain once",
            )
            continue
        written_as[name] = key
        result[name] = domain
    return result


def _read_domain_name(key: object, path: str, problems: list[Problem]) -> str | None:
    """The normalised accelerated domain name; wildcards are not supported in this version."""
    if not isinstance(key, str):
        problems.append(
            Problem(path, f"a domain name must be text such as 'www.example.com', got {_show(key)}")
        )
        return None
    if "*" in key:
        problems.append(
            Problem(
                path,
                f"{key!r} is a wildcard; wildcard domains are not supported in this version, "
                "list each domain name, e.g. 'www.example.com'",
            )
        )
        return None
    try:
        return normalize_hostname(key)
    except ValueError as exc:
        problems.append(Problem(path, str(exc)))
        return None


def _read_domain(
    value: object, path: str, name: str | None, timeouts: Timeouts, parent: _Section
) -> Domain | None:
    if not isinstance(value, Mapping):
        parent.problems.append(
            Problem(
                path,
                f"must be a mapping of domain settings with at least 'origins', got {_show(value)}",
            )
        )
        return None
    domain = _Section(value, path, parent.problems, parent.base_dir)
    domain.check_keys(_DOMAIN_KEYS)
    protocol = domain.choice("origin_protocol", "https", _PROTOCOLS)
    origin_host = _read_host(domain, "origin_host", default=name)
    origin_sni = _read_origin_sni(domain, protocol)
    verify = domain.boolean("verify", True)
    https_redirect = domain.boolean("https_redirect", False)
    domain_timeouts = _read_timeouts(
        domain.section("timeouts", "timeout names to seconds"), timeouts
    )
    origins = _read_origins(domain, protocol)
    if protocol == "https" and origin_sni.enabled and origin_sni.value is None:
        _check_origin_host_as_sni(domain, origin_host, origins)
    health_check = _read_health_check(domain)
    passive = _read_passive(domain)
    client_certificate = _read_client_certificate(domain, protocol)
    return Domain(
        name=name or "",
        origins=origins,
        origin_protocol="http" if protocol == "http" else "https",
        origin_host=origin_host or "",
        origin_sni=origin_sni,
        verify=verify,
        timeouts=domain_timeouts,
        https_redirect=https_redirect,
        health_check=health_check,
        passive=passive,
        client_certificate=client_certificate,
    )


def _read_health_check(domain: _Section) -> HealthCheck | None:
    check = domain.section("health_check", "health check settings")
    if check is None:
        return None
    check.check_keys(_HEALTH_CHECK_KEYS)
    defaults = HealthCheck()
    before = len(check.problems)
    interval = check.seconds("interval", defaults.interval)
    timeout = check.seconds("timeout", defaults.timeout)
    if len(check.problems) == before and timeout > interval:  # both as written, and valid
        check.report(
            "timeout",
            f"{timeout:g}s is longer than the interval ({interval:g}s); a check must end "
            "before the next one starts",
        )
    return HealthCheck(
        path=_read_check_path(check),
        interval=interval,
        timeout=timeout,
        healthy_threshold=check.integer("healthy_threshold", defaults.healthy_threshold, 1, 100),
        unhealthy_threshold=check.integer(
            "unhealthy_threshold", defaults.unhealthy_threshold, 1, 100
        ),
        expect_status=_read_status_range(check, defaults.expect_status),
    )


def _read_check_path(check: _Section) -> str:
    value = check.get("path")
    if value is _ABSENT:
        return HealthCheck().path
    if (
        isinstance(value, str)
        and value.startswith("/")
        and all(33 <= ord(c) < 127 for c in value)
    ):
        return value
    check.report(
        "path",
        f"must be an origin-form path starting with '/' (printable ASCII, no spaces), e.g. "
        f"'/healthz', got {_show(value)}",
    )
    return HealthCheck().path


def _read_status_range(check: _Section, default: tuple[int, int]) -> tuple[int, int]:
    """A status (200) or an inclusive range ("200-399")."""
    value = check.get("expect_status")
    if value is _ABSENT:
        return default
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    low, _, high = text.partition("-")
    if low.strip().isdigit() and (not high or high.strip().isdigit()):
        first, last = int(low), int(high or low)
        if 100 <= first <= last <= 599:
            return first, last
    check.report(
        "expect_status",
        f"must be a status such as 200 or a range such as '200-399' (100..599), got {_show(value)}",
    )
    return default


def _read_passive(domain: _Section) -> Passive | None:
    passive = domain.section("passive", "passive ejection settings")
    if passive is None:
        return None
    passive.check_keys(_PASSIVE_KEYS)
    defaults = Passive()
    return Passive(
        consecutive_failures=passive.integer(
            "consecutive_failures", defaults.consecutive_failures, 1, 1000
        ),
        ejection_time=passive.seconds("ejection_time", defaults.ejection_time),
    )


def _read_client_certificate(section: _Section, protocol: str) -> EdgeCertificate | None:
    """`client_certificate: {cert_file, key_file}` for mTLS to origins; https only."""
    if section.get("client_certificate") in (_ABSENT, None):
        return None
    if protocol == "http":
        section.report(
            "client_certificate",
            "a client certificate is presented in a TLS handshake, and this domain uses "
            "origin_protocol 'http'; remove it",
        )
        return None
    entry = section.section("client_certificate", "cert_file and key_file")
    if entry is None:
        return None
    return _read_certificate_pair(entry, purpose="client")


def _read_host(section: _Section, key: str, default: str | None) -> str | None:
    """A DNS name (normalised) or an IP literal (kept as written, IPv6 without brackets)."""
    value = section.get(key)
    if value is _ABSENT:
        return default
    if not isinstance(value, str):
        section.report(
            key, f"must be a host name or IP address, e.g. 'origin.example.com', got {_show(value)}"
        )
        return default
    if is_ip_literal(value):
        return strip_ip_brackets(value)
    try:
        return normalize_hostname(value)
    except ValueError as exc:
        section.report(key, f"{exc}; an IP address is also accepted")
        return default


def _read_origin_sni(domain: _Section, protocol: str) -> OriginSNI:
    """The domain's origin SNI: off when the block is absent; `enabled` defaults to true in it."""
    if domain.get("origin_sni") is None:
        domain.report(
            "origin_sni",
            "is empty; give 'enabled' and/or 'value', or remove origin_sni to send no SNI",
        )
        return OriginSNI()
    block = domain.section("origin_sni", "'enabled' and 'value'")
    if block is None:
        return OriginSNI()
    block.check_keys(_ORIGIN_SNI_KEYS)
    enabled = block.boolean("enabled", True)
    if enabled and protocol == "http":
        block.report(
            "enabled",
            "origin_sni only applies to origin_protocol https, and this domain uses 'http'; "
            "remove origin_sni or set enabled: false",
        )
    return OriginSNI(enabled=enabled, value=_read_sni(block, "value"))


def _read_sni(section: _Section, key: str) -> str | None:
    """A specific server name for SNI (see `validate_sni`); absent or null is None."""
    value = section.get(key)
    if value is _ABSENT or value is None:
        return None
    try:
        return validate_sni(value)
    except ValueError as exc:
        section.report(key, str(exc))
        return None


def _check_origin_host_as_sni(
    domain: _Section, origin_host: str | None, origins: tuple[Origin, ...]
) -> None:
    """Origin SNI enabled without a value sends origin_host, which must then be valid SNI."""
    if origin_host is None or all(origin.sni is not None for origin in origins):
        return
    try:
        validate_sni(origin_host)
    except ValueError as exc:
        domain.report(
            "origin_sni",
            f"is enabled without a value, so it would send origin_host, but {exc}; "
            "set origin_sni.value",
        )


def _read_origins(domain: _Section, protocol: str) -> tuple[Origin, ...]:
    value = domain.get("origins")
    example = "e.g. [{address: 203.0.113.10}]"
    if value is _ABSENT or value is None:
        domain.report("origins", f"is required: list at least one origin, {example}")
        return ()
    if not isinstance(value, list | tuple):
        domain.report("origins", f"must be a list of origins, {example}, got {_show(value)}")
        return ()
    if not value:
        domain.report("origins", f"must list at least one origin, {example}")
        return ()
    origins = (
        _read_origin(item, f"{domain.at('origins')}[{i}]", protocol, domain)
        for i, item in enumerate(value)
    )
    return tuple(origin for origin in origins if origin is not None)


def _read_origin(value: object, path: str, protocol: str, domain: _Section) -> Origin | None:
    """One origin; port defaults to 443 for https and 80 for http, `sni` only for https."""
    if not isinstance(value, Mapping):
        domain.problems.append(
            Problem(path, f"must be a mapping with at least 'address', got {_show(value)}")
        )
        return None
    origin = _Section(value, path, domain.problems, domain.base_dir)
    origin.check_keys(_ORIGIN_KEYS)
    if origin.get("address") is _ABSENT:
        origin.report("address", "is required: the origin's IP address or host name")
    return Origin(
        address=_read_host(origin, "address", default=None) or "",
        port=origin.integer("port", 80 if protocol == "http" else 443, 1, 65535),
        priority=origin.integer("priority", 1, 0),
        weight=origin.integer("weight", 1, 1, 1000),
        sni=_read_origin_own_sni(origin, protocol),
        client_certificate=_read_client_certificate(origin, protocol),
    )


def _read_origin_own_sni(origin: _Section, protocol: str) -> str | None:
    """`origins[].sni`, which wins over the domain's origin SNI; only https sends SNI."""
    if protocol == "http" and origin.get("sni") not in (_ABSENT, None):
        origin.report(
            "sni",
            "sni only applies to origin_protocol https, and this domain uses 'http'; remove it",
        )
        return None
    return _read_sni(origin, "sni")


# --- Domain documents: etcd's (SPEC §9) and `edgenode push`'s --------------------------------

ETCD_PATH: Final = "etcd:"  # problems in an etcd document are named etcd:<key>.<path>


@attrs.frozen
class DomainEntry:
    """One domain of a domains file (`edgenode push`), validated, and the document to store:
    the entry as written, as compact JSON."""

    name: str  # normalised: the last segment of its key
    domain: Domain
    document: str


def parse_domain_document(key: str, value: bytes | str, node: Config) -> Domain:
    """One domain from etcd: the JSON object at `key` (`<prefix>domains/<name>`), with
    exactly the rules of one entry under a file's `domains:`, on the node config `node`
    (which has `cluster`: its timeouts are the domain's defaults, its certificates must
    cover a domain that redirects to HTTPS, relative paths are relative to its file).

    The key's last segment is the domain name, normalised as a file's keys are; a key
    that is not a valid name is a problem like any other. Raises `ConfigError` naming
    each problem `etcd:<key>.<path>` (e.g. `etcd:/edgenode/domains/a.example.com.origins[0].port`).
    """
    problems: list[Problem] = []
    path = ETCD_PATH + key
    name = _domain_name_of_key(key, node, path, problems)
    document = _load_json_document(value, path, problems)
    domain = None
    if document is not _ABSENT:
        parent = _Section({}, "", problems, _base_dir_of(node))
        domain = _read_domain(document, path, name, node.timeouts, parent)
    if domain is not None and name is not None:
        problem = _redirect_problem(path, domain, node.tls.certificates)
        if problem is not None:
            problems.append(problem)
    if problems or domain is None:
        raise ConfigError(problems, source=f"etcd key {key!r}")
    return domain


def domain_key(node: Config, name: str) -> str:
    """The etcd key of domain `name` (normalised) for the fleet of `node`."""
    assert node.cluster is not None
    return node.cluster.etcd.domains_prefix + name


def _domain_name_of_key(key: str, node: Config, path: str, problems: list[Problem]) -> str | None:
    if node.cluster is None:
        raise ValueError("parse_domain_document needs a node config with cluster.etcd")
    prefix = node.cluster.etcd.domains_prefix
    if not key.startswith(prefix):
        problems.append(Problem(path, f"is not under {prefix!r}; domains are {prefix}<name>"))
        return None
    return _read_domain_name(key[len(prefix) :], path, problems)


def _base_dir_of(node: Config) -> Path:
    """The directory relative paths of `node` were resolved against: its file's."""
    if node.source is None:
        return Path.cwd()
    return Path(os.path.abspath(node.source)).parent


def _load_json_document(value: bytes | str, path: str, problems: list[Problem]) -> object:
    """The JSON value in `value`, or `_ABSENT` after recording why it cannot be read.

    Strict where Python's json is lenient: a key given twice in one object is a problem
    (as in YAML), and NaN or Infinity are not JSON.
    """
    example = '{"origins": [{"address": "203.0.113.10"}]}'
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                Problem(
                    path,
                    f"is not UTF-8 text ({exc.reason} at byte {exc.start}); store "
                    f"the domain's settings as a JSON object, e.g. {example}",
                )
            )
            return _ABSENT

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for k, v in pairs:
            if k in obj:
                problems.append(
                    Problem(path, f"duplicate key {k!r} in a JSON object; give each key once")
                )
            obj[k] = v
        return obj

    def not_json(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(value, object_pairs_hook=no_duplicates, parse_constant=not_json)
    except RecursionError:
        problems.append(Problem(path, "the JSON is nested too deeply to read"))
    except ValueError as exc:
        problems.append(
            Problem(
                path,
                f"is not JSON ({_one_line(str(exc))}); store the domain's settings "
                f"as one JSON object, e.g. {example}",
            )
        )
    return _ABSENT


def load_domains_file(path: str | Path, node: Config) -> tuple[DomainEntry, ...]:
    """The domains of a file for `edgenode push`: a YAML mapping with one key, `domains`,
    holding what a config file's `domains:` would (SPEC §3), checked with every rule of
    `edgenode check` on the node config `node` (which has `cluster`), and each entry again
    as the JSON document the edges will read (`parse_domain_document`). Raises
    `ConfigError` listing every problem."""
    source = str(path)
    text = _read_config_text(Path(path), source)
    problems: list[Problem] = []
    data = _load_yaml(text, problems)
    if data is _ABSENT:
        raise ConfigError(problems, source=source)
    if not isinstance(data, Mapping):
        problems.append(Problem("", f"must be a mapping with the key 'domains', got {_show(data)}"))
        raise ConfigError(problems, source=source)
    top = _Section(data, "", problems, _base_dir_of(node))
    top.check_keys(("domains",))
    domains = _read_domains(top, node.timeouts)
    entries = [] if problems else _domain_entries(data["domains"], domains, node, problems)
    if problems:
        raise ConfigError(problems, source=source)
    return tuple(entries)


def _domain_entries(
    written: Mapping[Any, Any], domains: Mapping[str, Domain], node: Config, problems: list[Problem]
) -> list[DomainEntry]:
    """Each valid domain with its entry as written, as the compact JSON document to store."""
    entries = []
    for key, value in written.items():
        name = normalize_hostname(str(key))
        path = f"domains.{key}"
        problem = _redirect_problem(path, domains[name], node.tls.certificates)
        if problem is not None:
            problems.append(problem)
            continue
        try:
            document = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:  # a YAML type with no JSON form
            problems.append(Problem(path, f"cannot be stored as JSON ({exc})"))
            continue
        try:  # what the edges will read: it must pass there too
            domain = parse_domain_document(domain_key(node, name), document, node)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        entries.append(DomainEntry(name, domain, document))
    return sorted(entries, key=lambda entry: entry.name)


# --- Endpoints -----------------------------------------------------------------------------


def _shareable(listen: str) -> bool:
    """Whether workers can share `listen`: a tcp:/tcp6: endpoint, which the supervisor binds."""
    try:
        return parse_server_endpoint(listen).is_tcp
    except EndpointError:  # a --listen (overrides are not parsed before the edge listens)
        return False


# --- Message helpers -----------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: object) -> str:
    """A short repr of a bad value, with YAML's spelling for true, false and null."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    return _SHORT_REPR.repr(value)


def _list(keys: Sequence[str]) -> str:
    return ", ".join(keys)


def _alternatives(choices: Sequence[str]) -> str:
    quoted = [repr(choice) for choice in choices]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]]) if len(quoted) > 1 else quoted[0]


def _one_line(text: str) -> str:
    return " ".join(text.split())
