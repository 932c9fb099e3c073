import BrokerClient
import BrokerCore
import BrokerServer
import Foundation
import Logging
import Testing
import WireProtocol

/// TLS on the listener: certificates made for each test run with the openssl command (.ci/run installs it).
@Suite("TLS")
struct TLSTests {
    /// A CA, a server certificate for the name localhost (no IP address) signed by it, a client certificate signed by it, and an
    /// unrelated CA, in a fresh directory.
    struct Certificates {
        let directory: URL
        func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

        init() throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("brokerd-tls-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
            try Self.openssl(["req", "-x509"] + ec + ["-keyout", path("ca.key"), "-out", path("ca.pem"), "-days", "2", "-subj", "/CN=brokerd test CA"])
            try Self.openssl(["req", "-x509"] + ec + ["-keyout", path("other-ca.key"), "-out", path("other-ca.pem"), "-days", "2", "-subj", "/CN=another CA"])
            try "subjectAltName=DNS:localhost\n".write(toFile: path("server.ext"), atomically: true, encoding: .utf8)
            for (name, extensions) in [("server", ["-extfile", path("server.ext")]), ("client", [])] {
                try Self.openssl(["req"] + ec + ["-keyout", path("\(name).key"), "-out", path("\(name).csr"), "-subj", "/CN=\(name)"])
                try Self.openssl(["x509", "-req", "-in", path("\(name).csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
                                  "-CAcreateserial", "-out", path("\(name).pem"), "-days", "2"] + extensions)
            }
        }

        func remove() { try? FileManager.default.removeItem(at: directory) }

        static func openssl(_ arguments: [String]) throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
            process.arguments = arguments
            process.standardOutput = FileHandle.nullDevice
            let err = Pipe()
            process.standardError = err
            try process.run()
            let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { throw BrokerError(.internalError, "openssl \(arguments.joined(separator: " ")): \(text)") }
        }
    }

    static func withTLSBroker(_ tls: ServerTLS, _ body: (BrokerServer, ClientConfiguration) async throws -> Void) async throws {
        try await withBroker(inMemory: true, adjust: { $0.tls = tls }) { server, config in
            var client = config
            client.clientName = "tls"
            client.recovery = nil  // a refused handshake is reported, not retried
            try await body(server, client)
        }
    }

    static func expectRefusedConnection(_ config: ClientConfiguration, mentioning fragment: String? = nil,
                                        sourceLocation: SourceLocation = #_sourceLocation) async {
        do {
            let connection = try await BrokerConnection.connect(config)
            await connection.close()
            Issue.record("the connection succeeded", sourceLocation: sourceLocation)
        } catch let error as BrokerError {
            if let fragment { #expect(error.message.contains(fragment), "\(error)", sourceLocation: sourceLocation) }
        } catch {
            Issue.record("expected BrokerError, got \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("a client trusting the broker's CA talks over TLS; a wrong CA and plain TCP are refused")
    func serverCertificate() async throws {
        let certificates = try Certificates()
        defer { certificates.remove() }
        try await Self.withTLSBroker(ServerTLS(certificateFile: certificates.path("server.pem"), keyFile: certificates.path("server.key"))) { _, config in
            var trusted = config
            trusted.tls = ClientTLS(caFile: certificates.path("ca.pem"), serverName: "localhost")
            try await withConnection(trusted) { c in
                try await c.declareQueue("over-tls")
                try await c.enableConfirms()
                try await c.publish(routingKey: "over-tls", body: "secret")
                #expect(try await c.get(queue: "over-tls", noAck: true)?.bodyString == "secret")
            }
            // Connecting to 127.0.0.1 checks the certificate for that address, which it does not carry.
            var byAddress = config
            byAddress.tls = ClientTLS(caFile: certificates.path("ca.pem"))
            await Self.expectRefusedConnection(byAddress, mentioning: "TLS")

            var wrongCA = config
            wrongCA.tls = ClientTLS(caFile: certificates.path("other-ca.pem"), serverName: "localhost")
            await Self.expectRefusedConnection(wrongCA, mentioning: "TLS")
            var wrongName = config
            wrongName.tls = ClientTLS(caFile: certificates.path("ca.pem"), serverName: "broker.example.com")
            await Self.expectRefusedConnection(wrongName, mentioning: "TLS")
            var plain = config
            plain.connectTimeout = .seconds(2)
            await Self.expectRefusedConnection(plain)
        }
    }

    @Test("with a client CA, only clients presenting a certificate it signed get in")
    func mutualTLS() async throws {
        let certificates = try Certificates()
        defer { certificates.remove() }
        let tls = ServerTLS(certificateFile: certificates.path("server.pem"), keyFile: certificates.path("server.key"),
                            clientCAFile: certificates.path("ca.pem"))
        try await Self.withTLSBroker(tls) { _, config in
            var anonymous = config
            anonymous.tls = ClientTLS(caFile: certificates.path("ca.pem"), serverName: "localhost")
            await Self.expectRefusedConnection(anonymous)
            var withCertificate = anonymous
            withCertificate.tls?.certificateFile = certificates.path("client.pem")
            withCertificate.tls?.keyFile = certificates.path("client.key")
            try await withConnection(withCertificate) { c in try await c.declareQueue("mtls") }
        }
    }

    @Test("unusable TLS files stop the start with a message naming the file")
    func badFiles() async throws {
        let certificates = try Certificates()
        defer { certificates.remove() }
        var configuration = ServerConfiguration()
        configuration.dataDirectory = nil
        configuration.port = 0
        configuration.tls = ServerTLS(certificateFile: certificates.path("missing.pem"), keyFile: certificates.path("server.key"))
        do {
            let server = try await BrokerServer.start(configuration: configuration, logger: quietLogger)
            await server.shutdown()
            Issue.record("started with a missing certificate")
        } catch let error as TLSSetupError {
            #expect(error.description.contains("missing.pem"))
        }
        // A key that is not the certificate's.
        configuration.tls = ServerTLS(certificateFile: certificates.path("server.pem"), keyFile: certificates.path("client.key"))
        await #expect(throws: TLSSetupError.self) {
            let server = try await BrokerServer.start(configuration: configuration, logger: quietLogger)
            await server.shutdown()
        }
    }

    @Test("brokerd serves TLS from its flags and brokerctl connects with --tls-ca; a bad certificate path exits 78")
    func daemonAndCtl() async throws {
        let certificates = try Certificates()
        defer { certificates.remove() }
        let directory = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let (process, port, _) = try DaemonTests.startDaemon(dataDirectory: directory, extraArguments: [
            "--tls-cert", certificates.path("server.pem"), "--tls-key", certificates.path("server.key"),
        ])
        defer { DaemonTests.stop(process) }
        let (status, out, err) = try DaemonTests.run("brokerctl", ["status", "--port", "\(port)", "--tls-ca", certificates.path("ca.pem"),
                                                                    "--tls-server-name", "localhost"])
        #expect(status == 0, "\(err)")
        #expect(out.contains("brokerd"))
        let (refused, _, refusedErr) = try DaemonTests.run("brokerctl", ["status", "--port", "\(port)", "--tls-ca", certificates.path("other-ca.pem"),
                                                                          "--tls-server-name", "localhost"])
        #expect(refused != 0 && refusedErr.contains("TLS"), "\(refusedErr)")

        let (badStatus, _, badErr) = try DaemonTests.run("brokerd", ["--port", "0", "--data-dir", directory.path + "-bad",
                                                                       "--tls-cert", certificates.path("nope.pem"), "--tls-key", certificates.path("server.key")])
        defer { try? FileManager.default.removeItem(atPath: directory.path + "-bad") }
        #expect(badStatus == 78 && badErr.contains("nope.pem"), "\(badStatus): \(badErr)")
    }
}
