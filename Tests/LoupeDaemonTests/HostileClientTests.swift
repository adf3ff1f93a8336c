import CZMQ
import Foundation
import LoupeWire
import LoupeTestSupport
import XCTest

/// Garbage on the wire: every message gets exactly one reply, and the daemon keeps serving.
final class HostileClientTests: XCTestCase {
    func testRandomAndCorruptedMessages() throws {
        let live = try LiveDaemon()
        defer { live.stop() }
        let socket = try ZMQSocket(.dealer)
        try socket.setOption(ZMQ_RCVTIMEO, Int32(10_000))
        try socket.connect(live.endpoint)

        var random = SeededGenerator(seed: 7)
        let valid = MessageEncoder.encode(["id": 1, "op": "hello", "protocol": MessageValue(WireProtocol.version), "client": "fuzz", "extra": [1, 2.5, ["k": .binary([1, 2])]]])
        var sent = 0
        var replies = 0
        var codes = Set<String>()
        // Replies are read after every burst: ZeroMQ drops what a client leaves unread past the
        // high-water mark, which is right for a client that never reads but not what this test is about.
        func drain() throws {
            while replies < sent, let frames = try socket.receive() {
                replies += 1
                let body = try MessageDecoder.decode(frames.first(where: { !$0.isEmpty }) ?? [])
                XCTAssertNotNil(body["status"]?.stringValue)
                if let code = body["error"]?["code"]?.stringValue { codes.insert(code) }
            }
        }
        for round in 0..<3000 {
            var frames: [[UInt8]]
            switch round % 3 {
            case 0: frames = [(0..<Int(random.next() % 48)).map { _ in UInt8(truncatingIfNeeded: random.next()) }]
            case 1:
                var bytes = valid
                for _ in 0..<(1 + Int(random.next() % 3)) {
                    bytes[Int(random.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: random.next())
                }
                frames = [Array(bytes.prefix(1 + Int(random.next() % UInt64(bytes.count))))]
            default:
                // Extra frames, empty frames, a delimiter followed by nothing.
                frames = [[], valid, [UInt8](repeating: 0xff, count: Int(random.next() % 8))].shuffled(using: &random)
            }
            try socket.send(frames)
            sent += 1
            if sent % 200 == 0 { try drain() }
        }
        try drain()
        XCTAssertEqual(replies, sent, "one reply per message")
        XCTAssertTrue(codes.isSubset(of: Set(ErrorCode.allCases.map(\.rawValue))), "\(codes)")
        XCTAssertEqual(try live.call("hello")["server"], "loupe")
    }
}
