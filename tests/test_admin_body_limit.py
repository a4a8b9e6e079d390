"""The admin API refuses a large body with 413 before reading it (issue 7)."""

from __future__ import annotations

from tests.support.edge import EdgeProcess
from tests.test_admin_abuse import KiB, MiB, admin_port, edge, generation, reload_head
from tests.test_reliability import upload_until_answered

__all__ = ["edge"]  # the fixture


def test_huge_admin_body_is_refused_with_413_before_it_is_read(edge: EdgeProcess):
    """A 10 MiB POST /reload gets 413 while the client is still sending, and nothing reloads."""
    total, piece = 10 * MiB, 64 * KiB
    sent, answer = upload_until_answered(
        admin_port(edge), reload_head(edge, total), total // piece, b"{" * piece
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert sent < total, "the edge read the whole 10 MiB body before answering"
    assert generation(edge) == 1
