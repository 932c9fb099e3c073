public import BrokerClient
public import Logging
public import WireProtocol

/// The ride services' interfaces over the broker, from `ride.asyncapi.json` (this target's one AsyncAPI 3.0
/// document, embedded at build time): the exchanges and queues, and the contracts of the message types, with the
/// schemas the broker checks `trip.requested` bodies against (docs/contracts.md, "The ride services").
///
/// The Swift types in Messages.swift are the services' view of the same messages; the tests check that both say
/// the same (every type and version here has its struct, and what the structs encode matches the schemas).
public enum RideAsyncAPI {
    /// The document as committed.
    public static let json: JSONValue = {
        do {
            return try PackageResources.ride_asyncapi_json.withUnsafeBytes { try JSONValue.parse($0) }
        } catch {
            // The file is part of the source and checked by the tests: a parse failure is a build defect.
            preconditionFailure("ride.asyncapi.json is not JSON: \(error)")
        }
    }()

    /// The document read as brokerd declarations.
    public static func document() throws(BrokerError) -> AsyncAPIDocument { try AsyncAPIDocument(json: json) }

    /// Gives the ride exchanges their contracts, adding to what the broker has (``BrokerConnection/declareContract(_:)``):
    /// a service release that brings a new major adds it, and a version an operator deprecated or retired stays
    /// so. A refusal the services can live with (no administrator rights: `ACCESS_REFUSED`; a change that would
    /// break connected clients: `PRECONDITION_FAILED`) is logged with what to do, and the service goes on with
    /// whatever contract the broker has; other errors are thrown.
    /// Over AMQP 0-9-1 (brokerd's AMQP listener, RabbitMQ) contracts cannot be applied at all: that is logged once and
    /// the service runs without them.
    public static func applyContracts(on connection: BrokerConnection, logger: Logger) async throws {
        guard connection.wireProtocol == .native else {
            logger.warning("message contracts are not applied over AMQP 0-9-1 (management needs brokerd's native protocol); on brokerd, apply Sources/RideContracts/ride.asyncapi.json with brokerctl contract apply")
            return
        }
        for contract in try document().contracts {
            do {
                try await connection.declareContract(contract)
            } catch let error as BrokerError where error.code == .accessRefused || error.code == .preconditionFailed {
                logger.warning("the contract of exchange '\(contract.exchange)' was not applied: \(error.message); apply Sources/RideContracts/ride.asyncapi.json with brokerctl contract apply as an administrator")
            }
        }
    }
}
