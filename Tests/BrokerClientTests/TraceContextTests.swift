@testable import BrokerClient
import Instrumentation
import ServiceContextModule
import Testing
import WireProtocol

/// Trace context travels in message headers through whatever instrument is bootstrapped.
@Suite struct TraceContextTests {
    /// A W3C-style instrument: the context's trace id goes out as `traceparent` and comes back from it.
    struct TraceparentInstrument: Instrument {
        enum TraceKey: ServiceContextKey { typealias Value = String }

        func inject<Carrier, Inject: Injector>(_ context: ServiceContext, into carrier: inout Carrier, using injector: Inject)
            where Inject.Carrier == Carrier {
            if let trace = context[TraceKey.self] { injector.inject("00-\(trace)-00f067aa0ba902b7-01", forKey: "traceparent", into: &carrier) }
        }

        func extract<Carrier, Extract: Extractor>(_ carrier: Carrier, into context: inout ServiceContext, using extractor: Extract)
            where Extract.Carrier == Carrier {
            guard let header = extractor.extract(key: "traceparent", from: carrier) else { return }
            let parts = header.split(separator: "-")
            if parts.count == 4 { context[TraceKey.self] = String(parts[1]) }
        }
    }

    @Test func traceparentGoesIntoHeadersAndComesBack() {
        var context = ServiceContext.topLevel
        context[TraceparentInstrument.TraceKey.self] = "4bf92f3577b34da6a3ce929d0e0e4736"
        var properties = MessageProperties(messageId: "m-1", headers: ["tenant": .string("eu")])
        TraceContextCarrier.inject(context, into: &properties, instrument: TraceparentInstrument())
        #expect(properties.headers?["traceparent"] == .string("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
        #expect(properties.headers?["tenant"] == .string("eu"))
        let extracted = TraceContextCarrier.extract(from: properties, instrument: TraceparentInstrument())
        #expect(extracted[TraceparentInstrument.TraceKey.self] == "4bf92f3577b34da6a3ce929d0e0e4736")
    }

    @Test func withoutAContextNothingIsAdded() {
        var properties = MessageProperties()
        TraceContextCarrier.inject(.topLevel, into: &properties, instrument: TraceparentInstrument())
        #expect(properties.headers == nil)
        TraceContextCarrier.inject(.topLevel, into: &properties, instrument: NoOpInstrument())
        #expect(properties.headers == nil)
    }
}
