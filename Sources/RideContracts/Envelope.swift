public import BrokerClient
public import Foundation
public import NIOCore
public import WireProtocol

/// Why a delivered message could not be read as the type a consumer expected.
public struct ContractError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Encoding and decoding of ``RideMessage``s: JSON bodies, with the type, its major version and the whole version
/// in the properties, so a consumer checks what it got before it reads the body.
public enum RideEnvelope {
    /// The header carrying the whole version (`1.0`); `typeVersion` carries the major only.
    public static let versionHeader = "version"

    /// The body and properties of `message`: persistent, JSON, typed, with `messageId`.
    public static func encode<M: RideMessage>(_ message: M, messageId: String, timestampMs: Int64? = nil) throws -> (ByteBuffer, MessageProperties) {
        let body = try JSONEncoder.ride.encode(message)
        let properties = MessageProperties(
            messageId: messageId, contentType: "application/json", type: M.type, typeVersion: M.version.major,
            timestamp: timestampMs ?? Int64(Date().timeIntervalSince1970 * 1000), persistent: true,
            headers: [versionHeader: .string(M.version.description)], typeMinorVersion: M.version.minor)
        return (ByteBuffer(bytes: body), properties)
    }

    /// Decodes a delivered message as `M`, refusing another type or another major version (a newer minor is
    /// accepted: its extra fields are ignored).
    public static func decode<M: RideMessage>(_ type: M.Type, from properties: MessageProperties, body: ByteBuffer) throws -> M {
        guard properties.type == M.type else {
            throw ContractError("expected a '\(M.type)' message, got '\(properties.type ?? "(no type)")'")
        }
        if let major = properties.typeVersion, major != M.version.major {
            throw ContractError("'\(M.type)' version \(major).x is not understood here (this consumer reads \(M.version.major).x)")
        }
        do {
            return try JSONDecoder().decode(M.self, from: Data(body.readableBytesView))
        } catch {
            throw ContractError("'\(M.type)' body does not match its contract: \(error)")
        }
    }

    public static func decode<M: RideMessage>(_ type: M.Type, from message: Message) throws -> M {
        try decode(type, from: message.properties, body: message.body)
    }

    /// The majors of `trip.requested` a reader of ``decodeTripRequested(from:)`` understands, as it states them
    /// when it subscribes (the broker then never hands it another major).
    public static let tripRequestedMajors = AcceptedVersions(TripRequested.type, majors: TripRequested.version.major...TripRequestedV2.version.major)

    /// A `trip.requested` of major 1 or 2, as 2.0.
    public static func decodeTripRequested(from message: Message) throws -> TripRequestedV2 {
        if message.properties.typeVersion == TripRequested.version.major {
            return TripRequestedV2(upgrading: try decode(TripRequested.self, from: message))
        }
        return try decode(TripRequestedV2.self, from: message)
    }

    /// How many times the dispatcher's queue has rejected this message before (the broker's `x-death` count for
    /// `queue` with reason `rejected`): the retry attempt, without any state of our own.
    public static func rejections(in properties: MessageProperties, queue: String) -> Int {
        guard case .array(let deaths)? = properties.headers?["x-death"] else { return 0 }
        for case .table(let death) in deaths where death["queue"] == .string(queue) && death["reason"] == .string("rejected") {
            return Int(death["count"]?.intValue ?? 1)
        }
        return 0
    }
}

extension JSONEncoder {
    /// Sorted keys, so the same message always has the same bytes.
    public static var ride: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }
}
