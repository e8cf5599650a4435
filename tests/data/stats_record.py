"""Writes the golden statistics records of tests/golden.rs, independently of the Rust encoder.

stats_record.v1.bin: format version 1, JSON (serde's field names).
stats_record.v2.bin: format version 2, binary (src/experiment/stats_record/codec.rs): LEB128 varints,
little-endian f64, length-prefixed strings.
stats_record.v3.bin: format version 3: the journal position (varint, here 300) and then the
version 2 body.
stats_record.v4.bin: format version 4: the version 3 body, then one track per arm (drawdown and
drift detector state, see codec.rs).
All hold the same record: two arms, one metric, arm 1 suspended, one sequential test; v4 adds
tracks (arm 1 with one drift alarm and held at the floor for it).
"""
import json
import struct

arms = [
    {"n": 2, "mean": 0.004, "m2": 0.000128, "sum": 0.008, "sum_compensation": 0.0, "wins": 1,
     "min": -0.004, "max": 0.012, "metrics": {}},
    {"n": 3, "mean": -0.5, "m2": 2.0, "sum": -1.5, "sum_compensation": 1e-17, "wins": 0,
     "min": -1.5, "max": 0.0, "metrics": {"slippage_bps": {"count": 3, "mean": 1.25}}},
]
record = {"arms": arms, "suspended": [False, True], "sequential": [{"tau2": 0.3, "p": 0.04}]}

with open("stats_record.v1.bin", "wb") as f:
    f.write(b"\x01" + json.dumps(record, separators=(",", ":")).encode())


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def f64(x):
    return struct.pack("<d", x)


body = bytearray(varint(len(arms)))
for a in arms:
    body += varint(a["n"])
    for k in ("mean", "m2", "sum", "sum_compensation"):
        body += f64(a[k])
    body += varint(a["wins"]) + f64(a["min"]) + f64(a["max"]) + varint(len(a["metrics"]))
    for name in sorted(a["metrics"]):
        m = a["metrics"][name]
        body += varint(len(name)) + name.encode() + varint(m["count"]) + f64(m["mean"])
body += varint(len(record["suspended"])) + bytes(int(s) for s in record["suspended"])
body += varint(len(record["sequential"]))
for s in record["sequential"]:
    body += f64(s["tau2"]) + f64(s["p"])
with open("stats_record.v2.bin", "wb") as f:
    f.write(b"\x02" + bytes(body))
with open("stats_record.v3.bin", "wb") as f:
    f.write(b"\x03" + varint(300) + bytes(body))

# Tracks: results, cumulative, peak, max_drawdown; detector n, mean, sum_abs, up, down, frozen;
# drift_alarms, first_drift_at; last drift (0 none / 1 rise / 2 fall, then at, statistic); hold.
tracks = [
    {"results": 2, "cumulative": 0.008, "peak": 0.012, "max_drawdown": 0.004,
     "det": (2, 0.004, 0.016, 0.0, 0.0, 0), "alarms": 0, "first": 0, "last": None, "hold": 0},
    {"results": 3, "cumulative": -1.5, "peak": 0.0, "max_drawdown": 1.5,
     "det": (70, -0.25, 3.5, 0.5, 7.25, 1), "alarms": 1, "first": 2, "last": (2, 2, 24.5),
     "hold": 1},
]
tail = bytearray(varint(len(tracks)))
for t in tracks:
    tail += varint(t["results"]) + f64(t["cumulative"]) + f64(t["peak"]) + f64(t["max_drawdown"])
    n, mean, sum_abs, up, down, frozen = t["det"]
    tail += varint(n) + f64(mean) + f64(sum_abs) + f64(up) + f64(down) + bytes([frozen])
    tail += varint(t["alarms"]) + varint(t["first"])
    if t["last"] is None:
        tail += bytes([0])
    else:
        tag, at, statistic = t["last"]
        tail += bytes([tag]) + varint(at) + f64(statistic)
    tail += bytes([t["hold"]])
with open("stats_record.v4.bin", "wb") as f:
    f.write(b"\x04" + varint(300) + bytes(body) + bytes(tail))

# Version 5: version 4 and the decisions clients reported: arm count, per arm the decisions,
# per arm the expected decisions.
client_counts, client_expected = [700, 300], [680.5, 319.5]
client = varint(len(client_counts)) + b"".join(varint(c) for c in client_counts)
client += b"".join(f64(e) for e in client_expected)
with open("stats_record.v5.bin", "wb") as f:
    f.write(b"\x05" + varint(300) + bytes(body) + bytes(tail) + bytes(client))
