import CZMQ
import Foundation
import LoupeWire
import XCTest

/// Clients that misbehave or vanish, and a daemon that stops or restarts: the daemon goes
/// on serving everyone else, finished results stay fetchable for their time, and clients
/// hear plainly what happened. (A client killed during a forward pass on SmolLM2 is in
/// SmolTests.)
final class FaultTests: XCTestCase {
    /// Token ids for `rows` rows of `length` tokens of the tiny models' vocabulary.
    private static func batch(rows: Int, length: Int) -> MessageValue {
        .array((0..<rows).map { row in MessageValue((0..<length).map { 1 + (row * 31 + $0 * 7) % 500 }) })
    }

    /// A sweep on gpt2-tiny that runs for seconds in a debug build: every head at every
    /// position of a 24-token prompt.
    private static let longSweep: [String: MessageValue] = {
        // Long enough to still be running after the test's next few requests on a release build.
        let clean = (0..<64).map { 1 + ($0 * 13) % 500 }
        var corrupted = clean
        corrupted[5] = 499
        return ["model": "tiny", "clean": MessageValue(clean), "corrupted": MessageValue(corrupted), "kind": "head_positions",
                "metric": ["logit_diff": ["answer": 1, "wrong": 2]]]
    }()

    private func dealer(_ endpoint: String, identity: [UInt8]? = nil, receiveTimeout: Int32 = 30_000) throws -> ZMQSocket {
        let socket = try ZMQSocket(.dealer)
        if let identity { try socket.setOption(ZMQ_ROUTING_ID, bytes: identity) }
        try socket.setOption(ZMQ_RCVTIMEO, receiveTimeout)
        try socket.connect(endpoint)
        return socket
    }

    private func receiveBody(_ socket: ZMQSocket) throws -> MessageValue? {
        try socket.receive().map { try WireMessage(frames: $0).body }
    }

    /// A child process starts a sweep, is killed with SIGKILL while it runs, and another
    /// client is served throughout; the sweep's result is there for `--result-ttl`, then gone.
    func testAClientKilledMidSweep() throws {
        let live = try LiveDaemon { $0.resultTTL = 3 }
        defer { live.stop() }
        try live.call("models.load", ["name": "tiny", "source": .string(Fixtures.gpt2Tiny)])
        try live.call("models.load", ["name": "other", "source": .string(Fixtures.llamaTiny)])
        let request = MessageValue.map(Self.longSweep.merging(["id": 1, "op": "sweep", "mode": "stream"]) { $1 })
        let script = """
        import sys, zmq, msgpack
        s = zmq.Context().socket(zmq.DEALER); s.connect(sys.argv[1])
        s.send(bytes.fromhex(sys.argv[2]))
        while True:
            reply = msgpack.unpackb(s.recv())
            if reply["status"] == "progress":
                print(reply["job"], flush=True)
        """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, live.endpoint, MessageEncoder.encode(request).map { String(format: "%02x", $0) }.joined()]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let line = String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
        let job = try XCTUnwrap(Int(line.split(separator: "\n").first ?? ""), "the client printed '\(line)'")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()

        // Others are served while the orphaned sweep runs on.
        XCTAssertEqual(try live.call("jobs.status", ["job": MessageValue(job)])["state"], "running")
        let start = Date()
        XCTAssertEqual(try live.call("hello")["server"], "loupe")
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.5, "hello waits for no job")
        XCTAssertEqual(try live.call("forward", ["model": "other", "tokens": [[1, 2, 3]], "top_k": 1])["tokens"], [[1, 2, 3]])

        // Its result, from any connection, for the time results are kept.
        let result = try live.call("jobs.result", ["job": MessageValue(job)])
        XCTAssertEqual(result["values"]?.arrayValue?.count, 2)
        let finished = Date()
        Thread.sleep(forTimeInterval: 1)
        XCTAssertEqual(try live.call("jobs.result", ["job": MessageValue(job)])["values"], result["values"])
        Thread.sleep(forTimeInterval: max(0, 3 + 1.5 - Date().timeIntervalSince(finished)))
        let expired = try live.expectError(.notFound, "jobs.result", ["job": MessageValue(job)])
        XCTAssertTrue(expired.message.contains("kept 3 s"), expired.message)
    }

    /// A client that sends and never reads: replies past ZeroMQ's send high-water mark are
    /// dropped for that client alone; the daemon neither blocks nor grows, others are served.
    func testAClientThatNeverReads() throws {
        let daemon = try DaemonProcess(["--preload", "tiny=gpt2-tiny"])
        defer { daemon.stop() }
        let other = try WireClient(endpoint: daemon.endpoint, timeout: 5)
        let request: MessageValue = ["op": "models.describe", "name": "tiny", "sites": true]
        let replySize = MessageEncoder.encode(try other.call("models.describe", ["name": "tiny", "sites": true]).body).count
        let before = try daemon.residentBytes()

        // The hog keeps a small receive queue of its own and reads nothing.
        let hog = try ZMQSocket(.dealer)
        try hog.setOption(ZMQ_RCVHWM, Int32(10))
        try hog.connect(daemon.endpoint)
        let sent = 3000
        var slowest = 0.0
        for index in 0..<sent {
            try hog.send(WireMessage(request).frames)
            if index % 300 == 0 {
                let start = Date()
                XCTAssertEqual(try other.call("hello").body["server"], "loupe")
                slowest = max(slowest, Date().timeIntervalSince(start))
            }
        }
        // Let the daemon work through the hog's queue, then check on it.
        let start = Date()
        XCTAssertEqual(try other.call("models.list").body["models"]?.arrayValue?.count, 1)
        while try other.call("server.stats").body["requests"]?.intValue ?? 0 < sent, Date().timeIntervalSince(start) < 60 {
            Thread.sleep(forTimeInterval: 0.1)
        }
        let after = try daemon.residentBytes()
        var received = 0
        while (try hog.receive(dontWait: true)) != nil { received += 1 }
        print(String(format: "never-reading client: %d requests of %d-byte replies, %d reached it, the rest dropped; daemon VmRSS %.1f -> %.1f MB; slowest hello meanwhile %.0f ms",
                     sent, replySize, received, Double(before) / 1e6, Double(after) / 1e6, slowest * 1000))
        XCTAssertLessThan(received, sent / 2, "replies past the high-water mark are dropped, not queued without end")
        // All the replies would be sent * replySize bytes; the daemon holds at most a high-water mark's worth.
        XCTAssertLessThan(after - before, 1000 * replySize + (32 << 20))
        XCTAssertLessThan(slowest, 1, "the others are served meanwhile")
        XCTAssertEqual(try other.call("hello").body["server"], "loupe")
    }

    /// A client that comes back under the same routing id gets the replies of the requests it
    /// sent before; one whose old connection still looks alive takes it over.
    func testReconnectingUnderTheSameIdentity() throws {
        let live = try LiveDaemon()
        defer { live.stop() }
        try live.call("models.load", ["name": "tiny", "source": .string(Fixtures.gpt2Tiny)])
        let identity: [UInt8] = Array("loupe-test-client".utf8)

        var first: ZMQSocket? = try dealer(live.endpoint, identity: identity)
        try first?.send(WireMessage(.map(Self.longSweep.merging(["id": 7, "op": "sweep", "mode": "stream"]) { $1 })).frames)
        var job: MessageValue?
        while job == nil, let reply = try receiveBody(XCTUnwrap(first)) {
            if reply["status"] == "running" { job = reply["job"] }
        }
        first = nil // closed, with the sweep still running

        let again = try dealer(live.endpoint, identity: identity, receiveTimeout: 120_000)
        var final: MessageValue?
        while final == nil, let reply = try receiveBody(again) {
            XCTAssertEqual(reply["id"], 7, "only the first connection's request was sent under this identity")
            if reply["status"] == "ok" || reply["status"] == "error" { final = reply }
        }
        XCTAssertEqual(final?["status"], "ok")
        XCTAssertEqual(final?["job"], job)
        XCTAssertEqual(final?["values"]?.arrayValue?.count, 2)

        // The old connection still open (a client that hung, say) and a new one under its id:
        // the new one is served (ZMQ_ROUTER_HANDOVER), the old one hears nothing more.
        let stale = try dealer(live.endpoint, identity: Array("loupe-test-stale".utf8), receiveTimeout: 500)
        try stale.send(WireMessage(["id": 1, "op": "hello"]).frames)
        XCTAssertEqual(try receiveBody(stale)?["id"], 1)
        let successor = try dealer(live.endpoint, identity: Array("loupe-test-stale".utf8), receiveTimeout: 5000)
        try successor.send(WireMessage(["id": 2, "op": "hello"]).frames)
        XCTAssertEqual(try receiveBody(successor)?["server"], "loupe")
        try stale.send(WireMessage(["id": 3, "op": "hello"]).frames)
        XCTAssertNil(try receiveBody(stale), "the replaced connection gets no replies")
        XCTAssertEqual(try live.call("hello")["server"], "loupe")
    }

    /// SIGTERM while a sweep runs: the sweep's client hears `cancelled`, the daemon exits 0
    /// and removes its socket; started again with the same --preload it has the same
    /// models warm, under a new instance.
    func testSIGTERMDuringASweepAndARestart() throws {
        let daemon = try DaemonProcess(["--preload", "tiny=gpt2-tiny", "--preload", "llama=llama-tiny"])
        let client = try WireClient(endpoint: daemon.endpoint, timeout: 10)
        let hello = try client.call("hello").body
        let before = try client.call("models.list").body["models"]?.arrayValue ?? []
        XCTAssertEqual(before.map { $0["name"] }, ["llama", "tiny"])

        let socket = try dealer(daemon.endpoint)
        try socket.send(WireMessage(.map(Self.longSweep.merging(["id": 1, "op": "sweep", "mode": "stream"]) { $1 })).frames)
        while let reply = try receiveBody(socket), reply["status"] != "progress" {
            XCTAssertNotEqual(reply["status"], "ok", "the sweep should still be running")
        }
        let signalled = Date()
        XCTAssertEqual(daemon.stop(signal: SIGTERM), 0, "a clean exit: \(daemon.log)")
        let exitSeconds = Date().timeIntervalSince(signalled)
        var final: MessageValue?
        while final == nil, let reply = try receiveBody(socket) {
            if reply["status"] == "ok" || reply["status"] == "error" { final = reply }
        }
        XCTAssertEqual(final?["error"]?["code"], "cancelled")
        XCTAssertTrue(final?["error"]?["message"]?.stringValue?.contains("shutting down") ?? false, "\(final ?? nil)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: daemon.socketPath), "stale socket file")
        print(String(format: "SIGTERM during a sweep: exit 0 in %.0f ms", exitSeconds * 1000))

        try daemon.restart()
        defer { daemon.stop() }
        let after = try client.call("models.list").body["models"]?.arrayValue ?? []
        XCTAssertEqual(after.map { $0["name"] }, before.map { $0["name"] })
        XCTAssertEqual(after.map { $0["path"] }, before.map { $0["path"] })
        let rehello = try client.call("hello").body
        XCTAssertNotEqual(rehello["instance"], hello["instance"])
        XCTAssertGreaterThan(rehello["started"]?.stringValue ?? "", hello["started"]?.stringValue ?? "")
    }

    /// A client waiting on a job when the daemon dies and another takes its place says so,
    /// rather than waiting forever for a reply the new daemon will never send.
    func testAClientHearsThatTheDaemonRestarted() throws {
        let daemon = try DaemonProcess(["--preload", "tiny=gpt2-tiny"])
        defer { daemon.stop() }
        let outcome = OutcomeBox()
        let waiting = Thread { [endpoint = daemon.endpoint] in
            do {
                let client = try WireClient(endpoint: endpoint, timeout: 10)
                client.livenessInterval = 0.5
                _ = try client.call("sweep", Self.longSweep) { interim in
                    if interim["status"] == "progress" { outcome.started() }
                }
                outcome.finish("finished")
            } catch {
                outcome.finish("\(error)")
            }
        }
        waiting.start()
        XCTAssertTrue(outcome.waitForStart(timeout: 60), "the sweep never reported progress")
        XCTAssertNotNil(daemon.stop(signal: SIGKILL))
        try daemon.restart()
        let message = try XCTUnwrap(outcome.wait(timeout: 30), "the client still waits")
        XCTAssertTrue(message.contains("the daemon at \(daemon.endpoint) restarted"), message)
        XCTAssertEqual(try WireClient(endpoint: daemon.endpoint).call("hello").body["server"], "loupe")
    }
}

/// What the waiting client of `testAClientHearsThatTheDaemonRestarted` saw.
private final class OutcomeBox: @unchecked Sendable {
    private let condition = NSCondition()
    private var isStarted = false
    private var message: String?

    func started() { condition.lock(); isStarted = true; condition.broadcast(); condition.unlock() }
    func finish(_ text: String) { condition.lock(); message = text; condition.broadcast(); condition.unlock() }

    func waitForStart(timeout: Double) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while !isStarted && message == nil { if !condition.wait(until: deadline) { break } }
        return isStarted
    }

    func wait(timeout: Double) -> String? {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while message == nil { if !condition.wait(until: deadline) { break } }
        return message
    }
}
