import ArgumentParser
import AsyncHTTPClient
import BrokerClient
import Foundation
import Histogram
import NIOCore
import NIOHTTP1
import RideContracts
import Synchronization

/// `ridesim`: drives the ride services like a city of apps: registers passengers and drivers, keeps drivers moving
/// (and free again after their trips), requests trips at a steady rate, then a burst, then steady again, and
/// reports what the passengers saw. Every trip is followed to its outcome: a trip never decided, or decided twice
/// (two notifications), is a violation and fails the run (exit 1).
///
/// The load is open-loop: each request is due at its scheduled time whatever the previous ones did, and its latency
/// is measured from that time, so a stall shows in the figures instead of slowing the load (no coordinated omission).
@main
struct RideSim: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ridesim",
        abstract: "Load the ride services: steady trips, a burst, steady again; latencies, queue depth, lost and doubled trips.")

    @Option(help: "The trip service.") var tripUrl = "http://127.0.0.1:8080"
    @Option(help: "The passenger service.") var passengerUrl = "http://127.0.0.1:8081"
    @Option(help: "The driver service.") var driverUrl = "http://127.0.0.1:8082"
    @Option(help: "The notification service.") var notificationUrl = "http://127.0.0.1:8083"
    @Option(help: "brokerd's port (queue depths are read over the management protocol).") var brokerPort = 5680
    @Option(help: "The broker user (an administrator, to list queues).") var brokerUser = "guest"
    @Option(help: "The broker password.") var brokerPassword = "guest"
    @Option(help: "Passengers (each holds a notification stream open).") var passengers = 100
    @Option(help: "Drivers, moving around the pickup area.") var drivers = 1000
    @Option(help: "Trips per second in the steady phases.") var rate = 20.0
    @Option(help: "The burst's rate as a multiple of --rate.") var burstFactor = 10.0
    @Option(help: "Seconds of steady load before the burst.") var steadySeconds = 20
    @Option(help: "Seconds of burst.") var burstSeconds = 30
    @Option(help: "Seconds of steady load after the burst.") var afterSeconds = 30
    @Option(help: "Seconds to wait after the load for every trip to be decided.") var drainTimeout = 180
    @Option(help: "Requests in flight at most (beyond it a request waits, and its wait counts in its latency).") var maxInFlight = 256
    @Option(help: "Write the per-second time series here (CSV).") var csv: String?

    func validate() throws {
        guard passengers >= 1, drivers >= 1 else { throw ValidationError("--passengers and --drivers must be at least 1") }
        guard rate > 0, burstFactor >= 1 else { throw ValidationError("--rate must be positive and --burst-factor at least 1") }
        guard steadySeconds >= 0, burstSeconds >= 0, afterSeconds >= 0, drainTimeout >= 1 else {
            throw ValidationError("the phase lengths must not be negative")
        }
        guard maxInFlight >= 1 else { throw ValidationError("--max-in-flight must be at least 1") }
    }

    func run() async throws {
        let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(
            connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: maxInFlight)))
        let broker = try await BrokerConnection.connect(ClientConfiguration(port: brokerPort, user: brokerUser, password: brokerPassword,
                                                                            clientName: "ridesim"))
        let sim = Simulation(http: http, options: self)
        do {
            try await sim.run(broker: broker)
        } catch {
            await broker.close()
            try? await http.shutdown()
            throw error
        }
        await broker.close()
        try? await http.shutdown()
        if sim.violations > 0 { throw ExitCode(1) }
    }
}

/// One second of the run.
struct Second: Sendable {
    var accepted = 0
    var failed = 0
    var postLatency = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)  // µs
    var notifyLatency = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
    var notified = 0
    var queueDepth = 0
    var retryDepth = 0
    var phase = ""
}

final class Simulation: Sendable {
    let http: HTTPClient
    let options: RideSim
    let center = GeoPoint(lat: 52.5200, lon: 13.4050)
    private let state = Mutex(State())

    struct State {
        var seconds: [Second] = []
        var start = ContinuousClock.now
        /// Accepted trips: when the request was due.
        var trips: [String: ContinuousClock.Instant] = [:]
        /// Notifications per trip seen on the passengers' streams.
        var notified: [String: Int] = [:]
        var outcomes: [String: String] = [:]
        var postAll = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
        var postBurst = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
        var postSteady = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
        var notifyAll = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
        var failures = 0
        var violations: [String] = []
    }

    init(http: HTTPClient, options: RideSim) {
        self.http = http
        self.options = options
    }

    var violations: Int { state.withLock { $0.violations.count } }

    private func second(_ at: ContinuousClock.Instant, _ update: (inout Second) -> Void) {
        state.withLock { state in
            let index = max(0, Int(((at - state.start) / .seconds(1)).rounded(.down)))
            while state.seconds.count <= index { state.seconds.append(Second()) }
            update(&state.seconds[index])
        }
    }

    func run(broker: BrokerConnection) async throws {
        print("ridesim: registering \(options.passengers) passengers and \(options.drivers) drivers")
        let passengerIds = try await register(count: options.passengers) { index in
            try await self.post(self.options.passengerUrl + "/v2/passengers", ["displayName": "passenger \(index)"])
        }
        let driverIds = try await register(count: options.drivers) { index in
            var generator = SystemRandomNumberGenerator()
            let lat = self.center.lat + Double.random(in: -0.02...0.02, using: &generator)
            let lon = self.center.lon + Double.random(in: -0.03...0.03, using: &generator)
            return try await self.post(self.options.driverUrl + "/v1/drivers", ["name": "driver \(index)", "location": ["lat": lat, "lon": lon]])
        }
        let streams = passengerIds.map { id in Task { await self.listen(passenger: id) } }
        try await Task.sleep(for: .seconds(1))  // the streams connect
        state.withLock { $0.start = .now }
        let sampler = Task { await self.sampleQueues(broker) }
        let mover = Task { await self.moveDrivers(driverIds) }

        let phases: [(String, Double, Int)] = [
            ("steady", options.rate, options.steadySeconds), ("burst", options.rate * options.burstFactor, options.burstSeconds),
            ("after", options.rate, options.afterSeconds),
        ]
        print("ridesim: load: " + phases.map { "\($0.0) \($0.2) s at \($0.1)/s" }.joined(separator: ", "))
        let gate = InFlightGate(limit: options.maxInFlight)
        await withTaskGroup(of: Void.self) { group in
            var due = ContinuousClock.now
            var index = 0
            for (name, rate, seconds) in phases where seconds > 0 {
                let interval = Duration.nanoseconds(Int64(1e9 / rate))
                let end = due + .seconds(seconds)
                while due < end {
                    let at = due
                    try? await Task.sleep(until: at, clock: .continuous)
                    second(at) { $0.phase = name }
                    await gate.enter()
                    let passenger = passengerIds[index % passengerIds.count]
                    index += 1
                    group.addTask {
                        await self.requestTrip(passenger: passenger, due: at, phase: name)
                        gate.leave()
                    }
                    due += interval
                }
            }
        }
        print("ridesim: load done; waiting for every trip's outcome")
        let deadline = ContinuousClock.now + .seconds(options.drainTimeout)
        while ContinuousClock.now < deadline {
            let (accepted, told) = state.withLock { state in (state.trips.count, state.trips.keys.filter { state.notified[$0] != nil }.count) }
            if told == accepted { break }
            try await Task.sleep(for: .milliseconds(250))
        }
        try await Task.sleep(for: .seconds(2))  // a late duplicate would show now
        sampler.cancel()
        mover.cancel()
        for stream in streams { stream.cancel() }
        try await checkOutcomes()
        try report()
    }

    // MARK: Parts

    private func register(count: Int, _ make: @escaping @Sendable (Int) async throws -> String) async throws -> [String] {
        try await withThrowingTaskGroup(of: String.self) { group in
            var ids: [String] = []
            for index in 0..<count {
                if index >= 32 { if let id = try await group.next() { ids.append(id) } }
                group.addTask { try await make(index) }
            }
            for try await id in group { ids.append(id) }
            return ids
        }
    }

    private func post(_ url: String, _ json: [String: Any]) async throws -> String {
        let (status, body, _) = try await send(.POST, url, json)
        guard status == 201, let object = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any],
              let id = object["id"] as? String
        else { throw ValidationError("POST \(url) answered \(status): \(body)") }
        return id
    }

    private func send(_ method: HTTPMethod, _ url: String, _ json: [String: Any]?) async throws -> (Int, String, HTTPClientResponse) {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let json {
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json)))
        }
        let response = try await http.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), String(buffer: body), response)
    }

    private func requestTrip(passenger: String, due: ContinuousClock.Instant, phase: String) async {
        var generator = SystemRandomNumberGenerator()
        let pickup = ["lat": center.lat + Double.random(in: -0.015...0.015, using: &generator),
                      "lon": center.lon + Double.random(in: -0.02...0.02, using: &generator)]
        let destination = ["lat": center.lat + 0.03, "lon": center.lon - 0.02]
        do {
            let (status, body, _) = try await send(.POST, options.tripUrl + "/v1/trips",
                                                   ["passengerId": passenger, "pickup": pickup, "destination": destination])
            let micros = UInt64(max(0, (ContinuousClock.now - due) / .microseconds(1)))
            guard status == 201, let object = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any],
                  let id = object["id"] as? String
            else {
                second(due) { $0.failed += 1 }
                state.withLock { $0.failures += 1 }
                return
            }
            second(due) { second in
                second.accepted += 1
                _ = second.postLatency.record(micros)
            }
            state.withLock { state in
                state.trips[id] = due
                _ = state.postAll.record(micros)
                if phase == "burst" { _ = state.postBurst.record(micros) } else { _ = state.postSteady.record(micros) }
            }
        } catch {
            second(due) { $0.failed += 1 }
            state.withLock { $0.failures += 1 }
        }
    }

    /// Holds a passenger's notification stream open, reconnecting from the last event id if it drops.
    private func listen(passenger: String) async {
        var lastId: String?
        while !Task.isCancelled {
            var request = HTTPClientRequest(url: options.notificationUrl + "/v1/recipients/\(passenger)/notifications/stream")
            if let lastId { request.headers.add(name: "last-event-id", value: lastId) }
            do {
                let response = try await http.execute(request, timeout: .seconds(3600))
                var pending = ""
                for try await chunk in response.body {
                    pending += String(buffer: chunk)
                    while let range = pending.range(of: "\n\n") {
                        let block = pending[..<range.lowerBound]
                        pending.removeSubrange(..<range.upperBound)
                        var data: Substring?
                        for line in block.split(separator: "\n") {
                            if line.hasPrefix("id: ") { lastId = String(line.dropFirst(4)) }
                            if line.hasPrefix("data: ") { data = line.dropFirst(6) }
                        }
                        if let data { received(String(data)) }
                    }
                }
            } catch {
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    private func received(_ json: String) {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any],
              let trip = object["tripId"] as? String, let kind = object["kind"] as? String else { return }
        let now = ContinuousClock.now
        let due = state.withLock { state -> ContinuousClock.Instant? in
            state.notified[trip, default: 0] += 1
            state.outcomes[trip] = kind
            return state.trips[trip]
        }
        guard let due else { return }  // a trip whose 201 has not been seen yet is matched by the outcome check
        let micros = UInt64(max(0, (now - due) / .microseconds(1)))
        second(now) { second in
            second.notified += 1
            _ = second.notifyLatency.record(micros)
        }
        state.withLock { _ = $0.notifyAll.record(micros) }
    }

    private func sampleQueues(_ broker: BrokerConnection) async {
        while !Task.isCancelled {
            if let queues = try? await broker.listQueues() {
                let work = queues.first { $0.name == RideTopology.dispatcherQueue }
                let retry = queues.first { $0.name == RideTopology.retryQueue }
                second(.now) { second in
                    second.queueDepth = max(second.queueDepth, Int(work?.messages ?? 0))
                    second.retryDepth = max(second.retryDepth, Int(retry?.messages ?? 0))
                }
            }
            try? await Task.sleep(for: .milliseconds(250))
        }
    }

    /// Drivers move a little and finish their trips: every driver reports every few seconds, free again.
    private func moveDrivers(_ ids: [String]) async {
        var generator = SystemRandomNumberGenerator()
        var index = 0
        while !Task.isCancelled {
            for _ in 0..<max(1, ids.count / 10) {
                let id = ids[index % ids.count]
                index += 1
                let location: [String: Any] = ["lat": center.lat + Double.random(in: -0.02...0.02, using: &generator),
                                                "lon": center.lon + Double.random(in: -0.03...0.03, using: &generator), "available": true]
                _ = try? await send(.PUT, options.driverUrl + "/v1/drivers/\(id)/location", location)
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
    }

    /// Every accepted trip decided, and told once.
    private func checkOutcomes() async throws {
        let (trips, notified) = state.withLock { ($0.trips, $0.notified) }
        var violations: [String] = []
        for (trip, _) in trips {
            let count = notified[trip] ?? 0
            if count > 1 { violations.append("trip \(trip): the passenger was told \(count) times") }
            let (status, body, _) = try await send(.GET, options.tripUrl + "/v1/trips/\(trip)", nil)
            let object = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]
            let outcome = object?["status"] as? String
            if status != 200 { violations.append("trip \(trip): GET answered \(status)") }
            else if outcome == "requested" { violations.append("trip \(trip): still requested after the drain") }
            else if count == 0 { violations.append("trip \(trip): \(outcome ?? "?") but the passenger was never told") }
        }
        state.withLock { $0.violations = violations }
    }

    private func report() throws {
        let state = state.withLock { $0 }
        func ms(_ histogram: Histogram<UInt64>, _ percentile: Double) -> String {
            histogram.totalCount == 0 ? "-" : String(format: "%.1f", Double(histogram.valueAtPercentile(percentile)) / 1000)
        }
        let dispatched = state.outcomes.values.filter { $0 == "driver_assigned" }.count
        let noDriver = state.outcomes.values.filter { $0 == "no_driver" }.count
        let peak = state.seconds.map(\.queueDepth).max() ?? 0
        let loadSeconds = Double(options.steadySeconds + options.burstSeconds + options.afterSeconds)
        print("""
            ridesim: \(state.trips.count) trips accepted (\(String(format: "%.1f", Double(state.trips.count) / max(1, loadSeconds)))/s over the load), \
            \(state.failures) refused or failed
            ridesim: outcomes: \(dispatched) dispatched, \(noDriver) no_driver; violations (lost or doubled): \(state.violations.count)
            ridesim: POST /v1/trips ms: p50 \(ms(state.postAll, 50)) p99 \(ms(state.postAll, 99)) \
            (steady p50 \(ms(state.postSteady, 50)) p99 \(ms(state.postSteady, 99)); burst p50 \(ms(state.postBurst, 50)) p99 \(ms(state.postBurst, 99)))
            ridesim: request to notification ms: p50 \(ms(state.notifyAll, 50)) p99 \(ms(state.notifyAll, 99))
            ridesim: dispatcher queue peak depth \(peak)
            """)
        for violation in state.violations.prefix(20) { print("ridesim: VIOLATION \(violation)") }
        if let csv = options.csv {
            var text = "second,phase,accepted,failed,post_p50_ms,post_p99_ms,notified,notify_p50_ms,notify_p99_ms,queue_depth,retry_depth\n"
            for (index, second) in state.seconds.enumerated() {
                text += "\(index),\(second.phase),\(second.accepted),\(second.failed),\(ms(second.postLatency, 50)),\(ms(second.postLatency, 99)),"
                text += "\(second.notified),\(ms(second.notifyLatency, 50)),\(ms(second.notifyLatency, 99)),\(second.queueDepth),\(second.retryDepth)\n"
            }
            try Data(text.utf8).write(to: URL(fileURLWithPath: csv))
            print("ridesim: time series written to \(csv)")
        }
    }
}

/// At most `limit` requests in flight; a request beyond it waits (and its wait is part of its latency).
final class InFlightGate: Sendable {
    private struct State {
        var inFlight = 0
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())
    let limit: Int
    init(limit: Int) { self.limit = limit }

    func enter() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.inFlight < limit {
                    state.inFlight += 1
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    func leave() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if state.waiters.isEmpty {
                state.inFlight -= 1
                return nil
            }
            return state.waiters.removeFirst()
        }
        next?.resume()
    }
}
