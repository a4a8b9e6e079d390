"""`edgenode probe`: one TLS handshake with each origin of a domain, explained (SPEC §2).

The probe makes the edge's handshake (the route's `OriginTLSCreator`: same trust
profile, SNI, verify name and verify callback) over the data path's own TLS transport,
connected as the edge connects (`connect_tls`: names resolved alike, the same connect
timeout and errors). It stops after the handshake without sending a request, and reports
per origin what the origin presented and the verdict the edge would reach, in the edge's error codes
(SPEC §4), with a hint an operator can act on. A failed verification still reports the
certificate: the verify callback records its facts before it fails the handshake.

Exit codes are the `edgenode` command's: 0 every origin verified; 1 at least one did
not; 2 usage error (unreadable or invalid config, unknown domain, bad `--sni`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from edgenode.config import Config, Domain, load_config
from edgenode.control.cluster import ClusterStartError, read_start
from edgenode.datapath.tlstransport import connect_tls
from edgenode.datapath.transport import StreamTransport
from edgenode.datapath.upstream import OneConnectionFactory, setup_failure
from edgenode.errors import ConfigError, ErrorCode, OriginError
from edgenode.hostnames import normalize_hostname, validate_sni
from edgenode.reactors import IOriginReactor
from edgenode.routes import server_label
from edgenode.runtime import build_runtime
from edgenode.tls import CertFacts, ConnectionTLS, OriginTLSCreator
from edgenode.tools.exitcodes import ExitCode
from edgenode.tools.reactor import run_once

PROG = "edgenode"

DEFAULT_CONFIG = "etc/edgenode.yaml"
SECONDS_PER_DAY = 86400.0

# The verdict shown for each failure, named after the edge's error code (SPEC §4).
VERDICTS: dict[ErrorCode, str] = {
    ErrorCode.ORIGIN_CERT_NAME_MISMATCH: "name_mismatch",
    ErrorCode.ORIGIN_CERT_UNTRUSTED: "untrusted",
    ErrorCode.ORIGIN_TLS_FAILED: "tls_failed",
    ErrorCode.ORIGIN_TIMEOUT: "timeout",
    ErrorCode.ORIGIN_CONNECT_FAILED: "connect_failed",
}
VERIFIED = "ok"
UNVERIFIED = "unverified"  # handshake fine, but the domain has `verify: false`


# How long a TLS 1.3 probe waits after its handshake for the origin to refuse the client
# certificate (an alert comes only then) before it says the handshake succeeded.
TLS13_SETTLE = 0.5

class ProbeUsageError(Exception):
    """The probe cannot start: bad config, unknown domain, bad `--sni` (exit 2)."""


# --- What to probe -------------------------------------------------------------------------


@attrs.frozen
class ProbeTarget:
    """One origin of the domain and the TLS identity the edge uses with it."""

    address: str
    port: int
    sni: str | None
    verify_name: str
    verify: bool
    sni_setting: str | None  # what set the SNI: "origin_sni.value", "origins[1].sni", "--sni"
    creator: OriginTLSCreator = attrs.field(repr=False)
    connect_timeout: float
    handshake_timeout: float

    @property
    def label(self) -> str:
        return server_label(self.address, self.port)


@attrs.frozen
class ProbePlan:
    """Everything a probe run needs, settled before the reactor starts."""

    domain: Domain
    targets: tuple[ProbeTarget, ...]
    trust: str  # the trust store, in words (TrustProfile.description)
    min_version: str
    source: str


def plan_probe(
    config_path: str,
    domain_name: str,
    *,
    sni: str | None = None,
    timeout: float | None = None,
) -> ProbePlan:
    """Load the config and build one target per origin of `domain_name`, in config order.

    `sni` overrides every origin's SNI and becomes the verify name too; `timeout`
    replaces the domain's connect and TLS handshake timeouts. Raises ProbeUsageError.
    """
    try:
        config = load_config(config_path)
    except ConfigError as err:
        raise ProbeUsageError(str(err)) from err
    if config.cluster is not None:
        # A fleet edge's domains live in etcd (SPEC §9): read them as the edge does at
        # start (etcd, else its cache file).
        try:
            config = read_start(config).config
        except ClusterStartError as err:
            raise ProbeUsageError(str(err)) from err
    name = _find_domain(config, domain_name)
    override = _sni_override(sni)
    runtime = build_runtime(config, generation=0)
    domain_rt = runtime.domains[name]
    domain = domain_rt.config
    connect = timeout if timeout is not None else domain.timeouts.connect
    handshake = timeout if timeout is not None else domain.timeouts.tls_handshake
    targets = []
    for index, (origin, route) in enumerate(zip(domain.origins, domain_rt.routes, strict=True)):
        if route.creator is None:  # plain HTTP: there is no handshake to probe
            continue
        # The setting an operator would change to send another SNI, for the hints.
        sni_setting: str | None = None
        creator = route.creator
        if override is not None:
            # The route's own profile: its client certificate (mTLS) goes along.
            creator = OriginTLSCreator(route.creator.profile, override, override, route.verify)
            sni_setting = "--sni"
        elif origin.sni is not None:
            sni_setting = f"origins[{index}].sni"
        elif route.sni is not None:
            sni_setting = "origin_sni.value"
        targets.append(
            ProbeTarget(
                address=route.address,
                port=route.port,
                sni=creator.sni,
                verify_name=creator.verify_name,
                verify=creator.verify,
                sni_setting=sni_setting,
                creator=creator,
                connect_timeout=connect,
                handshake_timeout=handshake,
            )
        )
    return ProbePlan(
        domain=domain,
        targets=tuple(targets),
        trust=runtime.profile.description,
        min_version=runtime.profile.min_version,
        source=str(config_path),
    )


def _find_domain(config: Config, domain_name: str) -> str:
    configured = ", ".join(sorted(config.domains)) or "(none)"
    try:
        name = normalize_hostname(domain_name)
    except ValueError as err:
        raise ProbeUsageError(f"{err}; configured domains: {configured}") from err
    if name not in config.domains:
        raise ProbeUsageError(
            f"{domain_name!r} is not a domain of {config.source or 'the config'}; "
            f"configured domains: {configured}"
        )
    return name


def _sni_override(sni: str | None) -> str | None:
    if sni is None:
        return None
    try:
        return validate_sni(sni)
    except ValueError as err:
        raise ProbeUsageError(f"--sni: {err}") from err


# --- One handshake -------------------------------------------------------------------------


@implementer(IHandshakeListener)
class HandshakeProbe(Protocol):
    """Runs one TLS handshake, sends nothing, and reports how it ended on `done`.

    `done` fires with None once the handshake completed (verification included), or
    with the OriginError the edge would have reported. `tls` is the connection's facts,
    filled in by the route's creator, as for the edge's UpstreamConnection.
    """

    transport: StreamTransport  # type: ignore[assignment]  # set by makeConnection

    def __init__(self, clock: IReactorTime, handshake_timeout: float, tls: ConnectionTLS) -> None:
        self.tls = tls
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.started = clock.seconds()
        self.connect_ms: float | None = None
        self.handshake_ms: float | None = None
        self.version: str | None = None
        self.cipher: str | None = None
        self.done: Deferred[OriginError | None] = Deferred()
        self._connected_at = 0.0
        self._timer: Any = None

    def connectionMade(self) -> None:
        self._connected_at = self.clock.seconds()
        self.connect_ms = (self._connected_at - self.started) * 1000.0
        self._timer = self.clock.callLater(self.handshake_timeout, self._timed_out)

    def handshakeCompleted(self) -> None:
        self._cancel_timer()
        self.handshake_ms = (self.clock.seconds() - self._connected_at) * 1000.0
        self._capture()
        if self.version == "TLSv1.3":
            # In TLS 1.3 the client's certificate and Finished go out after the client
            # considers the handshake done, and an origin that refuses them (mTLS) says so
            # only then, with an alert. Wait for it (or its silence) before the verdict.
            self._timer = self.clock.callLater(TLS13_SETTLE, self._settled)
            return
        self._settled()

    def _settled(self) -> None:
        self._timer = None
        self._finish(None)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """Nothing was asked, so anything the origin sends is ignored."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._cancel_timer()
        if not self.done.called:
            self._capture()
            self._finish(setup_failure(self.tls, reason.value if reason else None))

    def connect_failed(self, err: OriginError) -> None:
        """The TCP connection was never made (the factory reports it)."""
        self._finish(err)

    def _timed_out(self) -> None:
        self._timer = None
        err = self.tls.handshake_timed_out(self.handshake_timeout)
        self._capture()
        self._finish(err)
        self.transport.abortConnection()

    def _capture(self) -> None:
        """What the handshake got to: the peer certificate, and once it is known the version."""
        tls = self.tls
        tls.capture_peer()
        if tls.peer is not None:  # the server's first flight arrived: version and cipher are real
            self.version = tls.version
            self.cipher = tls.cipher

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _finish(self, err: OriginError | None) -> None:
        if not self.done.called:
            self.done.callback(err)


# --- Results -------------------------------------------------------------------------------


@attrs.frozen
class ProbeResult:
    """What one origin presented and the verdict the edge would reach."""

    target: ProbeTarget
    verdict: str  # ok, unverified, or one of VERDICTS' values
    error: ErrorCode | None
    error_detail: str | None
    hint: str | None
    tls_version: str | None
    cipher: str | None
    certificate: CertFacts | None
    days_left: int | None
    connect_ms: float | None
    handshake_ms: float | None

    @property
    def ok(self) -> bool:
        return self.verdict in (VERIFIED, UNVERIFIED)

    def to_json(self) -> dict[str, Any]:
        t = self.target
        cert = None
        if self.certificate is not None:
            cert = self.certificate.to_json()
            cert["ip_addresses"] = list(self.certificate.ip_addresses)
        return {
            "address": t.address,
            "port": t.port,
            "sni": t.sni,
            "verify_name": t.verify_name,
            "verify": t.verify,
            "client_certificate": _client_cert_json(t),
            "verdict": self.verdict,
            "error": self.error.value if self.error else None,
            "tls_version": self.tls_version,
            "cipher": self.cipher,
            "certificate": cert,
            "days_left": self.days_left,
            "hint": self.hint,
            "error_detail": self.error_detail,
            "connect_ms": _round(self.connect_ms),
            "handshake_ms": _round(self.handshake_ms),
        }


async def probe_origin(
    reactor: IOriginReactor, target: ProbeTarget, plan: ProbePlan
) -> ProbeResult:
    """Connect to one origin as the edge would, run the handshake, and judge it."""
    facts = target.creator.facts()
    probe = HandshakeProbe(reactor, target.handshake_timeout, facts)
    connect_tls(
        reactor,
        target.address,
        target.port,
        OneConnectionFactory(probe, probe.connect_failed, target.connect_timeout),
        target.connect_timeout,
        partial(target.creator.new_connection, facts),
    )
    err = await probe.done
    return judge(target, plan, probe, err, now=reactor.seconds())


async def probe_all(reactor: IOriginReactor, plan: ProbePlan) -> list[ProbeResult]:
    """Probe every origin of the plan at once; results in config order."""
    runs = [Deferred.fromCoroutine(probe_origin(reactor, t, plan)) for t in plan.targets]
    return list(await gatherResults(runs, consumeErrors=True))


def judge(
    target: ProbeTarget,
    plan: ProbePlan,
    probe: HandshakeProbe,
    err: OriginError | None,
    *,
    now: float,
) -> ProbeResult:
    """The verdict on one finished probe: `err` is how it ended (None: handshake done)."""
    cert = probe.tls.peer
    days_left = (
        math.floor((cert.not_after_ts - now) / SECONDS_PER_DAY) if cert is not None else None
    )
    if err is None:
        verdict = VERIFIED if target.verify else UNVERIFIED
        hint = None
        if not target.verify:
            hint = (
                "verify is off for this domain (verify: false): the edge accepts any "
                "certificate from this origin without checking it"
            )
    else:
        verdict = VERDICTS.get(err.code, err.code.value)
        hint = failure_hint(target, plan, err, cert)
    return ProbeResult(
        target=target,
        verdict=verdict,
        error=err.code if err else None,
        error_detail=err.detail if err else None,
        hint=hint,
        tls_version=probe.version,
        cipher=probe.cipher,
        certificate=cert,
        days_left=days_left,
        connect_ms=probe.connect_ms,
        handshake_ms=probe.handshake_ms,
    )


def failure_hint(
    target: ProbeTarget, plan: ProbePlan, err: OriginError, cert: CertFacts | None
) -> str:
    """What an operator can do about `err`, in plain language."""
    match err.code:
        case ErrorCode.ORIGIN_CERT_NAME_MISMATCH:
            return _mismatch_hint(target, cert)
        case ErrorCode.ORIGIN_CERT_UNTRUSTED:
            return _untrusted_hint(plan, err, cert)
        case ErrorCode.ORIGIN_TLS_FAILED:
            return _tls_failed_hint(target, plan, err)
        case ErrorCode.ORIGIN_TIMEOUT:
            if err.detail.startswith("TCP connect"):
                return (
                    f"nothing answered on {target.label} within {target.connect_timeout:g}s: "
                    "check the address, the port and any firewall in between"
                )
            return (
                f"{target.label} accepted the TCP connection but did not finish the TLS "
                f"handshake within {target.handshake_timeout:g}s: is it serving TLS on this "
                "port, and is it overloaded?"
            )
        case ErrorCode.ORIGIN_CONNECT_FAILED:
            return (
                f"could not connect to {target.label}: check the address and port, and that "
                "the origin is running and listening there"
            )
        case _:
            return err.detail


def _mismatch_hint(target: ProbeTarget, cert: CertFacts | None) -> str:
    name = target.verify_name
    if cert is None:
        return f"the certificate does not cover {name}"
    if not (cert.dns_names or cert.ip_addresses):
        return (
            f"this certificate has no subjectAltName at all (subject {cert.subject}), so it "
            f"matches no name; reissue it with {name} as a DNS name"
        )
    covered = cert.names()
    if target.sni is None:
        return (
            f"origin SNI is off (no SNI sent), so the origin presented its default "
            f"certificate, which covers {covered}; enable origin_sni so the origin picks "
            f"the certificate for {name}, or add {name} to its default certificate"
        )
    if target.sni_setting == "--sni":
        return (
            f"this certificate covers {covered}; the origin has no vhost with a certificate "
            f"for {target.sni}: probe one of those names, or add a vhost for {target.sni} "
            "on the origin"
        )
    return (
        f"this certificate covers {covered}; set {target.sni_setting} to one of them "
        f"or add a vhost for {target.sni} on the origin"
    )


def _untrusted_hint(plan: ProbePlan, err: OriginError, cert: CertFacts | None) -> str:
    prefix = f"certificate chain does not verify against {plan.trust}: "
    reason = err.detail.removeprefix(prefix)
    if "has expired" in reason and cert is not None:
        return f"the certificate expired on {cert.not_after}; renew it on the origin"
    if "not yet valid" in reason:
        return "the certificate is not valid yet: check its dates and the clocks of both hosts"
    issuer = f" (issuer {cert.issuer})" if cert is not None else ""
    return (
        f"{plan.trust} does not trust this certificate{issuer}: {reason}; add the issuing "
        "CA to tls.ca_file, or have the origin send its full chain"
    )


def _tls_failed_hint(target: ProbeTarget, plan: ProbePlan, err: OriginError) -> str:
    detail = err.detail.lower()
    if "unrecognized name" in detail:
        if target.sni is None:
            return (
                "origin SNI is off (no SNI sent), and the origin has no default "
                "certificate/vhost for a handshake without SNI (it rejected the handshake); "
                f"enable origin_sni so it picks the vhost for {target.verify_name}"
            )
        if target.sni_setting == "--sni":
            action = f"probe a name it serves, or add a vhost for {target.sni} on the origin"
        else:
            action = (
                f"set {target.sni_setting} to a name it serves, or add a vhost for "
                f"{target.sni} on the origin"
            )
        return (
            f"the origin has no certificate/vhost for SNI {target.sni} "
            f"(it rejected the handshake); {action}"
        )
    if "protocol version" in detail or "unsupported protocol" in detail:
        return (
            f"the origin and the edge share no TLS version: the edge offers TLS "
            f"{plan.min_version} and newer (tls.min_version)"
        )
    if "wrong version number" in detail or "packet length too long" in detail:
        return (
            f"{target.label} did not answer in TLS: if it serves plain HTTP, set "
            "origin_protocol: http for this domain"
        )
    if "closed the connection" in detail:
        sent = target.sni or "none"
        return (
            f"the origin hung up during the handshake (SNI sent: {sent}): check that it "
            "serves TLS on this port and accepts that name"
        )
    return f"the TLS handshake failed ({err.detail}); check the origin's TLS settings"


def _round(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 1)


# --- Output --------------------------------------------------------------------------------


def report_json(plan: ProbePlan, results: Sequence[ProbeResult]) -> dict[str, Any]:
    """The `--json` document."""
    return {
        "domain": plan.domain.name,
        "origin_protocol": plan.domain.origin_protocol,
        "config": plan.source,
        "trust": plan.trust,
        "min_tls": plan.min_version,
        "ok": all(r.ok for r in results),
        "origins": [r.to_json() for r in results],
    }


def report_text(plan: ProbePlan, results: Sequence[ProbeResult]) -> str:
    """One readable block per origin, then a summary line."""
    lines = [
        f"{plan.domain.name}: {len(results)} origin{'' if len(results) == 1 else 's'}, "
        f"trusting {plan.trust}, TLS {plan.min_version}+",
    ]
    for r in results:
        lines.append("")
        lines.extend(_origin_block(r))
    good = sum(r.ok for r in results)
    lines.append("")
    lines.append(
        f"{plan.domain.name}: all {good} origins verified"
        if good == len(results) and len(results) != 1
        else f"{plan.domain.name}: {good} of {len(results)} "
        f"origin{'' if len(results) == 1 else 's'} verified"
    )
    return "\n".join(lines) + "\n"


def _client_cert_text(target: ProbeTarget) -> str:
    cert = target.creator.profile.client_certificate
    if cert is None:
        return "none"
    return f"{cert.names[0]} (sha256 {cert.fingerprint[:23]}…, {cert.cert_file})"


def _client_cert_json(target: ProbeTarget) -> dict[str, str] | None:
    cert = target.creator.profile.client_certificate
    if cert is None:
        return None
    return {"cert_file": str(cert.cert_file), "fingerprint_sha256": cert.fingerprint}


def _origin_block(r: ProbeResult) -> list[str]:
    t = r.target
    rows: list[tuple[str, str]] = [
        ("sni sent", t.sni or "none (origin SNI is off)"),
        ("verify name", t.verify_name if t.verify else f"{t.verify_name} (verify: false)"),
        ("client cert", _client_cert_text(t)),
        ("verdict", r.verdict if r.error is None else f"{r.verdict} ({r.error.value})"),
    ]
    if r.tls_version:
        rows.append(("tls", f"{r.tls_version}, {r.cipher}" if r.cipher else r.tls_version))
    cert = r.certificate
    if cert is not None:
        rows += [
            ("subject", cert.subject),
            ("dns names", ", ".join(cert.dns_names) or "(none)"),
        ]
        if cert.ip_addresses:
            rows.append(("ip addresses", ", ".join(cert.ip_addresses)))
        rows += [
            ("issuer", cert.issuer),
            ("not after", f"{cert.not_after} ({_days(r.days_left)})"),
            ("sha256", cert.sha256),
        ]
    if r.error_detail:
        rows.append(("error", r.error_detail))
    if r.hint:
        rows.append(("hint", r.hint))
    width = max(len(key) for key, _ in rows)
    return [f"origin {t.label}"] + [f"  {key.ljust(width)}  {value}" for key, value in rows]


def _days(days: int | None) -> str:
    if days is None:
        return "?"
    if days < 0:
        return f"expired {-days} day{'' if days == -1 else 's'} ago"
    return f"{days} day{'' if days == 1 else 's'} left"


# --- The command ---------------------------------------------------------------------------


def add_probe_command(subcommands: argparse._SubParsersAction[Any]) -> None:
    """`edgenode probe DOMAIN`: handshake with each origin of a domain and explain the result."""
    probe = subcommands.add_parser(
        "probe",
        help="handshake with each origin of a domain and show its certificate and verdict",
        description=(
            "Connect to every origin of DOMAIN with its effective SNI (or --sni), run one "
            "TLS handshake as the edge does, and print what the origin presented: TLS "
            "version, certificate names, issuer, expiry, and the verify verdict with a "
            "hint on failure. Exit 0 if every origin verifies, 1 if any does not, 2 on "
            "usage errors (bad config, unknown domain)."
        ),
    )
    probe.add_argument("domain", metavar="DOMAIN", help="a domain of the config, e.g. a.test")
    probe.add_argument(
        "--config", default=DEFAULT_CONFIG, metavar="FILE", help="default: %(default)s"
    )
    probe.add_argument(
        "--sni",
        metavar="NAME",
        help="send this SNI to every origin (and verify the certificate against it)",
    )
    probe.add_argument("--json", action="store_true", help="print one JSON document")
    probe.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="S",
        help="connect and handshake timeout in seconds (default: the domain's timeouts)",
    )
    probe.set_defaults(run=run_probe)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def run_probe(args: argparse.Namespace) -> int:
    """Plan, probe in a fresh reactor run, print; the exit code says whether all verified."""
    try:
        plan = plan_probe(args.config, args.domain, sni=args.sni, timeout=args.timeout)
    except ProbeUsageError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return ExitCode.USAGE
    if plan.domain.origin_protocol != "https":
        note = f"origin_protocol {plan.domain.origin_protocol}: nothing to probe"
        if args.json:
            doc = {
                "domain": plan.domain.name,
                "origin_protocol": plan.domain.origin_protocol,
                "ok": True,
                "note": note,
                "origins": [],
            }
            print(json.dumps(doc, indent=2))
        else:
            print(f"{plan.domain.name}: {note}")
        return ExitCode.OK
    results = run_in_reactor(plan)
    if args.json:
        print(json.dumps(report_json(plan, results), indent=2))
    else:
        print(report_text(plan, results), end="")
    return ExitCode.OK if all(r.ok for r in results) else ExitCode.FAILED


def run_in_reactor(plan: ProbePlan) -> list[ProbeResult]:
    """Run the global reactor until every origin is probed (a CLI process runs it once)."""

    async def main(reactor: IOriginReactor) -> list[ProbeResult]:
        return await probe_all(reactor, plan)

    return run_once(main, "probe")
