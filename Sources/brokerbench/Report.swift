import Foundation
import Histogram

/// A run's figures, printed three ways: for people, as amqp_bench's `RESULT` line, and as JSON.
struct Report {
    var label: String
    var size: Int
    var producers: Int
    var consumers: Int
    var queues: Int
    var fanout: Bool
    var durable: Bool
    var persistent: Bool
    var confirm: Int
    var prefetch: Int
    var ackEvery: Int
    var rateTarget: Double
    var publishSeconds: Double
    var published: UInt64
    var confirmed: UInt64
    var nacked: UInt64
    var consumeSeconds: Double
    var consumedInWindow: UInt64
    var consumedTotal: UInt64
    var drainSeconds: Double
    var e2e: Histogram<UInt64>
    var confirms: Histogram<UInt64>
    var wallSeconds: Double
    var redelivered: UInt64
    var violations: UInt64
    var blockedCount: UInt64
    var blockedSeconds: Double
    var failed: Bool

    var publishRate: Double { publishSeconds > 0 ? Double(published) / publishSeconds : 0 }
    var consumeRate: Double { consumeSeconds > 0 ? Double(consumedInWindow) / consumeSeconds : 0 }

    static func percentile(_ h: Histogram<UInt64>, _ p: Double) -> UInt64 { h.totalCount > 0 ? h.valueAtPercentile(p) : 0 }

    /// (key, value) pairs in output order; values already formatted.
    var fields: [(String, String)] {
        [
            ("label", label), ("size", "\(size)"), ("producers", "\(producers)"), ("consumers", "\(consumers)"),
            ("queues", "\(queues)"), ("fanout", fanout ? "1" : "0"), ("durable", durable ? "1" : "0"),
            ("persistent", persistent ? "1" : "0"), ("confirm", "\(confirm)"), ("prefetch", "\(prefetch)"),
            ("ack_every", "\(ackEvery)"), ("rate_target", String(format: "%.0f", rateTarget)),
            ("pub_secs", String(format: "%.3f", publishSeconds)), ("published", "\(published)"),
            ("pub_rate", String(format: "%.0f", publishRate)), ("confirmed", "\(confirmed)"), ("nacked", "\(nacked)"),
            ("cons_secs", String(format: "%.3f", consumeSeconds)), ("consumed_in_window", "\(consumedInWindow)"),
            ("cons_rate", String(format: "%.0f", consumeRate)), ("consumed_total", "\(consumedTotal)"),
            ("drain_secs", String(format: "%.3f", drainSeconds)), ("e2e_n", "\(e2e.totalCount)"),
            ("e2e_p50_us", "\(Self.percentile(e2e, 50))"), ("e2e_p99_us", "\(Self.percentile(e2e, 99))"),
            ("e2e_p999_us", "\(Self.percentile(e2e, 99.9))"), ("e2e_max_us", "\(e2e.totalCount > 0 ? e2e.max : 0)"),
            ("confirm_n", "\(confirms.totalCount)"), ("confirm_p50_us", "\(Self.percentile(confirms, 50))"),
            ("confirm_p99_us", "\(Self.percentile(confirms, 99))"), ("confirm_p999_us", "\(Self.percentile(confirms, 99.9))"),
            ("confirm_max_us", "\(confirms.totalCount > 0 ? confirms.max : 0)"),
            ("wall_secs", String(format: "%.3f", wallSeconds)), ("redelivered", "\(redelivered)"), ("violations", "\(violations)"),
            ("blocked_n", "\(blockedCount)"), ("blocked_secs", String(format: "%.3f", blockedSeconds)), ("failed", failed ? "1" : "0"),
        ]
    }

    /// The line `../shared/bench-rabbitmq/summarize.py` reads.
    var resultLine: String {
        "RESULT " + fields.map { "\($0.0)=\($0.1.replacingOccurrences(of: " ", with: "_"))" }.joined(separator: " ")
    }

    var json: String {
        let numeric: Set<String> = ["label"]
        let body = fields.map { key, value in
            numeric.contains(key) ? "\"\(key)\":\(Self.quote(value))" : "\"\(key)\":\(value)"
        }
        // Named aliases the issue asks for, next to amqp_bench's names.
        let aliases = ["\"publish_rate\":\(String(format: "%.0f", publishRate))", "\"consume_rate\":\(String(format: "%.0f", consumeRate))",
                       "\"consumed\":\(consumedTotal)"]
        return "{" + (body + aliases).joined(separator: ",") + "}"
    }

    static func quote(_ s: String) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: [s])) ?? Data("[\"\"]".utf8)
        return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
    }

    var text: String {
        func ms(_ us: UInt64) -> String { String(format: "%.3f ms", Double(us) / 1000) }
        var lines = [
            "brokerbench \(label): \(producers) producer(s) → \(queues) queue(s)\(fanout ? " (fanout)" : "") → \(consumers) consumer(s), \(size) B"
                + (persistent ? ", persistent" : "") + (confirm > 0 ? ", confirm window \(confirm)" : ""),
            String(format: "published  %llu in %.2f s = %.0f msg/s", published, publishSeconds, publishRate),
            String(format: "consumed   %llu (%llu in the publish window) = %.0f msg/s", consumedTotal, consumedInWindow, consumeRate),
        ]
        if confirm > 0 {
            lines.append("confirmed  \(confirmed) (nacked \(nacked)); latency p50 \(ms(Self.percentile(confirms, 50))), p99 \(ms(Self.percentile(confirms, 99)))")
        }
        if e2e.totalCount > 0 {
            lines.append("end-to-end p50 \(ms(Self.percentile(e2e, 50))), p99 \(ms(Self.percentile(e2e, 99))), "
                         + "p99.9 \(ms(Self.percentile(e2e, 99.9))), max \(ms(e2e.max))")
        }
        lines.append("verified   \(consumedTotal) deliveries: \(violations) violation(s), \(redelivered) redelivered"
                     + (blockedCount > 0 ? String(format: "; producers blocked %llu time(s), %.2f s", blockedCount, blockedSeconds) : ""))
        if failed { lines.append("FAILED (see stderr)") }
        return lines.joined(separator: "\n")
    }
}
