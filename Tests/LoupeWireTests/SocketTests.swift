import Foundation
import XCTest
@testable import LoupeWire

final class SocketTests: XCTestCase {
    /// A ROUTER echo on its own thread and a client: identities route replies, frames survive.
    func testClientAgainstAnEchoRouter() throws {
        let router = try ZMQSocket(.router)
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = router.lastEndpoint
        XCTAssertTrue(endpoint.hasPrefix("tcp://127.0.0.1:"))
        let owned = UnsafeTransfer(router)
        let echo = Thread {
            let router = owned.value
            while let frames = try? router.receive(), frames.count >= 2 {
                // [identity, body, attachments...]: reply ok with the request's id.
                guard let request = try? WireMessage(frames: Array(frames.dropFirst())) else { continue }
                if request.body["op"] == "quit" { break }
                let reply = WireMessage(["id": request.body["id"] ?? nil, "status": "ok", "echo": request.body],
                                        attachments: request.attachments)
                _ = try? router.send([frames[0]] + reply.frames)
            }
        }
        echo.start()

        let client = try WireClient(endpoint: endpoint, timeout: 5)
        let reply = try client.call("ping", ["n": 7], attachments: [[1, 2, 3]])
        XCTAssertEqual(reply.body["echo"]?["n"], 7)
        XCTAssertEqual(reply.body["echo"]?["op"], "ping")
        XCTAssertEqual(reply.attachments, [[1, 2, 3]])
        try client.send(WireMessage(["op": "quit"]))
    }

    func testNoReplyIsReportedWithTheEndpoint() throws {
        let client = try WireClient(endpoint: "tcp://127.0.0.1:1", timeout: 0.2)
        XCTAssertThrowsError(try client.call("hello")) { error in
            guard case ClientError.noReply(let endpoint, _)? = error as? ClientError else { return XCTFail("\(error)") }
            XCTAssertEqual(endpoint, "tcp://127.0.0.1:1")
            XCTAssertTrue("\(error)".contains("loupe serve"))
        }
    }
}

/// Hands a socket to the one thread that will use it from then on.
struct UnsafeTransfer<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
