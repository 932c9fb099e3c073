public import NIOCore

/// `manage` (0x41): a management method by name with its arguments (docs/protocol.md §11). Admin only.
///
/// Management is one frame type with a method name, not a frame type per method: methods are added without a
/// protocol version, their arguments and results are field tables that any client can decode, and an unknown
/// method is an ordinary `notImplemented` error.
public struct Manage: Hashable, Sendable {
    public var requestId: UInt32
    /// A method name such as `list.queues` (docs/protocol.md §11 lists them).
    public var method: String
    public var arguments: FieldTable

    public init(requestId: UInt32, method: String, arguments: FieldTable = [:]) {
        self.requestId = requestId
        self.method = method
        self.arguments = arguments
    }

    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(requestId)
        buffer.writeShortString(method)
        buffer.writeFieldTable(arguments)
    }

    public static func decode(from buffer: inout ByteBuffer) throws(BrokerError) -> Manage {
        Manage(requestId: try buffer.readInt("request id"), method: try buffer.readShortString("method"),
               arguments: try buffer.readArguments())
    }
}
