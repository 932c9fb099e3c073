import BrokerClient
import Foundation
import Testing

/// `scripts/install.sh` into a scratch root, and the installed units as systemd sees them. The binaries installed
/// are the ones the suite built (the script's own release build, with the Swift runtime linked in, and its man
/// pages are checked by scripts/check-install.sh in CI, which builds them).
@Suite("Installing brokerd", .timeLimit(.minutes(2)))
struct InstallTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Runs a program to completion; status, stdout and stderr.
    static func run(_ program: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (Int32, String, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }

    /// Installs with PREFIX and SYSCONFDIR inside `root`, so the units name paths that exist on this machine.
    static func install(into root: URL, extra: [String: String] = [:]) throws -> (Int32, String, String) {
        let binaries = try DaemonTests.executable("brokerd").deletingLastPathComponent().path
        return try run("/bin/bash", [repository.appendingPathComponent("scripts/install.sh").path], environment: [
            "PREFIX": root.path + "/usr", "SYSCONFDIR": root.path + "/etc", "BUILD_DIR": binaries, "MAN_DIR": "none",
        ].merging(extra) { _, new in new })
    }

    @Test("install.sh lays out binaries, units, settings, docs and completions; systemd-analyze verify accepts the units")
    func installsAndVerifies() async throws {
        let root = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: root) }
        let (status, out, err) = try Self.install(into: root)
        #expect(status == 0, "\(out)\(err)")
        let prefix = root.path + "/usr"
        for path in ["bin/brokerd", "bin/brokerctl", "lib/systemd/system/brokerd.service", "lib/systemd/system/brokerd.socket",
                     "share/doc/brokerd/operations.md", "share/doc/brokerd/protocol.md", "share/doc/brokerd/LICENSE",
                     "share/bash-completion/completions/brokerctl", "share/zsh/site-functions/_brokerctl",
                     "share/fish/vendor_completions.d/brokerctl.fish", "share/bash-completion/completions/brokerd"] {
            #expect(FileManager.default.fileExists(atPath: prefix + "/" + path), "missing \(path)")
        }
        #expect(FileManager.default.isExecutableFile(atPath: prefix + "/bin/brokerd"))
        let settings = root.path + "/etc/brokerd/brokerd.toml"
        #expect(FileManager.default.fileExists(atPath: settings))

        // The unit runs the installed binary with the installed settings, and documents itself where docs went.
        let unit = try String(contentsOfFile: prefix + "/lib/systemd/system/brokerd.service", encoding: .utf8)
        #expect(unit.contains("ExecStart=\(prefix)/bin/brokerd --config \(settings)\n"), "\(unit)")
        #expect(unit.contains("Documentation=file://\(prefix)/share/doc/brokerd/operations.md"))
        #expect(!unit.contains("/usr/local"), "a path not rewritten for PREFIX")
        let (verified, _, verifyErr) = try Self.run("/usr/bin/systemd-analyze", [
            "verify", "--man=no", prefix + "/lib/systemd/system/brokerd.service", prefix + "/lib/systemd/system/brokerd.socket",
        ])
        #expect(verified == 0, "\(verifyErr)")

        // The installed settings file is one brokerd accepts (flags given here win over its port and data_dir).
        let data = root.appendingPathComponent("data")
        let (daemon, port, _) = try DaemonTests.startDaemon(dataDirectory: data, extraArguments: ["--config", settings])
        defer { DaemonTests.stop(daemon) }
        var client = ClientConfiguration(port: port, clientName: "tests", connectTimeout: .seconds(5))
        client.logger = quietLogger
        let status2 = try await withConnection(client) { try await $0.status() }
        #expect(status2["fsync"]?.stringValue == "always")

        // Installing again keeps an edited settings file and puts the new default beside it.
        try (try String(contentsOfFile: settings, encoding: .utf8) + "\nmax_connections = 5\n").write(toFile: settings, atomically: true, encoding: .utf8)
        let (again, againOut, againErr) = try Self.install(into: root)
        #expect(again == 0, "\(againErr)")
        #expect(againOut.contains("kept the edited"))
        #expect(try String(contentsOfFile: settings, encoding: .utf8).contains("max_connections = 5"))
        #expect(FileManager.default.fileExists(atPath: settings + ".default"))

        // A relative PREFIX is a usage error, before anything is written.
        let (relative, _, relativeErr) = try Self.run("/bin/bash", [Self.repository.appendingPathComponent("scripts/install.sh").path],
                                                      environment: ["PREFIX": "usr/local", "BUILD_DIR": "/nonexistent", "MAN_DIR": "none"])
        #expect(relative == 64 && relativeErr.contains("absolute"), "\(relativeErr)")
    }

    @Test("the service unit is hardened: systemd-analyze security rates it at most 2.0 (OK)")
    func unitIsHardened() throws {
        let unit = Self.repository.appendingPathComponent("systemd/brokerd.service").path
        let (status, out, err) = try Self.run("/usr/bin/systemd-analyze", ["security", "--offline=yes", unit])
        #expect(status == 0, "\(err)")
        let line = try #require((out + err).split(separator: "\n").first { $0.contains("Overall exposure level") }, "\(out)\(err)")
        let score = try #require(Double(line.split(separator: ":").last?.split(separator: " ").first ?? ""), "\(line)")
        #expect(score <= 2.0, "exposure \(score): \(line)")
        for setting in ["CapabilityBoundingSet=\n", "PrivateDevices=yes", "ProtectHome=yes", "ProtectKernelTunables=yes",
                        "ProtectControlGroups=yes", "ProtectClock=yes", "ProtectHostname=yes", "RestrictNamespaces=yes",
                        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service", "UMask=0077"] {
            #expect(try String(contentsOfFile: unit, encoding: .utf8).contains(setting), "\(setting) missing")
        }
    }
}
