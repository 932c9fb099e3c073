import FuzzSupport
import Foundation
import BrokerCore
import NIOCore
import WireProtocol

/// A transport that keeps nothing: the core's cost and behaviour without a socket.
final class NullTransport: SessionTransport {
    var isWritable = true
    func send(_ buffer: ByteBuffer) {}
    func resumeSoon() {}
    func setReading(_ reading: Bool) {}
    func closeConnection(code: BrokerError.Code, reason: String) {}
}

/// One input: each pair of input bytes is one operation (which, and on what) by one of three sessions on a
/// broker without a data directory: declares with arguments, binds, publishes (some mandatory, some expiring),
/// consumes with prefetch, acks, nacks, rejects, cancels, gets, purges, deletes, closes. Request failures are
/// answers; a trap (an overflow, a broken invariant checked by a precondition) is a finding.
func fuzzCore(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data else { return 0 }
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let broker = Broker(users: UserStore(includeDefaultUser: false), memoryLimit: 1 << 20)
    let user = User(name: "fuzz", password: PasswordHash(rounds: 1, salt: [0], hash: [0]), isAdmin: true)
    var sessions = (0..<3).map { _ in broker.openSession(user: user, clientName: "fuzz", peer: "local", transport: NullTransport()) }
    let names = ["q0", "q1", "q2", "x.topic", "x.fanout", ""]
    let keys = ["a", "a.b", "#", "*.b", "a.#", ""]
    var index = 0
    var request: UInt32 = 0
    while index + 1 < bytes.count {
        let op = bytes[index], arg = Int(bytes[index + 1])
        index += 2
        request &+= 1
        let session = sessions[Int(op) % sessions.count]
        let name = names[arg % names.count]
        let key = keys[(arg / 8) % keys.count]
        let message: ClientMessage
        switch op / 3 % 14 {
        case 0:
            var arguments: FieldTable = [:]
            if arg & 1 != 0 { arguments["x-max-length"] = .int(Int64(arg % 5)) }
            if arg & 2 != 0 { arguments["x-message-ttl"] = .int(Int64(arg) << 30) }
            if arg & 4 != 0 { arguments["x-dead-letter-exchange"] = .string("x.fanout") }
            if arg & 8 != 0 { arguments["x-delivery-limit"] = .int(Int64(arg % 3)) }
            if arg & 16 != 0 { arguments["x-overflow"] = .string(arg & 32 != 0 ? "reject-publish" : "reject-publish-dlx") }
            message = .queueDeclare(QueueDeclare(requestId: request, name: name, exclusive: arg & 64 != 0, autoDelete: arg & 128 != 0, arguments: arguments))
        case 1: message = .exchangeDeclare(ExchangeDeclare(requestId: request, name: name, kind: arg & 1 == 0 ? .topic : .fanout))
        case 2: message = .queueBind(QueueBinding(requestId: request, queue: name, exchange: names[(arg / 3) % names.count], bindingKey: key))
        case 3: message = .queueUnbind(QueueBinding(requestId: request, queue: name, exchange: names[(arg / 3) % names.count], bindingKey: key))
        case 4, 5:
            let properties = MessageProperties(expiration: arg & 1 != 0 ? UInt32(arg) * 1_000_000 : nil, persistent: arg & 2 != 0)
            message = .publish(Publish(exchange: names[(arg / 5) % names.count], routingKey: arg & 4 != 0 ? key : name,
                                       mandatory: arg & 8 != 0, properties: RawProperties(properties), body: ByteBuffer(repeating: 0x61, count: arg)))
        case 6: message = .consume(Consume(requestId: request, queue: name, noAck: arg & 1 != 0, prefetch: UInt16(arg % 4)))
        case 7: message = .ack(Settle(deliveryTag: UInt64(arg % 16), multiple: arg & 16 != 0))
        case 8:
            let settle = Settle(deliveryTag: UInt64(arg % 16), multiple: arg & 16 != 0, requeue: arg & 32 != 0)
            message = arg & 64 != 0 ? .reject(settle) : .nack(settle)
        case 9: message = .cancel(Cancel(requestId: request, consumerTag: UInt32(arg % 4)))
        case 10: message = .get(Get(requestId: request, queue: name, noAck: arg & 1 != 0))
        case 11: message = .queuePurge(QueuePurge(requestId: request, name: name))
        case 12: message = .queueDelete(QueueDelete(requestId: request, name: name, ifUnused: arg & 1 != 0, ifEmpty: arg & 2 != 0))
        default:
            // Close a session and open a new one in its place; or let time pass for TTLs and the sweeper.
            if arg & 1 != 0 {
                let slot = Int(op) % sessions.count
                broker.closeSession(sessions[slot])
                sessions[slot] = broker.openSession(user: user, clientName: "fuzz", peer: "local", transport: NullTransport())
            } else {
                broker.sweep()
            }
            broker.flush()
            continue
        }
        do {
            try session.handle(message)
        } catch {
            // Fatal to that connection, as the server would close it.
            let slot = Int(op) % sessions.count
            broker.closeSession(sessions[slot])
            sessions[slot] = broker.openSession(user: user, clientName: "fuzz", peer: "local", transport: NullTransport())
        }
        broker.flush()
    }
    for session in sessions { broker.closeSession(session) }
    return 0
}

/// libFuzzer runs the input function (`-help=1` lists its options).
@main
struct FuzzCoreMain {
    static func main() { runLibFuzzer { fuzzCore($0, $1) } }
}

/// The symbol libFuzzer's runtime refers to (its whole archive is linked); the same input function.
@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { fuzzCore(data, size) }
