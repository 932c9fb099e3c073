import BrokerClient
import Foundation
import NIOCore
import Testing
import WireProtocol

/// Tests against the built `brokerd` and `brokerctl` executables, run as subprocesses.
@Suite("The brokerd executable", .serialized, .timeLimit(.minutes(2)))
struct DaemonTests {
    /// The directory holding the built products (beside the test bundle).
    static var productsDirectory: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    }

    static func executable(_ name: String) throws -> URL {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = directory.appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        throw BrokerError(.notFound, "\(name) is not built next to the tests; run `swift build` first")
    }

    /// A started brokerd's log (its stderr, sent to a file so a chatty broker never blocks on a full pipe).
    struct DaemonLog {
        let url: URL
        var text: String { (try? String(contentsOf: url, encoding: .utf8)) ?? "" }
    }

    /// Starts brokerd on an ephemeral port with the given data directory and returns it with its port and log.
    static func startDaemon(dataDirectory: URL, fileSizeLimitKiB: Int? = nil, environment: [String: String] = [:],
                            extraArguments: [String] = []) throws -> (Process, Int, DaemonLog) {
        let process = Process()
        let arguments = ["--port", "0", "--data-dir", dataDirectory.path, "--log-level", "info", "--log-target", "stderr"] + extraArguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new } }
        if let fileSizeLimitKiB {
            // Through bash, so `ulimit -f` makes the kernel refuse writes past the limit (a real failing disk write).
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            process.arguments = ["-c", "ulimit -f \(fileSizeLimitKiB) && exec \"$0\" \"$@\"", try executable("brokerd").path] + arguments
        } else {
            process.executableURL = try executable("brokerd")
            process.arguments = arguments
        }
        let log = DaemonLog(url: FileManager.default.temporaryDirectory.appendingPathComponent("brokerd-log-\(UUID().uuidString).txt"))
        _ = FileManager.default.createFile(atPath: log.url.path, contents: nil)
        process.standardError = try FileHandle(forWritingTo: log.url)
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // Wait for the ready line, which names the port.
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline && process.isRunning {
            if let line = log.text.split(separator: "\n").first(where: { $0.contains("brokerd ready") }),
               let range = line.range(of: " port="),
               let port = Int(line[range.upperBound...].prefix(while: \.isNumber)) {
                return (process, port, log)
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        if process.isRunning { process.terminate() }
        throw BrokerError(.timeout, "brokerd did not report ready; its log:\n\(log.text)")
    }

    /// Runs `body` with a brokerd started on a fresh data directory; stops it (if still running) and removes the
    /// directory afterwards. Only this process's own child is signalled, and only while it runs.
    static func withDaemon<T>(_ body: (Process, Int, DaemonLog) async throws -> T) async throws -> T {
        let dataDirectory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        let (process, port, log) = try startDaemon(dataDirectory: dataDirectory)
        defer { stop(process) }
        return try await body(process, port, log)
    }

    /// SIGTERM and wait, unless it has already exited (its PID may then belong to someone else).
    static func stop(_ process: Process) {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
    }

    static func temporaryDirectory() -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("brokerd-test-\(UUID().uuidString)")
    }

    @Test("brokerd serves clients and shuts down cleanly on SIGTERM")
    func daemonLifecycle() async throws {
        let dataDirectory = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        let (process, port, daemonLog) = try Self.startDaemon(dataDirectory: dataDirectory)
        #expect(FileManager.default.fileExists(atPath: dataDirectory.path))
        do {
            try await withConnection(ClientConfiguration(port: port)) { c in
                #expect(c.serverName.hasPrefix("brokerd"))
                try await c.declareQueue("rides")
                try await c.enableConfirms()
                try await c.publish(routingKey: "rides", body: "from a real daemon")
                #expect(try await c.get(queue: "rides", noAck: true)?.bodyString == "from a real daemon")
            }
        } catch {
            process.terminate()
            throw error
        }
        let watcher = try await BrokerConnection.connect(withoutRecovery(ClientConfiguration(port: port)))
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(daemonLog.text.contains("shutting down"))
        await watcher.closed()
    }

    @Test("brokerctl status reports the broker and fails clearly when it cannot connect")
    func brokerctlStatus() async throws {
        try await Self.withDaemon { process, port, _ in
        let (ok, okOut, _) = try Self.run("brokerctl", ["status", "--port", "\(port)", "--format", "json"])
        #expect(ok == 0)
        let json = try JSONSerialization.jsonObject(with: Data(okOut.utf8)) as? [String: Any]
        #expect(json?["version"] as? String != nil)
        #expect(json?["connections"] as? Int == 1)

        let (refused, _, refusedErr) = try Self.run("brokerctl", ["status", "--port", "\(port)", "--password", "wrong"])
        #expect(refused == 77)
        #expect(refusedErr.contains("access refused"))

        process.terminate()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let nothing = try ReservedPort()  // bound, not listening: refused, whatever other tests run meanwhile
        defer { nothing.release() }
        let (down, _, downErr) = try Self.run("brokerctl", ["status", "--port", "\(nothing.port)"])
        #expect(down == 69)
        #expect(downErr.contains("cannot reach brokerd"))
        // One readable line, not the client library's log of NIO's nested error as well.
        #expect(downErr.split(separator: "\n").count == 1, "\(downErr)")
        #expect(!downErr.contains("SingleConnectionFailure"), "\(downErr)")
        }
    }

    @Test("a TOML settings file configures brokerd, flags win over it, and a bad file exits 78 naming the problem")
    func settingsFile() async throws {
        let dataDirectory = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("brokerd-\(UUID().uuidString).toml")
        defer { try? FileManager.default.removeItem(at: file) }
        try "# brokerd settings\nmemory_limit = 123_000_000\nheartbeat = 7\nfsync = \"interval\"\n".write(to: file, atomically: true, encoding: .utf8)
        do {
            let (process, port, _) = try Self.startDaemon(dataDirectory: dataDirectory, extraArguments: ["--config", file.path])
            defer { Self.stop(process) }
            let (_, out, _) = try Self.run("brokerctl", ["status", "--port", "\(port)", "--format", "json"])
            let status = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
            #expect(status["memory_limit"] as? Int == 123_000_000)
            #expect(status["heartbeat_seconds"] as? Int == 7)
            #expect(status["fsync"] as? String == "interval")
        }
        do {
            let (process, port, _) = try Self.startDaemon(dataDirectory: dataDirectory,
                                                          extraArguments: ["--config", file.path, "--memory-limit", "99000000"])
            defer { Self.stop(process) }
            let (_, out, _) = try Self.run("brokerctl", ["status", "--port", "\(port)", "--format", "json"])
            let status = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
            #expect(status["memory_limit"] as? Int == 99_000_000, "the flag wins")
            #expect(status["heartbeat_seconds"] as? Int == 7, "the file still applies to the rest")
        }
        try "memory_limit = 1\nmax_frame_sise = 4096\n".write(to: file, atomically: true, encoding: .utf8)
        let (status, _, err) = try Self.run("brokerd", ["--config", file.path, "--port", "0", "--data-dir", dataDirectory.path])
        #expect(status == 78)
        #expect(err.contains(file.path) && err.contains("unknown key max_frame_sise") && err.contains("max_frame_size"))
    }

    @Test("the brokerd process absorbs a 100 MB burst with a 16 MB limit in under 80 MB of RSS, then drains it all")
    func burstStaysWithinMemoryBound() async throws {
        // The suite-sized version of the benchmark's 1M x 1 KiB burst (docs/benchmarks.md): same rule, smaller
        // numbers. Unpaged, this burst peaks at about 140 MB here; paged, at about 57 MB.
        let dataDirectory = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        let (process, port, _) = try Self.startDaemon(dataDirectory: dataDirectory, extraArguments: ["--memory-limit", "16000000"])
        defer { Self.stop(process) }
        let (published, publishOut, publishErr) = try await Self.runOffPool("brokerbench", [
            "--port", "\(port)", "--prefix", "burst", "--size", "1024", "--producers", "1", "--consumers", "0",
            "--count", "100000", "--duration", "60", "--keep", "--json",
        ])
        #expect(published == 0, "\(publishErr)")
        let publish = try #require(try JSONSerialization.jsonObject(with: Data((publishOut.split(separator: "\n").last ?? "").utf8)) as? [String: Any])
        #expect(publish["published"] as? Int == 100_000)
        let peak = try #require(Self.peakResidentKiB(process.processIdentifier))
        #expect(peak < 80_000, "peak RSS \(peak) KiB for a 100 MB burst with --memory-limit 16000000")

        let (drained, drainOut, drainErr) = try await Self.runOffPool("brokerbench", [
            "--port", "\(port)", "--prefix", "burst", "--size", "1024", "--producers", "0", "--consumers", "1",
            "--prefetch", "500", "--ack-every", "50", "--count", "100000", "--duration", "60", "--idle-ms", "30000", "--json",
        ])
        #expect(drained == 0, "\(drainErr)")
        let drain = try #require(try JSONSerialization.jsonObject(with: Data((drainOut.split(separator: "\n").last ?? "").utf8)) as? [String: Any])
        #expect(drain["consumed"] as? Int == 100_000)
    }

    /// VmHWM of a running process we started, in KiB.
    static func peakResidentKiB(_ pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }) else { return nil }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }

    @Test("brokerbench runs a short scenario end to end and its JSON parses")
    func brokerbenchScenario() async throws {
        try await Self.withDaemon { _, port, _ in
        let (status, out, err) = try await Self.runOffPool("brokerbench", [
            "--port", "\(port)", "--size", "64", "--count", "3000", "--confirm", "100", "--prefetch", "200", "--ack-every", "10",
            "--duration", "10", "--drain", "10", "--label", "suite", "--json",
        ])
        #expect(status == 0, "stderr: \(err)")
        let last = try #require(out.split(separator: "\n").last)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any])
        #expect(json["label"] as? String == "suite")
        #expect(json["published"] as? Int == 3000)
        #expect(json["confirmed"] as? Int == 3000)
        #expect(json["consumed"] as? Int == 3000)
        #expect((json["publish_rate"] as? Double ?? 0) > 0 || (json["publish_rate"] as? Int ?? 0) > 0)
        for key in ["consume_rate", "e2e_p50_us", "e2e_p99_us", "e2e_p999_us", "e2e_max_us", "confirm_p50_us", "confirm_p99_us"] {
            #expect(json[key] != nil, "missing \(key)")
        }
        #expect(out.contains("RESULT label=suite"))
        }
    }

    @Test("brokerbench checks every delivery: a copy without the redelivered flag and a foreign body are reported and fail the run")
    func brokerbenchReportsViolations() async throws {
        try await Self.withDaemon { _, port, _ in
            let (published, _, publishErr) = try await Self.runOffPool("brokerbench", [
                "--port", "\(port)", "--prefix", "verify", "--size", "32", "--producers", "1", "--consumers", "0",
                "--count", "10", "--keep", "--json",
            ])
            #expect(published == 0, "\(publishErr)")
            var client = ClientConfiguration(port: port, clientName: "tests", connectTimeout: .seconds(5), requestTimeout: .seconds(5))
            client.logger = quietLogger
            let connection = try await BrokerConnection.connect(client)
            // The first message goes back to the head flagged redelivered (allowed); a copy of it without the flag
            // and a body brokerbench did not write go to the tail (two violations).
            let first = try #require(try await connection.get(queue: "verify.q0"))
            try await connection.publish(routingKey: "verify.q0", body: first.body)
            try await connection.nack(first.deliveryTag, requeue: true)
            try await connection.publish(routingKey: "verify.q0", body: "not a brokerbench message")
            await connection.close()

            let (status, out, err) = try await Self.runOffPool("brokerbench", [
                "--port", "\(port)", "--prefix", "verify", "--producers", "0", "--consumers", "1", "--ack-every", "1",
                "--count", "12", "--duration", "60", "--idle-ms", "30000", "--json",
            ])
            #expect(status == 1, "a run with violations must fail")
            let json = try #require(try JSONSerialization.jsonObject(with: Data((out.split(separator: "\n").last ?? "").utf8)) as? [String: Any])
            #expect(json["consumed"] as? Int == 12)
            #expect(json["redelivered"] as? Int == 1)
            #expect(json["violations"] as? Int == 2)
            #expect(err.contains("delivered again without the redelivered flag"), "\(err)")
            #expect(err.contains("corrupt or foreign body"), "\(err)")
        }
    }

    @Test("brokerbench honours flow control: nothing is published while the broker blocks it, and it closes promptly")
    func brokerbenchHonoursBlocked() async throws {
        let dataDirectory = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        // A free-disk limit no disk meets: the alarm is on from the start, so every connection is blocked at once.
        let (process, port, _) = try Self.startDaemon(dataDirectory: dataDirectory, extraArguments: ["--disk-free-limit", "\(Int64.max)"])
        defer { Self.stop(process) }
        let (status, out, err) = try await Self.runOffPool("brokerbench", [
            "--port", "\(port)", "--prefix", "blocked", "--consumers", "0", "--size", "1024", "--rate", "3000", "--duration", "1", "--json",
        ])
        #expect(status == 0, "\(err)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data((out.split(separator: "\n").last ?? "").utf8)) as? [String: Any])
        // At a paced rate the generator reads between sends, so it sees the notice at once; it may have sent a few
        // before (the broker takes up to 1 MiB of such publishes, §9.3). Ignoring the notice it would send 3,000.
        let published = try #require(json["published"] as? Int)
        #expect(published < 300, "\(published) messages published after the broker blocked publishers")
        #expect(json["blocked_n"] as? Int == 1)
        // The run ended by its duration and closed with close/closeOk, not by a timeout.
        #expect((json["wall_secs"] as? Double ?? 99) < 20)
    }

    /// ``run(_:_:input:)`` on a thread of its own, for long runs: blocking a thread of Swift's cooperative pool
    /// (two threads on this machine) for seconds starves every other test running in parallel.
    static func runOffPool(_ name: String, _ arguments: [String]) async throws -> (Int32, String, String) {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try run(name, arguments) }) }.start()
        }
    }

    /// Runs a built executable to completion with `input` on its stdin; returns its status, stdout and stderr.
    static func run(_ name: String, _ arguments: [String], input: String? = nil) throws -> (Int32, String, String) {
        let process = Process()
        process.executableURL = try executable(name)
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        let stdin = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = stdin
        try process.run()
        if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
        try stdin.fileHandleForWriting.close()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }
}
