import AsyncHTTPClient
import BrokerClient
import Foundation
import NIOCore
import NIOHTTP1
import SQLiteNIO
import Synchronization
import Testing

/// The system under test, for real: the built `brokerd` and `ride` executables as subprocesses on loopback
/// ephemeral ports, each service with its SQLite database in a temporary directory, spoken to over HTTP.
enum Executables {
    static func path(_ name: String) throws -> String {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = directory.appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate.path }
            directory = directory.deletingLastPathComponent()
        }
        throw HarnessError("\(name) is not built next to the tests; run `swift build --build-tests` first")
    }
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A child process with its stderr in a file (a chatty child never blocks on a full pipe). Only this process is
/// ever signalled, and only while it runs.
final class Child: Sendable {
    let process: Process
    let name: String
    let logURL: URL

    init(name: String, executable: String, arguments: [String], environment: [String: String] = [:]) throws {
        self.name = name
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        logURL = FileManager.default.temporaryDirectory.appendingPathComponent("ride-test-\(name)-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        process.standardError = try FileHandle(forWritingTo: logURL)
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        self.process = process
    }

    var log: String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }
    var isRunning: Bool { process.isRunning }

    /// Waits (without blocking a thread) for a child that is expected to exit by itself; its exit status.
    func exitStatus(timeout: Duration = .seconds(30)) async throws -> Int32 {
        try await waitUntil("\(name) exits") { !process.isRunning }
        return process.terminationStatus
    }

    /// SIGTERM (graceful) or SIGKILL, then wait for the exit; returns the exit status (nil if it had exited).
    @discardableResult
    func stop(kill9: Bool = false) -> Int32? {
        guard process.isRunning else { return nil }
        kill(process.processIdentifier, kill9 ? SIGKILL : SIGTERM)
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit {
        stop(kill9: true)
        try? FileManager.default.removeItem(at: logURL)
    }
}

/// Polls `condition` until it holds, or fails the test naming `what` after `timeout` (20 s by default: generous
/// for a loaded machine, and only spent when something is wrong).
func waitUntil(_ what: String, timeout: Duration = .seconds(30), sourceLocation: SourceLocation = #_sourceLocation,
               _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(25))
    }
    if try await condition() { return }
    Issue.record("timed out waiting until \(what)", sourceLocation: sourceLocation)
    throw HarnessError("timed out waiting until \(what)")
}

/// brokerd on an ephemeral port (kept across restarts, so the services' clients reconnect to the same place).
final class BrokerProcess: Sendable {
    let dataDirectory: String
    let port: Int
    private let child: Mutex<Child>

    init(dataDirectory: String) throws {
        self.dataDirectory = dataDirectory
        let (child, port) = try Self.start(dataDirectory: dataDirectory, port: 0)
        self.port = port
        self.child = Mutex(child)
    }

    private static func start(dataDirectory: String, port: Int) throws -> (Child, Int) {
        let child = try Child(name: "brokerd", executable: try Executables.path("brokerd"), arguments: [
            "--port", "\(port)", "--data-dir", dataDirectory, "--log-level", "info", "--log-target", "stderr"])
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline && child.isRunning {
            if let line = child.log.split(separator: "\n").first(where: { $0.contains("brokerd ready") }),
               let range = line.range(of: " port="), let bound = Int(line[range.upperBound...].prefix(while: \.isNumber)) {
                return (child, bound)
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        let log = child.log
        child.stop(kill9: true)
        throw HarnessError("brokerd did not report ready; its log:\n\(log)")
    }

    /// kill -9 (or SIGTERM) and start again on the same port and data directory.
    func restart(kill9: Bool) throws {
        try child.withLock { child in
            child.stop(kill9: kill9)
            child = try Self.start(dataDirectory: dataDirectory, port: port).0
        }
    }

    func stop() { _ = child.withLock { $0.stop() } }
    var log: String { child.withLock { $0.log } }
}

/// One `ride <service>` process, with its HTTP port read from its port file.
final class ServiceProcess: Sendable {
    let service: String
    let port: Int
    let child: Child

    /// `broker`: the flags that say where the broker is (`--broker-port N`, or `--broker-url amqp://...`).
    init(_ service: String, broker: [String], dataDirectory: String, extra: [String] = []) async throws {
        self.service = service
        let portFile = FileManager.default.temporaryDirectory.appendingPathComponent("ride-port-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: portFile) }
        child = try Child(name: service, executable: try Executables.path("ride"), arguments: [
            service, "--port", "0", "--port-file", portFile, "--data-dir", dataDirectory,
        ] + broker + extra)
        let deadline = ContinuousClock.now + .seconds(30)
        var found: Int?
        while ContinuousClock.now < deadline && child.isRunning {
            if let text = try? String(contentsOfFile: portFile, encoding: .utf8), let value = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                found = value
                break
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        guard let found else {
            let log = child.log
            child.stop(kill9: true)
            throw HarnessError("ride \(service) did not start listening; its log:\n\(log)")
        }
        port = found
    }

    var url: String { "http://127.0.0.1:\(port)" }
}

/// The whole system: brokerd plus the five services (optionally a second dispatcher), each with its own data
/// directory under one temporary root.
final class RideSystem: Sendable {
    let root: String
    /// brokerd, unless the system runs against another broker (``Options/brokerURL``).
    let brokerProcess: BrokerProcess?
    /// The local brokerd. Only tests that started one use it (a system on an external broker has none).
    var broker: BrokerProcess {
        guard let brokerProcess else { preconditionFailure("this RideSystem runs against an external broker") }
        return brokerProcess
    }
    /// How the services are told where the broker is.
    let brokerFlags: [String]
    let passenger: ServiceProcess
    let driver: ServiceProcess
    let notification: ServiceProcess
    let dispatchers: [ServiceProcess]
    private let tripProcess: Mutex<ServiceProcess>
    /// The trip service's flags: `tripBase` always, plus the test's own.
    let tripBase: [String]
    let tripExtra: [String]
    let http: HTTP

    struct Options {
        var dispatchers = 1
        var retryDelayMs = 200
        var dispatchAttempts = 3
        var tripExtra: [String] = []
        /// Run against this broker (`amqp://...`: a RabbitMQ cluster) instead of starting brokerd; the services
        /// then also declare quorum queues.
        var brokerURL: String?
    }

    init(_ options: Options = Options()) async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("ride-system-\(UUID().uuidString)").path
        let http = HTTP()
        var brokerProcess: BrokerProcess?
        var started: [ServiceProcess] = []
        do {
            let brokerFlags: [String]
            if let url = options.brokerURL {
                brokerFlags = ["--broker-url", url, "--quorum-queues"]
            } else {
                let process = try BrokerProcess(dataDirectory: root + "/broker")
                brokerProcess = process
                brokerFlags = ["--broker-port", "\(process.port)"]
            }
            func start(_ service: String, _ directory: String, _ extra: [String]) async throws -> ServiceProcess {
                let process = try await ServiceProcess(service, broker: brokerFlags, dataDirectory: root + "/" + directory, extra: extra)
                started.append(process)
                return process
            }
            let common = ["--retry-delay-ms", "\(options.retryDelayMs)", "--dispatch-attempts", "\(options.dispatchAttempts)"]
            let passenger = try await start("passenger", "passenger", common)
            let driver = try await start("driver", "driver", common)
            let notification = try await start("notification", "notification", common)
            var dispatchers: [ServiceProcess] = []
            for _ in 0..<options.dispatchers {
                // The instances share one database: the decision for a trip is made once, whichever instance gets it.
                dispatchers.append(try await start("dispatcher", "dispatcher", common))
            }
            let tripBase = common + ["--passenger-url", "http://127.0.0.1:\(passenger.port)"]
            let tripExtra = tripBase + options.tripExtra
            let trip = try await start("trip", "trip", tripExtra)
            self.root = root
            self.http = http
            self.brokerProcess = brokerProcess
            self.brokerFlags = brokerFlags
            self.passenger = passenger
            self.driver = driver
            self.notification = notification
            self.dispatchers = dispatchers
            self.tripBase = tripBase
            self.tripExtra = tripExtra
            self.tripProcess = Mutex(trip)
        } catch {
            // A service that did not start: stop what did, so nothing outlives the test.
            for process in started { _ = process.child.stop(kill9: true) }
            brokerProcess?.stop()
            try? await http.client.shutdown()
            try? FileManager.default.removeItem(atPath: root)
            throw error
        }
    }

    var trip: ServiceProcess { tripProcess.withLock { $0 } }

    /// Stops the trip service (kill -9 or SIGTERM) and starts it again on the same data directory; `extra`
    /// replaces the trip-only flags.
    func restartTrip(kill9: Bool, extra: [String]? = nil) async throws {
        trip.child.stop(kill9: kill9)
        let flags = extra.map { tripBase + $0 } ?? tripExtra
        let fresh = try await ServiceProcess("trip", broker: brokerFlags, dataDirectory: root + "/trip", extra: flags)
        tripProcess.withLock { $0 = fresh }
    }

    func shutdown() async {
        for process in [trip] + dispatchers + [notification, driver, passenger] {
            // A graceful stop ends cleanly: open streams closed, consumers drained, the broker connection closed.
            let status = process.child.stop()
            #expect(status == 0 || status == nil, "ride \(process.service) exited \(status.map(String.init) ?? "-") on SIGTERM:\n\(process.child.log)")
        }
        brokerProcess?.stop()
        try? await http.client.shutdown()
        try? FileManager.default.removeItem(atPath: root)
    }

    /// Runs `body` with a fresh system and always shuts it down.
    static func with<T>(_ options: Options = Options(), _ body: (RideSystem) async throws -> T) async throws -> T {
        let system = try await RideSystem(options)
        do {
            let result = try await body(system)
            await system.shutdown()
            return result
        } catch {
            await system.dumpLogs()
            await system.shutdown()
            throw error
        }
    }

    /// On failure, the tail of every log goes into the test output.
    func dumpLogs() async {
        for process in [trip, passenger, driver, notification] + dispatchers {
            let lines = process.child.log.split(separator: "\n")
            // A crash's first lines say why; its backtrace would push them out of the tail.
            let fatal = lines.filter { $0.contains("Fatal error") || $0.contains("Crash") }
            print("---- ride \(process.service) log (tail) ----\n" + (fatal + lines.suffix(30)).joined(separator: "\n"))
        }
        if let brokerProcess {
            print("---- brokerd log (tail) ----\n" + brokerProcess.log.split(separator: "\n").suffix(20).joined(separator: "\n"))
        }
    }

    // MARK: - The public API, as an app would call it

    func registerPassenger(_ name: String) async throws -> String {
        let response = try await http.request(.POST, passenger.url + "/v2/passengers", json: ["displayName": name])
        #expect(response.status == 201, "\(response.text)")
        return try response.string("id")
    }

    func registerDriver(_ name: String, lat: Double, lon: Double) async throws -> String {
        let response = try await http.request(.POST, driver.url + "/v1/drivers", json: ["name": name, "location": ["lat": lat, "lon": lon]])
        #expect(response.status == 201, "\(response.text)")
        return try response.string("id")
    }

    func requestTrip(passenger: String, lat: Double, lon: Double) async throws -> HTTP.Response {
        try await http.request(.POST, trip.url + "/v1/trips", json: [
            "passengerId": passenger, "pickup": ["lat": lat, "lon": lon], "destination": ["lat": lat + 0.05, "lon": lon + 0.05],
        ])
    }

    func tripStatus(_ id: String) async throws -> String? {
        let response = try await http.request(.GET, trip.url + "/v1/trips/\(id)")
        return response.status == 200 ? try response.string("status") : nil
    }

    func notifications(of recipient: String) async throws -> [[String: Any]] {
        let response = try await http.request(.GET, notification.url + "/v1/recipients/\(recipient)/notifications?limit=1000")
        return (response.json?["notifications"] as? [[String: Any]]) ?? []
    }

    /// A service's SQLite database, read beside the running service (WAL lets readers in).
    func query(_ service: String, _ sql: String) async throws -> [SQLiteRow] {
        let connection = try await SQLiteConnection.open(storage: .file(path: "\(root)/\(service)/\(service).sqlite"))
        do {
            let rows = try await connection.query(sql)
            try await connection.close()
            return rows
        } catch {
            try? await connection.close()
            throw error
        }
    }

    /// A counter from a service's `GET /metrics` (Prometheus text), by name and `consumer` label.
    func metric(_ process: ServiceProcess, _ name: String, consumer: String) async throws -> Double? {
        let text = try await http.request(.GET, process.url + "/metrics").text
        for line in text.split(separator: "\n") where line.hasPrefix(name + "{") && line.contains("consumer=\"\(consumer)\"") {
            return line.split(separator: " ").last.flatMap { Double($0) }
        }
        return nil
    }

    func count(_ service: String, _ sql: String) async throws -> Int {
        Int(try await query(service, sql).first?.column("n")?.integer ?? -1)
    }
}

/// A small JSON-over-HTTP client on AsyncHTTPClient.
final class HTTP: Sendable {
    let client = HTTPClient(eventLoopGroupProvider: .singleton)

    struct Response: Sendable {
        var status: Int
        var headers: [String: String]
        var text: String
        var json: [String: Any]? {
            (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
        }
        func string(_ key: String) throws -> String {
            guard let value = json?[key] as? String else { throw HarnessError("no string '\(key)' in \(text)") }
            return value
        }
        /// The error body's code and field.
        var problem: (code: String?, field: String?) {
            let error = json?["error"] as? [String: Any]
            return (error?["code"] as? String, error?["field"] as? String)
        }
    }

    func request(_ method: HTTPMethod, _ url: String, json: [String: Any]? = nil, raw: String? = nil,
                 timeout: TimeAmount = .seconds(15)) async throws -> Response {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let json {
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json)))
        } else if let raw {
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: raw))
        }
        let response = try await client.execute(request, timeout: timeout)
        let body = try await response.body.collect(upTo: 4 << 20)
        var headers: [String: String] = [:]
        for header in response.headers { headers[header.name.lowercased()] = header.value }
        return Response(status: Int(response.status.code), headers: headers, text: String(buffer: body))
    }

    /// Opens a Server-Sent Events stream and collects its events as they arrive.
    func events(_ url: String, lastEventID: String? = nil) -> EventStream {
        EventStream(client: client, url: url, lastEventID: lastEventID)
    }
}

/// An open SSE stream: `events` grows as events arrive; `close()` hangs up.
final class EventStream: Sendable {
    struct Event: Sendable {
        var id: String?
        var event: String?
        var data: String
        var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: Data(data.utf8))) as? [String: Any] }
    }

    private let received = Mutex<[Event]>([])
    private let connected = Atomic<Bool>(false)
    private let task = Mutex<Task<Void, Never>?>(nil)

    init(client: HTTPClient, url: String, lastEventID: String?) {
        let started = Task { [weak self] in
            var request = HTTPClientRequest(url: url)
            request.headers.add(name: "accept", value: "text/event-stream")
            if let lastEventID { request.headers.add(name: "last-event-id", value: lastEventID) }
            do {
                let response = try await client.execute(request, timeout: .seconds(600))
                var pending = ""
                for try await chunk in response.body {
                    pending += String(buffer: chunk)
                    while let range = pending.range(of: "\n\n") {
                        let block = String(pending[..<range.lowerBound])
                        pending.removeSubrange(..<range.upperBound)
                        self?.parse(block)
                    }
                }
            } catch {}
        }
        task.withLock { $0 = started }
    }

    private func parse(_ block: String) {
        var event = Event(data: "")
        var hasData = false
        for line in block.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix(":") {
                connected.store(true, ordering: .relaxed)  // a comment: the server's hello or a keep-alive
                continue
            }
            if line.hasPrefix("id: ") { event.id = String(line.dropFirst(4)) }
            if line.hasPrefix("event: ") { event.event = String(line.dropFirst(7)) }
            if line.hasPrefix("data: ") {
                event.data += (hasData ? "\n" : "") + line.dropFirst(6)
                hasData = true
            }
        }
        if hasData { received.withLock { $0.append(event) } }
    }

    var events: [Event] { received.withLock { $0 } }
    /// True once the server's first comment arrived: the stream is subscribed.
    var isConnected: Bool { connected.load(ordering: .relaxed) }

    func close() { task.withLock { $0?.cancel() } }
    deinit { close() }
}
