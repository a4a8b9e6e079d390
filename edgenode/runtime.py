"""The running state: config + routes + trust profiles + generation, behind one reference."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

from edgenode.config import Config, Domain, Origin
from edgenode.tls import OriginTLSCreator, TrustProfile
from edgenode.upstream import Balancer, OriginRoute


@attrs.frozen
class DomainRuntime:
    """One domain, ready to serve: its config, its routes and the balancer over them."""

    config: Domain
    routes: tuple[OriginRoute, ...]
    balancer: Balancer = attrs.field(eq=False)
    origin_host: bytes = b""


@attrs.frozen
class Runtime:
    """Everything a request needs, immutable; a request reads it once, at its start."""

    config: Config
    generation: int
    domains: Mapping[str, DomainRuntime]
    profile: TrustProfile = attrs.field(eq=False)

    def pool_keys(self) -> set[tuple[object, ...]]:
        return {route.pool_key for d in self.domains.values() for route in d.routes}


def build_runtime(config: Config, generation: int, previous: Runtime | None = None) -> Runtime:
    """Build every route and TLS profile for `config`; raises before anything is swapped.

    The trust profile (and so its SSL.Context) is reused from `previous` when the trust
    settings did not change, so pooled connections of unchanged routes stay valid.
    """
    profile = _profile_for(config, previous)
    domains = {name: _domain_runtime(domain, profile) for name, domain in config.domains.items()}
    return Runtime(config, generation, MappingProxyType(domains), profile)


def _profile_for(config: Config, previous: Runtime | None) -> TrustProfile:
    wanted = TrustProfile.key_for(config.tls.ca_file, config.tls.min_version)
    if previous is not None and previous.profile.key == wanted:
        return previous.profile
    return TrustProfile(config.tls.ca_file, config.tls.min_version)


def _domain_runtime(domain: Domain, profile: TrustProfile) -> DomainRuntime:
    routes = tuple(_route(domain, origin, profile) for origin in domain.origins)
    balancer = Balancer(
        [(o.priority, o.weight, r) for o, r in zip(domain.origins, routes, strict=True)]
    )
    return DomainRuntime(domain, routes, balancer, domain.origin_host.encode("ascii"))


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
