import AsyncHTTPClient
import Foundation
import NIOHTTP1
import Testing

/// The passenger API's two majors served side by side (issue 15, part 5): /v2 current, /v1 deprecated with
/// `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and a successor `Link` (RFC 8288) on every response, both over the
/// same passengers. Real brokerd, the real passenger service over HTTP, its SQLite database.
@Suite("The passenger API's versions", .timeLimit(.minutes(2)))
struct APIVersionTests {
    static let deprecation = "@1796083200"  // 2026-12-01T00:00:00Z
    static let sunset = "Wed, 30 Jun 2027 00:00:00 GMT"

    @Test("/v1 and /v2 read and write the same passengers; every /v1 response, errors too, says it is deprecated, when it goes, and its successor; /v2 says nothing of the kind")
    func sideBySide() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("api-versions-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let broker = try BrokerProcess(dataDirectory: root + "/broker")
        defer { broker.stop() }
        let passenger = try await ServiceProcess("passenger", broker: ["--broker-port", "\(broker.port)"], dataDirectory: root + "/passenger")
        defer { _ = passenger.child.stop() }
        let http = HTTP()
        do {
            try await Self.exercise(passenger, http)
        } catch {
            try? await http.client.shutdown()
            throw error
        }
        try await http.client.shutdown()
    }

    static func exercise(_ passenger: ServiceProcess, _ http: HTTP) async throws {

        func expectDeprecated(_ response: HTTP.Response, successor: String, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(response.headers["deprecation"] == Self.deprecation, "\(response.headers)", sourceLocation: sourceLocation)
            #expect(response.headers["sunset"] == Self.sunset, "\(response.headers)", sourceLocation: sourceLocation)
            #expect(response.headers["link"] == "<\(successor)>; rel=\"successor-version\"", "\(response.headers)", sourceLocation: sourceLocation)
        }
        func expectCurrent(_ response: HTTP.Response, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(response.headers["deprecation"] == nil && response.headers["sunset"] == nil && response.headers["link"] == nil,
                    "\(response.headers)", sourceLocation: sourceLocation)
        }

        // An old client registers through /v1.
        let created = try await http.request(.POST, passenger.url + "/v1/passengers", json: ["name": "Ada", "phone": "+49 30 1234567"])
        #expect(created.status == 201, "\(created.text)")
        expectDeprecated(created, successor: "/v2/passengers")
        let ada = try created.string("id")
        #expect(created.headers["location"] == "/v1/passengers/\(ada)")

        let v1 = try await http.request(.GET, passenger.url + "/v1/passengers/\(ada)")
        #expect(v1.status == 200)
        #expect(v1.json?["name"] as? String == "Ada" && v1.json?["phone"] as? String == "+49 30 1234567")
        expectDeprecated(v1, successor: "/v2/passengers/\(ada)")

        // The same passenger through /v2: the new shape, and no deprecation.
        let v2 = try await http.request(.GET, passenger.url + "/v2/passengers/\(ada)")
        #expect(v2.status == 200, "\(v2.text)")
        #expect(v2.json?["displayName"] as? String == "Ada")
        #expect((v2.json?["contact"] as? [String: Any])?["phone"] as? String == "+49 30 1234567")
        #expect(v2.json?["name"] == nil, "v2 renamed name to displayName")
        expectCurrent(v2)

        // A new client registers through /v2; an old one reads it through /v1.
        let bo = try await http.request(.POST, passenger.url + "/v2/passengers", json: ["displayName": "Bo"])
        #expect(bo.status == 201, "\(bo.text)")
        expectCurrent(bo)
        let boId = try bo.string("id")
        #expect(bo.headers["location"] == "/v2/passengers/\(boId)")
        let boV1 = try await http.request(.GET, passenger.url + "/v1/passengers/\(boId)")
        #expect(boV1.json?["name"] as? String == "Bo")
        expectDeprecated(boV1, successor: "/v2/passengers/\(boId)")

        // Errors: /v1's carry the deprecation too; each version names its own fields.
        let missing = try await http.request(.GET, passenger.url + "/v1/passengers/p_nobody")
        #expect(missing.status == 404)
        expectDeprecated(missing, successor: "/v2/passengers/p_nobody")
        let badV2 = try await http.request(.POST, passenger.url + "/v2/passengers", json: ["displayName": "Cy", "contact": ["phone": String(repeating: "9", count: 41)]])
        #expect(badV2.status == 400 && badV2.problem.field == "contact.phone", "\(badV2.text)")
        expectCurrent(badV2)
        let badV1 = try await http.request(.POST, passenger.url + "/v1/passengers", raw: #"{"name": ""}"#)
        #expect(badV1.status == 400 && badV1.problem.field == "name", "\(badV1.text)")
        expectDeprecated(badV1, successor: "/v2/passengers")
    }
}
