"""Calls arbiter over TLS with grpcio, a gRPC implementation independent of the server's.

Usage: tls_calls.py < spec.json, where the spec is
    {"addr": "127.0.0.1:PORT", "ca": "server-ca.pem",
     "calls": [{"method": "/arbiter.v1.Registry/ListModels",
                "token": "...", "cert": "client.pem", "key": "client.key"}, ...]}
("token", "cert" and "key" are optional). Each call sends an empty request message (every
request here is valid empty, or refused before it is read) and prints one line per call with
the status code's name (OK, UNAUTHENTICATED, ...), in order. Exits 0 once every call has an
answer; a transport that cannot be set up at all counts as UNAVAILABLE, as grpcio reports it.
"""

import json
import sys

import grpc


def call(addr: str, ca: bytes, spec: dict) -> str:
    cert = key = None
    if "cert" in spec:
        with open(spec["cert"], "rb") as f:
            cert = f.read()
        with open(spec["key"], "rb") as f:
            key = f.read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    metadata = []
    if "token" in spec:
        metadata.append(("authorization", f"Bearer {spec['token']}"))
    with grpc.secure_channel(addr, credentials) as channel:
        method = channel.unary_unary(
            spec["method"],
            request_serializer=lambda m: m,
            response_deserializer=lambda m: m,
        )
        try:
            method(b"", metadata=metadata, timeout=10)
            return "OK"
        except grpc.RpcError as e:
            return e.code().name


def main() -> int:
    spec = json.load(sys.stdin)
    with open(spec["ca"], "rb") as f:
        ca = f.read()
    for one in spec["calls"]:
        print(call(spec["addr"], ca, one), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
