import AsyncHTTPClient
import Foundation
import NIOHTTP1
import Testing

/// `ride --config FILE` and `RIDE_*` variables, read by the real executable.
@Suite("ride's settings file and environment", .timeLimit(.minutes(3)))
struct RideConfigTests {
    static func temporaryDirectory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("ride-config-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Waits for the port file a service writes once it listens.
    static func listeningPort(_ child: Child, portFile: String) async throws -> Int {
        var port: Int?
        try await waitUntil("ride \(child.name) listens (log: \(child.log))") {
            if let text = try? String(contentsOfFile: portFile, encoding: .utf8) {
                port = Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            return port != nil || !child.isRunning
        }
        return try #require(port, "ride \(child.name) exited: \(child.log)")
    }

    @Test("the service's table wins over the top level, the environment over the file, and a flag over both")
    func precedence() async throws {
        let root = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let broker = try BrokerProcess(dataDirectory: root + "/broker")
        defer { broker.stop() }
        let config = root + "/ride.toml"
        try """
            # every service
            broker_port = \(broker.port)
            data_dir = "\(root)/top"

            [passenger]
            data_dir = "\(root)/from-table"
            port = 1
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let portFile = root + "/port"
        // port = 1 in the table would fail to bind; RIDE_PORT=0 overrides it. --data-dir is not given, so the
        // table's data_dir (not the top level's) is used.
        let child = try Child(name: "passenger", executable: try Executables.path("ride"),
                              arguments: ["passenger", "--config", config, "--port-file", portFile],
                              environment: ["RIDE_PORT": "0"])
        let port = try await Self.listeningPort(child, portFile: portFile)
        #expect(port > 1)
        let http = HTTP()
        let response = try await http.request(.POST, "http://127.0.0.1:\(port)/v1/passengers", json: ["name": "Ana"])
        try? await http.client.shutdown()
        #expect(response.status == 201, "\(response.text)")
        #expect(FileManager.default.fileExists(atPath: root + "/from-table/passenger.sqlite"))
        #expect(!FileManager.default.fileExists(atPath: root + "/top/passenger.sqlite"))
        #expect(child.stop() == 0)

        // A flag beats the environment and the file.
        let flagged = try Child(name: "passenger", executable: try Executables.path("ride"),
                                arguments: ["passenger", "--config", config, "--port-file", portFile + "2",
                                            "--data-dir", root + "/from-flag", "--port", "0"],
                                environment: ["RIDE_DATA_DIR": root + "/from-env"])
        _ = try await Self.listeningPort(flagged, portFile: portFile + "2")
        #expect(FileManager.default.fileExists(atPath: root + "/from-flag/passenger.sqlite"))
        #expect(!FileManager.default.fileExists(atPath: root + "/from-env"))
        #expect(flagged.stop() == 0)
    }

    @Test("a bad file or variable stops the service with a message naming the file, the key and what is allowed",
          arguments: [
            ("[trip]\npassenger_uri = \"http://x\"\n", [:], "unknown key 'trip.passenger_uri'"),
            ("broker_port = \"5680\"\n", [:], "'broker_port' must be an integer"),
            ("data_dir = 7\n", [:], "'data_dir' must be a string"),
            ("[trip\n", [:], "line 1"),
            ("[cars]\nport = 1\n", [:], "unknown key 'cars'"),
            ("", ["RIDE_BROKER_PORT": "five"], "RIDE_BROKER_PORT='five' must be an integer"),
            ("broker_port = 70000\n", [:], "broker-port must be 1...65535, not 70000"),
            ("log_level = \"loud\"\n", [:], "the log level must be"),
          ] as [(String, [String: String], String)])
    func refusesBadSettings(text: String, environment: [String: String], message: String) async throws {
        let root = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let config = root + "/ride.toml"
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        let child = try Child(name: "trip", executable: try Executables.path("ride"),
                              arguments: ["trip", "--config", config, "--port", "0", "--data-dir", root + "/data"],
                              environment: environment)
        let status = try await child.exitStatus()
        #expect(status != 0)
        #expect(child.log.contains(message), "\(child.log)")
        if !environment.isEmpty || text.contains("70000") || text.contains("loud") { return }
        #expect(child.log.contains(config), "the message names the file: \(child.log)")
    }

    @Test("a missing settings file is named")
    func missingFile() async throws {
        let child = try Child(name: "trip", executable: try Executables.path("ride"),
                              arguments: ["trip", "--config", "/nonexistent/ride.toml", "--port", "0"])
        #expect(try await child.exitStatus() != 0)
        #expect(child.log.contains("cannot read the configuration file /nonexistent/ride.toml"), "\(child.log)")
    }
}
