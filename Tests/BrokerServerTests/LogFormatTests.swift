@testable import BrokerServer
import Foundation
import Logging
import Testing

@Suite("Log lines: text, JSON and logfmt, with sub-second times")
struct LogFormatTests {
    let metadata: Logger.Metadata = ["client": "trip service", "user": "guest", "reason": "say \"bye\"\nnow", "count": "3"]

    @Test func jsonLinesParseAndKeepEveryField() throws {
        let line = BrokerLogHandler.render(time: "2026-12-03T17:24:46.123456Z", level: .info, label: "brokerd", source: "BrokerServer",
                                           message: "connection closed", metadata: metadata, format: .json)
        #expect(line.hasSuffix("}\n") && line.filter { $0 == "\n" }.count == 1, "one line")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        #expect(object == ["time": "2026-12-03T17:24:46.123456Z", "level": "info", "label": "brokerd", "source": "BrokerServer",
                           "message": "connection closed", "client": "trip service", "user": "guest", "reason": "say \"bye\"\nnow",
                           "count": "3"])
    }

    @Test func metadataCannotReplaceTheFixedJSONFields() throws {
        let line = BrokerLogHandler.render(time: "t", level: .warning, label: "brokerd", source: "s", message: "m",
                                           metadata: ["message": "forged", "level": "debug"], format: .json)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        #expect(object["message"] == "m" && object["level"] == "warning")
    }

    @Test func logfmtQuotesWhatNeedsIt() {
        let line = BrokerLogHandler.render(time: "2026-12-03T17:24:46.000001Z", level: .notice, label: "brokerd", source: "BrokerCore",
                                           message: "management action", metadata: metadata, format: .logfmt)
        #expect(line == "time=2026-12-03T17:24:46.000001Z level=notice label=brokerd source=BrokerCore msg=\"management action\" "
                + "client=\"trip service\" count=3 reason=\"say \\\"bye\\\"\\nnow\" user=guest\n")
        #expect(BrokerLogHandler.logfmtValue("") == "\"\"")
        #expect(BrokerLogHandler.logfmtValue("a=b") == "\"a=b\"")
        #expect(BrokerLogHandler.logfmtValue("plain") == "plain")
    }

    @Test func textLinesCarryMicrosecondUTCTimes() {
        #expect(BrokerLogHandler.timestamp(seconds: 1_796_318_686, microseconds: 42) == "2026-12-03T17:24:46.000042Z")
        let now = BrokerLogHandler.timestamp()
        #expect(now.count == 27 && now.hasSuffix("Z") && now.contains("."), "\(now)")
        let line = BrokerLogHandler.render(time: "T", level: .info, label: "brokerd", source: "BrokerServer", message: "listening",
                                           metadata: ["listeners": "127.0.0.1:5680"], format: .text)
        #expect(line == "T info brokerd: [BrokerServer] listening listeners=127.0.0.1:5680\n")
    }
}
