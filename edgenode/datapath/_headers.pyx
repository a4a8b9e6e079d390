# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled twin of headers.py (speedups.py selects): the same functions, the same
tables (read from headers.py, never copied), C-typed loop state. headers.py is the
reference; tests/test_speedups.py holds the two to the same outputs."""

from edgenode.datapath import headers as _py

cdef int KEEP = _py.KEEP
cdef int HOST = _py.HOST
cdef int CONTENT_LENGTH = _py.CONTENT_LENGTH
cdef int TRANSFER_ENCODING = _py.TRANSFER_ENCODING
cdef int EXPECT = _py.EXPECT
cdef int CONNECTION = _py.CONNECTION
cdef int FORWARDED_FOR = _py.FORWARDED_FOR
cdef int VIA = _py.VIA

cdef object REQUEST_ACTIONS = _py.REQUEST_ACTIONS
cdef object RESPONSE_ACTIONS = _py.RESPONSE_ACTIONS
cdef bytes VIA_VALUE = _py.VIA_VALUE
cdef object RequestScan = _py.RequestScan
cdef object _listed = _py._listed  # the rare paths stay Python
cdef object _without_listed = _py._without_listed


cdef inline bytes _merged(object earlier, bytes value):
    if earlier is None:
        return value
    return <bytes>earlier + b", " + value


def scan_request(list headers):
    scan = RequestScan()
    cdef object actions = REQUEST_ACTIONS
    cdef list forward = scan.forward
    cdef list hosts = scan.hosts
    cdef Py_ssize_t size = 0
    cdef int action
    cdef bytes name, value
    cdef object forwarded_for = None, via = None, listed = None
    for name, value in headers:
        size += len(name) + len(value) + 4
        action = actions[name]
        if action == KEEP:
            forward.append(name + b": " + value)
        elif action == HOST:
            hosts.append(value)
        elif action == CONTENT_LENGTH:
            scan.content_length = value
        elif action == TRANSFER_ENCODING:
            scan.transfer_encodings.append(value)
        elif action == EXPECT:
            scan.expect.append(value)
        elif action == FORWARDED_FOR:
            forwarded_for = _merged(forwarded_for, value)
        elif action == VIA:
            via = _merged(via, value)
        elif action == CONNECTION:
            listed = _listed(listed, value)
    scan.size = size
    scan.forwarded_for = forwarded_for
    scan.via = via
    scan.listed = listed
    if listed:
        scan.forward = _without_listed(headers, REQUEST_ACTIONS, listed)
    return scan


def origin_request_head(
    bytes start_line,
    scan,
    *,
    bytes client_ip,
    bytes origin_host,
    bytes forwarded_host,
    object body_framing,
    bytes forwarded_proto=b"http",
):
    cdef list lines = [start_line, b"Host: " + origin_host]
    lines.extend(scan.forward)
    if body_framing is not None:
        lines.append(body_framing)
    lines.append(b"X-Forwarded-For: " + _merged(scan.forwarded_for, client_ip))
    lines.append(b"X-Forwarded-Proto: " + forwarded_proto)
    lines.append(b"X-Forwarded-Host: " + forwarded_host)
    lines.append(b"Via: " + _merged(scan.via, VIA_VALUE))
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def client_response_lines(list headers):
    cdef object actions = RESPONSE_ACTIONS
    cdef list lines = []
    cdef object xff = None, via = None, listed = None
    cdef int action
    cdef bytes name, value
    for name, value in headers:
        action = actions[name]
        if action == KEEP:
            lines.append(name + b": " + value)
        elif action == VIA:
            via = _merged(via, value)
        elif action == FORWARDED_FOR:
            xff = _merged(xff, value)
        elif action == CONNECTION:
            listed = _listed(listed, value)
    if listed:
        lines = _without_listed(headers, RESPONSE_ACTIONS, listed)
    if xff is not None:
        lines.append(b"X-Forwarded-For: " + xff)
    lines.append(b"Via: " + _merged(via, VIA_VALUE))
    return lines
