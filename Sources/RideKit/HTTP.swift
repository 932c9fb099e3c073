public import Hummingbird
public import HTTPTypes
public import Logging
public import OpenAPIRuntime
public import Foundation
import Metrics
import NIOCore
public import Prometheus
import Synchronization

/// An error a handler answers with: an HTTP status and the services' JSON error body
/// (`{"error": {"code": ..., "message": ..., "field": ...}}`).
public struct HTTPProblem: Error, Sendable, CustomStringConvertible {
    public var status: HTTPResponse.Status
    public var code: String
    public var message: String
    public var field: String?
    public init(_ status: HTTPResponse.Status, code: String, _ message: String, field: String? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.field = field
    }
    public var description: String { "\(status.code) \(code): \(message)" }

    public struct Body: Codable, Sendable {
        public struct Detail: Codable, Sendable {
            public var code: String
            public var message: String
            public var field: String?
        }
        public var error: Detail
    }

    public var json: Data {
        (try? JSONEncoder.sorted.encode(Body(error: .init(code: code, message: message, field: field)))) ?? Data()
    }

    /// The problem a request-decoding error stands for, naming the field at fault (`pickup.lat`).
    public static func from(decoding error: DecodingError) -> HTTPProblem {
        func path(_ keys: [any CodingKey]) -> String {
            var text = ""
            for key in keys {
                if let index = key.intValue { text += "[\(index)]" } else { text += text.isEmpty ? key.stringValue : "." + key.stringValue }
            }
            return text
        }
        switch error {
        case .keyNotFound(let key, let context):
            let field = path(context.codingPath + [key])
            return HTTPProblem(.badRequest, code: "missing_field", "the field '\(field)' is required", field: field)
        case .typeMismatch(let type, let context):
            let field = path(context.codingPath)
            return HTTPProblem(.badRequest, code: "invalid_field", "the field '\(field)' must be \(describe(type))", field: field)
        case .valueNotFound(let type, let context):
            let field = path(context.codingPath)
            return HTTPProblem(.badRequest, code: "invalid_field", "the field '\(field)' must be \(describe(type)), not null", field: field)
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty {
                return HTTPProblem(.badRequest, code: "malformed_json", "the request body is not valid JSON")
            }
            let field = path(context.codingPath)
            return HTTPProblem(.badRequest, code: "invalid_field", "the field '\(field)' is invalid: \(context.debugDescription)", field: field)
        @unknown default:
            return HTTPProblem(.badRequest, code: "bad_request", "\(error)")
        }
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Double.Type, is Float.Type: "a number"
        case is Int.Type, is Int64.Type, is Int32.Type: "an integer"
        case is Bool.Type: "true or false"
        default: "an object of the documented shape"
        }
    }
}

extension JSONEncoder {
    static var sorted: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }
}

/// Writes `Location` headers as given (the runtime percent-encodes every header value), and turns the OpenAPI runtime's errors into the services' JSON error body: a request that does not decode gets 400
/// naming the field, an ``HTTPProblem`` thrown by a handler its own status, anything else 500 (logged, with the
/// detail kept out of the response).
public struct ProblemMiddleware: ServerMiddleware {
    let logger: Logger
    public init(logger: Logger) { self.logger = logger }

    public func intercept(_ request: HTTPRequest, body: HTTPBody?, metadata: ServerRequestMetadata, operationID: String,
                          next: @Sendable (HTTPRequest, HTTPBody?, ServerRequestMetadata) async throws -> (HTTPResponse, HTTPBody?))
        async throws -> (HTTPResponse, HTTPBody?)
    {
        do {
            var (response, responseBody) = try await next(request, body, metadata)
            // The runtime percent-encodes header values as URI components; a Location is a URI reference already.
            if let location = response.headerFields[.location], let decoded = location.removingPercentEncoding {
                response.headerFields[.location] = decoded
            }
            return (response, responseBody)
        } catch let error as ServerError {
            let problem = Self.problem(for: error)
            if problem.status.code >= 500 {
                logger.error("request failed", metadata: ["operation": "\(operationID)", "error": "\(error.underlyingError)",
                                                          "cause": "\(error.causeDescription)"])
            }
            return Self.response(problem)
        }
    }

    static func problem(for error: ServerError) -> HTTPProblem {
        if let problem = find(HTTPProblem.self, in: error.underlyingError) { return problem }
        if let decoding = find(DecodingError.self, in: error.underlyingError) { return HTTPProblem.from(decoding: decoding) }
        let status = error.httpStatus
        if status.code == 500 { return HTTPProblem(.internalServerError, code: "internal_error", "the request could not be completed") }
        let code = status == .unsupportedMediaType ? "unsupported_media_type" : "bad_request"
        return HTTPProblem(status, code: code, "\(error.underlyingError)")
    }

    /// Looks for an error of type `T` in `error` and the errors it wraps (the runtime nests them).
    static func find<T>(_ type: T.Type, in error: any Error, depth: Int = 0) -> T? {
        if let match = error as? T { return match }
        guard depth < 4 else { return nil }
        for child in Mirror(reflecting: error).children {
            if let inner = child.value as? any Error, let match = find(type, in: inner, depth: depth + 1) { return match }
        }
        return nil
    }

    public static func response(_ problem: HTTPProblem) -> (HTTPResponse, HTTPBody?) {
        var response = HTTPResponse(status: problem.status)
        response.headerFields[.contentType] = "application/json"
        return (response, HTTPBody(problem.json))
    }
}

/// The Prometheus registry every service in the process reports to (swift-metrics, bootstrapped once).
public enum RideMetrics {
    private static let state = Mutex<PrometheusCollectorRegistry?>(nil)

    /// Bootstraps swift-metrics with a Prometheus registry the first time; returns that registry.
    public static func bootstrap() -> PrometheusCollectorRegistry {
        state.withLock { registry in
            if let registry { return registry }
            let made = PrometheusCollectorRegistry()
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: made))
            registry = made
            return made
        }
    }
}

/// The HTTP server of one service: Hummingbird 2 with the service's routes plus `GET /health` and `GET /metrics`.
public enum RideHTTP {
    /// Builds the application. `register` adds the service's routes (the OpenAPI handlers); `onListening` gets
    /// the bound port (useful with port 0).
    public static func application(
        service: String, host: String, port: Int, logger: Logger,
        onListening: @escaping @Sendable (Int) async -> Void = { _ in },
        register: (Router<BasicRequestContext>) throws -> Void
    ) rethrows -> Application<RouterResponder<BasicRequestContext>> {
        let registry = RideMetrics.bootstrap()
        let router = Router()
        router.add(middleware: RequestMetricsMiddleware(service: service))
        router.get("/health") { _, _ -> Response in
            let body = #"{"service":"\#(service)","status":"ok"}"#
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        router.get("/metrics") { _, _ -> Response in
            let text = registry.emitToBuffer()
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                            body: .init(byteBuffer: ByteBuffer(bytes: text)))
        }
        try register(router)
        return Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "ride-\(service)"),
            onServerRunning: { channel in
                let bound = channel.localAddress?.port ?? port
                logger.info("listening", metadata: ["url": "http://\(host):\(bound)"])
                await onListening(bound)
            },
            logger: logger
        )
    }
}

/// Counts requests and their durations per route and status (`ride_http_requests_total`,
/// `ride_http_request_duration_seconds`).
struct RequestMetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    let service: String
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        let method = request.method.rawValue
        do {
            let response = try await next(request, context)
            record(method: method, route: context.endpointPath ?? "unknown", status: response.status.code, start: start)
            return response
        } catch {
            record(method: method, route: context.endpointPath ?? "unknown", status: (error as? any HTTPResponseError)?.status.code ?? 500, start: start)
            throw error
        }
    }
    private func record(method: String, route: String, status: Int, start: ContinuousClock.Instant) {
        let dimensions = [("service", service), ("method", method), ("route", route), ("status", "\(status)")]
        Counter(label: "ride_http_requests_total", dimensions: dimensions).increment()
        Metrics.Timer(label: "ride_http_request_duration_seconds", dimensions: [("service", service), ("route", route)])
            .recordNanoseconds(Int64((ContinuousClock.now - start).components.attoseconds / 1_000_000_000
                + (ContinuousClock.now - start).components.seconds * 1_000_000_000))
    }
}

/// Marks the responses of an old API version as deprecated (RFC 9745 `Deprecation`, RFC 8594 `Sunset`) and points
/// at the same resource in the current version (RFC 8288 `Link` with `rel="successor-version"`): the HTTP side of
/// telling clients to upgrade, as brokerd's notice frame is the broker's (docs/contracts.md). Every response of
/// the listed operations gets them, errors included. Added here rather than by each handler, so no handler can
/// forget, and as written (the runtime would percent-encode generated header values).
public struct DeprecationMiddleware: ServerMiddleware {
    /// The operation ids of the deprecated version.
    public let operations: Set<String>
    /// The path prefix of the deprecated version and of its successor (`/v1/`, `/v2/`).
    public let from: String
    public let to: String
    /// `@` and Unix seconds: RFC 9745's structured-field date.
    public let deprecationValue: String
    /// An IMF-fixdate (RFC 9110), as RFC 8594 asks: `Wed, 30 Jun 2027 00:00:00 GMT`.
    public let sunsetValue: String

    /// The header values are formatted here, once, not per response.
    public init(operations: Set<String>, deprecatedSince: Date, sunset: Date, from: String = "/v1/", to: String = "/v2/") {
        self.operations = operations
        self.from = from
        self.to = to
        deprecationValue = "@\(Int64(deprecatedSince.timeIntervalSince1970))"
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        sunsetValue = formatter.string(from: sunset)
    }

    // Literal names made only of RFC 9110 token characters: the failable initializer cannot fail on them.
    public static let deprecationField = HTTPField.Name("Deprecation")!
    public static let sunsetField = HTTPField.Name("Sunset")!
    public static let linkField = HTTPField.Name("Link")!

    public func intercept(_ request: HTTPRequest, body: HTTPBody?, metadata: ServerRequestMetadata, operationID: String,
                          next: @Sendable (HTTPRequest, HTTPBody?, ServerRequestMetadata) async throws -> (HTTPResponse, HTTPBody?))
        async throws -> (HTTPResponse, HTTPBody?)
    {
        var (response, responseBody) = try await next(request, body, metadata)
        guard operations.contains(operationID) else { return (response, responseBody) }
        response.headerFields[Self.deprecationField] = deprecationValue
        response.headerFields[Self.sunsetField] = sunsetValue
        if let path = request.path, let range = path.range(of: from), range.lowerBound == path.startIndex {
            // The successor of the resource asked for; for a POST, of the collection (the new resource's own
            // successor is its Location with the prefix swapped).
            let successor = to + path[range.upperBound...].prefix { $0 != "?" }
            response.headerFields[Self.linkField] = "<\(successor)>; rel=\"successor-version\""
        }
        return (response, responseBody)
    }
}
