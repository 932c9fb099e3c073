import BrokerCore
import Foundation
import NIOCore
import WireProtocol

// brokermicro: micro-benchmarks of the hot path's parts, without sockets, so a regression shows up in isolation.
// Run in release: `swift run -c release brokermicro`. Each case runs 5 times; the median ns per operation is printed.
// `brokermicro contracts` runs only the contract cases.

/// A transport that drops what it is given (the broker's cost without the socket's).
final class DiscardingTransport: SessionTransport {
    func closeConnection(code: BrokerError.Code, reason: String) {}
    var bytes = 0
    var resumeRequested = false
    func send(_ buffer: ByteBuffer) { bytes &+= buffer.readableBytes }
    var isWritable: Bool { true }
    func resumeSoon() { resumeRequested = true }
    func setReading(_ reading: Bool) {}
}

/// Keeps results alive so the optimiser cannot drop the work.
nonisolated(unsafe) var sink = 0  // written only by the single benchmark thread

func measure(_ name: String, operations: Int, _ body: () throws -> Void) rethrows {
    var samples: [Double] = []
    for _ in 0..<5 {
        let start = ContinuousClock.now
        try body()
        let elapsed = ContinuousClock.now - start
        let nanos = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
        samples.append(nanos / Double(operations))
    }
    samples.sort()
    let median = samples[2]
    let padded = name.padding(toLength: 46, withPad: " ", startingAt: 0)
    print("\(padded) \(String(format: "%8.1f", median)) ns/op  \(String(format: "%10.0f", 1e9 / median)) op/s")
}

/// What the end of a read cycle does: flush the broker's batch and resume a session it paused for writability.
func flushCycle(_ broker: Broker, _ session: Session, _ transport: DiscardingTransport) {
    broker.flush()
    if transport.resumeRequested {
        transport.resumeRequested = false
        broker.sessionBecameWritable(session)
    }
}

@main
struct Micro {
    static func main() throws {
        let n = 1_000_000
        let body16 = ByteBuffer(repeating: 0x78, count: 16)
        let body1k = ByteBuffer(repeating: 0x78, count: 1024)

        let only = CommandLine.arguments.dropFirst().first
        if only == nil {
        // MARK: codec
        measure("encode publish 16 B", operations: n) {
            var buffer = ByteBuffer()
            buffer.reserveCapacity(64 * 1024)
            for _ in 0..<n {
                ClientMessage.publish(Publish(exchange: "", routingKey: "bench.q0", body: body16)).encode(into: &buffer)
                if buffer.readableBytes > 60_000 { buffer.clear() }
            }
            sink &+= buffer.readableBytes
        }

        var stream = ByteBuffer()
        for _ in 0..<n { ClientMessage.publish(Publish(exchange: "", routingKey: "bench.q0", body: body16)).encode(into: &stream) }
        try measure("frame split + parse publish in place 16 B", operations: n) {
            var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: 1 << 20, expectsMagic: false))
            reader.append(stream)
            var count = 0
            while let frame = try reader.next() {
                let view = try PublishView(parsing: frame.payload)
                count &+= view.envelope.namesLength
            }
            sink &+= count
        }
        try measure("frame split + full decode publish 16 B", operations: n) {
            var reader = FrameReader(decoder: FrameDecoder(maxFrameSize: 1 << 20, expectsMagic: false))
            reader.append(stream)
            var count = 0
            while let frame = try reader.next() {
                if case .publish(let p) = try ClientMessage.decode(frame) { count &+= p.body.readableBytes }
            }
            sink &+= count
        }
        let envelope16 = MessageEnvelope(exchange: "", routingKey: "bench.q0", body: body16)
        let envelope1k = MessageEnvelope(exchange: "", routingKey: "bench.q0", body: body1k)
        for (label, envelope) in [("16 B", envelope16), ("1 KiB", envelope1k)] {
            measure("encode deliver around envelope \(label)", operations: n) {
                var buffer = ByteBuffer()
                buffer.reserveCapacity(1 << 20)
                for i in 0..<n {
                    Deliver.writeFrame(into: &buffer, consumerTag: 1, deliveryTag: UInt64(i), redelivered: false, envelope: envelope)
                    if buffer.readableBytes > 1_000_000 { buffer.clear() }
                }
                sink &+= buffer.readableBytes
            }
        }

        // MARK: topic matching
        let patterns = ["trip.*.created", "trip.#", "#.cancelled", "driver.*.*.moved", "payment.#.failed"]
        let keys = ["trip.eu.created", "trip.us.west.cancelled", "driver.eu.7.moved", "payment.card.visa.failed", "other"]
        measure("topic match (5 patterns x 5 keys)", operations: n) {
            var hits = 0
            for i in 0..<(n / 25) {
                for p in patterns {
                    for k in keys where TopicPattern.matches(pattern: p, routingKey: k) { hits &+= i & 1 }
                }
            }
            sink &+= hits
        }

        // MARK: topic routing at scale (issue 12: 90,000 bindings cost 7.3 ms per publish as a list)
        for bindings in [2_000, 90_000] {
            let broker = Broker(users: UserStore(includeDefaultUser: false))
            let user = User(name: "bench", password: PasswordHash(rounds: 1, salt: [0], hash: [0]), isAdmin: true)
            let session = broker.openSession(user: user, clientName: "micro", peer: "local", transport: DiscardingTransport())
            try session.handle(.exchangeDeclare(ExchangeDeclare(requestId: 1, name: "trips", kind: .topic)))
            for q in 0..<100 { try session.handle(.queueDeclare(QueueDeclare(requestId: 1, name: "q\(q)"))) }
            var bound = 0
            let bindStart = ContinuousClock.now
            while bound < bindings {
                // Patterns of the shapes services use: region.city.event with wildcards.
                let pattern = bound % 3 == 0 ? "trip.r\(bound).*" : bound % 3 == 1 ? "trip.*.c\(bound)" : "trip.r\(bound).#"
                try session.handle(.queueBind(QueueBinding(requestId: 1, queue: "q\(bound % 100)", exchange: "trips", bindingKey: pattern)))
                bound += 1
            }
            let bindNanos = Double((ContinuousClock.now - bindStart).components.attoseconds) / 1e9
                + Double((ContinuousClock.now - bindStart).components.seconds) * 1e9
            print("topic bind, \(bindings) bindings".padding(toLength: 46, withPad: " ", startingAt: 0)
                  + " \(String(format: "%8.1f", bindNanos / Double(bindings))) ns/op")
            broker.flush()
            let routed = 20_000
            try measure("topic route, \(bindings) bindings", operations: routed) {
                for i in 0..<routed {
                    // A new key each time, so the session's route cache never answers.
                    let key = "trip.r\(i % bindings).c\(i)"
                    try session.publish(PublishView(mandatory: false, envelope: MessageEnvelope(exchange: "trips", routingKey: key, body: body16)))
                    if i % 256 == 0 { broker.flush() }
                }
                broker.flush()
            }
        }
        do {
            let broker = Broker(users: UserStore(includeDefaultUser: false))
            let user = User(name: "bench", password: PasswordHash(rounds: 1, salt: [0], hash: [0]), isAdmin: true)
            let session = broker.openSession(user: user, clientName: "micro", peer: "local", transport: DiscardingTransport())
            try session.handle(.exchangeDeclare(ExchangeDeclare(requestId: 1, name: "trips", kind: .topic)))
            try session.handle(.queueDeclare(QueueDeclare(requestId: 1, name: "wide")))
            for i in 0..<100_000 {
                try session.handle(.queueBind(QueueBinding(requestId: 1, queue: "wide", exchange: "trips", bindingKey: "k.\(i).#")))
            }
            let start = ContinuousClock.now
            try session.handle(.queueDelete(QueueDelete(requestId: 1, name: "wide")))
            let elapsed = ContinuousClock.now - start
            print("delete a queue with 100,000 bindings".padding(toLength: 46, withPad: " ", startingAt: 0) + " \(elapsed)")
        }

        // MARK: core, no sockets
        for (label, envelope, ackEvery) in [("16 B no-ack", envelope16, 0), ("16 B ack every 100", envelope16, 100),
                                             ("1 KiB no-ack", envelope1k, 0)] {
            try measure("core publish → queue → deliver \(label)", operations: n) {
                let broker = Broker(users: UserStore(includeDefaultUser: false))
                let user = User(name: "bench", password: PasswordHash(rounds: 1, salt: [0], hash: [0]), isAdmin: true)
                let transport = DiscardingTransport()
                let session = broker.openSession(user: user, clientName: "micro", peer: "local", transport: transport)
                try session.handle(.queueDeclare(QueueDeclare(requestId: 1, name: "bench.q0")))
                try session.handle(.consume(Consume(requestId: 2, queue: "bench.q0", noAck: ackEvery == 0, prefetch: ackEvery == 0 ? 0 : 1000)))
                broker.flush()
                let view = PublishView(mandatory: false, envelope: envelope)
                var tag: UInt64 = 0
                for i in 1...n {
                    try session.publish(view)
                    if ackEvery > 0 && i % ackEvery == 0 {
                        tag += UInt64(ackEvery)
                        try session.handle(.ack(Settle(deliveryTag: tag, multiple: true)))
                    }
                    if i % 256 == 0 { flushCycle(broker, session, transport) }
                }
                broker.flush()
                precondition(broker.queueInfo("bench.q0")?.ready == 0, "every message must have been delivered")
                sink &+= transport.bytes
            }
        }
        }
        if only == nil || only == "contracts" {
        // MARK: contracts (issue 15): the cost of a contract, and of schema validation, per publish
        let tripBody = ByteBuffer(string: #"{"tripId":"7f3c2a9e-5b1d-4c8e-9a2f-1e6d3b4c5a7f","passengerId":"p-1042","#
            + #""pickup":{"latitude":52.5200,"longitude":13.4050},"destination":{"latitude":52.5096,"longitude":13.3760},"#
            + #""requestedAt":"2026-12-04T10:15:00Z","fareClass":"comfort"}"#)
        let tripSchema = try JSONValue.parse(#"""
            {"type": "object", "required": ["tripId", "passengerId", "pickup", "destination", "requestedAt", "fareClass"],
             "properties": {"tripId": {"type": "string", "minLength": 1}, "passengerId": {"type": "string", "minLength": 1},
                            "pickup": {"$ref": "#/$defs/location"}, "destination": {"$ref": "#/$defs/location"},
                            "requestedAt": {"type": "string"}, "fareClass": {"enum": ["standard", "comfort", "xl"]}},
             "$defs": {"location": {"type": "object", "required": ["latitude", "longitude"],
                                    "properties": {"latitude": {"type": "number", "minimum": -90, "maximum": 90},
                                                   "longitude": {"type": "number", "minimum": -180, "maximum": 180}}}}}
            """#)
        let compiledTrip = try JSONSchema(tripSchema)
        let tripBytes = Array(tripBody.readableBytesView)
        measure("parse trip.requested body (\(tripBody.readableBytes) B)", operations: n / 4) {
            var count = 0
            for _ in 0..<(n / 4) {
                if case .object(let m)? = try? tripBytes.withUnsafeBytes({ try JSONValue.parse($0) }) { count &+= m.count }
            }
            sink &+= count
        }
        let parsedTrip = try tripBytes.withUnsafeBytes { try JSONValue.parse($0) }
        measure("check parsed trip.requested against its schema", operations: n / 4) {
            var count = 0
            for _ in 0..<(n / 4) where compiledTrip.check(parsedTrip) == nil { count &+= 1 }
            sink &+= count
        }
        for (label, validate, withContract) in [("no contract", false, false), ("contract", false, true),
                                               ("contract + schema", true, true)] {
            try measure("core publish trip.requested \(label)", operations: n / 4) {
                let broker = Broker(users: UserStore(includeDefaultUser: false))
                let user = User(name: "bench", password: PasswordHash(rounds: 1, salt: [0], hash: [0]), isAdmin: true)
                let transport = DiscardingTransport()
                let session = broker.openSession(user: user, clientName: "micro", peer: "local", transport: transport)
                try session.handle(.exchangeDeclare(ExchangeDeclare(requestId: 1, name: "trips", kind: .direct)))
                try session.handle(.queueDeclare(QueueDeclare(requestId: 1, name: "dispatch")))
                try session.handle(.queueBind(QueueBinding(requestId: 1, queue: "dispatch", exchange: "trips", bindingKey: "trip.requested")))
                if withContract {
                    let contract = ExchangeContract(exchange: "trips", types: [MessageTypeContract(
                        name: "trip.requested", versions: [TypeVersionContract(version: ContractVersion(2), schema: tripSchema)],
                        validatesPayload: validate)])
                    try session.handle(.manage(Manage(requestId: 2, method: "contract.apply",
                                                      arguments: ["contract": .table(try FieldTableEncoder().encode(contract))])))
                }
                try session.handle(.consume(Consume(requestId: 3, queue: "dispatch", noAck: true, prefetch: 0)))
                broker.flush()
                let properties = RawProperties(MessageProperties(type: "trip.requested", typeVersion: 2))
                let view = PublishView(mandatory: false, envelope: MessageEnvelope(exchange: "trips", routingKey: "trip.requested",
                                                                                  properties: properties, body: tripBody))
                for i in 1...(n / 4) {
                    try session.publish(view)
                    if i % 256 == 0 { flushCycle(broker, session, transport) }
                }
                broker.flush()
                precondition(broker.queueInfo("dispatch")?.ready == 0, "every message must have been delivered")
                precondition(transport.bytes > n / 4 * tripBody.readableBytes, "every message must have been accepted")
                sink &+= transport.bytes
            }
        }
        }
        print("(checksum \(sink & 0xFF))")
    }
}
