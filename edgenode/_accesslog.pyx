# cython: language_level=3
"""The compiled twin of AccessRecord.to_json_line (accesslog.py is the reference;
speedups.py selects): the dict of FIELDS built in C, then orjson as there."""

import orjson

from edgenode import accesslog as _py

cdef object _rfc3339 = _py.rfc3339
cdef object _dumps = orjson.dumps
cdef object _OPT = orjson.OPT_APPEND_NEWLINE


cdef inline object _ms(object value):
    return None if value is None else round(value, 3)


def to_json_line(record):
    return _dumps(
        {  # FIELDS, in order
            "ts": _rfc3339(record.started),
            "request_id": record.request_id,
            "client": record.client,
            "method": record.method,
            "host": record.host,
            "path": record.path,
            "status": record.status,
            "bytes_sent": record.bytes_sent,
            "duration_ms": round(record.duration_ms, 3),
            "domain": record.domain,
            "origin": record.origin,
            "sni": record.sni,
            "verify_name": record.verify_name,
            "tls_version": record.tls_version,
            "tls_cipher": record.tls_cipher,
            "origin_status": record.origin_status,
            "attempts": record.attempts,
            "error": record.error,
            "generation": record.generation,
            "scheme": record.scheme,
            "client_tls_version": record.client_tls_version,
            "client_sni": record.client_sni,
            "error_detail": record.error_detail,
            "connection_reused": record.connection_reused,
            "upstream_connect_ms": _ms(record.upstream_connect_ms),
            "upstream_handshake_ms": _ms(record.upstream_handshake_ms),
            "tls_resumed": record.tls_resumed,
            "origin_cert": record.origin_cert,
        },
        option=_OPT,
    )
