public import NIOCore

/// A value in a header or argument table (docs/protocol.md, "Tables").
public indirect enum FieldValue: Hashable, Sendable {
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case bytes([UInt8])
    case table(FieldTable)
    case array([FieldValue])

    /// The one-byte type tag that precedes each value on the wire.
    enum Tag: UInt8 {
        case bool = 0x74  // 't'
        case int = 0x6C  // 'l'
        case double = 0x64  // 'd'
        case string = 0x53  // 'S'
        case bytes = 0x78  // 'x'
        case table = 0x46  // 'F'
        case array = 0x41  // 'A'
    }

    public var intValue: Int64? { if case .int(let v) = self { v } else { nil } }
    public var stringValue: String? { if case .string(let v) = self { v } else { nil } }
    public var boolValue: Bool? { if case .bool(let v) = self { v } else { nil } }
}

/// A table of named values: message headers and declare arguments. Keys are `shortstr`s, unique.
public typealias FieldTable = [String: FieldValue]

/// Deepest nesting of tables and arrays a decoder accepts, so hostile input cannot exhaust the stack.
let maxFieldNesting = 16

extension ByteBuffer {
    /// Writes a table: u32 byte length, then entries `shortstr key, u8 tag, value`, keys in sorted order.
    @inlinable
    public mutating func writeFieldTable(_ table: FieldTable) {
        let lengthIndex = self.writerIndex
        self.writeInteger(UInt32(0))
        for key in table.keys.sorted() {
            self.writeShortString(key)
            self.writeFieldValue(table[key]!)  // key comes from the table itself
        }
        self.setInteger(UInt32(self.writerIndex - lengthIndex - 4), at: lengthIndex)
    }

    @usableFromInline
    mutating func writeFieldValue(_ value: FieldValue) {
        switch value {
        case .bool(let v):
            self.writeInteger(FieldValue.Tag.bool.rawValue)
            self.writeInteger(UInt8(v ? 1 : 0))
        case .int(let v):
            self.writeInteger(FieldValue.Tag.int.rawValue)
            self.writeInteger(v)
        case .double(let v):
            self.writeInteger(FieldValue.Tag.double.rawValue)
            self.writeInteger(v.bitPattern)
        case .string(let v):
            self.writeInteger(FieldValue.Tag.string.rawValue)
            self.writeLongString(v)
        case .bytes(let v):
            self.writeInteger(FieldValue.Tag.bytes.rawValue)
            self.writeInteger(UInt32(truncatingIfNeeded: v.count))
            self.writeBytes(v)
        case .table(let v):
            self.writeInteger(FieldValue.Tag.table.rawValue)
            self.writeFieldTable(v)
        case .array(let values):
            self.writeInteger(FieldValue.Tag.array.rawValue)
            let lengthIndex = self.writerIndex
            self.writeInteger(UInt32(0))
            for v in values { self.writeFieldValue(v) }
            self.setInteger(UInt32(self.writerIndex - lengthIndex - 4), at: lengthIndex)
        }
    }

    /// Reads a table, checking every length against what the frame holds.
    public mutating func readFieldTable(_ field: StaticString = "table") throws(BrokerError) -> FieldTable {
        try self.readFieldTable(field, depth: 0)
    }

    /// Reads the `arguments` table of a declare, bind, consume or manage request, refusing one larger than
    /// ``FieldTable/maximumArgumentsBytes`` from its length alone, before any of it is parsed (an 8 MiB table
    /// stalled the event loop for 1.7 s).
    public mutating func readArguments() throws(BrokerError) -> FieldTable {
        if let length = self.getInteger(at: self.readerIndex, as: UInt32.self), length > Frame.maximumArgumentsBytes {
            throw BrokerError(.invalidArgument, "arguments table of \(length) bytes is larger than the \(Frame.maximumArgumentsBytes) allowed")
        }
        return try self.readFieldTable("arguments", depth: 0)
    }

    mutating func readFieldTable(_ field: StaticString, depth: Int) throws(BrokerError) -> FieldTable {
        if depth > maxFieldNesting { throw BrokerError(.frameError, "\(field) nests deeper than \(maxFieldNesting) levels") }
        var body = try self.readLongBytes(field)
        var table = FieldTable()
        while body.readableBytes > 0 {
            let key = try body.readShortString("table key")
            let value = try body.readFieldValue(depth: depth)
            if table.updateValue(value, forKey: key) != nil {
                throw BrokerError(.frameError, "\(field) has the key \(key.debugDescription) twice")
            }
        }
        return table
    }

    mutating func readFieldValue(depth: Int) throws(BrokerError) -> FieldValue {
        let rawTag = try self.readInt("value tag", as: UInt8.self)
        guard let tag = FieldValue.Tag(rawValue: rawTag) else {
            throw BrokerError(.frameError, "unknown table value type 0x\(String(rawTag, radix: 16))")
        }
        switch tag {
        case .bool:
            let v = try self.readInt("bool value", as: UInt8.self)
            guard v <= 1 else { throw BrokerError(.frameError, "bool value must be 0 or 1, got \(v)") }
            return .bool(v == 1)
        case .int: return .int(try self.readInt("int value", as: Int64.self))
        case .double: return .double(Double(bitPattern: try self.readInt("double value", as: UInt64.self)))
        case .string: return .string(try self.readLongString("string value"))
        case .bytes:
            let bytes = try self.readLongBytes("bytes value")
            return .bytes(Array(bytes.readableBytesView))
        case .table:
            return .table(try self.readFieldTable("nested table", depth: depth + 1))
        case .array:
            if depth + 1 > maxFieldNesting { throw BrokerError(.frameError, "array nests deeper than \(maxFieldNesting) levels") }
            var body = try self.readLongBytes("array")
            var values: [FieldValue] = []
            while body.readableBytes > 0 { values.append(try body.readFieldValue(depth: depth + 1)) }
            return .array(values)
        }
    }
}
