import BrokerClient
import BrokerCore
import Foundation
import Logging
import RideContracts
import Testing
import WireProtocol

/// ride.asyncapi.json is the one source of the ride services' message contracts: these tests hold the Swift
/// message types and the topology the services declare to what it says.
@Suite("The ride services' AsyncAPI document", .timeLimit(.minutes(2)))
struct ContractFileTests {
    static let point = GeoPoint(lat: 52.52, lon: 13.405)

    /// One encoded sample of every message type the services exchange, as the services encode them.
    static func samples() throws -> [(type: String, version: ContractVersion, body: JSONValue)] {
        func sample<M: RideMessage>(_ message: M) throws -> (String, ContractVersion, JSONValue) {
            let (body, _) = try RideEnvelope.encode(message, messageId: "m1", timestampMs: 1)
            return (M.type, M.version, try JSONValue.parse(body))
        }
        return [
            try sample(TripRequested(tripId: "t1", passengerId: "p1", passengerName: "Ada", pickup: point, destination: point, requestedAtMs: 1_700_000_000_000)),
            try sample(TripRequestedV2(tripId: "t1", passengerId: "p1", passengerName: "Ada", pickup: point, destination: point,
                                       requestedAtMs: 1_700_000_000_000, fareClass: .comfort)),
            try sample(TripDispatched(tripId: "t1", passengerId: "p1", driverId: "d1", driverName: "Bo", pickup: point, destination: point,
                                      distanceKm: 1.5, requestedAtMs: 1_700_000_000_000, attempts: 1)),
            try sample(TripNoDriver(tripId: "t1", passengerId: "p1", attempts: 3, requestedAtMs: 1_700_000_000_000)),
            try sample(DriverNearbyRequest(pickup: point, radiusKm: 5, limit: 3)),
            try sample(DriverNearbyReply(drivers: [.init(driverId: "d1", name: "Bo", location: point, distanceKm: 0.4)])),
            try sample(NotificationRequested(notificationId: "n1", recipientId: "p1", kind: .driverAssigned, title: "On the way",
                                             body: "Bo is coming", tripId: "t1", requestedAtMs: nil)),
        ]
    }

    @Test("every Swift message type has its message in the document, same name and version, and what it encodes matches the payload schema")
    func typesMatch() throws {
        let messages = try #require(RideAsyncAPI.json.value(atPointer: "/components/messages")?.objectValue)
        let samples = try Self.samples()
        #expect(messages.count == samples.count, "the document and the Swift types list the same messages")
        for sample in samples {
            let key = AsyncAPIDocument.messageKey(type: sample.type, major: sample.version.major)
            let message = try #require(messages[key], "\(key) is missing from ride.asyncapi.json")
            #expect(message.value(atPointer: "/name") == .string(sample.type))
            #expect(message.value(atPointer: "/x-brokerd-version") == .string(sample.version.description))
            let schema = try JSONSchema(try #require(message.value(atPointer: "/payload")))
            #expect(schema.check(sample.body) == nil, "\(sample.type): \(schema.check(sample.body)?.description ?? "")")
            // And the schema is not vacuous: an empty object does not match it.
            #expect(schema.check(.object([:])) != nil, "\(sample.type)'s schema accepts an empty object")
        }
    }

    @Test("the contracts are those of the ride exchanges, and trip.requested bodies are validated")
    func contracts() throws {
        let contracts = try RideAsyncAPI.document().contracts
        #expect(contracts.map(\.exchange) == [RideTopology.dispatchExchange, RideTopology.tripsExchange])
        let trips = try #require(contracts.first { $0.exchange == RideTopology.tripsExchange })
        #expect(trips.types.map(\.name) == [TripRequested.type])
        #expect(trips.types.first?.validatesPayload == true)
        #expect(trips.types.first?.versions.map(\.version) == [TripRequested.version, TripRequestedV2.version])
        let dispatch = try #require(contracts.first { $0.exchange == RideTopology.dispatchExchange })
        #expect(Set(dispatch.types.map(\.name)) == [TripDispatched.type, TripNoDriver.type])
    }

    @Test("what the services declare on a real brokerd is what the document says, contracts included")
    func topologyMatches() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ride-asyncapi-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let broker = try BrokerProcess(dataDirectory: directory)
        defer { broker.stop() }
        let declared = try await BrokerConnection.withConnection(ClientConfiguration(port: broker.port)) { connection in
            try await RideTopology.declare(on: connection, retryDelayMs: 2000, logger: .init(label: "test"))
            return try await connection.exportAsyncAPI()
        }
        let document = try RideAsyncAPI.document()
        #expect(Set(declared.exchanges) == Set(document.exchanges))
        #expect(Set(declared.queues) == Set(document.queues))
        #expect(Set(declared.bindings) == Set(document.bindings))
        #expect(declared.contracts == document.contracts)
    }
}
