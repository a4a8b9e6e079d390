"""Test support for edgenode: a test PKI, in-process and nginx origins, the edge as a subprocess."""
