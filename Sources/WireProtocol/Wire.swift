public import NIOCore

// MARK: - Field encodings shared by every frame (docs/protocol.md, "Field encodings")

extension ByteBuffer {
    /// Reads a fixed-width big-endian integer or fails with a frame error naming the field.
    @inlinable
    mutating func readInt<T: FixedWidthInteger>(_ field: StaticString, as: T.Type = T.self) throws(BrokerError) -> T {
        guard let value = self.readInteger(as: T.self) else {
            throw BrokerError(.frameError, "truncated frame: missing \(field)")
        }
        return value
    }

    /// `shortstr`: u8 length, then that many bytes of UTF-8.
    @inlinable
    mutating func readShortString(_ field: StaticString) throws(BrokerError) -> String {
        let length = try self.readInt(field, as: UInt8.self)
        return try self.readUTF8(field, length: Int(length))
    }

    /// `longstr`: u32 length, then that many bytes of UTF-8.
    @inlinable
    mutating func readLongString(_ field: StaticString) throws(BrokerError) -> String {
        let length = try self.readInt(field, as: UInt32.self)
        return try self.readUTF8(field, length: Int(length))
    }

    @inlinable
    mutating func readUTF8(_ field: StaticString, length: Int) throws(BrokerError) -> String {
        guard length <= self.readableBytes, let bytes = self.readSlice(length: length) else {
            throw BrokerError(.frameError, "truncated frame: \(field) claims \(length) bytes, \(self.readableBytes) left")
        }
        guard let string = bytes.withUnsafeReadableBytes({ String(validating: $0, as: UTF8.self) }) else {
            throw BrokerError(.frameError, "\(field) is not valid UTF-8")
        }
        return string
    }

    /// `bytes`: u32 length, then raw bytes, returned as a slice of this buffer (no copy).
    @inlinable
    mutating func readLongBytes(_ field: StaticString) throws(BrokerError) -> ByteBuffer {
        let length = try self.readInt(field, as: UInt32.self)
        guard Int(length) <= self.readableBytes, let bytes = self.readSlice(length: Int(length)) else {
            throw BrokerError(.frameError, "truncated frame: \(field) claims \(length) bytes, \(self.readableBytes) left")
        }
        return bytes
    }

    /// Writes a `shortstr`. Callers validate lengths first (``NameRules``); an over-long string is cut at a
    /// character boundary rather than trapping, so the frame stays well-formed.
    @inlinable
    public mutating func writeShortString(_ string: String) {
        var count = string.utf8.count
        if count <= 255 {
            self.writeInteger(UInt8(count))
            self.writeString(string)
            return
        }
        count = 0
        for scalar in string.unicodeScalars {
            let width = UTF8.width(scalar)
            if count + width > 255 { break }
            count += width
        }
        self.writeInteger(UInt8(count))
        self.writeBytes(string.utf8.prefix(count))
    }

    /// Writes a `longstr` (u32 length + UTF-8).
    @inlinable
    public mutating func writeLongString(_ string: String) {
        self.writeInteger(UInt32(truncatingIfNeeded: string.utf8.count))
        self.writeString(string)
    }

    /// Writes `bytes` (u32 length + raw bytes).
    @inlinable
    public mutating func writeLongBytes(_ bytes: ByteBuffer) {
        self.writeInteger(UInt32(truncatingIfNeeded: bytes.readableBytes))
        self.writeImmutableBuffer(bytes)
    }

    /// Fails unless the payload was consumed exactly: a frame with trailing bytes is malformed.
    @inlinable
    func requireFullyConsumed(_ frame: StaticString) throws(BrokerError) {
        if self.readableBytes != 0 {
            throw BrokerError(.frameError, "\(frame) has \(self.readableBytes) unexpected trailing bytes")
        }
    }

    @inlinable
    func requireFullyConsumed(_ type: FrameType) throws(BrokerError) {
        if self.readableBytes != 0 {
            throw BrokerError(.frameError, "\(type) frame has \(self.readableBytes) unexpected trailing bytes")
        }
    }
}

/// Limits that a valid name or key must respect (docs/protocol.md, "Names").
public enum NameRules {
    /// Longest exchange, queue, routing key or property string, in UTF-8 bytes.
    public static let maxShortStringBytes = 255

    /// Checks an exchange or queue name: 1–255 bytes of UTF-8 with no control characters.
    public static func validateName(_ name: String, kind: String) throws(BrokerError) {
        if name.isEmpty { throw BrokerError(.invalidArgument, "\(kind) name must not be empty") }
        if name.utf8.count > maxShortStringBytes {
            throw BrokerError(.invalidArgument, "\(kind) name is \(name.utf8.count) bytes; the limit is 255")
        }
        if name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            throw BrokerError(.invalidArgument, "\(kind) name \(name.debugDescription) contains a control character")
        }
    }

    /// Checks a routing key or binding key: at most 255 bytes.
    public static func validateKey(_ key: String, kind: String = "routing key") throws(BrokerError) {
        if key.utf8.count > maxShortStringBytes {
            throw BrokerError(.invalidArgument, "\(kind) is \(key.utf8.count) bytes; the limit is 255")
        }
    }
}
