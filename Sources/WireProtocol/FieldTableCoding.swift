/// Codable over field tables: a `Codable` struct whose coding keys are the column names of a management listing
/// decodes from the broker's row and encodes back to the same row. The client's typed management API and
/// brokerctl's output both go through these, so the Swift types and what brokerctl prints cannot drift apart.
///
/// Mapping: `String` ⇄ string, integers ⇄ int (range-checked), `Double` ⇄ double (an int decodes too), `Bool` ⇄
/// bool, `[UInt8]` ⇄ bytes, ``FieldValue`` and ``FieldTable`` as they are, arrays ⇄ array, structs ⇄ table, nil ⇄
/// an absent key.
public struct FieldTableDecoder: Sendable {
    public init() {}

    public func decode<T: Decodable>(_ type: T.Type, from table: FieldTable) throws -> T {
        try decode(type, from: .table(table), path: [])
    }

    func decode<T: Decodable>(_ type: T.Type, from value: FieldValue, path: [any CodingKey]) throws -> T {
        if T.self == FieldValue.self, let value = value as? T { return value }
        if T.self == FieldTable.self {
            guard case .table(let table) = value, let result = table as? T else { throw mismatch(type, value, path) }
            return result
        }
        if T.self == [UInt8].self {
            guard case .bytes(let bytes) = value, let result = bytes as? T else { throw mismatch(type, value, path) }
            return result
        }
        return try T(from: ValueDecoder(value: value, codingPath: path))
    }

    struct ValueDecoder: Decoder {
        let value: FieldValue
        let codingPath: [any CodingKey]
        var userInfo: [CodingUserInfoKey: Any] { [.fieldTable: true] }

        func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
            guard case .table(let table) = value else { throw mismatch(FieldTable.self, value, codingPath) }
            return KeyedDecodingContainer(Keyed(table: table, codingPath: codingPath))
        }

        func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
            // The encoder writes an empty array as empty bytes (it cannot tell `[]` of bytes from `[]` of anything).
            if case .bytes(let bytes) = value, bytes.isEmpty { return Unkeyed(values: [], codingPath: codingPath) }
            guard case .array(let values) = value else { throw mismatch([FieldValue].self, value, codingPath) }
            return Unkeyed(values: values, codingPath: codingPath)
        }

        func singleValueContainer() throws -> any SingleValueDecodingContainer { Single(value: value, codingPath: codingPath) }
    }

    struct Keyed<Key: CodingKey>: KeyedDecodingContainerProtocol {
        let table: FieldTable
        let codingPath: [any CodingKey]
        var allKeys: [Key] { table.keys.compactMap { Key(stringValue: $0) } }

        func contains(_ key: Key) -> Bool { table[key.stringValue] != nil }

        func value(_ key: Key) throws -> FieldValue {
            guard let value = table[key.stringValue] else {
                throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "no '\(key.stringValue)' in the row"))
            }
            return value
        }

        func decodeNil(forKey key: Key) throws -> Bool { table[key.stringValue] == nil }

        func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
            try FieldTableDecoder().decode(type, from: value(key), path: codingPath + [key])
        }

        func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
            try ValueDecoder(value: value(key), codingPath: codingPath + [key]).container(keyedBy: type)
        }

        func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
            try ValueDecoder(value: value(key), codingPath: codingPath + [key]).unkeyedContainer()
        }

        func superDecoder() throws -> any Decoder { ValueDecoder(value: .table(table), codingPath: codingPath) }
        func superDecoder(forKey key: Key) throws -> any Decoder { ValueDecoder(value: try value(key), codingPath: codingPath + [key]) }
    }

    struct Unkeyed: UnkeyedDecodingContainer {
        let values: [FieldValue]
        let codingPath: [any CodingKey]
        var currentIndex = 0
        var count: Int? { values.count }
        var isAtEnd: Bool { currentIndex >= values.count }

        mutating func next() throws -> FieldValue {
            guard !isAtEnd else {
                throw DecodingError.valueNotFound(FieldValue.self, .init(codingPath: codingPath, debugDescription: "the array has no more values"))
            }
            defer { currentIndex += 1 }
            return values[currentIndex]
        }

        mutating func decodeNil() throws -> Bool { false }

        mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
            let index = IndexKey(currentIndex)
            return try FieldTableDecoder().decode(type, from: next(), path: codingPath + [index])
        }

        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
            try ValueDecoder(value: next(), codingPath: codingPath).container(keyedBy: type)
        }

        mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
            try ValueDecoder(value: next(), codingPath: codingPath).unkeyedContainer()
        }

        mutating func superDecoder() throws -> any Decoder { ValueDecoder(value: try next(), codingPath: codingPath) }
    }

    struct Single: SingleValueDecodingContainer {
        let value: FieldValue
        let codingPath: [any CodingKey]

        func decodeNil() -> Bool { false }
        func decode(_ type: Bool.Type) throws -> Bool {
            guard case .bool(let b) = value else { throw mismatch(type, value, codingPath) }
            return b
        }
        func decode(_ type: String.Type) throws -> String {
            switch value {
            case .string(let s): return s
            case .bytes(let b): return String(decoding: b, as: UTF8.self)
            default: throw mismatch(type, value, codingPath)
            }
        }
        func decode(_ type: Double.Type) throws -> Double {
            switch value {
            case .double(let d): return d
            case .int(let i): return Double(i)
            default: throw mismatch(type, value, codingPath)
            }
        }
        func decode(_ type: Float.Type) throws -> Float { Float(try decode(Double.self)) }
        func decode<T: BinaryInteger & Decodable>(_ type: T.Type) throws -> T {
            guard case .int(let i) = value else { throw mismatch(type, value, codingPath) }
            guard let result = T(exactly: i) else {
                throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "\(i) does not fit \(type)"))
            }
            return result
        }
        func decode<T: Decodable>(_ type: T.Type) throws -> T { try FieldTableDecoder().decode(type, from: value, path: codingPath) }
    }
}

/// An array element's place in a coding path (`types[0]`), so errors say which element is wrong.
private struct IndexKey: CodingKey {
    var intValue: Int?
    var stringValue: String { "\(intValue ?? 0)" }
    init(_ index: Int) { intValue = index }
    init?(intValue: Int) { self.intValue = intValue }
    init?(stringValue: String) { nil }
}

private func mismatch(_ type: Any.Type, _ value: FieldValue, _ path: [any CodingKey]) -> DecodingError {
    DecodingError.typeMismatch(type, .init(codingPath: path, debugDescription: "expected \(type), found \(value)"))
}

/// The counterpart of ``FieldTableDecoder``.
public struct FieldTableEncoder: Sendable {
    public init() {}

    public func encode(_ value: some Encodable) throws -> FieldTable {
        guard case .table(let table) = try encodeValue(value) else {
            throw EncodingError.invalidValue(value, .init(codingPath: [], debugDescription: "only keyed values encode to a table"))
        }
        return table
    }

    func encodeValue(_ value: some Encodable) throws -> FieldValue {
        if let value = value as? FieldValue { return value }
        if let table = value as? FieldTable { return .table(table) }
        if let bytes = value as? [UInt8] { return .bytes(bytes) }
        let node = Node()
        try value.encode(to: ValueEncoder(node: node, codingPath: []))
        return node.resolve()
    }

    /// What an encoder builds: a tree of nodes, since a nested container is filled after it is handed out.
    final class Node {
        enum Content {
            case empty
            case value(FieldValue)
            case table([String: Node])
            case array([Node])
        }
        var content = Content.empty

        func resolve() -> FieldValue {
            switch content {
            case .empty: .table([:])
            case .value(let value): value
            case .table(let children): .table(children.mapValues { $0.resolve() })
            case .array(let children): .array(children.map { $0.resolve() })
            }
        }

        /// This node as a table (it becomes one if it is not yet anything).
        func child(_ key: String) -> Node {
            let node = Node()
            if case .table(var children) = content {
                children[key] = node
                content = .table(children)
            } else {
                content = .table([key: node])
            }
            return node
        }

        func appended() -> Node {
            let node = Node()
            if case .array(var children) = content {
                children.append(node)
                content = .array(children)
            } else {
                content = .array([node])
            }
            return node
        }
    }

    struct ValueEncoder: Encoder {
        let node: Node
        let codingPath: [any CodingKey]
        var userInfo: [CodingUserInfoKey: Any] { [.fieldTable: true] }

        func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
            if case .table = node.content {} else { node.content = .table([:]) }
            return KeyedEncodingContainer(Keyed(node: node, codingPath: codingPath))
        }
        func unkeyedContainer() -> any UnkeyedEncodingContainer {
            if case .array = node.content {} else { node.content = .array([]) }
            return Unkeyed(node: node, codingPath: codingPath)
        }
        func singleValueContainer() -> any SingleValueEncodingContainer { Single(node: node, codingPath: codingPath) }
    }

    struct Keyed<Key: CodingKey>: KeyedEncodingContainerProtocol {
        let node: Node
        let codingPath: [any CodingKey]

        mutating func encodeNil(forKey key: Key) throws {}
        mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
            node.child(key.stringValue).content = .value(try FieldTableEncoder().encodeValue(value))
        }
        mutating func encodeIfPresent<T: Encodable>(_ value: T?, forKey key: Key) throws {
            if let value { try encode(value, forKey: key) }
        }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
            ValueEncoder(node: node.child(key.stringValue), codingPath: codingPath + [key]).container(keyedBy: keyType)
        }
        mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
            ValueEncoder(node: node.child(key.stringValue), codingPath: codingPath + [key]).unkeyedContainer()
        }
        mutating func superEncoder() -> any Encoder { ValueEncoder(node: node.child("super"), codingPath: codingPath) }
        mutating func superEncoder(forKey key: Key) -> any Encoder { ValueEncoder(node: node.child(key.stringValue), codingPath: codingPath + [key]) }
    }

    struct Unkeyed: UnkeyedEncodingContainer {
        let node: Node
        let codingPath: [any CodingKey]
        var count: Int {
            if case .array(let children) = node.content { return children.count }
            return 0
        }
        mutating func encodeNil() throws {}
        mutating func encode<T: Encodable>(_ value: T) throws { node.appended().content = .value(try FieldTableEncoder().encodeValue(value)) }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
            ValueEncoder(node: node.appended(), codingPath: codingPath).container(keyedBy: keyType)
        }
        mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
            ValueEncoder(node: node.appended(), codingPath: codingPath).unkeyedContainer()
        }
        mutating func superEncoder() -> any Encoder { ValueEncoder(node: node.appended(), codingPath: codingPath) }
    }

    struct Single: SingleValueEncodingContainer {
        let node: Node
        let codingPath: [any CodingKey]
        func set(_ value: FieldValue) { node.content = .value(value) }
        mutating func encodeNil() throws {}
        mutating func encode(_ value: Bool) throws { set(.bool(value)) }
        mutating func encode(_ value: String) throws { set(.string(value)) }
        mutating func encode(_ value: Double) throws { set(.double(value)) }
        mutating func encode(_ value: Float) throws { set(.double(Double(value))) }
        mutating func encode(_ value: Int) throws { set(.int(Int64(value))) }
        mutating func encode(_ value: Int8) throws { set(.int(Int64(value))) }
        mutating func encode(_ value: Int16) throws { set(.int(Int64(value))) }
        mutating func encode(_ value: Int32) throws { set(.int(Int64(value))) }
        mutating func encode(_ value: Int64) throws { set(.int(value)) }
        mutating func encode(_ value: UInt) throws { set(.int(Int64(clamping: value))) }
        mutating func encode(_ value: UInt8) throws { set(.int(Int64(value))) }
        mutating func encode(_ value: UInt16) throws { set(.int(Int64(value))) }
        mutating func encode(_ value: UInt32) throws { set(.int(Int64(value))) }
        mutating func encode(_ value: UInt64) throws { set(.int(Int64(clamping: value))) }
        mutating func encode<T: Encodable>(_ value: T) throws { set(try FieldTableEncoder().encodeValue(value)) }
    }
}

@available(*, unavailable)
extension FieldTableEncoder.Node: Sendable {}

/// Field values as JSON-like data for other coders (JSONEncoder prints a table as an object, bytes as UTF-8 text when
/// they are, else as an array of byte values). ``FieldTableEncoder`` and ``FieldTableDecoder`` keep them as they are.
extension FieldValue: Codable {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .int(value)
        } else if let value = try? container.decode(Double.self) {
            self = .double(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([FieldValue].self) {
            self = .array(value)
        } else {
            self = .table(try container.decode([String: FieldValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .int(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .double(let value): try container.encode(value.isFinite ? value : 0)
        case .bytes(let value):
            if let text = String(validating: value, as: UTF8.self) { try container.encode(text) } else { try container.encode(value) }
        case .table(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        }
    }
}

extension CodingUserInfoKey {
    /// Present (true) in the user info of ``FieldTableEncoder`` and ``FieldTableDecoder``, for types whose field
    /// table form differs from their JSON form (a contract's schemas travel as JSON text: tables have no null).
    // The raw value is a non-empty literal, which CodingUserInfoKey's failable init accepts.
    public static let fieldTable = CodingUserInfoKey(rawValue: "brokerd.fieldTable")!
}
