import Foundation
import NIOHTTP1
import Testing

/// The failures the flow must survive (docs/ride-services.md, "Failures").
@Suite("Ride services under faults", .serialized, .timeLimit(.minutes(3)))
struct RideFaultTests {
    @Test("kill -9 of the trip service after the commit, before the publish: the event goes out after the restart, dispatched once")
    func tripServiceCrashBeforePublish() async throws {
        var options = RideSystem.Options()
        options.tripExtra = ["--no-relay"]  // the outbox relay does not run: every committed event stays unpublished
        try await RideSystem.with(options) { system in
            let passenger = try await system.registerPassenger("Hal")
            _ = try await system.registerDriver("Ivy", lat: 52.52, lon: 13.40)
            let response = try await system.requestTrip(passenger: passenger, lat: 52.52, lon: 13.40)
            #expect(response.status == 201, "\(response.text)")
            let tripId = try response.string("id")
            // Committed together: the trip and its unpublished event.
            #expect(try await system.count("trip", "SELECT count(*) AS n FROM trips") == 1)
            #expect(try await system.count("trip", "SELECT count(*) AS n FROM outbox WHERE sent_ms IS NULL") == 1)

            try await system.restartTrip(kill9: true, extra: [])  // back with its relay
            try await waitUntil("the recovered event is dispatched") { try await system.tripStatus(tripId) == "dispatched" }
            #expect(try await system.count("trip", "SELECT count(*) AS n FROM outbox WHERE sent_ms IS NULL") == 0)
            #expect(try await system.count("dispatcher", "SELECT count(*) AS n FROM dispatches") == 1)
            try await waitUntil("the passenger is told once") { try await system.notifications(of: passenger).count == 1 }
        }
    }

    @Test("brokerd killed and restarted in the middle of a stream of trips: every trip dispatched, none twice")
    func brokerRestartMidStream() async throws {
        try await RideSystem.with { system in
            let trips = 30
            for index in 0..<trips {
                _ = try await system.registerDriver("driver-\(index)", lat: 52.52 + Double(index) * 0.0005, lon: 13.40)
            }
            var passengers: [String] = []
            var tripIds: [String] = []
            func request(_ index: Int) async throws {
                let passenger = try await system.registerPassenger("p\(index)")
                passengers.append(passenger)
                let response = try await system.requestTrip(passenger: passenger, lat: 52.52, lon: 13.40)
                #expect(response.status == 201, "trip \(index): \(response.text)")
                tripIds.append(try response.string("id"))
            }
            for index in 0..<(trips / 2) { try await request(index) }
            try system.broker.restart(kill9: true)
            // The trip service keeps accepting while its broker connection recovers: the outbox holds the events.
            for index in (trips / 2)..<trips { try await request(index) }
            try await waitUntil("every trip is dispatched", timeout: .seconds(60)) {
                var dispatched = 0
                for id in tripIds where try await system.tripStatus(id) == "dispatched" { dispatched += 1 }
                return dispatched == trips
            }
            #expect(try await system.count("dispatcher", "SELECT count(*) AS n FROM dispatches") == trips)
            #expect(try await system.count("dispatcher", "SELECT count(DISTINCT driver_id) AS n FROM dispatches") == trips)
            try await waitUntil("every passenger is told", timeout: .seconds(60)) {
                var told = 0
                for passenger in passengers where try await system.notifications(of: passenger).count == 1 { told += 1 }
                return told == trips
            }
            for passenger in passengers { #expect(try await system.notifications(of: passenger).count == 1) }
        }
    }

    @Test("the passenger service down or too slow: 503 with a JSON error, nothing stored, nothing published")
    func passengerServiceDown() async throws {
        try await RideSystem.with { system in
            let passenger = try await system.registerPassenger("Jo")
            // Down: nothing listens where the trip service looks (a port bound here and never listened on).
            let closed = try ClosedPort()
            try await system.restartTrip(kill9: false, extra: ["--passenger-url", "http://127.0.0.1:\(closed.port)", "--passenger-timeout-ms", "500"])
            let down = try await system.requestTrip(passenger: passenger, lat: 52.52, lon: 13.40)
            #expect(down.status == 503, "\(down.text)")
            #expect(down.problem.code == "passenger_service_unavailable")

            // Slow: a listener that accepts and never answers; the bounded timeout answers 503 for it.
            let silent = try SilentListener()
            try await system.restartTrip(kill9: false, extra: ["--passenger-url", "http://127.0.0.1:\(silent.port)", "--passenger-timeout-ms", "300"])
            let started = ContinuousClock.now
            let slow = try await system.requestTrip(passenger: passenger, lat: 52.52, lon: 13.40)
            #expect(slow.status == 503, "\(slow.text)")
            #expect(slow.problem.code == "passenger_service_unavailable")
            #expect(ContinuousClock.now - started >= .milliseconds(300), "the 503 came from the timeout, not from a refused connection")
            #expect(try await system.count("trip", "SELECT count(*) AS n FROM trips") == 0)
            #expect(try await system.count("trip", "SELECT count(*) AS n FROM outbox") == 0)
            silent.close()
            closed.close()
        }
    }

    @Test("bad input: malformed JSON, missing fields, wrong types, out-of-range values, an unknown passenger: 4xx naming the field, nothing stored")
    func badInput() async throws {
        try await RideSystem.with { system in
            let passenger = try await system.registerPassenger("Kim")
            let url = system.trip.url + "/v1/trips"
            let cases: [(String, Int, String, String?)] = [
                (#"{"passengerId": "#, 400, "malformed_json", nil),
                (#"{"passengerId":"\#(passenger)","destination":{"lat":1,"lon":2}}"#, 400, "missing_field", "pickup"),
                (#"{"passengerId":"\#(passenger)","pickup":{"lat":1},"destination":{"lat":1,"lon":2}}"#, 400, "missing_field", "pickup.lon"),
                (#"{"passengerId":"\#(passenger)","pickup":{"lat":"north","lon":2},"destination":{"lat":1,"lon":2}}"#, 400, "invalid_field", "pickup.lat"),
                (#"{"passengerId":42,"pickup":{"lat":1,"lon":2},"destination":{"lat":1,"lon":2}}"#, 400, "invalid_field", "passengerId"),
                (#"{"passengerId":"\#(passenger)","pickup":{"lat":91,"lon":2},"destination":{"lat":1,"lon":2}}"#, 400, "invalid_field", "pickup.lat"),
                (#"{"passengerId":"\#(passenger)","pickup":{"lat":1,"lon":2},"destination":{"lat":1,"lon":-181}}"#, 400, "invalid_field", "destination.lon"),
                (#"{"passengerId":"  ","pickup":{"lat":1,"lon":2},"destination":{"lat":1,"lon":2}}"#, 400, "invalid_field", "passengerId"),
                (#"{"passengerId":"p_nobody","pickup":{"lat":1,"lon":2},"destination":{"lat":1,"lon":2}}"#, 422, "unknown_passenger", "passengerId"),
            ]
            for (body, status, code, field) in cases {
                let response = try await system.http.request(.POST, url, raw: body)
                #expect(response.status == status, "\(body) → \(response.status) \(response.text)")
                #expect(response.problem.code == code, "\(body) → \(response.text)")
                #expect(response.problem.field == field, "\(body) → \(response.text)")
                #expect(response.headers["content-type"]?.hasPrefix("application/json") == true)
            }
            let noName = try await system.http.request(.POST, system.passenger.url + "/v1/passengers", raw: #"{"name":""}"#)
            #expect(noName.status == 400 && noName.problem.field == "name", "\(noName.text)")
            let badLocation = try await system.http.request(.PUT, system.driver.url + "/v1/drivers/d_nobody/location", raw: #"{"lat":1,"lon":2}"#)
            #expect(badLocation.status == 404 && badLocation.problem.code == "not_found", "\(badLocation.text)")
            let unknownTrip = try await system.http.request(.GET, system.trip.url + "/v1/trips/t_nothing")
            #expect(unknownTrip.status == 404 && unknownTrip.problem.code == "not_found", "\(unknownTrip.text)")
            #expect(try await system.count("trip", "SELECT count(*) AS n FROM trips") == 0)
            #expect(try await system.count("trip", "SELECT count(*) AS n FROM outbox") == 0)
            #expect(try await system.count("passenger", "SELECT count(*) AS n FROM passengers") == 1)
        }
    }
}

/// A loopback port bound and never listened on: a connection to it is refused, and no other process can take it.
final class ClosedPort: Sendable {
    let port: Int
    private let descriptor: Int32
    init() throws {
        (descriptor, port) = try bindLoopback(listen: false)
    }
    func close() { _ = Glibc.close(descriptor) }
}

/// A loopback listener that never accepts or answers: the kernel completes the handshake, the request goes
/// unanswered, and the client's timeout is what ends it.
final class SilentListener: Sendable {
    let port: Int
    private let descriptor: Int32
    init() throws {
        (descriptor, port) = try bindLoopback(listen: true)
    }
    func close() { _ = Glibc.close(descriptor) }
}

private func bindLoopback(listen shouldListen: Bool) throws -> (Int32, Int) {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw HarnessError("socket() failed: errno \(errno)") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else {
        _ = Glibc.close(descriptor)
        throw HarnessError("bind() failed: errno \(errno)")
    }
    if shouldListen { _ = listen(descriptor, 16) }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
    }
    return (descriptor, Int(UInt16(bigEndian: address.sin_port)))
}
