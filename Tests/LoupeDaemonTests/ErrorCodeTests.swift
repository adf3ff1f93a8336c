import CZMQ
import Foundation
import LoupeWire
import XCTest

/// Every error code of PROTOCOL.md, each produced by a real request to a live daemon.
final class ErrorCodeTests: XCTestCase {
    var live: LiveDaemon!

    override func setUpWithError() throws {
        live = try LiveDaemon { $0.maxQueue = 2 }
        try live.call("models.load", ["name": "tiny", "source": .string(Fixtures.gpt2Tiny)])
    }

    override func tearDown() { live.stop() }

    /// Sends raw frames on a DEALER and returns the decoded reply.
    private func rawExchange(_ frames: [[UInt8]]) throws -> MessageValue {
        let socket = try ZMQSocket(.dealer)
        try socket.setOption(ZMQ_RCVTIMEO, Int32(10_000))
        try socket.connect(live.endpoint)
        try socket.send(frames)
        let reply = try XCTUnwrap(try socket.receive())
        return try MessageDecoder.decode(reply[0])
    }

    func testEveryCodeIsCovered() {
        // The tests below, by code; a new code without a test fails here.
        let covered: Set<ErrorCode> = [.badRequest, .unknownOp, .versionMismatch, .unknownModel, .unknownSite,
                                       .shapeMismatch, .indexOutOfRange, .tooLarge, .busy, .cancelled, .notFound, .loadFailed,
                                       .internalError, .unknownIntervention, .outOfOrder]
        // Kept for reserved ops; every op of this protocol version is implemented.
        let reserved: Set<ErrorCode> = [.notImplemented]
        XCTAssertEqual(covered.union(reserved), Set(ErrorCode.allCases))
    }

    func testBadRequest() throws {
        try live.expectError(.badRequest, "models.load", ["name": "bad name!", "source": "x"])
        let missing = try live.expectError(.badRequest, "forward", ["model": "tiny"])
        XCTAssertEqual(missing.field, "prompts")
        let wrongType = try live.expectError(.badRequest, "forward", ["model": "tiny", "tokens": [[1, "two"]]])
        XCTAssertEqual(wrongType.field, "tokens.0.1")
        try live.expectError(.badRequest, "forward", ["model": "tiny", "prompts": ["no tokenizer here"]])
        // A body that is not a map, and one without an op: error replies with id nil.
        let notMap = try rawExchange([MessageEncoder.encode([1, 2, 3])])
        XCTAssertEqual(notMap["status"], "error")
        XCTAssertEqual(notMap["id"], .null)
        XCTAssertEqual(notMap["error"]?["code"], "bad_request")
        let noOp = try rawExchange([MessageEncoder.encode(["id": 5])])
        XCTAssertEqual(noOp["id"], 5)
        XCTAssertEqual(noOp["error"]?["field"], "op")
        let garbage = try rawExchange([[0xc1, 0x00]])
        XCTAssertEqual(garbage["error"]?["code"], "bad_request")
    }

    func testUnknownOp() throws {
        let unknown = try live.expectError(.unknownOp, "frobnicate")
        XCTAssertTrue(unknown.message.contains("hello"), unknown.message)
        XCTAssertTrue(unknown.message.contains("sweep") && unknown.message.contains("trace"), unknown.message)
    }

    /// Trace errors name the node (its id) and the field.
    func testUnknownInterventionAndOutOfOrder() throws {
        let unknown = try live.expectError(.unknownIntervention, "trace", [
            "model": "tiny", "invokes": [[1, 2]],
            "nodes": [["id": 4, "op": "intervene", "name": "nope", "invoke": 0, "params": [:]]]])
        XCTAssertEqual(unknown.node, 4)
        XCTAssertEqual(unknown.field, "nodes.0.name")
        // Writing layer 0's output with a value only layer 1 computes.
        let late = try live.expectError(.outOfOrder, "trace", [
            "model": "tiny", "invokes": [[1, 2]],
            "nodes": [["id": 0, "op": "get", "site": "transformer.h.1", "io": "output", "item": 0],
                      ["id": 1, "op": "index", "x": ["ref": 0], "key": [":", 0, ":"]],
                      ["id": 2, "op": "get", "site": "transformer.h.0", "io": "output", "item": 0],
                      ["id": 3, "op": "setindex", "x": ["ref": 2], "key": [":", 0, ":"], "value": ["ref": 1]]]])
        XCTAssertEqual(late.node, 3)
        XCTAssertEqual(late.field?.hasPrefix("nodes.3"), true, late.field ?? "nil")
    }

    func testVersionMismatchNamesBothVersions() throws {
        let error = try live.expectError(.versionMismatch, "hello", ["protocol": 3])
        XCTAssertTrue(error.message.contains("4") && error.message.contains("3"), error.message)
        try live.expectError(.versionMismatch, "models.list", ["protocol": 7])
        XCTAssertEqual(try live.call("hello", ["protocol": 4])["protocol"], 4)
    }

    func testUnknownModel() throws {
        let error = try live.expectError(.unknownModel, "models.describe", ["name": "nope"])
        XCTAssertTrue(error.message.contains("tiny"), "the message lists what is loaded: \(error.message)")
        try live.expectError(.unknownModel, "forward", ["model": "nope", "tokens": [[1]]])
        try live.expectError(.unknownModel, "models.unload", ["name": "nope"])
    }

    func testUnknownSite() throws {
        let error = try live.expectError(.unknownSite, "forward", ["model": "tiny", "tokens": [[1, 2]],
                                                                  "save": ["transformer.h.0.output", "transformer.h.9.output"]])
        XCTAssertEqual(error.field, "save.1")
    }

    func testShapeMismatch() throws {
        let tensor: MessageValue = ["dtype": "i32", "shape": [2, 3], "data": .binary([UInt8](repeating: 1, count: 20))]
        let error = try live.expectError(.shapeMismatch, "forward", ["model": "tiny", "tokens": tensor])
        XCTAssertEqual(error.field, "tokens")
    }

    func testIndexOutOfRange() throws {
        let token = try live.expectError(.indexOutOfRange, "forward", ["model": "tiny", "tokens": [[1, 2], [3, 512]]])
        XCTAssertEqual(token.field, "tokens.1.1")
        let position = try live.expectError(.indexOutOfRange, "forward", ["model": "tiny", "tokens": [[1, 2]], "positions": [0, 2]])
        XCTAssertEqual(position.field, "positions.1")
    }

    func testTooLarge() throws {
        // Longer than the context (64), then a message nested past the decode limit.
        try live.expectError(.tooLarge, "forward", ["model": "tiny", "tokens": .array([MessageValue((0..<65).map { $0 })])])
        let deep = [0x81, 0xa2, 0x6f, 0x70] + [UInt8](repeating: 0x91, count: 1000) + [0xc0]
        let reply = try rawExchange([deep])
        XCTAssertEqual(reply["error"]?["code"], "too_large")
    }

    func testBusyWhenTheQueueIsFull() throws {
        // maxQueue is 2: one job runs, two wait, the fourth of a burst is refused.
        let client = try live.client()
        let heavy: [String: MessageValue] = ["model": "tiny", "tokens": .array((0..<64).map { _ in MessageValue((0..<64).map { $0 }) }),
                                             "op": "forward", "mode": "detach"]
        for id in 1...4 {
            var fields = heavy
            fields["id"] = MessageValue(id)
            try client.send(WireMessage(.map(fields)))
        }
        var codes = [String]()
        while codes.count < 4, let reply = try client.receive(timeout: 30) {
            codes.append(reply.body["status"] == "error" ? reply.body["error"]?["code"]?.stringValue ?? "" : reply.body["status"]?.stringValue ?? "")
        }
        XCTAssertEqual(codes.sorted(), ["accepted", "accepted", "accepted", "busy"])
    }

    func testCancelled() throws {
        // A queued job, cancelled before the jobs ahead of it end, ends `cancelled`.
        let client = try live.client()
        let heavy = MessageValue.array((0..<64).map { _ in MessageValue((0..<64).map { $0 }) })
        for _ in 0..<2 { try client.call("forward", ["model": "tiny", "tokens": heavy, "mode": "detach"]) }
        try client.send(WireMessage(["id": 1, "op": "forward", "model": "tiny", "tokens": [[1, 2, 3]], "mode": "stream"]))
        let accepted = try XCTUnwrap(try client.receive(timeout: 10))
        XCTAssertEqual(accepted.body["status"], "accepted")
        let job = try XCTUnwrap(accepted.body["job"])
        let queued = try XCTUnwrap(try client.receive(timeout: 10))
        XCTAssertEqual(queued.body["status"], "queued")
        XCTAssertEqual(queued.body["position"], 2)
        XCTAssertEqual(try live.call("jobs.status", ["job": job])["position"], 2)
        XCTAssertEqual(try live.call("jobs.cancel", ["job": job])["state"], "cancelled")
        var final: MessageValue?
        while final == nil, let reply = try client.receive(timeout: 30) {
            if reply.body["status"] == "error" || reply.body["status"] == "ok" { final = reply.body }
        }
        XCTAssertEqual(final?["error"]?["code"], "cancelled")
        XCTAssertEqual(try live.call("jobs.status", ["job": job])["state"], "cancelled")
    }

    func testNotFound() throws {
        try live.expectError(.notFound, "jobs.status", ["job": 999_999])
        try live.expectError(.notFound, "jobs.result", ["job": 999_999])
        // Inside a model root (a path outside them is refused before it is looked for).
        let source = try live.expectError(.notFound, "models.load", ["name": "ghost", "source": .string(Fixtures.modelsDirectory + "/nonexistent.gguf")])
        XCTAssertEqual(source.field, "source")
    }

    func testLoadFailed() throws {
        // A directory in a model root that exists but holds no model.
        let empty = NSTemporaryDirectory() + "loupe-empty-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: empty) }
        let error = try live.expectError(.loadFailed, "models.load", ["name": "broken", "source": .string(empty)])
        XCTAssertTrue(error.message.contains("config.json"), error.message)
        try live.expectError(.unknownModel, "models.describe", ["name": "broken"])
    }

    func testInternal() throws {
        try live.expectError(.internalError, "debug.fail")
    }
}
