"""TLS for the edge's clients (SPEC §8): one SSL.Context per certificate, chosen by SNI.

`ServerTLS` is built whole from the config's certificates, then swapped in with the rest
of the runtime: a handshake that starts after a reload gets the new set, an established
connection keeps the context it was given.

How selection works, with pyOpenSSL's public API only:
- Every connection starts on the *front* context (the first certificate's). Its session
  cache and ticket keys are the ones OpenSSL uses for resumption whatever context the
  handshake switches to (`SSL_set_SSL_CTX` keeps the session context), so resumption
  works across all certificates of one set.
- The servername callback (called for every ClientHello, with or without SNI) picks the
  certificate (`certificates.select`) and moves the connection to its context with
  `Connection.set_context`, and records the choice as the connection's app data, where
  `client_facts` finds it after the handshake.
- `unknown_sni: reject` raises from the callback: pyOpenSSL then fails the handshake, and
  OpenSSL's alert for a servername callback's fatal answer is `unrecognized_name`. The
  callback's exception goes to `sys.excepthook`; `_quiet_rejections` keeps that one kind
  out of the log (a rejected SNI is counted and logged as a request-less access-log line
  instead).
- Each context is fully configured before any connection uses it: pyOpenSSL (≥ 26.2)
  refuses to change a context once used, and a context is never changed after build.
- TLS 1.2 and 1.3 only (1.3 with `client_min_version: "1.3"`), forward-secret suites
  only (ECDHE for 1.2; every 1.3 suite is), no compression, no renegotiation, ALPN
  `http/1.1` (a client offering only other protocols goes on without ALPN, as nginx does).

Resumption is per process: each `ServerTLS` has its own ticket keys and session cache
(pyOpenSSL exposes no way to set ticket keys), so a client that resumes on another
worker, or after a reload that changed the certificates, makes a full handshake. A
reload that leaves the certificates as they were keeps the same `ServerTLS` (runtime.py).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Literal

import attrs
from OpenSSL import SSL

from edgenode.certificates import EdgeCertificate, select

# Mozilla's "intermediate" TLS 1.2 list without the DHE suites (no dhparam to manage):
# ECDHE key exchange only, AEAD ciphers only.
TLS12_CIPHERS: Final = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
ALPN_HTTP11: Final = b"http/1.1"
_SESSION_ID_CONTEXT: Final = b"edgenode"
_VERSIONS: Final = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

UnknownSNI = Literal["default", "reject"]


class SNIRejected(Exception):
    """Raised from the servername callback to refuse a handshake (`unknown_sni: reject`)."""


@attrs.frozen
class ClientTLSFacts:
    """What one client handshake settled: for the 421 check, the access log and metrics."""

    version: str  # "TLSv1.3"
    sni: str | None  # as the client sent it, normalised (lower case, no trailing dot)
    certificate: EdgeCertificate  # the one this connection presented


@attrs.frozen
class _Rejected:
    """App data of a connection whose SNI was refused: what the failure is reported as."""

    sni: str | None


class ServerTLS:
    """The contexts serving one certificate set to clients."""

    def __init__(
        self,
        certificates: Sequence[EdgeCertificate],
        *,
        min_version: Literal["1.2", "1.3"] = "1.2",
        unknown_sni: UnknownSNI = "default",
    ) -> None:
        if not certificates:
            raise ValueError("ServerTLS needs at least one certificate")
        self.certificates = tuple(certificates)
        self.min_version = min_version
        self.unknown_sni = unknown_sni
        self.key = self.key_for(certificates, min_version, unknown_sni)
        self._contexts = {cert.fingerprint: self._context(cert) for cert in certificates}
        self._front = self._contexts[certificates[0].fingerprint]
        _quiet_rejections()

    @staticmethod
    def key_for(
        certificates: Sequence[EdgeCertificate], min_version: str, unknown_sni: str
    ) -> tuple[object, ...]:
        """What decides whether a reload can keep this ServerTLS (and its ticket keys)."""
        return (tuple(certificates), min_version, unknown_sni)

    def new_connection(self, sock: socket.socket) -> SSL.Connection:
        """The connection of one accepted TCP connection, on its socket (the TLS transport
        sets accept state)."""
        return SSL.Connection(self._front, sock)

    # -- building -------------------------------------------------------------

    def _context(self, cert: EdgeCertificate) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(_VERSIONS[self.min_version])
        ctx.set_options(
            SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
        )
        ctx.set_cipher_list(TLS12_CIPHERS)
        ctx.use_certificate(cert.leaf)
        for intermediate in cert.chain:
            ctx.add_extra_chain_cert(intermediate)
        ctx.use_privatekey(cert.key)
        ctx.check_privatekey()
        ctx.set_session_id(_SESSION_ID_CONTEXT)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        ctx.set_tlsext_servername_callback(self._servername)
        ctx.set_alpn_select_callback(_select_alpn)
        return ctx

    # -- the handshake ----------------------------------------------------------

    def _servername(self, conn: SSL.Connection) -> None:
        sni = _normalised_sni(conn.get_servername())
        cert = select(self.certificates, sni)
        if cert is None:
            if self.unknown_sni == "reject":
                conn.set_app_data(_Rejected(sni))
                raise SNIRejected(sni)
            cert = self.certificates[0]
        conn.set_app_data(cert)
        context = self._contexts[cert.fingerprint]
        if context is not self._front:
            conn.set_context(context)


def client_facts(conn: SSL.Connection) -> ClientTLSFacts:
    """The facts of a completed handshake on a connection `ServerTLS` made."""
    cert = conn.get_app_data()
    assert isinstance(cert, EdgeCertificate)  # the servername callback always sets it
    return ClientTLSFacts(
        version=conn.get_protocol_version_name(),
        sni=_normalised_sni(conn.get_servername()),
        certificate=cert,
    )


def handshake_refusal(conn: SSL.Connection | None) -> tuple[bool, str | None]:
    """(whether the SNI was refused, the SNI) of a handshake that failed."""
    data = conn.get_app_data() if conn is not None else None
    if isinstance(data, _Rejected):
        return True, data.sni
    sni = None
    if conn is not None:
        try:
            sni = _normalised_sni(conn.get_servername())
        except SSL.Error:
            sni = None
    return False, sni


def _normalised_sni(raw: bytes | None) -> str | None:
    if not raw:
        return None
    return raw.decode("ascii", "replace").lower().rstrip(".") or None


def _select_alpn(conn: SSL.Connection, offered: list[bytes]) -> bytes:
    # NO_OVERLAPPING_PROTOCOLS: go on without ALPN (nginx does the same).
    return ALPN_HTTP11 if ALPN_HTTP11 in offered else SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]


_quieted = False


def _quiet_rejections() -> None:
    """Keep `SNIRejected` (an expected refusal) out of sys.excepthook's traceback output;
    every other exception still reaches the hook that was installed."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if not isinstance(value, SNIRejected):
            previous(kind, value, tb)

    sys.excepthook = hook
