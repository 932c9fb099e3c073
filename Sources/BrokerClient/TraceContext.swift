public import ServiceContextModule
import Instrumentation
public import WireProtocol

/// Carries trace context in message headers through swift-distributed-tracing's instrument API: whatever instrument
/// the process bootstrapped (an OpenTelemetry tracer writes W3C `traceparent` and `tracestate`) decides the keys.
/// With no instrument bootstrapped this is a no-op and adds nothing to a message.
enum TraceContextCarrier {
    struct HeaderInjector: Injector {
        func inject(_ value: String, forKey key: String, into carrier: inout FieldTable) {
            carrier[key] = .string(value)
        }
    }

    struct HeaderExtractor: Extractor {
        func extract(key: String, from carrier: FieldTable) -> String? {
            if case .string(let value)? = carrier[key] { return value }
            return nil
        }
    }

    static func inject(_ context: ServiceContext, into properties: inout MessageProperties,
                       instrument: any Instrument = InstrumentationSystem.instrument) {
        var headers = properties.headers ?? [:]
        let before = headers.count
        instrument.inject(context, into: &headers, using: HeaderInjector())
        if headers.count != before { properties.headers = headers }
    }

    static func extract(from properties: MessageProperties, instrument: any Instrument = InstrumentationSystem.instrument) -> ServiceContext {
        var context = ServiceContext.topLevel
        if let headers = properties.headers {
            instrument.extract(headers, into: &context, using: HeaderExtractor())
        }
        return context
    }
}

extension Message {
    /// The publisher's trace context, extracted from the headers by the bootstrapped instrument: start the span
    /// that handles this message in it (`withSpan("handle", context: message.serviceContext, ofKind: .consumer)`),
    /// so a request can be followed across services.
    public var serviceContext: ServiceContext { TraceContextCarrier.extract(from: properties) }
}
