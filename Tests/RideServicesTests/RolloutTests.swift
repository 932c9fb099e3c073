import BrokerClient
import Foundation
import RideContracts
import Testing
import WireProtocol

/// Issue 15's story on the real services (brokerd executable, real HTTP, real databases): trip.requested 2.0, with
/// a new required field, rolled out while a 1.0 publisher still runs. The dispatcher reads both; the census names
/// the 1.0 publisher; 1.0 is deprecated and its publisher warned; retiring it is refused while that publisher is
/// connected, and accepted once the census is clear; trips go through at every step.
@Suite("Rolling out trip.requested 2.0 on the running services", .timeLimit(.minutes(5)))
struct RolloutTests {
    /// Sets the status of trip.requested 1.x in `contract`.
    static func settingV1(_ contract: ExchangeContract, _ status: TypeVersionContract.Status) throws -> ExchangeContract {
        var contract = contract
        let type = try #require(contract.types.firstIndex { $0.name == TripRequested.type })
        let version = try #require(contract.types[type].versions.firstIndex { $0.version.major == 1 })
        contract.types[type].versions[version].status = status
        contract.types[type].versions[version].sunset = "2027-06-30"
        return contract
    }

    static func dispatch(_ system: RideSystem, _ passenger: String, _ what: String) async throws {
        let response = try await system.requestTrip(passenger: passenger, lat: 52.5200, lon: 13.4050)
        #expect(response.status == 201, "\(what): \(response.text)")
        let id = try response.string("id")
        try await waitUntil("\(what) is dispatched") { try await system.tripStatus(id) == "dispatched" }
    }

    @Test("2.0 rolled out beside a 1.0 publisher: read by the dispatcher, counted, 1.0 deprecated with a warning, retired once nobody publishes it")
    func rollout() async throws {
        var options = RideSystem.Options()
        options.tripExtra = ["--trip-requested-version", "1"]  // a trip service not yet upgraded
        try await RideSystem.with(options) { system in
            let operator_ = ClientConfiguration(port: system.broker.port)  // guest: an administrator on loopback
            let passenger = try await system.registerPassenger("Ada")
            // Enough drivers nearby for every trip (an assigned driver is held out of further choices).
            for (index, name) in ["Bo", "Cy", "Di", "Ed"].enumerated() {
                _ = try await system.registerDriver(name, lat: 52.5205 + Double(index) * 0.001, lon: 13.4095)
            }

            // 1. The old trip service publishes 1.0; the dispatcher, accepting 1-2, dispatches it.
            try await Self.dispatch(system, passenger, "a 1.0 trip")
            let contract = try await BrokerConnection.withConnection(operator_) { ops in
                let census = try await ops.contractCensus(exchange: RideTopology.tripsExchange)
                #expect(census.contains { $0.role == "publisher" && $0.version == "1.0" && $0.client == "ride-trip" && $0.connected },
                        "the census names the 1.0 publisher: \(census)")
                #expect(census.contains { $0.role == "consumer" && $0.queue == RideTopology.dispatcherQueue && $0.version == "1-2"
                            && $0.client == "ride-dispatcher" }, "and the dispatcher, accepting both majors: \(census)")
                // 2. The operator deprecates 1.0.
                let deprecated = try Self.settingV1(try await ops.contract(of: RideTopology.tripsExchange), .deprecated)
                try await ops.applyContract(deprecated)
                return deprecated
            }

            // 3. The next 1.0 trip still goes through, and its publisher is told to upgrade (BrokerClient logs it).
            try await Self.dispatch(system, passenger, "a 1.0 trip after the deprecation")
            try await waitUntil("the trip service logged the deprecation notice") {
                system.trip.child.log.contains("trip.requested 1.0 on exchange 'ride.trips' is deprecated and will be refused from 2027-06-30")
            }

            // 4. Retiring 1.0 while the old service is connected is refused, naming it.
            let retired = try Self.settingV1(contract, .retired)
            try await BrokerConnection.withConnection(operator_) { ops in
                do {
                    try await ops.applyContract(retired)
                    Issue.record("retiring 1.0 in use was accepted")
                } catch let error as BrokerError {
                    #expect(error.code == .preconditionFailed)
                    #expect(error.message.contains("'ride-trip'") && error.message.contains("publishes trip.requested 1.0"), "\(error.message)")
                }
            }

            // 5. The trip service is upgraded: it now publishes 2.0 (and adds to the contract, never undoing the
            // deprecation).
            try await system.restartTrip(kill9: false, extra: [])
            try await Self.dispatch(system, passenger, "a 2.0 trip")
            try await BrokerConnection.withConnection(operator_) { ops in
                let census = try await ops.contractCensus(exchange: RideTopology.tripsExchange).filter { $0.role == "publisher" }
                #expect(census.contains { $0.version == "2.0" && $0.client == "ride-trip" && $0.connected }, "\(census)")
                #expect(!census.contains { $0.version == "1.0" && $0.connected }, "nobody connected publishes 1.0 any more: \(census)")
                #expect(census.contains { $0.version == "1.0" && !$0.connected }, "the old publisher stays listed as history: \(census)")
                let now = try await ops.contract(of: RideTopology.tripsExchange)
                #expect(now.type(TripRequested.type)?.version(major: 1)?.status == .deprecated, "the restarted service kept the deprecation")

                // 6. The census is clear: retiring 1.0 needs no force, and a 1.0 message is now refused.
                try await ops.applyContract(retired)
                try await ops.enableConfirms()
                let v1 = TripRequested(tripId: "t_old", passengerId: passenger, passengerName: "Ada", pickup: GeoPoint(lat: 52.52, lon: 13.405),
                                       destination: GeoPoint(lat: 52.5, lon: 13.4), requestedAtMs: 1)
                let (body, properties) = try RideEnvelope.encode(v1, messageId: "m-old")
                do {
                    try await ops.publish(exchange: RideTopology.tripsExchange, routingKey: TripRequested.type, body: body, properties: properties)
                    Issue.record("a retired 1.0 message was accepted")
                } catch let error as BrokerError {
                    #expect(error.code == .contractViolation)
                    #expect(error.message.contains("retired") && error.message.contains("use trip.requested 2.0"), "\(error.message)")
                }
            }

            // 7. Trips go on, in 2.0.
            try await Self.dispatch(system, passenger, "a 2.0 trip after the retirement")
        }
    }
}
