import BrokerClient
import Foundation
import NIOHTTP1
import RideContracts
import Testing
import WireProtocol

/// The ride-hailing flow end to end: real brokerd, real services, real HTTP and SQLite (docs/ride-services.md).
@Suite("Ride services end to end", .serialized, .timeLimit(.minutes(3)))
struct FlowTests {
    @Test("a trip goes through: 201 with Location, the nearest driver assigned, both apps notified live, the trip dispatched")
    func endToEnd() async throws {
        try await RideSystem.with { system in
            let passenger = try await system.registerPassenger("Ada")
            let near = try await system.registerDriver("Bo", lat: 52.5205, lon: 13.4095)
            let far = try await system.registerDriver("Cy", lat: 52.5400, lon: 13.4400)
            _ = try await system.registerDriver("Di", lat: 48.1372, lon: 11.5756)  // another city: outside the radius

            // Both apps hold their streams open before the trip is requested: delivery is live.
            let passengerStream = system.http.events(system.notification.url + "/v1/recipients/\(passenger)/notifications/stream")
            let driverStream = system.http.events(system.notification.url + "/v1/recipients/\(near)/notifications/stream")
            try await waitUntil("both streams are open") { passengerStream.isConnected && driverStream.isConnected }

            let response = try await system.requestTrip(passenger: passenger, lat: 52.5200, lon: 13.4050)
            #expect(response.status == 201, "\(response.text)")
            let tripId = try response.string("id")
            #expect(response.headers["location"] == "/v1/trips/\(tripId)")
            #expect(try response.string("status") == "requested")

            try await waitUntil("the passenger's app shows the assigned driver") { !passengerStream.events.isEmpty }
            try await waitUntil("the driver's app shows the offer") { !driverStream.events.isEmpty }
            let assigned = try #require(passengerStream.events.first?.json)
            #expect(assigned["kind"] as? String == "driver_assigned")
            #expect(assigned["tripId"] as? String == tripId)
            #expect((assigned["body"] as? String)?.contains("Bo") == true)
            #expect(passengerStream.events.first?.event == "notification")
            let offer = try #require(driverStream.events.first?.json)
            #expect(offer["kind"] as? String == "trip_offer")
            #expect(offer["tripId"] as? String == tripId)

            try await waitUntil("the trip is dispatched") { try await system.tripStatus(tripId) == "dispatched" }
            let trip = try await system.http.request(.GET, system.trip.url + "/v1/trips/\(tripId)")
            #expect(trip.json?["driverId"] as? String == near)
            let chosen = try await system.http.request(.GET, system.driver.url + "/v1/drivers/\(near)")
            try await waitUntil("the chosen driver is busy") {
                (try await system.http.request(.GET, system.driver.url + "/v1/drivers/\(near)")).json?["available"] as? Bool == false
            }
            #expect(chosen.status == 200)
            let other = try await system.http.request(.GET, system.driver.url + "/v1/drivers/\(far)")
            #expect(other.json?["available"] as? Bool == true)
            #expect(try await system.notifications(of: far).isEmpty)

            // The trip went out under ride.asyncapi.json's contract, which the services applied: the broker's census
            // names the trip service as the publisher of trip.requested 2.0, and the dispatcher of trip.dispatched.
            let census = try await BrokerConnection.withConnection(ClientConfiguration(port: system.broker.port)) {
                try await $0.contractCensus()
            }
            #expect(census.contains { $0.exchange == "ride.trips" && $0.type == "trip.requested" && $0.version == "2.0" && $0.client == "ride-trip" },
                    "\(census)")
            #expect(census.contains { $0.exchange == "ride.dispatch" && $0.type == "trip.dispatched" && $0.client == "ride-dispatcher" }, "\(census)")

            // An app that was offline gets what it missed when it reconnects, from its last event id.
            passengerStream.close()
            let replay = system.http.events(system.notification.url + "/v1/recipients/\(passenger)/notifications/stream",
                                            lastEventID: "0")
            try await waitUntil("the reconnected app receives the stored notification") { !replay.events.isEmpty }
            #expect(replay.events.first?.id == passengerStream.events.first?.id)
            replay.close()
            driverStream.close()
        }
    }

    @Test("two dispatcher instances share the work queue: every trip is dispatched exactly once")
    func competingDispatchers() async throws {
        var options = RideSystem.Options()
        options.dispatchers = 2
        try await RideSystem.with(options) { system in
            let trips = 24
            for index in 0..<trips {
                _ = try await system.registerDriver("driver-\(index)", lat: 52.52 + Double(index) * 0.0005, lon: 13.40)
            }
            var passengers: [String] = []
            var tripIds: [String] = []
            for index in 0..<trips {
                let passenger = try await system.registerPassenger("p\(index)")
                passengers.append(passenger)
                let response = try await system.requestTrip(passenger: passenger, lat: 52.52, lon: 13.40)
                #expect(response.status == 201, "\(response.text)")
                tripIds.append(try response.string("id"))
            }
            try await waitUntil("every trip is dispatched") {
                var dispatched = 0
                for id in tripIds where try await system.tripStatus(id) == "dispatched" { dispatched += 1 }
                return dispatched == trips
            }
            #expect(try await system.count("dispatcher", "SELECT count(*) AS n FROM dispatches") == trips)
            #expect(try await system.count("dispatcher", "SELECT count(DISTINCT driver_id) AS n FROM dispatches") == trips,
                    "no driver was given two trips")
            try await waitUntil("every passenger has been told") {
                var told = 0
                for passenger in passengers where try await system.notifications(of: passenger).count == 1 { told += 1 }
                return told == trips
            }
            // Exactly one notification each, and the trip outcomes published once each.
            for passenger in passengers { #expect(try await system.notifications(of: passenger).count == 1) }
            #expect(try await system.count("dispatcher", "SELECT count(*) AS n FROM outbox") == trips)
        }
    }

    @Test("no driver nearby: retried through the broker's TTL queue, then no_driver, and the passenger is told")
    func noDriver() async throws {
        var options = RideSystem.Options()
        options.retryDelayMs = 100
        options.dispatchAttempts = 3
        try await RideSystem.with(options) { system in
            let passenger = try await system.registerPassenger("Eve")
            let response = try await system.requestTrip(passenger: passenger, lat: 52.52, lon: 13.40)
            #expect(response.status == 201, "\(response.text)")
            let tripId = try response.string("id")
            try await waitUntil("the trip is no_driver") { try await system.tripStatus(tripId) == "no_driver" }
            #expect(try await system.count("dispatcher", "SELECT attempts AS n FROM dispatches WHERE trip_id = '\(tripId)'") == 3)
            try await waitUntil("the passenger is told") { try await system.notifications(of: passenger).count == 1 }
            #expect(try await system.notifications(of: passenger).first?["kind"] as? String == "no_driver")
        }
    }

    @Test("a dispatch outcome delivered twice (same message id) notifies once: the inbox deduplicates")
    func duplicateDeliveries() async throws {
        try await RideSystem.with { system in
            let passenger = try await system.registerPassenger("Fay")
            let connection = try await BrokerConnection.connect(ClientConfiguration(port: system.broker.port, clientName: "test"))
            try await connection.enableConfirms()
            let event = TripDispatched(tripId: "t_duplicate", passengerId: passenger, driverId: "d_x", driverName: "Gus",
                                       pickup: GeoPoint(lat: 52.52, lon: 13.4), destination: GeoPoint(lat: 52.5, lon: 13.3),
                                       distanceKm: 0.4, requestedAtMs: 0, attempts: 1)
            let (body, properties) = try RideEnvelope.encode(event, messageId: "trip.dispatched/t_duplicate")
            for _ in 0..<3 {
                try await connection.publish(routingKey: RideTopology.passengerDispatchQueue, body: body, properties: properties)
            }
            await connection.close()
            try await waitUntil("the passenger service has handled one copy and recognized two duplicates") {
                let duplicates = try await system.metric(system.passenger, "ride_messages_duplicate_total", consumer: "passenger")
                let handled = try await system.metric(system.passenger, "ride_messages_handled_total", consumer: "passenger")
                return duplicates == 2 && handled == 1
            }
            #expect(try await system.count("passenger", "SELECT count(*) AS n FROM outbox") == 1)
            try await waitUntil("the notification arrives") { try await system.notifications(of: passenger).count == 1 }
            #expect(try await system.notifications(of: passenger).count == 1)
        }
    }
}
