#!/usr/bin/env python3
"""Stream realised returns to arbiter and read the acknowledgements.

Allocates decisions for a test, sends one result per decision in batches over the bidirectional
IngestResults stream, prints each BatchAck (sent by the server only once the batch is durable),
then prints the test's per-arm results. Stubs are generated from ../../proto at start-up, so the
example always matches the server's contract.

    pip install grpcio grpcio-tools
    python3 examples/python/stream_results.py --server 127.0.0.1:50051 --test-id signal_ab
"""

import argparse
import importlib.resources
import pathlib
import random
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"


def load_stubs():
    """Compiles proto/arbiter/v1/*.proto into a temporary package and imports it."""
    out = tempfile.mkdtemp(prefix="arbiter-stubs-")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    files = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "arbiter" / "v1").glob("*.proto"))
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        sys.exit("could not compile the protos")
    sys.path.insert(0, out)
    from arbiter.v1 import allocator_pb2, allocator_pb2_grpc, experiments_pb2, experiments_pb2_grpc

    return allocator_pb2, allocator_pb2_grpc, experiments_pb2, experiments_pb2_grpc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--test-id", required=True)
    parser.add_argument("--results", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    allocator_pb2, allocator_grpc, experiments_pb2, experiments_grpc = load_stubs()
    channel = grpc.insecure_channel(args.server)
    allocator = allocator_grpc.AllocatorStub(channel)
    experiments = experiments_grpc.ExperimentsStub(channel)
    rng = random.Random(args.seed)

    # One decision per signal; the result is attributed by decision_id and is idempotent by result_id.
    records = []
    for i in range(args.results):
        decision = allocator.Allocate(allocator_pb2.AllocateRequest(test_id=args.test_id, unit_key=f"order-{i}"))
        edge = 0.002 if decision.arm_id == "arm_1" else 0.0
        records.append(
            allocator_pb2.ResultRecord(
                test_id=args.test_id,
                decision_id=decision.decision_id,
                return_value=rng.gauss(edge, 0.01),
                additional_metrics={"latency_ms": rng.uniform(0.2, 2.0)},
                result_id=f"example-{args.seed}-{i}",
            )
        )

    def batches():
        for seq, start in enumerate(range(0, len(records), args.batch_size)):
            yield allocator_pb2.ResultBatch(sequence=seq, results=records[start : start + args.batch_size])

    for ack in allocator.IngestResults(batches()):
        print(f"batch {ack.sequence}: accepted={ack.accepted} duplicates={ack.duplicates} rejected={len(ack.rejected)}")
        for r in ack.rejected:
            print(f"  record {r.index}: code {r.code}: {r.message}")

    results = experiments.GetTestResults(experiments_pb2.GetTestResultsRequest(test_id=args.test_id))
    print(f"test {results.test_id}: {results.total_requests} results, {results.total_allocations} allocations")
    for arm in results.arms:
        ci = arm.confidence_interval
        print(
            f"  {arm.arm_id} {arm.model_registry_id}: n={arm.total_requests} mean={arm.mean_return:+.5f} "
            f"[{ci.low:+.5f}, {ci.high:+.5f}] share={arm.allocation_weight:.3f} "
            f"latency_ms={arm.additional_metrics['latency_ms'].mean:.2f}"
        )


if __name__ == "__main__":
    main()
