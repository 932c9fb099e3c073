public import NIOCore

/// A value of an AMQP field table, with the type letters RabbitMQ and every current client use (RabbitMQ's
/// errata to the 0-9-1 specification: `s` is a signed 16-bit integer, not a short string).
public indirect enum AMQPValue: Hashable, Sendable {
    case bool(Bool)  // t
    case int8(Int8)  // b
    case uint8(UInt8)  // B
    case int16(Int16)  // s
    case uint16(UInt16)  // u
    case int32(Int32)  // I
    case uint32(UInt32)  // i
    case int64(Int64)  // l
    case float(Float)  // f
    case double(Double)  // d
    case decimal(scale: UInt8, value: Int32)  // D
    case longString([UInt8])  // S (bytes: AMQP strings need not be UTF-8)
    case array([AMQPValue])  // A
    case timestamp(UInt64)  // T
    case table(AMQPTable)  // F
    case void  // V
    case bytes([UInt8])  // x

    /// A UTF-8 long string.
    public static func string(_ text: String) -> AMQPValue { .longString(Array(text.utf8)) }

    /// The value as text, if it is a long string that is valid UTF-8.
    public var stringValue: String? {
        if case .longString(let bytes) = self { return String(validating: bytes, as: UTF8.self) }
        return nil
    }

    /// Any integer type, widened; nil for anything else.
    public var integerValue: Int64? {
        switch self {
        case .int8(let v): Int64(v)
        case .uint8(let v): Int64(v)
        case .int16(let v): Int64(v)
        case .uint16(let v): Int64(v)
        case .int32(let v): Int64(v)
        case .uint32(let v): Int64(v)
        case .int64(let v): v
        case .timestamp(let v): v <= UInt64(Int64.max) ? Int64(v) : nil
        default: nil
        }
    }
}

/// An AMQP field table: names (short strings) to values, in the order they were written (peers may depend on it,
/// and a re-encoded table should be the same bytes).
public struct AMQPTable: Hashable, Sendable, ExpressibleByDictionaryLiteral {
    public var entries: [(name: String, value: AMQPValue)]

    public init(_ entries: [(name: String, value: AMQPValue)] = []) { self.entries = entries }
    public init(dictionaryLiteral elements: (String, AMQPValue)...) { entries = elements.map { ($0.0, $0.1) } }

    public subscript(name: String) -> AMQPValue? {
        get { entries.last { $0.name == name }?.value }
        set {
            entries.removeAll { $0.name == name }
            if let newValue { entries.append((name, newValue)) }
        }
    }

    public var isEmpty: Bool { entries.isEmpty }

    public static func == (a: Self, b: Self) -> Bool {
        a.entries.count == b.entries.count && zip(a.entries, b.entries).allSatisfy { $0.name == $1.name && $0.value == $1.value }
    }

    public func hash(into hasher: inout Hasher) {
        for (name, value) in entries {
            hasher.combine(name)
            hasher.combine(value)
        }
    }
}

// MARK: - Codec

extension ByteBuffer {
    /// Deepest nesting of tables and arrays a read accepts (deeper is a syntax error, not a deep recursion).
    public static let amqpMaximumDepth = 32

    public mutating func writeAMQPShortString(_ text: String) throws(AMQPWireError) {
        let bytes = Array(text.utf8)
        guard bytes.count <= 255 else { throw AMQPWireError(.syntaxError, "a short string is at most 255 bytes, not \(bytes.count)") }
        writeInteger(UInt8(bytes.count))
        writeBytes(bytes)
    }

    public mutating func readAMQPShortString(_ what: String) throws(AMQPWireError) -> String {
        guard let length = readInteger(as: UInt8.self), let bytes = readBytes(length: Int(length)) else {
            throw AMQPWireError(.syntaxError, "\(what): truncated short string")
        }
        // Names and short fields are text; bytes that are not UTF-8 are repaired rather than refused, as
        // RabbitMQ does not check them either (its peers' names are not always UTF-8).
        return String(decoding: bytes, as: UTF8.self)
    }

    public mutating func writeAMQPLongString(_ bytes: [UInt8]) {
        writeInteger(UInt32(bytes.count))
        writeBytes(bytes)
    }

    public mutating func readAMQPLongString(_ what: String) throws(AMQPWireError) -> [UInt8] {
        guard let length = readInteger(as: UInt32.self) else { throw AMQPWireError(.syntaxError, "\(what): truncated long string") }
        guard Int(length) <= readableBytes, let bytes = readBytes(length: Int(length)) else {
            throw AMQPWireError(.syntaxError, "\(what): a long string of \(length) bytes is longer than its frame")
        }
        return bytes
    }

    /// Writes a table: its byte length (u32), then each name and value.
    public mutating func writeAMQPTable(_ table: AMQPTable) throws(AMQPWireError) {
        let lengthAt = writerIndex
        writeInteger(UInt32(0))
        for (name, value) in table.entries {
            try writeAMQPShortString(name)
            try writeAMQPValue(value)
        }
        setInteger(UInt32(writerIndex - lengthAt - 4), at: lengthAt)
    }

    public mutating func readAMQPTable(_ what: String, depth: Int = 0) throws(AMQPWireError) -> AMQPTable {
        guard depth < Self.amqpMaximumDepth else { throw AMQPWireError(.syntaxError, "\(what): tables nested deeper than \(Self.amqpMaximumDepth)") }
        guard let length = readInteger(as: UInt32.self) else { throw AMQPWireError(.syntaxError, "\(what): truncated table") }
        guard Int(length) <= readableBytes, var slice = readSlice(length: Int(length)) else {
            throw AMQPWireError(.syntaxError, "\(what): a table of \(length) bytes is longer than its frame")
        }
        var table = AMQPTable()
        while slice.readableBytes > 0 {
            let name = try slice.readAMQPShortString(what)
            table.entries.append((name, try slice.readAMQPValue("\(what).\(name)", depth: depth + 1)))
        }
        return table
    }

    public mutating func writeAMQPValue(_ value: AMQPValue) throws(AMQPWireError) {
        switch value {
        case .bool(let v): writeMultipleIntegers(UInt8(ascii: "t"), UInt8(v ? 1 : 0))
        case .int8(let v): writeMultipleIntegers(UInt8(ascii: "b"), v)
        case .uint8(let v): writeMultipleIntegers(UInt8(ascii: "B"), v)
        case .int16(let v): writeMultipleIntegers(UInt8(ascii: "s"), v)
        case .uint16(let v): writeMultipleIntegers(UInt8(ascii: "u"), v)
        case .int32(let v): writeMultipleIntegers(UInt8(ascii: "I"), v)
        case .uint32(let v): writeMultipleIntegers(UInt8(ascii: "i"), v)
        case .int64(let v): writeMultipleIntegers(UInt8(ascii: "l"), v)
        case .float(let v): writeMultipleIntegers(UInt8(ascii: "f"), v.bitPattern)
        case .double(let v): writeMultipleIntegers(UInt8(ascii: "d"), v.bitPattern)
        case .decimal(let scale, let v): writeMultipleIntegers(UInt8(ascii: "D"), scale, v)
        case .longString(let bytes):
            writeInteger(UInt8(ascii: "S"))
            writeAMQPLongString(bytes)
        case .array(let items):
            writeInteger(UInt8(ascii: "A"))
            let lengthAt = writerIndex
            writeInteger(UInt32(0))
            for item in items { try writeAMQPValue(item) }
            setInteger(UInt32(writerIndex - lengthAt - 4), at: lengthAt)
        case .timestamp(let v): writeMultipleIntegers(UInt8(ascii: "T"), v)
        case .table(let table):
            writeInteger(UInt8(ascii: "F"))
            try writeAMQPTable(table)
        case .void: writeInteger(UInt8(ascii: "V"))
        case .bytes(let bytes):
            writeInteger(UInt8(ascii: "x"))
            writeAMQPLongString(bytes)
        }
    }

    public mutating func readAMQPValue(_ what: String, depth: Int = 0) throws(AMQPWireError) -> AMQPValue {
        guard let type = readInteger(as: UInt8.self) else { throw AMQPWireError(.syntaxError, "\(what): truncated field value") }
        func fixed<T: FixedWidthInteger>(_: T.Type) throws(AMQPWireError) -> T {
            guard let value = readInteger(as: T.self) else { throw AMQPWireError(.syntaxError, "\(what): truncated field value") }
            return value
        }
        switch type {
        case UInt8(ascii: "t"): return .bool(try fixed(UInt8.self) != 0)
        case UInt8(ascii: "b"): return .int8(try fixed(Int8.self))
        case UInt8(ascii: "B"): return .uint8(try fixed(UInt8.self))
        case UInt8(ascii: "s"): return .int16(try fixed(Int16.self))
        case UInt8(ascii: "u"): return .uint16(try fixed(UInt16.self))
        case UInt8(ascii: "I"): return .int32(try fixed(Int32.self))
        case UInt8(ascii: "i"): return .uint32(try fixed(UInt32.self))
        case UInt8(ascii: "l"): return .int64(try fixed(Int64.self))
        case UInt8(ascii: "f"): return .float(Float(bitPattern: try fixed(UInt32.self)))
        case UInt8(ascii: "d"): return .double(Double(bitPattern: try fixed(UInt64.self)))
        case UInt8(ascii: "D"):
            let scale = try fixed(UInt8.self)
            return .decimal(scale: scale, value: try fixed(Int32.self))
        case UInt8(ascii: "S"): return .longString(try readAMQPLongString(what))
        case UInt8(ascii: "A"):
            guard depth < Self.amqpMaximumDepth else { throw AMQPWireError(.syntaxError, "\(what): arrays nested deeper than \(Self.amqpMaximumDepth)") }
            let length = try fixed(UInt32.self)
            guard Int(length) <= readableBytes, var slice = readSlice(length: Int(length)) else {
                throw AMQPWireError(.syntaxError, "\(what): an array of \(length) bytes is longer than its frame")
            }
            var items: [AMQPValue] = []
            while slice.readableBytes > 0 { items.append(try slice.readAMQPValue(what, depth: depth + 1)) }
            return .array(items)
        case UInt8(ascii: "T"): return .timestamp(try fixed(UInt64.self))
        case UInt8(ascii: "F"): return .table(try readAMQPTable(what, depth: depth + 1))
        case UInt8(ascii: "V"): return .void
        case UInt8(ascii: "x"): return .bytes(try readAMQPLongString(what))
        default:
            throw AMQPWireError(.syntaxError, "\(what): unknown field type '\(Unicode.Scalar(type))' (0x\(String(type, radix: 16)))")
        }
    }
}

extension String {
    /// The text cut at a character boundary to fit a short string (255 bytes): for reply texts and reasons, which
    /// are better shortened than refused.
    public var amqpShortText: String {
        guard utf8.count > 255 else { return self }
        var result = ""
        for character in self {
            if result.utf8.count + character.utf8.count > 255 { break }
            result.append(character)
        }
        return result
    }
}
