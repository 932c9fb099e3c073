public import NIOCore

/// An AMQP 0-9-1 argument type (the specification's domains reduce to these).
public enum AMQPArgumentType: Hashable, Sendable {
    case octet, short, long, longlong, shortString, longString, bit, table, timestamp
}

/// A method argument's value.
public enum AMQPArgument: Hashable, Sendable {
    case octet(UInt8)
    case short(UInt16)
    case long(UInt32)
    case longlong(UInt64)
    case shortString(String)
    case longString([UInt8])
    case bit(Bool)
    case table(AMQPTable)
    case timestamp(UInt64)

    var type: AMQPArgumentType {
        switch self {
        case .octet: .octet
        case .short: .short
        case .long: .long
        case .longlong: .longlong
        case .shortString: .shortString
        case .longString: .longString
        case .bit: .bit
        case .table: .table
        case .timestamp: .timestamp
        }
    }
}

/// What a method is: its class and method ids, its name, and its arguments' names and types, in order.
public struct AMQPMethodSignature: Hashable, Sendable {
    public var classId: UInt16
    public var methodId: UInt16
    /// `basic.publish`.
    public var name: String
    /// Whether the method expects a reply (`-ok`).
    public var synchronous: Bool
    /// Whether a content header and body frames follow it.
    public var content: Bool
    public var arguments: [(name: String, type: AMQPArgumentType)]

    public init(classId: UInt16, methodId: UInt16, name: String, synchronous: Bool, content: Bool,
                arguments: [(String, AMQPArgumentType)]) {
        self.classId = classId
        self.methodId = methodId
        self.name = name
        self.synchronous = synchronous
        self.content = content
        self.arguments = arguments.map { ($0.0, $0.1) }
    }

    public static func == (a: Self, b: Self) -> Bool { a.classId == b.classId && a.methodId == b.methodId }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(classId)
        hasher.combine(methodId)
    }

    /// Every method of AMQP 0-9-1 with RabbitMQ's extensions (confirm.select, basic.nack, connection.blocked and
    /// unblocked, exchange.bind and unbind), except the deprecated `access` class. Transcribed from the facts of
    /// rabbitmq-codegen's amqp-rabbitmq-0.9.1.json.
    public static let all: [AMQPMethodSignature] = [
        AMQPMethodSignature(classId: 10, methodId: 10, name: "connection.start", synchronous: true, content: false, arguments: [("version-major", .octet), ("version-minor", .octet), ("server-properties", .table), ("mechanisms", .longString), ("locales", .longString)]),
        AMQPMethodSignature(classId: 10, methodId: 11, name: "connection.start-ok", synchronous: false, content: false, arguments: [("client-properties", .table), ("mechanism", .shortString), ("response", .longString), ("locale", .shortString)]),
        AMQPMethodSignature(classId: 10, methodId: 20, name: "connection.secure", synchronous: true, content: false, arguments: [("challenge", .longString)]),
        AMQPMethodSignature(classId: 10, methodId: 21, name: "connection.secure-ok", synchronous: false, content: false, arguments: [("response", .longString)]),
        AMQPMethodSignature(classId: 10, methodId: 30, name: "connection.tune", synchronous: true, content: false, arguments: [("channel-max", .short), ("frame-max", .long), ("heartbeat", .short)]),
        AMQPMethodSignature(classId: 10, methodId: 31, name: "connection.tune-ok", synchronous: false, content: false, arguments: [("channel-max", .short), ("frame-max", .long), ("heartbeat", .short)]),
        AMQPMethodSignature(classId: 10, methodId: 40, name: "connection.open", synchronous: true, content: false, arguments: [("virtual-host", .shortString), ("capabilities", .shortString), ("insist", .bit)]),
        AMQPMethodSignature(classId: 10, methodId: 41, name: "connection.open-ok", synchronous: false, content: false, arguments: [("known-hosts", .shortString)]),
        AMQPMethodSignature(classId: 10, methodId: 50, name: "connection.close", synchronous: true, content: false, arguments: [("reply-code", .short), ("reply-text", .shortString), ("class-id", .short), ("method-id", .short)]),
        AMQPMethodSignature(classId: 10, methodId: 51, name: "connection.close-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 10, methodId: 60, name: "connection.blocked", synchronous: false, content: false, arguments: [("reason", .shortString)]),
        AMQPMethodSignature(classId: 10, methodId: 61, name: "connection.unblocked", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 10, methodId: 70, name: "connection.update-secret", synchronous: true, content: false, arguments: [("new-secret", .longString), ("reason", .shortString)]),
        AMQPMethodSignature(classId: 10, methodId: 71, name: "connection.update-secret-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 20, methodId: 10, name: "channel.open", synchronous: true, content: false, arguments: [("out-of-band", .shortString)]),
        AMQPMethodSignature(classId: 20, methodId: 11, name: "channel.open-ok", synchronous: false, content: false, arguments: [("channel-id", .longString)]),
        AMQPMethodSignature(classId: 20, methodId: 20, name: "channel.flow", synchronous: true, content: false, arguments: [("active", .bit)]),
        AMQPMethodSignature(classId: 20, methodId: 21, name: "channel.flow-ok", synchronous: false, content: false, arguments: [("active", .bit)]),
        AMQPMethodSignature(classId: 20, methodId: 40, name: "channel.close", synchronous: true, content: false, arguments: [("reply-code", .short), ("reply-text", .shortString), ("class-id", .short), ("method-id", .short)]),
        AMQPMethodSignature(classId: 20, methodId: 41, name: "channel.close-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 40, methodId: 10, name: "exchange.declare", synchronous: true, content: false, arguments: [("ticket", .short), ("exchange", .shortString), ("type", .shortString), ("passive", .bit), ("durable", .bit), ("auto-delete", .bit), ("internal", .bit), ("nowait", .bit), ("arguments", .table)]),
        AMQPMethodSignature(classId: 40, methodId: 11, name: "exchange.declare-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 40, methodId: 20, name: "exchange.delete", synchronous: true, content: false, arguments: [("ticket", .short), ("exchange", .shortString), ("if-unused", .bit), ("nowait", .bit)]),
        AMQPMethodSignature(classId: 40, methodId: 21, name: "exchange.delete-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 40, methodId: 30, name: "exchange.bind", synchronous: true, content: false, arguments: [("ticket", .short), ("destination", .shortString), ("source", .shortString), ("routing-key", .shortString), ("nowait", .bit), ("arguments", .table)]),
        AMQPMethodSignature(classId: 40, methodId: 31, name: "exchange.bind-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 40, methodId: 40, name: "exchange.unbind", synchronous: true, content: false, arguments: [("ticket", .short), ("destination", .shortString), ("source", .shortString), ("routing-key", .shortString), ("nowait", .bit), ("arguments", .table)]),
        AMQPMethodSignature(classId: 40, methodId: 51, name: "exchange.unbind-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 50, methodId: 10, name: "queue.declare", synchronous: true, content: false, arguments: [("ticket", .short), ("queue", .shortString), ("passive", .bit), ("durable", .bit), ("exclusive", .bit), ("auto-delete", .bit), ("nowait", .bit), ("arguments", .table)]),
        AMQPMethodSignature(classId: 50, methodId: 11, name: "queue.declare-ok", synchronous: false, content: false, arguments: [("queue", .shortString), ("message-count", .long), ("consumer-count", .long)]),
        AMQPMethodSignature(classId: 50, methodId: 20, name: "queue.bind", synchronous: true, content: false, arguments: [("ticket", .short), ("queue", .shortString), ("exchange", .shortString), ("routing-key", .shortString), ("nowait", .bit), ("arguments", .table)]),
        AMQPMethodSignature(classId: 50, methodId: 21, name: "queue.bind-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 50, methodId: 30, name: "queue.purge", synchronous: true, content: false, arguments: [("ticket", .short), ("queue", .shortString), ("nowait", .bit)]),
        AMQPMethodSignature(classId: 50, methodId: 31, name: "queue.purge-ok", synchronous: false, content: false, arguments: [("message-count", .long)]),
        AMQPMethodSignature(classId: 50, methodId: 40, name: "queue.delete", synchronous: true, content: false, arguments: [("ticket", .short), ("queue", .shortString), ("if-unused", .bit), ("if-empty", .bit), ("nowait", .bit)]),
        AMQPMethodSignature(classId: 50, methodId: 41, name: "queue.delete-ok", synchronous: false, content: false, arguments: [("message-count", .long)]),
        AMQPMethodSignature(classId: 50, methodId: 50, name: "queue.unbind", synchronous: true, content: false, arguments: [("ticket", .short), ("queue", .shortString), ("exchange", .shortString), ("routing-key", .shortString), ("arguments", .table)]),
        AMQPMethodSignature(classId: 50, methodId: 51, name: "queue.unbind-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 60, methodId: 10, name: "basic.qos", synchronous: true, content: false, arguments: [("prefetch-size", .long), ("prefetch-count", .short), ("global", .bit)]),
        AMQPMethodSignature(classId: 60, methodId: 11, name: "basic.qos-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 60, methodId: 20, name: "basic.consume", synchronous: true, content: false, arguments: [("ticket", .short), ("queue", .shortString), ("consumer-tag", .shortString), ("no-local", .bit), ("no-ack", .bit), ("exclusive", .bit), ("nowait", .bit), ("arguments", .table)]),
        AMQPMethodSignature(classId: 60, methodId: 21, name: "basic.consume-ok", synchronous: false, content: false, arguments: [("consumer-tag", .shortString)]),
        AMQPMethodSignature(classId: 60, methodId: 30, name: "basic.cancel", synchronous: true, content: false, arguments: [("consumer-tag", .shortString), ("nowait", .bit)]),
        AMQPMethodSignature(classId: 60, methodId: 31, name: "basic.cancel-ok", synchronous: false, content: false, arguments: [("consumer-tag", .shortString)]),
        AMQPMethodSignature(classId: 60, methodId: 40, name: "basic.publish", synchronous: false, content: true, arguments: [("ticket", .short), ("exchange", .shortString), ("routing-key", .shortString), ("mandatory", .bit), ("immediate", .bit)]),
        AMQPMethodSignature(classId: 60, methodId: 50, name: "basic.return", synchronous: false, content: true, arguments: [("reply-code", .short), ("reply-text", .shortString), ("exchange", .shortString), ("routing-key", .shortString)]),
        AMQPMethodSignature(classId: 60, methodId: 60, name: "basic.deliver", synchronous: false, content: true, arguments: [("consumer-tag", .shortString), ("delivery-tag", .longlong), ("redelivered", .bit), ("exchange", .shortString), ("routing-key", .shortString)]),
        AMQPMethodSignature(classId: 60, methodId: 70, name: "basic.get", synchronous: true, content: false, arguments: [("ticket", .short), ("queue", .shortString), ("no-ack", .bit)]),
        AMQPMethodSignature(classId: 60, methodId: 71, name: "basic.get-ok", synchronous: false, content: true, arguments: [("delivery-tag", .longlong), ("redelivered", .bit), ("exchange", .shortString), ("routing-key", .shortString), ("message-count", .long)]),
        AMQPMethodSignature(classId: 60, methodId: 72, name: "basic.get-empty", synchronous: false, content: false, arguments: [("cluster-id", .shortString)]),
        AMQPMethodSignature(classId: 60, methodId: 80, name: "basic.ack", synchronous: false, content: false, arguments: [("delivery-tag", .longlong), ("multiple", .bit)]),
        AMQPMethodSignature(classId: 60, methodId: 90, name: "basic.reject", synchronous: false, content: false, arguments: [("delivery-tag", .longlong), ("requeue", .bit)]),
        AMQPMethodSignature(classId: 60, methodId: 100, name: "basic.recover-async", synchronous: false, content: false, arguments: [("requeue", .bit)]),
        AMQPMethodSignature(classId: 60, methodId: 110, name: "basic.recover", synchronous: true, content: false, arguments: [("requeue", .bit)]),
        AMQPMethodSignature(classId: 60, methodId: 111, name: "basic.recover-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 60, methodId: 120, name: "basic.nack", synchronous: false, content: false, arguments: [("delivery-tag", .longlong), ("multiple", .bit), ("requeue", .bit)]),
        AMQPMethodSignature(classId: 90, methodId: 10, name: "tx.select", synchronous: true, content: false, arguments: []),
        AMQPMethodSignature(classId: 90, methodId: 11, name: "tx.select-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 90, methodId: 20, name: "tx.commit", synchronous: true, content: false, arguments: []),
        AMQPMethodSignature(classId: 90, methodId: 21, name: "tx.commit-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 90, methodId: 30, name: "tx.rollback", synchronous: true, content: false, arguments: []),
        AMQPMethodSignature(classId: 90, methodId: 31, name: "tx.rollback-ok", synchronous: false, content: false, arguments: []),
        AMQPMethodSignature(classId: 85, methodId: 10, name: "confirm.select", synchronous: true, content: false, arguments: [("nowait", .bit)]),
        AMQPMethodSignature(classId: 85, methodId: 11, name: "confirm.select-ok", synchronous: false, content: false, arguments: []),
    ]

    /// The signature of a class and method id, if AMQP 0-9-1 defines one.
    public static func find(classId: UInt16, methodId: UInt16) -> AMQPMethodSignature? { byId[UInt32(classId) << 16 | UInt32(methodId)] }

    /// The signature named `name` (`basic.publish`).
    public static func named(_ name: String) -> AMQPMethodSignature? { all.first { $0.name == name } }

    private static let byId: [UInt32: AMQPMethodSignature] = Dictionary(
        all.map { (UInt32($0.classId) << 16 | UInt32($0.methodId), $0) }, uniquingKeysWith: { first, _ in first })
}

/// A method frame's payload: which method, and its arguments in order (typed as its signature says).
public struct AMQPMethod: Hashable, Sendable, CustomStringConvertible {
    public var signature: AMQPMethodSignature
    public var arguments: [AMQPArgument]

    /// A method with `arguments` given by name; arguments not given take their type's zero value (0, "", false,
    /// an empty table). An unknown name or a value of the wrong type is a programming error, caught here.
    public init(_ name: String, _ arguments: [String: AMQPArgument] = [:]) {
        guard let signature = AMQPMethodSignature.named(name) else { preconditionFailure("no AMQP method '\(name)'") }
        for key in arguments.keys where !signature.arguments.contains(where: { $0.name == key }) {
            preconditionFailure("\(name) has no argument '\(key)'")
        }
        self.signature = signature
        self.arguments = signature.arguments.map { argument in
            guard let value = arguments[argument.name] else { return Self.zero(argument.type) }
            precondition(value.type == argument.type, "\(name).\(argument.name) is a \(argument.type), not \(value)")
            return value
        }
    }

    init(signature: AMQPMethodSignature, arguments: [AMQPArgument]) {
        self.signature = signature
        self.arguments = arguments
    }

    static func zero(_ type: AMQPArgumentType) -> AMQPArgument {
        switch type {
        case .octet: .octet(0)
        case .short: .short(0)
        case .long: .long(0)
        case .longlong: .longlong(0)
        case .shortString: .shortString("")
        case .longString: .longString([])
        case .bit: .bit(false)
        case .table: .table(AMQPTable())
        case .timestamp: .timestamp(0)
        }
    }

    /// The argument named `name`.
    public subscript(name: String) -> AMQPArgument? {
        guard let index = signature.arguments.firstIndex(where: { $0.name == name }) else { return nil }
        return arguments[index]
    }

    public var description: String { signature.name }

    /// Writes the method frame payload: class id, method id, arguments (consecutive bits packed into octets, low
    /// bit first, as the specification's 4.2.5.2 says).
    public func write(to buffer: inout ByteBuffer) throws(AMQPWireError) {
        buffer.writeMultipleIntegers(signature.classId, signature.methodId)
        var bits: UInt8 = 0
        var bitCount = 0
        func flushBits(_ buffer: inout ByteBuffer) {
            if bitCount > 0 { buffer.writeInteger(bits) }
            bits = 0
            bitCount = 0
        }
        for argument in arguments {
            if case .bit(let on) = argument {
                if bitCount == 8 { flushBits(&buffer) }
                if on { bits |= 1 << bitCount }
                bitCount += 1
                continue
            }
            flushBits(&buffer)
            switch argument {
            case .octet(let v): buffer.writeInteger(v)
            case .short(let v): buffer.writeInteger(v)
            case .long(let v): buffer.writeInteger(v)
            case .longlong(let v), .timestamp(let v): buffer.writeInteger(v)
            case .shortString(let v): try buffer.writeAMQPShortString(v)
            case .longString(let v): buffer.writeAMQPLongString(v)
            case .table(let v): try buffer.writeAMQPTable(v)
            case .bit: break  // handled above
            }
        }
        flushBits(&buffer)
    }

    /// Reads a whole method frame payload. An unknown class or method is `command-invalid` (503 is what RabbitMQ
    /// answers with for methods it does not know); a truncated argument or bytes left over are `syntax-error`.
    public static func read(from payload: ByteBuffer) throws(AMQPWireError) -> AMQPMethod {
        var buffer = payload
        guard let (classId, methodId) = buffer.readMultipleIntegers(as: (UInt16, UInt16).self) else {
            throw AMQPWireError(.frameError, "a method frame shorter than its class and method ids")
        }
        guard let signature = AMQPMethodSignature.find(classId: classId, methodId: methodId) else {
            throw AMQPWireError(.commandInvalid, "unknown method \(classId).\(methodId)")
        }
        var arguments: [AMQPArgument] = []
        arguments.reserveCapacity(signature.arguments.count)
        var bits: UInt8 = 0
        var bitIndex = 8
        func truncated(_ name: String) -> AMQPWireError {
            AMQPWireError(.syntaxError, "\(signature.name): truncated argument '\(name)'")
        }
        for (name, type) in signature.arguments {
            if type == .bit {
                if bitIndex == 8 {
                    guard let next = buffer.readInteger(as: UInt8.self) else { throw truncated(name) }
                    bits = next
                    bitIndex = 0
                }
                arguments.append(.bit(bits & (1 << bitIndex) != 0))
                bitIndex += 1
                continue
            }
            bitIndex = 8
            switch type {
            case .octet:
                guard let v = buffer.readInteger(as: UInt8.self) else { throw truncated(name) }
                arguments.append(.octet(v))
            case .short:
                guard let v = buffer.readInteger(as: UInt16.self) else { throw truncated(name) }
                arguments.append(.short(v))
            case .long:
                guard let v = buffer.readInteger(as: UInt32.self) else { throw truncated(name) }
                arguments.append(.long(v))
            case .longlong:
                guard let v = buffer.readInteger(as: UInt64.self) else { throw truncated(name) }
                arguments.append(.longlong(v))
            case .timestamp:
                guard let v = buffer.readInteger(as: UInt64.self) else { throw truncated(name) }
                arguments.append(.timestamp(v))
            case .shortString: arguments.append(.shortString(try buffer.readAMQPShortString("\(signature.name) \(name)")))
            case .longString: arguments.append(.longString(try buffer.readAMQPLongString("\(signature.name) \(name)")))
            case .table: arguments.append(.table(try buffer.readAMQPTable("\(signature.name) \(name)")))
            case .bit: break  // handled above
            }
        }
        guard buffer.readableBytes == 0 else {
            throw AMQPWireError(.syntaxError, "\(signature.name): \(buffer.readableBytes) bytes after its last argument")
        }
        return AMQPMethod(signature: signature, arguments: arguments)
    }
}
