"""How to reach a domain's origins: one route per origin, and the order to try them in.

A route is a value: the origin's address and its whole TLS identity (SNI, verify name,
trust, client certificate), built once per config generation by runtime.py and read per
request by the data path. The balancer is the one piece of per-request state a domain keeps.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from edgenode.tls import OriginTLSCreator


def server_label(address: str, port: int) -> str:
    """`address:port` as logs, metrics and the probe name an origin (`[v6]:port` for IPv6)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@attrs.frozen
class OriginRoute:
    """How to reach one origin for one domain: address plus the whole TLS identity."""

    address: str
    port: int
    tls: bool
    sni: str | None
    verify_name: str
    verify: bool
    trust_id: str
    min_tls: str
    client_cert: str | None = None  # fingerprint of the certificate presented (mTLS)
    idle_timeout: float = attrs.field(eq=False, default=60.0)
    creator: OriginTLSCreator | None = attrs.field(eq=False, default=None, repr=False)
    # Derived once, read per request.
    pool_key: tuple[object, ...] = attrs.field(init=False, eq=False, repr=False)
    server: tuple[str, int] = attrs.field(init=False, eq=False, repr=False)
    label: str = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # Everything that makes two connections non-interchangeable.
        key = (
            self.address,
            self.port,
            self.tls,
            self.sni,
            self.verify_name,
            self.verify,
            self.trust_id,
            self.min_tls,
            self.client_cert,
        )
        object.__setattr__(self, "pool_key", key)
        object.__setattr__(self, "server", (self.address, self.port))
        object.__setattr__(self, "label", server_label(self.address, self.port))


class Balancer:
    """Priority groups, each served by smooth weighted round robin (as nginx does)."""

    def __init__(self, routes: Sequence[tuple[int, int, OriginRoute]]) -> None:
        groups: dict[int, list[tuple[int, OriginRoute]]] = {}
        for priority, weight, route in routes:
            groups.setdefault(priority, []).append((weight, route))
        self._groups = [groups[p] for p in sorted(groups)]
        self._current = [[0] * len(g) for g in self._groups]
        # The common case, one origin per priority, has one fixed order.
        self._fixed = (
            tuple(g[0][1] for g in self._groups) if all(len(g) == 1 for g in self._groups) else None
        )

    def plan(self) -> list[OriginRoute]:
        """Every origin once, in the order to try them for one request."""
        if self._fixed is not None:
            return list(self._fixed)
        order: list[OriginRoute] = []
        for group, current in zip(self._groups, self._current, strict=True):
            if len(group) == 1:
                order.append(group[0][1])
                continue
            total = 0
            best = 0
            for i, (weight, _) in enumerate(group):
                current[i] += weight
                total += weight
                if current[i] > current[best]:
                    best = i
            current[best] -= total
            order.append(group[best][1])
            rest = sorted((i for i in range(len(group)) if i != best), key=lambda i: -current[i])
            order.extend(group[i][1] for i in rest)
        return order
