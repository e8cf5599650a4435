"""Writes result_id_run.v1.bin: a result-id run as arbiter stores it (format version 1).

Layout: one format byte (1), then the fingerprints sorted ascending, 16 bytes each, big-endian;
a fingerprint is the first 16 bytes of SHA-256 of the result_id's UTF-8 bytes.
Run once; the file is never regenerated (tests/golden.rs).
"""
import hashlib

ids = ["order-1", "order-2", "fill/2026-11-27T10:00:00Z#42"]
fps = sorted(hashlib.sha256(i.encode()).digest()[:16] for i in ids)
with open("result_id_run.v1.bin", "wb") as f:
    f.write(bytes([1]) + b"".join(fps))
for i in ids:
    print(i, hashlib.sha256(i.encode()).hexdigest()[:32])
