#!/usr/bin/env python3
"""declare-rate.py - what a durable declare costs as the number of durable queues grows.

Point it at a running brokerd (127.0.0.1, guest/guest). Declares COUNT durable queues one at a time (each waits for
its answer, which brokerd sends once the definition is on disk) and prints the median and p99 round trip per
thousand queues, so a cost that grows with the number of definitions shows.

    scripts/declare-rate.py --port 5680 --count 5000 --prefix rate
"""
import argparse
import socket
import struct
import time


def frame(kind, payload):
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def shortstr(text):
    data = text.encode()
    return struct.pack(">B", len(data)) + data


def read_frame(sock, buffer):
    while True:
        if len(buffer) >= 4:
            (length,) = struct.unpack(">I", buffer[:4])
            if len(buffer) >= 4 + length:
                body = bytes(buffer[4:4 + length])
                del buffer[:4 + length]
                return body[0], body[1:]
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5680)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--prefix", default="rate")
    args = parser.parse_args()
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray()
    sock.sendall(b"BRKD" + frame(0x01, struct.pack(">BH", 1, 0x0100) + shortstr("declare-rate")))
    assert read_frame(sock, buffer)[0] == 0x81
    sock.sendall(frame(0x02, shortstr("PLAIN") + shortstr("guest") + shortstr("guest") + struct.pack(">IH", 0, 0)))
    assert read_frame(sock, buffer)[0] == 0x82
    times = []
    for i in range(args.count):
        payload = struct.pack(">I", i + 1) + shortstr(f"{args.prefix}-{i}") + struct.pack(">BI", 1, 0)  # durable, no arguments
        start = time.perf_counter()
        sock.sendall(frame(0x12, payload))
        kind, body = read_frame(sock, buffer)
        times.append(time.perf_counter() - start)
        assert kind == 0x91, f"declare {i}: answer 0x{kind:02x} {body!r}"
    for chunk in range(0, args.count, 1000):
        part = sorted(times[chunk:chunk + 1000])
        print(f"RESULT queues={chunk}-{chunk + len(part)} p50_ms={part[len(part) // 2] * 1000:.2f} "
              f"p99_ms={part[int(len(part) * 0.99)] * 1000:.2f}")
    sock.close()


if __name__ == "__main__":
    main()
