"""In-process TLS origins that ask for a client certificate (mTLS) and can restart on their port.

`MTLSOrigin` is origin.py's JSON `TLSOrigin` with two additions the health and mTLS tests
need: the server side can request (and require) a client certificate verified against a
CA file, reporting the subject CN it saw per connection (`client_cert` in each JSON answer
and request record, `client_certs` by connection id); and the origin can be stopped and
started again on the same port (`restart()`), as an origin server that went away and came
back does. Nothing here changes origin.py's classes; it only builds on them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IProtocolFactory

from .net import LOOPBACK
from .origin import (
    Listener,
    SNIServerTLS,
    TLSOrigin,
    _OriginResource,
    _OriginSite,
    _reactor,
    _tls_states,
    _TrackingTLSFactory,
)
from .pki import PKI, CertSource

NO_CERT = "-"  # `client_cert` of a connection that presented no certificate


def subject_cn(cert: x509.Certificate) -> str:
    """The subject's common name, or the whole RFC 4514 subject when it has none."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        return str(names[0].value)
    return cert.subject.rfc4514_string()


class ClientCertServerTLS(SNIServerTLS):
    """SNI-aware server TLS that requests a client certificate verified against `client_ca`.

    `require`: a handshake without a client certificate fails
    (`VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT`); otherwise it is only asked for. A
    certificate that does not verify against `client_ca` fails the handshake either way.
    With `client_ca` None no certificate is requested (a plain TLS origin).
    """

    def __init__(
        self,
        certs: Mapping[str, CertSource],
        default: CertSource | None,
        *,
        client_ca: Path | None,
        require: bool,
        max_tls: str | None,
        listener: MTLSListener,
    ) -> None:
        # Read by _context(), which SNIServerTLS.__init__ calls.
        self._client_ca = client_ca
        self._require = require
        self._mtls_listener = listener
        super().__init__(certs, default, max_tls=max_tls, listener=listener)

    def _context(self, source: CertSource | None) -> SSL.Context:
        ctx = super()._context(source)
        # Resumption with a verifying server needs a session id context.
        ctx.set_session_id(b"edgenode-mtls-test")
        if self._client_ca is not None:
            mode = SSL.VERIFY_PEER
            if self._require:
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            ctx.set_verify(mode, _keep_openssl_verdict)
            ctx.load_verify_locations(str(self._client_ca))
        return ctx

    def _info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            state = _tls_states.get(conn)
            if state is not None:
                peer = conn.get_peer_certificate(as_cryptography=True)
                seen = subject_cn(peer) if peer is not None else NO_CERT
                self._mtls_listener._record_client_cert(state.conn_id, seen)
        super()._info(conn, where, ret)


def _keep_openssl_verdict(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    """Accept exactly what OpenSSL's own chain verification accepted."""
    return bool(ok)


class MTLSListener(Listener):
    """A TLS `Listener` whose server side is `ClientCertServerTLS`, on a chosen port (0: any)."""

    def __init__(
        self,
        factory: IProtocolFactory,
        *,
        certs: Mapping[str, CertSource],
        default: CertSource | None,
        client_ca: Path | None,
        require: bool,
        max_tls: str | None = None,
        port: int = 0,
    ) -> None:
        self._wanted_port = port
        self._max_tls = max_tls
        self._wrapped = factory
        self._client_ca = client_ca
        self._require = require
        self._certs = dict(certs)
        self._default = default
        self._client_certs: dict[int, str] = {}
        # Listener.__init__ builds its own SNI server side, replaced in _listen below.
        super().__init__(factory, certs=certs, default=default, tls=True, max_tls=max_tls)

    @property
    def client_certs(self) -> dict[int, str]:
        """Connection id -> the client certificate's subject CN (`NO_CERT` when none)."""
        with self._lock:
            return dict(self._client_certs)

    def _record_client_cert(self, conn_id: int, subject: str) -> None:
        with self._lock:
            self._client_certs[conn_id] = subject

    def _listen(self) -> defer.Deferred[int]:
        self.sni_tls = ClientCertServerTLS(
            self._certs,
            self._default,
            client_ca=self._client_ca,
            require=self._require,
            max_tls=self._max_tls,
            listener=self,
        )
        self._factory = _TrackingTLSFactory(self, self.sni_tls, self._wrapped)  # type: ignore[assignment]  # a WrappingFactory, as origin.py's
        endpoint = TCP4ServerEndpoint(
            _reactor(), self._wanted_port, backlog=128, interface=LOOPBACK
        )
        d = endpoint.listen(self._factory)

        def listening(port: IListeningPort) -> int:
            self._port = port
            return port.getHost().port  # type: ignore[attr-defined]

        return d.addCallback(listening)


class MTLSOrigin(TLSOrigin):
    """origin.py's JSON TLS origin, asking for a client certificate, restartable on its port.

    Every JSON answer (and `requests` record) gains `client_cert`: the subject CN of
    the certificate the client presented on that connection, `NO_CERT` for none.
    `client_ca` None: no certificate is requested. `require` (default): a handshake
    without one fails. `max_tls` ("1.2") caps the version: a TLS 1.2 server rejects a
    missing certificate inside the handshake, a TLS 1.3 one only after the client's
    side of it completed (RFC 8446 §4.4.2.4). `stop()` closes the port and every
    connection; `restart()` listens again on the same port with the same settings.
    """

    def __init__(
        self,
        certs: Mapping[str, CertSource],
        default: CertSource | None = None,
        *,
        client_ca: Path | None = None,
        require: bool = True,
        max_tls: str | None = None,
        port: int = 0,
    ) -> None:
        # TLSOrigin.__init__ would make a plain origin.py Listener: set its fields here.
        self.close_after_response = False
        self.drop_reused = False
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._certs = dict(certs)
        self._default = default
        self._client_ca = client_ca
        self._require = require
        self._max_tls = max_tls
        self._site = _OriginSite(_OriginResource(self))
        self.listener: MTLSListener = self._new_listener(port)
        self.port = self.listener.port
        self.tls = True

    def _new_listener(self, port: int) -> MTLSListener:
        return MTLSListener(
            self._site,
            certs=self._certs,
            default=self._default,
            client_ca=self._client_ca,
            require=self._require,
            max_tls=self._max_tls,
            port=port,
        )

    @property
    def client_certs(self) -> dict[int, str]:
        """Connection id -> client certificate CN seen, in this run (ids restart with it)."""
        return self.listener.client_certs

    def restart(self) -> None:
        """Listen again on the same port (after `stop()`), as an origin that came back."""
        if self.listener.listening:
            raise AssertionError("this origin is still listening; stop() it first")
        self.listener = self._new_listener(self.port)

    def _record_request(self, record: dict[str, Any]) -> None:
        # The same dict is the JSON answer: the client sees what the origin saw.
        record["client_cert"] = self.listener.client_certs.get(record["conn_id"], NO_CERT)
        super()._record_request(record)


class MTLSOrigins:
    """The MTLSOrigins one test made; `stop_all()` at its end (the test module's fixture)."""

    def __init__(self) -> None:
        self._made: list[MTLSOrigin] = []

    def origin(
        self,
        certs: Mapping[str, CertSource],
        default: CertSource | None = None,
        **kwargs: Any,
    ) -> MTLSOrigin:
        made = MTLSOrigin(certs, default, **kwargs)
        self._made.append(made)
        return made

    def __iter__(self) -> Iterator[MTLSOrigin]:
        return iter(list(self._made))

    def stop_all(self) -> None:
        made, self._made = self._made, []
        for origin in made:
            origin.stop()


def client_certificate(pki: PKI, name: str, *, trusted: bool = True) -> dict[str, str]:
    """A `client_certificate` config entry for a fresh client leaf with CN `name`.

    Signed by the test CA (`pki.ca`, which origins trust for clients here), or by the
    unrelated `pki.other_ca` when not `trusted`. Its files live in the PKI directory.
    """
    ca = pki.ca if trusted else pki.other_ca
    leaf = ca.issue_cert(f"{name}.clients.test", common_name=name)
    cert, key = pki.write(leaf, f"client-{name}")
    return {"cert_file": str(cert), "key_file": str(key)}


# --- edge configs for tests against these origins (health checks, mTLS) --------------------


def edge_config(pki: PKI, domains: dict[str, Any]) -> dict[str, Any]:
    """An edge config trusting the test CA, with small timeouts so failures are quick."""
    return {
        "tls": {"ca_file": str(pki.ca_file)},
        "timeouts": {"connect": 2, "tls_handshake": 2, "response_header": 5, "body_idle": 5},
        "domains": domains,
    }


def at(port: int, **settings: Any) -> dict[str, Any]:
    """One `origins[]` entry on 127.0.0.1."""
    return {"address": LOOPBACK, "port": port, **settings}


def domain(*origins: dict[str, Any], sni: str, **settings: Any) -> dict[str, Any]:
    """A domain sending SNI `sni` to its origins."""
    return {"origin_sni": {"enabled": True, "value": sni}, "origins": list(origins), **settings}
