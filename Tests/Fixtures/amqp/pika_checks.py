#!/usr/bin/env python3
"""AMQP 0-9-1 checks with pika (a real client, from PyPI) against a running brokerd.

Usage: pika_checks.py PORT CHECK [ARG...]

Each check prints what it found and exits 0 when every assertion held; an AssertionError (or any other
exception) exits non-zero with its traceback. Run by Tests/IntegrationTests/AMQPTests.swift against the
brokerd executable started with --amqp-port 0. Every connection goes to 127.0.0.1 and is closed at the end.
"""
import decimal
import json
import sys
import threading
import time
import uuid

import pika
import pika.exceptions

PORT = int(sys.argv[1])


def connect(**kwargs):
    params = pika.ConnectionParameters(host="127.0.0.1", port=PORT, credentials=pika.PlainCredentials("guest", "guest"),
                                       connection_attempts=1, socket_timeout=10, blocked_connection_timeout=30, **kwargs)
    return pika.BlockingConnection(params)


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def consume_n(channel, queue, n, ack=True, timeout=20):
    """Consumes n messages with a deadline (never waits for time to pass to prove an absence)."""
    got = []
    deadline = time.monotonic() + timeout
    for method, props, body in channel.consume(queue, inactivity_timeout=1):
        if method is None:
            assert time.monotonic() < deadline, f"only {len(got)} of {n} messages arrived within {timeout} s"
            continue
        got.append((method, props, body))
        if ack:
            channel.basic_ack(method.delivery_tag)
        if len(got) == n:
            break
    channel.cancel()
    return got


def check_confirm_consume():
    """Durable queue, 200 persistent publishes with confirms (pika raises on a nack), consumed in order with
    manual acks and prefetch 10; nothing left afterwards."""
    c = connect()
    ch = c.channel()
    q = unique("confirm")
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for i in range(200):
        ch.basic_publish("", q, f"m{i}".encode(), pika.BasicProperties(delivery_mode=2), mandatory=True)
    ch.basic_qos(prefetch_count=10)
    got = consume_n(ch, q, 200)
    assert [b for _, _, b in got] == [f"m{i}".encode() for i in range(200)], "out of order or missing"
    assert all(p.delivery_mode == 2 for _, p, _ in got)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.queue_delete(q)
    c.close()
    print("200 confirmed, 200 consumed in order")


def check_get_reject_nack():
    """basic.get, reject with requeue (comes back redelivered), nack without requeue (dead-lettered), ack."""
    c = connect()
    ch = c.channel()
    q, dlq = unique("work"), unique("dead")
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.confirm_delivery()
    for body in (b"a", b"b"):
        ch.basic_publish("", q, body)
    method, _, body = ch.basic_get(q)
    assert body == b"a" and not method.redelivered and method.message_count == 1
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(q)
    assert body == b"a" and method.redelivered, (body, method)
    ch.basic_nack(method.delivery_tag, requeue=False)
    method, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"a", body
    death = props.headers["x-death"][0]
    assert death["reason"] == "rejected" and death["queue"] == q and death["count"] == 1, death
    method, _, body = ch.basic_get(q)
    assert body == b"b"
    ch.basic_ack(method.delivery_tag)
    assert ch.basic_get(q) == (None, None, None)
    ch.queue_delete(q)
    ch.queue_delete(dlq)
    c.close()
    print("get, reject/requeue, nack/dead-letter, ack")


def check_ack_multiple():
    """Ten deliveries settled by one ack with multiple=True."""
    c = connect()
    ch = c.channel()
    q = unique("multi")
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", q, str(i).encode())
    got = consume_n(ch, q, 10, ack=False)
    ch.basic_ack(got[-1][0].delivery_tag, multiple=True)
    ch.basic_recover(requeue=True)  # nothing unacked: nothing comes back
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.queue_delete(q)
    c.close()
    print("ack multiple settled 10")


def check_recover():
    """basic.recover(requeue) returns unacknowledged deliveries, redelivered."""
    c = connect()
    ch = c.channel()
    q = unique("recover")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    method, _, _ = ch.basic_get(q)
    assert not method.redelivered
    ch.basic_recover(requeue=True)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"x" and method.redelivered
    ch.queue_delete(q)
    c.close()
    print("recover requeued, redelivered")


def check_mandatory_return():
    """A mandatory publish no queue takes comes back (pika raises UnroutableError in confirm mode)."""
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    try:
        ch.basic_publish("amq.direct", unique("nobody"), b"lost?", mandatory=True)
        raise AssertionError("an unroutable mandatory publish was not returned")
    except pika.exceptions.UnroutableError as error:
        assert error.messages[0].body == b"lost?"
    c.close()
    print("returned")


def check_overflow_nack():
    """x-max-length 1 with x-overflow reject-publish: the second publish is nacked."""
    c = connect()
    ch = c.channel()
    q = unique("full")
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"1")
    try:
        ch.basic_publish("", q, b"2")
        raise AssertionError("a publish to a full reject-publish queue was confirmed")
    except pika.exceptions.NackError:
        pass
    ch.queue_delete(q)
    c.close()
    print("nacked")


def check_topic_fanout():
    """Topic and fanout exchanges route as in RabbitMQ."""
    c = connect()
    ch = c.channel()
    topic, fan = unique("t"), unique("f")
    ch.exchange_declare(topic, "topic")
    ch.exchange_declare(fan, "fanout")
    qa = ch.queue_declare("", exclusive=True).method.queue
    qb = ch.queue_declare("", exclusive=True).method.queue
    assert qa.startswith("amq.gen-"), qa
    ch.queue_bind(qa, topic, "trip.*.requested")
    ch.queue_bind(qb, topic, "trip.#")
    ch.queue_bind(qa, fan)
    ch.queue_bind(qb, fan)
    ch.confirm_delivery()
    ch.basic_publish(topic, "trip.eu.requested", b"t1")
    ch.basic_publish(topic, "trip.eu.cancelled", b"t2")
    ch.basic_publish(fan, "", b"f")
    a = [ch.basic_get(qa, auto_ack=True)[2] for _ in range(2)]
    b = [ch.basic_get(qb, auto_ack=True)[2] for _ in range(3)]
    assert a == [b"t1", b"f"], a
    assert b == [b"t1", b"t2", b"f"], b
    ch.queue_unbind(qa, topic, "trip.*.requested")
    ch.basic_publish(topic, "trip.eu.requested", b"t3")
    assert ch.basic_get(qa, auto_ack=True) == (None, None, None)
    ch.exchange_delete(topic)
    ch.exchange_delete(fan)
    c.close()
    print("topic and fanout routed")


def check_rpc():
    """RPC with a reply queue and a correlation id, and with direct reply-to (amq.rabbitmq.reply-to)."""
    requests = unique("rpc")
    ready = threading.Event()
    failure = []

    def server():
        try:
            sc = connect()
            sch = sc.channel()
            sch.queue_declare(requests)
            ready.set()
            for method, props, body in sch.consume(requests, inactivity_timeout=20):
                assert method is not None, "no request within 20 s"
                sch.basic_publish("", props.reply_to, body.upper(), pika.BasicProperties(correlation_id=props.correlation_id))
                sch.basic_ack(method.delivery_tag)
                if body == b"last":
                    break
            sch.cancel()
            sc.close()
        except Exception as error:  # reported by the main thread
            failure.append(error)
            ready.set()

    thread = threading.Thread(target=server)
    thread.start()
    assert ready.wait(20) and not failure, failure
    c = connect()
    ch = c.channel()
    # 1. An exclusive, server-named reply queue.
    reply_queue = ch.queue_declare("", exclusive=True).method.queue
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for i, cid in enumerate(ids):
        ch.basic_publish("", requests, f"q{i}".encode(), pika.BasicProperties(reply_to=reply_queue, correlation_id=cid))
    replies = {p.correlation_id: b for _, p, b in consume_n(ch, reply_queue, 5)}
    assert replies == {cid: f"Q{i}".encode() for i, cid in enumerate(ids)}, replies
    # 2. Direct reply-to.
    answers = []

    def on_reply(channel, method, props, body):
        answers.append((props.correlation_id, body))

    ch.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
    ch.basic_publish("", requests, b"direct", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="d1"))
    ch.basic_publish("", requests, b"last", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="d2"))
    deadline = time.monotonic() + 20
    while len(answers) < 2:
        assert time.monotonic() < deadline, f"direct replies: {answers}"
        c.process_data_events(time_limit=0.2)
    assert answers == [("d1", b"DIRECT"), ("d2", b"LAST")], answers
    c.close()
    thread.join(30)
    assert not failure, failure
    print("rpc over a reply queue and direct reply-to")


def check_exclusive():
    """An exclusive queue is usable from every channel of its connection, locked to other connections (405), and
    deleted when its connection closes."""
    c = connect()
    ch1, ch2 = c.channel(), c.channel()
    q = ch1.queue_declare("", exclusive=True).method.queue
    ch2.basic_publish("", q, b"x")
    assert ch2.basic_get(q, auto_ack=True)[2] == b"x"
    ch1.close()
    ch2.queue_declare(q, passive=True)  # still there: it belongs to the connection, not the channel
    other = connect()
    och = other.channel()
    try:
        och.basic_get(q)
        raise AssertionError("another connection used an exclusive queue")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 405, error
    c.close()
    och = other.channel()
    try:
        och.queue_declare(q, passive=True)
        raise AssertionError("the exclusive queue outlived its connection")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404, error
    other.close()
    print("exclusive to the connection")


def check_errors():
    """Channel and connection exceptions with their standard codes, and the connection (or a new channel)
    usable afterwards where AMQP says so."""
    c = connect()
    ch = c.channel()
    try:
        ch.basic_publish(unique("no-such-exchange"), "k", b"x")
        ch.queue_declare(unique("after"))  # the close arrives by now
        raise AssertionError("publishing to a missing exchange did not close the channel")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404, error
    ch = c.channel()
    try:
        ch.queue_declare(unique("missing"), passive=True)
        raise AssertionError("passive declare of a missing queue succeeded")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404, error
    ch = c.channel()
    q = unique("args")
    try:
        ch.queue_declare(q, arguments={"x-message-ttl": "soon"})
        raise AssertionError("a bad x-message-ttl was accepted")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406 and "x-message-ttl" in error.reply_text, error
    ch = c.channel()
    ch.basic_ack(9999)
    try:
        ch.queue_declare(unique("after"))
        raise AssertionError("acking an unknown delivery tag did not close the channel")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406 and "unknown delivery tag" in error.reply_text, error
    ch = c.channel()
    try:
        ch.exchange_declare(unique("h"), "headers")
        raise AssertionError("an unknown exchange type was accepted")
    except pika.exceptions.ConnectionClosedByBroker as error:
        assert error.reply_code == 503, error
    c = connect()
    ch = c.channel()
    try:
        ch.tx_select()
        raise AssertionError("tx.select was accepted")
    except pika.exceptions.ConnectionClosedByBroker as error:
        assert error.reply_code == 540 and "tx" in error.reply_text, error
    print("404, 404, 406, 406 (channel); 503, 540 (connection)")


def check_auth():
    """A wrong password is refused with ACCESS_REFUSED."""
    params = pika.ConnectionParameters(host="127.0.0.1", port=PORT, credentials=pika.PlainCredentials("guest", "wrong"),
                                       connection_attempts=1, socket_timeout=10)
    try:
        pika.BlockingConnection(params)
        raise AssertionError("a wrong password was accepted")
    except pika.exceptions.ProbableAuthenticationError as error:
        assert "(403)" in str(error) and "ACCESS_REFUSED" in str(error), error
    print("refused")


def check_heartbeat():
    """With a 1 s heartbeat, an idle connection stays open: the broker sends heartbeats and accepts them.
    (pika closes a connection that misses two of the broker's heartbeats.)"""
    c = connect(heartbeat=1)
    ch = c.channel()
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        c.process_data_events(time_limit=0.25)
    assert c.is_open
    ch.queue_declare(unique("alive"), auto_delete=True)
    c.close()
    print("alive after 3.5 heartbeat intervals")


def check_large_message():
    """A body larger than frame-max travels in several body frames, both ways."""
    c = connect(frame_max=4096)
    ch = c.channel()
    q = unique("large")
    ch.queue_declare(q)
    ch.confirm_delivery()
    body = bytes(range(256)) * 1000  # 256,000 bytes: 63 body frames each way
    ch.basic_publish("", q, body)
    got = ch.basic_get(q, auto_ack=True)[2]
    assert got == body, len(got)
    ch.queue_delete(q)
    c.close()
    print("256,000 bytes at frame-max 4096")


def cross_publish(queue):
    """Publishes one message with every AMQP property to `queue` (declared by the caller)."""
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    props = pika.BasicProperties(content_type="application/json", content_encoding="gzip", delivery_mode=2, priority=3,
                                 correlation_id="corr-1", reply_to="replies", expiration="60000", message_id="msg-1",
                                 timestamp=1700000000, type="trip.requested", user_id="guest", app_id="trip-service",
                                 headers={"int": 42, "big": 2**40, "text": "héllo", "flag": True, "ratio": decimal.Decimal("0.5"),
                                          "nested": {"k": "v"}, "list": [1, "two"], "x-type-version": 2})
    ch.basic_publish("", queue, b'{"trip":1}', props)
    c.close()
    print("published")


def cross_consume(queue):
    """Gets one message from `queue` and prints its properties as JSON (the Swift test compares them)."""
    c = connect()
    ch = c.channel()
    method, props, body = ch.basic_get(queue, auto_ack=True)
    assert method is not None, "no message"
    out = {k: getattr(props, k) for k in ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
                                          "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id")}
    out["headers"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (props.headers or {}).items()}
    out["body"] = body.decode()
    out["routing_key"] = method.routing_key
    print(json.dumps(out, sort_keys=True))
    c.close()


if __name__ == "__main__":
    name = sys.argv[2]
    function = globals().get(name) or globals().get("check_" + name)
    if function is None:
        sys.exit(f"no check named {name}")
    function(*sys.argv[3:])
