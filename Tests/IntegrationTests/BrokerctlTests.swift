import BrokerClient
import Foundation
import Testing
import WireProtocol

/// brokerctl, the executable, against a real brokerd executable: output and exit codes.
@Suite("brokerctl against a running brokerd", .serialized, .timeLimit(.minutes(2)))
struct BrokerctlTests {
    /// Runs brokerctl against `port` and returns status, stdout, stderr.
    func ctl(_ port: Int, _ arguments: [String], user: String? = nil, password: String? = nil, input: String? = nil) throws -> (Int32, String, String) {
        var all = arguments + ["--port", "\(port)"]
        if let user { all += ["--user", user] }
        if let password { all += ["--password", password] }
        return try DaemonTests.run("brokerctl", all, input: input)
    }

    /// Runs brokerctl with `--format json` and parses its array of rows.
    func rows(_ port: Int, _ arguments: [String]) throws -> [[String: Any]] {
        let (status, out, err) = try ctl(port, arguments + ["--format", "json"])
        #expect(status == 0, "\(arguments): \(err)")
        return try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]], "not a JSON array: \(out)")
    }

    func queue(_ port: Int, _ name: String) throws -> [String: Any]? {
        try rows(port, ["list", "queues"]).first { $0["name"] as? String == name }
    }

    @Test("declare, publish and list: queues with depths, chosen columns, table and JSON; bindings and exchanges")
    func listings() async throws {
        try await DaemonTests.withDaemon { _, port, _ in
            #expect(try ctl(port, ["declare", "queue", "trips", "--durable", "--argument", "x-max-length=1000"]).0 == 0)
            #expect(try ctl(port, ["declare", "exchange", "events", "--type", "topic", "--durable"]).0 == 0)
            #expect(try ctl(port, ["bind", "events", "trips", "--routing-key", "trip.*"]).0 == 0)
            let (published, out, err) = try ctl(port, ["publish", "--exchange", "events", "--routing-key", "trip.created", "--persistent", "from argument"])
            #expect(published == 0, "\(err)")
            #expect(out.contains("confirmed"))
            #expect(try ctl(port, ["publish", "--routing-key", "trips", "--content-type", "text/plain"], input: "from stdin").0 == 0)

            let trips = try #require(try queue(port, "trips"))
            #expect(trips["messages_ready"] as? Int == 2)
            #expect(trips["messages_unacked"] as? Int == 0)
            #expect(trips["consumers"] as? Int == 0)
            #expect(trips["durable"] as? Bool == true)
            #expect(trips["messages_in_memory"] as? Int == 2 && trips["messages_paged"] as? Int == 0)
            #expect((trips["memory_bytes"] as? Int ?? 0) > 0)
            #expect(trips["publish_rate"] is Double || trips["publish_rate"] is Int)
            #expect((trips["arguments"] as? [String: Any])?["x-max-length"] as? Int == 1000)

            // Chosen columns, in JSON and as an aligned table.
            let narrow = try rows(port, ["list", "queues", "--columns", "name,messages_ready"])
            #expect(narrow.map { Set($0.keys) } == [["name", "messages_ready"]])
            let (_, table, _) = try ctl(port, ["list", "queues", "--columns", "name,messages_ready,state"])
            let lines = table.split(separator: "\n")
            #expect(lines.first?.split(separator: " ", omittingEmptySubsequences: true) == ["name", "messages_ready", "state"])
            #expect(lines.contains { $0.hasPrefix("trips") && $0.contains(" 2 ") })

            let (badColumn, _, badErr) = try ctl(port, ["list", "queues", "--columns", "name,nope"])
            #expect(badColumn == 64)
            #expect(badErr.contains("unknown column nope") && badErr.contains("messages_ready"))

            #expect(try rows(port, ["list", "bindings"]).contains {
                $0["source"] as? String == "events" && $0["destination"] as? String == "trips" && $0["routing_key"] as? String == "trip.*"
            })
            #expect(try rows(port, ["list", "exchanges"]).contains { $0["name"] as? String == "events" && $0["type"] as? String == "topic" })
            let connections = try rows(port, ["list", "connections"])
            #expect(connections.count == 1 && connections[0]["user"] as? String == "guest")
            #expect((connections[0]["peer"] as? String)?.hasPrefix("127.0.0.1:") == true)

            // A consumer shows up in list consumers and in its queue's row.
            let client = try await BrokerConnection.connect(ClientConfiguration(port: port))
            _ = try await client.consume(queue: "trips", prefetch: 7)
            let consumers = try rows(port, ["list", "consumers"])
            #expect(consumers.count == 1 && consumers[0]["queue"] as? String == "trips" && consumers[0]["prefetch"] as? Int == 7)
            #expect(try queue(port, "trips")?["consumers"] as? Int == 1)
            await client.close()

            #expect(try ctl(port, ["unbind", "events", "trips", "--routing-key", "trip.*"]).0 == 0)
            #expect(try rows(port, ["list", "bindings"]).isEmpty)
        }
    }

    @Test("peek leaves messages untouched, get takes them, move brings dead letters back in order and survives a restart")
    func messages() async throws {
        let dataDirectory = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        var (process, port, _) = try DaemonTests.startDaemon(dataDirectory: dataDirectory)
        defer { DaemonTests.stop(process) }
        #expect(try ctl(port, ["declare", "queue", "work", "--durable"]).0 == 0)
        #expect(try ctl(port, ["declare", "queue", "work.dead", "--durable"]).0 == 0)
        for i in 0..<5 { #expect(try ctl(port, ["publish", "--routing-key", "work.dead", "--persistent", "--header", "n=\(i)", "job-\(i)"]).0 == 0) }

        let peeked = try rows(port, ["peek", "work.dead", "--count", "3"])
        #expect(peeked.map { $0["body"] as? String } == ["job-0", "job-1", "job-2"])
        #expect(peeked.allSatisfy { $0["redelivered"] as? Bool == false })
        #expect(((peeked[1]["properties"] as? [String: Any])?["headers"] as? [String: Any])?["n"] as? Int == 1)
        #expect(try rows(port, ["peek", "work.dead", "--count", "3"]).map { $0["body"] as? String } == ["job-0", "job-1", "job-2"])
        #expect(try queue(port, "work.dead")?["messages_ready"] as? Int == 5)

        let (moved, out, _) = try ctl(port, ["move", "work.dead", "work", "--count", "4"])
        #expect(moved == 0)
        #expect(out.contains("moved 4 messages") && out.contains("1 left"))
        #expect(try queue(port, "work")?["messages_ready"] as? Int == 4)

        // Restart: the moves were logged (published to work, settled in work.dead).
        DaemonTests.stop(process)
        (process, port, _) = try DaemonTests.startDaemon(dataDirectory: dataDirectory)
        #expect(try queue(port, "work")?["messages_ready"] as? Int == 4)
        #expect(try queue(port, "work.dead")?["messages_ready"] as? Int == 1)

        let got = try rows(port, ["get", "work", "--count", "3"])
        #expect(got.map { $0["body"] as? String } == ["job-0", "job-1", "job-2"])
        #expect(try queue(port, "work")?["messages_ready"] as? Int == 1)
        let kept = try rows(port, ["get", "work", "--requeue"])
        #expect(kept.map { $0["body"] as? String } == ["job-3"])
        #expect(try rows(port, ["peek", "work"]).first?["redelivered"] as? Bool == true)

        let (empty, emptyOut, _) = try ctl(port, ["get", "work.dead", "--count", "5"])
        #expect(empty == 0 && emptyOut.contains("job-4"))
        let (none, noneOut, _) = try ctl(port, ["peek", "work.dead"])
        #expect(none == 0 && noneOut.contains("no ready messages"))
    }

    @Test("mistakes exit non-zero with the broker's reason: unknown queue, precondition, bad names, unroutable mandatory")
    func errors() async throws {
        try await DaemonTests.withDaemon { _, port, _ in
            let (missing, _, missingErr) = try ctl(port, ["purge", "nosuch"])
            #expect(missing == 65)
            #expect(missingErr.contains("no queue 'nosuch'") && missingErr.contains("404"))

            #expect(try ctl(port, ["declare", "queue", "q"]).0 == 0)
            #expect(try ctl(port, ["publish", "--routing-key", "q", "x"]).0 == 0)
            let (notEmpty, _, notEmptyErr) = try ctl(port, ["delete", "queue", "q", "--if-empty"])
            #expect(notEmpty == 65)
            #expect(notEmptyErr.contains("406"))
            let (conflict, _, conflictErr) = try ctl(port, ["declare", "queue", "q", "--durable"])
            #expect(conflict == 65, "\(conflictErr)")

            let (badName, _, badNameErr) = try ctl(port, ["declare", "queue", String(repeating: "n", count: 300)])
            #expect(badName == 64)
            #expect(badNameErr.contains("255"))
            let (badArgument, _, badArgumentErr) = try ctl(port, ["declare", "queue", "r", "--argument", "x-bogus=1"])
            #expect(badArgument == 65)
            #expect(badArgumentErr.contains("unknown queue argument 'x-bogus'"))

            let (unroutable, _, unroutableErr) = try ctl(port, ["publish", "--routing-key", "nowhere", "--mandatory", "lost?"])
            #expect(unroutable == 65)
            #expect(unroutableErr.contains("no queue took the message"))

            let (purged, purgedOut, _) = try ctl(port, ["purge", "q"])
            #expect(purged == 0 && purgedOut.contains("purged 1"))
            let (deleted, deletedOut, _) = try ctl(port, ["delete", "queue", "q"])
            #expect(deleted == 0 && deletedOut.contains("deleted"))
            #expect(try queue(port, "q") == nil)

            let (usage, _, usageErr) = try ctl(port, ["list", "everything"])
            #expect(usage == 64 && usageErr.contains("queues"))
        }
    }

    @Test("users: add, list, passwd, delete; non-admins are refused with 77; changes survive a restart")
    func users() async throws {
        let dataDirectory = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        var (process, port, _) = try DaemonTests.startDaemon(dataDirectory: dataDirectory)
        defer { DaemonTests.stop(process) }
        #expect(try ctl(port, ["users", "add", "ops", "--new-password", "first", "--admin"]).0 == 0)
        #expect(try ctl(port, ["users", "add", "app", "--password-stdin"], input: "app-secret\n").0 == 0)
        let listed = try rows(port, ["users", "list"])
        #expect(listed.map { $0["name"] as? String } == ["app", "guest", "ops"])
        #expect(listed.first { $0["name"] as? String == "app" }?["admin"] as? Bool == false)

        let (refused, _, refusedErr) = try ctl(port, ["status"], user: "app", password: "app-secret")
        #expect(refused == 77)
        #expect(refusedErr.contains("not an administrator"))
        #expect(try ctl(port, ["users", "passwd", "ops", "--new-password", "second"]).0 == 0)
        #expect(try ctl(port, ["status"], user: "ops", password: "first").0 == 77)
        #expect(try ctl(port, ["status"], user: "ops", password: "second").0 == 0)
        let (selfDelete, _, selfDeleteErr) = try ctl(port, ["users", "delete", "ops"], user: "ops", password: "second")
        #expect(selfDelete == 65 && selfDeleteErr.contains("connected as"))
        // Deleting a user closes its connections.
        let appConnection = try await BrokerConnection.connect(withoutRecovery(ClientConfiguration(port: port, user: "app", password: "app-secret")))
        #expect(try ctl(port, ["users", "delete", "app"]).0 == 0)
        do {
            _ = try await appConnection.declareQueue("after-delete")
            Issue.record("the deleted user's connection still answers")
        } catch let error as BrokerError {
            #expect(error.code == .connectionForced && error.message.contains("deleted"), "\(error)")
        }
        await appConnection.close()
        #expect(try ctl(port, ["users", "add", "app", "--new-password", "app-secret"]).0 == 0)
        // Permissions: set, refused for a bad pattern before anything is sent, enforced, kept across the restart.
        #expect(try ctl(port, ["users", "set-permissions", "app", "--configure", "^app\\..*", "--write", "^app\\..*", "--read", "^app\\..*"]).0 == 0)
        let (badPattern, _, badPatternErr) = try ctl(port, ["users", "set-permissions", "app", "--configure", "(", "--write", "", "--read", ""])
        #expect(badPattern == 64 && badPatternErr.contains("--configure"), "\(badPatternErr)")
        let (denied, _, deniedErr) = try ctl(port, ["declare", "queue", "elsewhere"], user: "app", password: "app-secret")
        #expect(denied != 0 && deniedErr.contains("no configure permission on queue 'elsewhere'"), "\(deniedErr)")
        #expect(try ctl(port, ["users", "set-limits", "app", "--max-queues", "3"]).0 == 0)
        #expect(try ctl(port, ["users", "delete", "guest"], user: "ops", password: "second").0 == 0)

        DaemonTests.stop(process)
        (process, port, _) = try DaemonTests.startDaemon(dataDirectory: dataDirectory)
        // guest stays deleted; ops keeps its new password; app is still a non-admin.
        #expect(try ctl(port, ["status"]).0 == 77)
        #expect(try ctl(port, ["status"], user: "ops", password: "second").0 == 0)
        let (_, out, _) = try ctl(port, ["users", "list", "--format", "json"], user: "ops", password: "second")
        let names = (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])?.compactMap { $0["name"] as? String }
        #expect(names == ["app", "ops"])
        let app = (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])?.first { $0["name"] as? String == "app" }
        #expect(app?["configure"] as? String == "^app\\..*" && app?["read"] as? String == "^app\\..*")
        let (_, limitsOut, _) = try ctl(port, ["users", "list", "--format", "json", "--columns", "name,max_queues"], user: "ops", password: "second")
        #expect(limitsOut.contains("\"max_queues\" : 3") || limitsOut.contains("\"max_queues\":3"), "\(limitsOut)")
        let (allowed, _, allowedErr) = try ctl(port, ["declare", "queue", "app.work"], user: "app", password: "app-secret")
        #expect(allowed == 0, "\(allowedErr)")
    }

    @Test("watch prints its view and stops after --count; help and completions work")
    func watchAndHelp() async throws {
        try await DaemonTests.withDaemon { _, port, _ in
            #expect(try ctl(port, ["declare", "queue", "watched"]).0 == 0)
            let (status, out, err) = try ctl(port, ["watch", "--count", "2", "--interval", "0.2"])
            #expect(status == 0, "\(err)")
            #expect(out.components(separatedBy: "brokerd ").count - 1 == 2, "two refreshes: \(out)")
            #expect(out.contains("watched") && out.contains("messages_ready"))
            #expect(!out.contains("\u{1B}["), "no terminal codes when stdout is not a terminal")
        }
        let (help, helpOut, _) = try DaemonTests.run("brokerctl", ["--help"])
        #expect(help == 0 && helpOut.contains("Exit codes") && helpOut.contains("list"))
        let (completion, script, _) = try DaemonTests.run("brokerctl", ["--generate-completion-script", "bash"])
        #expect(completion == 0 && script.contains("brokerctl"))
    }

    @Test("connection flags before the subcommand, --version, close connection with a reason, a peeked body ending in a newline")
    func operatorConveniences() async throws {
        try await DaemonTests.withDaemon { _, port, _ in
            let (before, beforeOut, beforeErr) = try DaemonTests.run("brokerctl", ["--port", "\(port)", "status"])
            #expect(before == 0 && beforeOut.contains("version"), "\(beforeErr)")
            let (equals, _, equalsErr) = try DaemonTests.run("brokerctl", ["--port=\(port)", "--user", "guest", "list", "queues"])
            #expect(equals == 0, "\(equalsErr)")

            // An operator closes a client's connection; the client learns why.
            var client = withoutRecovery(ClientConfiguration(port: port, clientName: "victim", connectTimeout: .seconds(5)))
            client.logger = quietLogger
            let victim = try await BrokerConnection.connect(client)
            let row = try #require(try rows(port, ["list", "connections"]).first { $0["name"] as? String == "victim" })
            let id = try #require(row["id"] as? Int)
            let (closed, closedOut, closedErr) = try ctl(port, ["close", "connection", "\(id)", "--reason", "maintenance window"])
            #expect(closed == 0 && closedOut.contains("closed connection \(id)"), "\(closedErr)")
            let error = await victim.terminalError()
            #expect(error?.code == .connectionForced && error?.message.contains("maintenance window") == true, "\(String(describing: error))")
            let (unknown, _, unknownErr) = try ctl(port, ["close", "connection", "999999"])
            #expect(unknown == 65 && unknownErr.contains("no connection 999999"), "\(unknownErr)")

            // A body ending in a newline stays on its row of the table.
            #expect(try ctl(port, ["declare", "queue", "lines"]).0 == 0)
            #expect(try ctl(port, ["publish", "--routing-key", "lines"], input: "line one\n").0 == 0)
            let (peeked, table, peekErr) = try ctl(port, ["peek", "lines", "--columns", "routing_key,body"])
            #expect(peeked == 0, "\(peekErr)")
            let tableLines = table.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.isEmpty }
            #expect(tableLines.count == 2, "header and one row: \(table)")
            #expect(tableLines.last?.contains("line one\\n") == true, "\(table)")
        }
        let (version, versionOut, _) = try DaemonTests.run("brokerctl", ["--version"])
        #expect(version == 0 && versionOut.trimmingCharacters(in: .whitespacesAndNewlines) == "brokerctl \(brokerdVersion)")
    }

    @Test("watch exits 69 with one line when the broker goes away")
    func watchNoticesTheBrokerLeaving() async throws {
        let dataDirectory = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        let (daemon, port, _) = try DaemonTests.startDaemon(dataDirectory: dataDirectory)
        defer { DaemonTests.stop(daemon) }
        let watching = Task { try await DaemonTests.runOffPool("brokerctl", ["watch", "--interval", "0.2", "--port", "\(port)"]) }
        var admin = ClientConfiguration(port: port, clientName: "tests", connectTimeout: .seconds(5))
        admin.logger = quietLogger
        let connected = try await withConnection(admin) { connection in
            try await eventually(timeout: .seconds(30)) {
                try await connection.list("connections").contains { $0["name"]?.stringValue == "brokerctl" }
            }
        }
        #expect(connected, "watch never connected")
        DaemonTests.stop(daemon)
        let (status, _, err) = try await watching.value
        #expect(status == 69, "\(err)")
        #expect(err.split(separator: "\n").count == 1 && err.hasPrefix("brokerctl: "), "\(err)")
    }

    @Test("definitions export and import move exchanges, queues with arguments, bindings and users (as hashes) to another broker")
    func definitionsRoundTrip() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("brokerd-defs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let exported = directory.appendingPathComponent("a.json").path
        try await DaemonTests.withDaemon { _, source, _ in
            #expect(try ctl(source, ["declare", "exchange", "events", "--type", "topic", "--durable"]).0 == 0)
            #expect(try ctl(source, ["declare", "queue", "trips", "--durable", "--argument", "x-max-length=1000",
                                     "--argument", "x-dead-letter-exchange=events"]).0 == 0)
            #expect(try ctl(source, ["declare", "queue", "scratch"]).0 == 0)
            #expect(try ctl(source, ["bind", "events", "trips", "--routing-key", "trip.*"]).0 == 0)
            #expect(try ctl(source, ["users", "add", "alice", "--new-password", "alice-pw"]).0 == 0)
            var admin = ClientConfiguration(port: source, clientName: "tests", connectTimeout: .seconds(5))
            admin.logger = quietLogger
            try await withConnection(admin) { connection in
                _ = try await connection.manage("user.set_permissions", ["name": .string("alice"), "configure": .string("alice\\..*"),
                                                                          "write": .string(".*"), "read": .string(".*")])
                _ = try await connection.manage("user.set_limits", ["name": .string("alice"), "max_queues": .int(7)])
            }
            let (status, out, err) = try ctl(source, ["definitions", "export", exported])
            #expect(status == 0 && out.contains("1 exchanges, 2 queues, 1 bindings, 2 users"), "\(out) \(err)")
        }
        let file = try String(contentsOfFile: exported, encoding: .utf8)
        #expect(!file.contains("alice-pw"), "a password in the export")

        try await DaemonTests.withDaemon { _, target, _ in
            let (imported, out, err) = try ctl(target, ["definitions", "import", exported])
            #expect(imported == 0 && out.contains("imported 1 exchanges, 2 queues, 1 bindings, 2 users"), "\(out) \(err)")
            // Again: what exists with the same settings is left as it is.
            #expect(try ctl(target, ["definitions", "import", exported]).0 == 0)
            // The target now exports the same document.
            let again = directory.appendingPathComponent("b.json").path
            #expect(try ctl(target, ["definitions", "export", again]).0 == 0)
            #expect(try String(contentsOfFile: again, encoding: .utf8) == file)
            // alice logs in with her old password and her permissions hold.
            var alice = withoutRecovery(ClientConfiguration(port: target, user: "alice", password: "alice-pw", clientName: "alice",
                                                            connectTimeout: .seconds(5)))
            alice.logger = quietLogger
            try await withConnection(alice) { connection in
                try await connection.declareQueue("alice.work")
                await expectBrokerError(.accessRefused) { try await connection.declareQueue("other") }
            }
            // A conflicting definition stops the import, naming it.
            let conflicting = directory.appendingPathComponent("c.json").path
            try file.replacingOccurrences(of: "\"x-max-length\" : 1000", with: "\"x-max-length\" : 5").write(toFile: conflicting, atomically: true, encoding: .utf8)
            let (refused, _, refusedErr) = try ctl(target, ["definitions", "import", conflicting])
            #expect(refused == 65 && refusedErr.contains("import stopped at queue 'trips' (2 definitions applied before it)"), "\(refusedErr)")
            // Not a definitions file at all.
            let garbage = directory.appendingPathComponent("d.json").path
            try "{\"queues\": 3}".write(toFile: garbage, atomically: true, encoding: .utf8)
            let (bad, _, badErr) = try ctl(target, ["definitions", "import", garbage])
            #expect(bad == 65 && badErr.contains("is not a brokerd definitions file"), "\(badErr)")
        }
    }

    @Test("definitions export --rabbitmq writes RabbitMQ's format: vhost /, durable queues as quorum queues, bindings, users with tags and no password")
    func rabbitMQDefinitions() async throws {
        try await DaemonTests.withDaemon { _, port, _ in
            #expect(try ctl(port, ["declare", "exchange", "ride.trips", "--type", "topic", "--durable"]).0 == 0)
            #expect(try ctl(port, ["declare", "queue", "dispatcher.trips", "--durable", "--argument", "x-message-ttl=60000"]).0 == 0)
            #expect(try ctl(port, ["declare", "queue", "scratch"]).0 == 0)
            #expect(try ctl(port, ["bind", "ride.trips", "dispatcher.trips", "--routing-key", "trip.requested"]).0 == 0)
            #expect(try ctl(port, ["users", "add", "trip-service", "--new-password", "secret-pw"]).0 == 0)
            let (status, out, err) = try ctl(port, ["definitions", "export", "--rabbitmq"])
            #expect(status == 0 && err.contains("rabbitmqctl change_password"), "\(err)")
            #expect(!out.contains("secret-pw"))
            let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
            #expect((json["vhosts"] as? [[String: Any]])?.first?["name"] as? String == "/")
            let queues = try #require(json["queues"] as? [[String: Any]])
            let byName = Dictionary(queues.map { ($0["name"] as? String ?? "", $0) }, uniquingKeysWith: { a, _ in a })
            let dispatcher = try #require(byName["dispatcher.trips"]?["arguments"] as? [String: Any])
            #expect(dispatcher["x-queue-type"] as? String == "quorum" && dispatcher["x-message-ttl"] as? Int == 60000)
            #expect((byName["scratch"]?["arguments"] as? [String: Any])?["x-queue-type"] == nil, "a transient queue stays classic")
            #expect(byName["dispatcher.trips"]?["vhost"] as? String == "/")
            let bindings = try #require(json["bindings"] as? [[String: Any]])
            #expect(bindings.contains { $0["source"] as? String == "ride.trips" && $0["destination"] as? String == "dispatcher.trips"
                && $0["routing_key"] as? String == "trip.requested" && $0["destination_type"] as? String == "queue" })
            let users = try #require(json["users"] as? [[String: Any]])
            #expect(!users.contains { $0["name"] as? String == "guest" }, "RabbitMQ's own guest is left alone")
            #expect(try ctl(port, ["users", "add", "ops", "--admin", "--new-password", "ops-pw"]).0 == 0)
            let (_, withAdmin, _) = try ctl(port, ["definitions", "export", "--rabbitmq"])
            #expect(withAdmin.contains("administrator"), "an admin gets RabbitMQ's administrator tag")
            #expect(users.contains { $0["name"] as? String == "trip-service" && ($0["tags"] as? [String]) == [] && $0["password_hash"] as? String == "" })
            let permissions = try #require(json["permissions"] as? [[String: Any]])
            #expect(permissions.contains { $0["user"] as? String == "trip-service" && $0["configure"] as? String == ".*" })
            let (classic, classicOut, _) = try ctl(port, ["definitions", "export", "--rabbitmq", "--queue-type", "classic"])
            #expect(classic == 0 && !classicOut.contains("x-queue-type"))
            let (misuse, _, misuseErr) = try ctl(port, ["definitions", "export", "--queue-type", "classic"])
            #expect(misuse == 64 && misuseErr.contains("--queue-type goes with --rabbitmq"), "\(misuseErr)")
        }
    }

    @Test("contract apply, show, census and delete; a bad file and a retire in use exit non-zero with the reason")
    func contracts() async throws {
        try await DaemonTests.withDaemon { _, port, _ in
            #expect(try ctl(port, ["declare", "exchange", "ride.trips", "--type", "topic", "--durable"]).0 == 0)
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("contract-\(UUID().uuidString).json").path
            defer { try? FileManager.default.removeItem(atPath: file) }
            try """
                {"exchange": "ride.trips", "types": [
                  {"name": "trip.requested", "versions": [
                    {"version": "1.0", "status": "deprecated", "sunset": "2027-06-30", "replacement": "trip.requested 2.0"},
                    {"version": "2.0"}]}]}
                """.write(toFile: file, atomically: true, encoding: .utf8)
            var (status, out, err) = try ctl(port, ["contract", "apply", file])
            #expect(status == 0, "\(err)")
            #expect(out.contains("exchange 'ride.trips': contract applied (1 types, 2 versions)"), "\(out)")
            let shown = try rows(port, ["contract", "show"])
            #expect(shown.map { $0["version"] as? String } == ["1.0", "2.0"])
            #expect(shown.first?["status"] as? String == "deprecated" && shown.first?["sunset"] as? String == "2027-06-30")
            (status, out, err) = try ctl(port, ["contract", "show", "ride.trips", "--format", "json"])
            #expect(status == 0 && out.contains("\"replacement\" : \"trip.requested 2.0\""), "\(out) \(err)")
            // The shown contract is a file apply reads back.
            try out.write(toFile: file, atomically: true, encoding: .utf8)
            #expect(try ctl(port, ["contract", "apply", file]).0 == 0)

            // A publisher of 1.0 shows up in the census by name; retiring 1.0 under it needs --force.
            var config = ClientConfiguration(port: port, clientName: "trip-legacy")
            config.recovery = nil
            config.logger = quietLogger
            try await withConnection(config) { trip in
                try await trip.enableConfirms()
                try await trip.publish(exchange: "ride.trips", routingKey: "trip.requested", body: "{}",
                                       properties: MessageProperties(type: "trip.requested", typeVersion: 1))
                let census = try rows(port, ["contract", "census"])
                #expect(census.first?["client"] as? String == "trip-legacy" && census.first?["version"] as? String == "1.0", "\(census)")
                (status, out, err) = try ctl(port, ["contract", "census"])
                #expect(status == 0 && out.contains("trip-legacy") && out.contains("T"), "a table with UTC times: \(out)")

                try out.write(toFile: file, atomically: true, encoding: .utf8)
                try """
                    {"exchange": "ride.trips", "types": [{"name": "trip.requested", "versions": [{"version": "2.0"}]}]}
                    """.write(toFile: file, atomically: true, encoding: .utf8)
                (status, out, err) = try ctl(port, ["contract", "apply", file])
                #expect(status != 0)
                #expect(err.contains("'trip-legacy'") && err.contains("force"), "\(err)")
                (status, out, err) = try ctl(port, ["contract", "apply", file, "--force"])
                #expect(status == 0, "\(err)")
                #expect(out.contains("now refused: 'trip-legacy'"), "\(out)")
            }

            // Bad files: each names the problem and changes nothing.
            for (text, message) in [
                ("{\"exchange\": \"ride.trips\"}", "missing 'types'"),
                ("{\"exchange\": \"ride.trips\", \"types\": [{\"name\": \"t\", \"versions\": [{\"version\": \"x.y\"}]}]}", "'x.y' is not a version"),
                ("{\"exchange\": \"ride.trips\", \"types\": []}", "lists no message types"),
                ("not json", "is not JSON: invalid literal at byte 0"),
                ("{\"asyncapi\": \"2.6.0\"}", "version 2.6.0; this reads AsyncAPI 3.x documents"),
            ] {
                try text.write(toFile: file, atomically: true, encoding: .utf8)
                (status, out, err) = try ctl(port, ["contract", "apply", file])
                #expect(status == 65, "\(text): \(status) \(err)")
                #expect(err.contains(message), "\(text): \(err)")
            }
            #expect(try rows(port, ["contract", "show"]).map { $0["version"] as? String } == ["2.0"])
            (status, _, err) = try ctl(port, ["contract", "apply", "/nonexistent/contract.json"])
            #expect(status == 66 && err.contains("cannot read /nonexistent/contract.json"), "\(err)")
            (status, _, err) = try ctl(port, ["contract", "show", "nowhere"])
            #expect(status != 0 && err.contains("no exchange 'nowhere'"), "\(err)")

            // AsyncAPI: export the broker's interfaces, then apply the document (as a new deployment would).
            let document = file + ".asyncapi.json"
            defer { try? FileManager.default.removeItem(atPath: document) }
            (status, _, err) = try ctl(port, ["contract", "export", "--asyncapi", "--title", "ride", "-o", document])
            #expect(status == 0, "\(err)")
            let exported = try JSONValue.parse(try String(contentsOfFile: document, encoding: .utf8))
            #expect(exported.value(atPointer: "/asyncapi") == "3.0.0")
            #expect(exported.value(atPointer: "/info/title") == "ride")
            #expect(exported.value(atPointer: "/channels/exchange.ride.trips/address") == "ride.trips")
            #expect(exported.value(atPointer: "/components/messages/trip.requested.v2/x-brokerd-version") == "2.0")
            (status, out, err) = try ctl(port, ["contract", "apply", document])
            #expect(status == 0 && out.contains("applied 'ride' 1.0.0:") && out.contains("1 contracts"), "\(out) \(err)")
            (status, out, _) = try ctl(port, ["contract", "export"])
            #expect(status == 0 && out.contains("\"exchange\" : \"ride.trips\""), "contract export without --asyncapi writes what apply reads: \(out)")

            #expect(try ctl(port, ["contract", "delete", "ride.trips"]).0 == 0)
            (status, _, err) = try ctl(port, ["contract", "show", "ride.trips"])
            #expect(status != 0 && err.contains("has no contract"), "\(err)")
        }
    }
}
