import Foundation
import Testing

/// The ride services' systemd template unit, as systemd reads it.
@Suite("The ride@.service unit", .timeLimit(.minutes(2)))
struct RideUnitTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func run(_ arguments: [String]) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-analyze")
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// An instance of the template, pointing at the ride binary this suite built (verify checks it exists).
    static func instance(_ service: String, in directory: URL) throws -> String {
        let template = try String(contentsOf: repository.appendingPathComponent("systemd/ride@.service"), encoding: .utf8)
        let path = directory.appendingPathComponent("ride@\(service).service").path
        try template.replacingOccurrences(of: "/usr/local/bin/ride", with: try Executables.path("ride"))
            .write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("systemd-analyze verify accepts every service's instance, and security rates the unit at most 2.0 (OK)")
    func verifiesAndIsHardened() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ride-units-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        for service in ["trip", "passenger", "driver", "dispatcher", "notification"] {
            let unit = try Self.instance(service, in: directory)
            let (status, output) = try Self.run(["verify", "--man=no", unit])
            // brokerd.service (named in After=/Wants=) is not installed here; everything else must be clean.
            let problems = output.split(separator: "\n").filter { !$0.contains("brokerd.service") }
            #expect(status == 0 || problems.isEmpty, "ride@\(service): \(output)")
            #expect(problems.isEmpty, "ride@\(service): \(output)")
        }
        let (status, output) = try Self.run(["security", "--offline=yes", try Self.instance("trip", in: directory)])
        #expect(status == 0, "\(output)")
        let line = try #require(output.split(separator: "\n").first { $0.contains("Overall exposure level") }, "\(output)")
        let score = try #require(Double(line.split(separator: ":").last?.split(separator: " ").first ?? ""), "\(line)")
        #expect(score <= 2.0, "exposure \(score): \(line)")
    }
}
