"""The running state: config + routes + trust profiles + generation, behind one reference."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs
from OpenSSL import SSL

from edgenode.certificates import EdgeCertificate
from edgenode.config import Config, Domain, Origin
from edgenode.endpoints import parse_server_endpoint
from edgenode.errors import ConfigError, Problem
from edgenode.routes import Balancer, OriginRoute
from edgenode.servertls import ServerTLS
from edgenode.tls import OriginTLSCreator, TrustProfile


@attrs.frozen
class DomainRuntime:
    """One domain, ready to serve: its config, its routes and the balancer over them."""

    config: Domain
    routes: tuple[OriginRoute, ...]
    balancer: Balancer = attrs.field(eq=False)
    origin_host: bytes = b""
    watched: bool = False  # health_check or passive set: the balancer's order is filtered


@attrs.frozen
class Runtime:
    """Everything a request needs; a request reads it once, at its start. A reload swaps in a
    new one: the config and the routing are never changed in place (the balancers' turn
    counters and the routes' TLS session caches are the only state that moves)."""

    config: Config
    generation: int
    domains: Mapping[str, DomainRuntime]
    profile: TrustProfile = attrs.field(eq=False)  # without a client certificate
    # Every profile in use, by TrustProfile.key: one per client certificate (SPEC §10).
    profiles: Mapping[tuple[object, ...], TrustProfile] = attrs.field(
        eq=False, factory=lambda: MappingProxyType({})
    )
    # The contexts serving HTTPS clients (SPEC §8); None without certificates.
    server_tls: ServerTLS | None = attrs.field(eq=False, default=None)
    https_port: int = 443  # the port https_redirect's Location names (listen_tls's)

    def pool_keys(self) -> set[tuple[object, ...]]:
        return {route.pool_key for d in self.domains.values() for route in d.routes}


def build_runtime(config: Config, generation: int, previous: Runtime | None = None) -> Runtime:
    """Build every route and TLS profile for `config`; raises before anything is swapped.

    Trust profiles (and so their SSL.Contexts) are reused from `previous` when the trust
    settings did not change, so pooled connections of unchanged routes stay valid.
    """
    profiles = _Profiles(config, previous)
    profile = profiles.get(None)
    before = previous.domains if previous is not None else {}
    domains = {
        name: _kept(before.get(name), domain, profiles) or _domain_runtime(domain, profiles)
        for name, domain in config.domains.items()
    }
    return Runtime(
        config,
        generation,
        MappingProxyType(domains),
        profile,
        profiles=MappingProxyType(profiles.made),
        server_tls=_server_tls_for(config, previous),
        https_port=_https_port(config),
    )


def _server_tls_for(config: Config, previous: Runtime | None) -> ServerTLS | None:
    """The client-facing contexts; kept from `previous` when the certificates and settings
    did not change, so that session tickets issued before the reload still resume."""
    tls = config.tls
    if not tls.certificates:
        return None
    wanted = ServerTLS.key_for(tls.certificates, tls.client_min_version, tls.unknown_sni)
    kept = previous.server_tls if previous is not None else None
    if kept is not None and kept.key == wanted:
        return kept
    try:
        return ServerTLS(
            tls.certificates, min_version=tls.client_min_version, unknown_sni=tls.unknown_sni
        )
    except SSL.Error as e:  # OpenSSL refused what the checks passed (a key too weak, ...)
        problem = Problem("tls.certificates", f"OpenSSL cannot serve them: {e}")
        raise ConfigError([problem], source=str(config.source or "")) from None


def _https_port(config: Config) -> int:
    if config.listen_tls is None:
        return 443
    port = parse_server_endpoint(config.listen_tls).port
    return port or 443


class _Profiles:
    """The trust profiles of one generation: one per client certificate in use, each
    taken from the previous generation when its key is the same."""

    def __init__(self, config: Config, previous: Runtime | None) -> None:
        self.config = config
        self.previous = previous.profiles if previous is not None else {}
        self.made: dict[tuple[object, ...], TrustProfile] = {}

    def get(self, client_certificate: EdgeCertificate | None) -> TrustProfile:
        tls = self.config.tls
        key = TrustProfile.key_for(tls.ca_file, tls.min_version, client_certificate)
        profile = self.made.get(key) or self.previous.get(key)
        if profile is None:
            try:
                profile = TrustProfile(tls.ca_file, tls.min_version, client_certificate)
            except SSL.Error as e:  # OpenSSL refused a client certificate the checks passed
                path = str(client_certificate.cert_file) if client_certificate else "tls"
                problem = Problem(path, f"OpenSSL cannot use it: {e}")
                raise ConfigError([problem], source=str(self.config.source or "")) from None
        self.made[key] = profile
        return profile


def _kept(
    old: DomainRuntime | None, domain: Domain, profiles: _Profiles
) -> DomainRuntime | None:
    """The previous generation's runtime of an unchanged domain (same settings, same trust
    profiles): its routes, their TLS session caches and its balancer's turn go on, and a
    change to one domain of many does not rebuild them all."""
    if old is None or old.config != domain:
        return None
    for origin, route in zip(domain.origins, old.routes, strict=True):
        creator = route.creator
        profile = profiles.get(domain.client_certificate_for(origin))
        if creator is not None and creator.profile is not profile:
            return None
    return old


def _domain_runtime(domain: Domain, profiles: _Profiles) -> DomainRuntime:
    routes = tuple(
        _route(domain, origin, profiles.get(domain.client_certificate_for(origin)))
        for origin in domain.origins
    )
    balancer = Balancer(
        [(o.priority, o.weight, r) for o, r in zip(domain.origins, routes, strict=True)]
    )
    watched = domain.health_check is not None or domain.passive is not None
    return DomainRuntime(domain, routes, balancer, domain.origin_host.encode("ascii"), watched)


def _route(domain: Domain, origin: Origin, profile: TrustProfile) -> OriginRoute:
    tls = domain.origin_protocol == "https"
    sni = domain.sni_for(origin) if tls else None
    verify_name = domain.verify_name_for(origin)
    verify = tls and domain.verify
    return OriginRoute(
        address=origin.address,
        port=origin.port,
        tls=tls,
        sni=sni,
        verify_name=verify_name,
        verify=verify,
        trust_id=profile.trust_id if tls else "",
        min_tls=profile.min_version if tls else "",
        client_cert=profile.key[2] if tls else None,
        idle_timeout=domain.timeouts.idle,
        creator=OriginTLSCreator(profile, sni, verify_name, verify) if tls else None,
    )


class RuntimeHolder:
    """The one mutable reference to the running state."""

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime

    def swap(self, new: Runtime) -> Runtime:
        old, self.current = self.current, new
        return old


def effective_domain(domain: Domain) -> dict[str, object]:
    """One domain as it runs: per origin the SNI actually sent and the name verified."""
    return {
        "name": domain.name,
        "origin_protocol": domain.origin_protocol,
        "origin_host": domain.origin_host,
        "origin_sni": {"enabled": domain.origin_sni.enabled, "value": domain.origin_sni.value},
        "verify": domain.verify,
        "https_redirect": domain.https_redirect,
        "health_check": _health_view(domain),
        "passive": attrs.asdict(domain.passive) if domain.passive else None,
        "client_certificate": _client_cert_view(domain.client_certificate),
        "timeouts": attrs.asdict(domain.timeouts),
        "origins": [
            {
                "address": o.address,
                "port": o.port,
                "priority": o.priority,
                "weight": o.weight,
                "sni": o.sni,
                "effective_sni": domain.sni_for(o),
                "client_certificate": _client_cert_view(domain.client_certificate_for(o)),
                "verify_name": domain.verify_name_for(o) if domain.verify else None,
            }
            for o in domain.origins
        ],
    }


def _health_view(domain: Domain) -> dict[str, object] | None:
    check = domain.health_check
    if check is None:
        return None
    low, high = check.expect_status
    return {**attrs.asdict(check), "expect_status": str(low) if low == high else f"{low}-{high}"}


def _client_cert_view(cert: EdgeCertificate | None) -> dict[str, object] | None:
    if cert is None:
        return None
    return {"cert_file": str(cert.cert_file), "fingerprint_sha256": cert.fingerprint}


def effective_config(runtime: Runtime) -> dict[str, object]:
    """The running config as the admin API shows it; the admin token is never included."""
    config = runtime.config
    view: dict[str, object] = {
        "generation": runtime.generation,
        "source": str(config.source) if config.source else None,
        **_settings(config),
        "domains": {name: effective_domain(d) for name, d in sorted(config.domains.items())},
    }
    view["tls"]["trust_id"] = runtime.profile.trust_id  # type: ignore[index]
    return view


# Settings a running process cannot change: the sockets it listens on, its processes.
RESTART_ONLY = ("listen", "listen_tls", "admin.listen", "workers", "cluster")


def config_diff(old: Config, new: Config) -> dict[str, object]:
    """What a reload changes: domains added/removed/changed (field by field), other settings."""
    changed: dict[str, list[str]] = {}
    for name in sorted(old.domains.keys() & new.domains.keys()):
        if old.domains[name] == new.domains[name]:
            continue  # most of a fleet's domains, on each change of one
        lines = _changes(
            _flatten(effective_domain(old.domains[name])),
            _flatten(effective_domain(new.domains[name])),
        )
        if lines:
            changed[name] = lines
    old_rest, new_rest = _flatten(_settings(old)), _flatten(_settings(new))
    settings = _changes(old_rest, new_rest)
    restart = [line for line in settings if _needs_restart(line.split(":", 1)[0])]
    diff: dict[str, object] = {
        "added": sorted(new.domains.keys() - old.domains.keys()),
        "removed": sorted(old.domains.keys() - new.domains.keys()),
        "changed": changed,
        "settings": [line for line in settings if line not in restart],
        "restart_required": restart,
    }
    certificates = certificates_diff(old.tls.certificates, new.tls.certificates)
    if any(certificates.values()):  # present only when some certificate changed
        diff["certificates"] = certificates
    return diff


def certificates_diff(
    old: tuple[EdgeCertificate, ...], new: tuple[EdgeCertificate, ...]
) -> dict[str, list[dict[str, object]]]:
    """Certificates added, removed and changed, by SHA-256 fingerprint (SPEC §8). A
    certificate is the same one while its cert_file is: a new fingerprint there is a
    change (a renewal), a new file an addition."""
    before = {c.cert_file: c for c in old}
    after = {c.cert_file: c for c in new}
    changed: list[dict[str, object]] = []
    for path in before.keys() & after.keys():
        was, now = before[path], after[path]
        if was.fingerprint != now.fingerprint or was.key_file != now.key_file:
            changed.append(
                {
                    "cert_file": str(path),
                    "names": list(now.names),
                    "old_fingerprint_sha256": was.fingerprint,
                    "new_fingerprint_sha256": now.fingerprint,
                }
            )
    return {
        "added": [after[p].describe() for p in after.keys() - before.keys()],
        "removed": [before[p].describe() for p in before.keys() - after.keys()],
        "changed": sorted(changed, key=lambda c: str(c["cert_file"])),
    }


def certificates_view(runtime: Runtime) -> list[dict[str, object]]:
    """`GET /certificates`: each certificate the edge offers, in selection order."""
    return [cert.describe() for cert in runtime.config.tls.certificates]


def _needs_restart(path: str) -> bool:
    return any(path == key or path.startswith(key + ".") for key in RESTART_ONLY)


def _settings(config: Config) -> dict[str, object]:
    return {
        "listen": config.listen,
        "listen_tls": config.listen_tls,
        "workers": config.workers,
        "admin": {"listen": config.admin.listen, "token_file": str(config.admin.token_file)},
        "access_log": None if config.access_log is None else str(config.access_log),
        "tls": {
            "ca_file": str(config.tls.ca_file) if config.tls.ca_file else None,
            "min_version": config.tls.min_version,
            "client_min_version": config.tls.client_min_version,
            "unknown_sni": config.tls.unknown_sni,
            "certificates": [c.fingerprint for c in config.tls.certificates],
        },
        "timeouts": attrs.asdict(config.timeouts),
        "limits": attrs.asdict(config.limits),
        # The watch is set up at start: another etcd or prefix needs a restart.
        "cluster": None if config.cluster is None else _cluster_view(config),
    }


def _cluster_view(config: Config) -> dict[str, object]:
    assert config.cluster is not None
    etcd = config.cluster.etcd
    return {
        "etcd": {
            "endpoints": list(etcd.endpoints),
            "prefix": etcd.prefix,
            "token_file": str(etcd.token_file) if etcd.token_file else None,
            "cache_file": str(etcd.cache_file),
            "startup_timeout": etcd.startup_timeout,
        }
    }


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': [x]}} -> {'a.b[0]': x}: paths the way config errors name them."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _changes(old: dict[str, object], new: dict[str, object]) -> list[str]:
    lines = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key, "(none)"), new.get(key, "(none)")
        if before != after:
            lines.append(f"{key}: {_show(before)} -> {_show(after)}")
    return lines


def _show(value: object) -> str:
    return "null" if value is None else str(value)
