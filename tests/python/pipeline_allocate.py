"""Pipelines AllocateStream requests with grpcio's sync API, as a Python order router would.

Usage: pipeline_allocate.py HOST:PORT TEST_ID REQUESTS PAUSE_EVERY PAUSE_SECONDS

Each request goes out in its own small DATA frame (grpcio consumes the request iterator on a
thread of its own); the main thread reads the responses, pausing PAUSE_SECONDS after every
PAUSE_EVERY responses, so requests run ahead of responses as they do under a slow consumer.
Prints the number of responses, or the error, and exits 0 only if every request was answered.
The messages are hand-encoded (field 1, `test_id`), so no generated stubs are needed.
"""

import sys
import time

import grpc


def main() -> int:
    addr, test_id = sys.argv[1], sys.argv[2]
    requests, pause_every, pause = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    encoded = test_id.encode()
    request = bytes([0x0A, len(encoded)]) + encoded

    def requests_iter():
        for _ in range(requests):
            yield request

    with grpc.insecure_channel(addr) as channel:
        call = channel.stream_stream(
            "/arbiter.v1.Allocator/AllocateStream",
            request_serializer=lambda m: m,
            response_deserializer=lambda m: m,
        )
        answered = 0
        try:
            for _ in call(requests_iter()):
                answered += 1
                if pause_every and answered % pause_every == 0:
                    time.sleep(pause)
        except grpc.RpcError as e:
            print(f"answered {answered} of {requests}; then {e.code()}: {e.details()}")
            return 1
    print(f"answered {answered} of {requests}")
    return 0 if answered == requests else 1


if __name__ == "__main__":
    sys.exit(main())
