import Foundation
import LoupeWire
import XCTest
@testable import LoupeDaemon

/// Models coming and going, results kept, and the daemon stopping cleanly; tiny models only.
final class LifecycleTests: XCTestCase {
    func testSameWeightsUnderTwoNamesAreShared() throws {
        let live = try LiveDaemon()
        defer { live.stop() }
        let first = try live.call("models.load", ["name": "a", "source": .string(Fixtures.gpt2Tiny)])
        XCTAssertEqual(first["shared"], false)
        XCTAssertEqual(first["architecture"], "gpt2")
        // The same directory spelled differently, and the same name again: no second copy.
        let second = try live.call("models.load", ["name": "b", "source": .string(Fixtures.gpt2Tiny + "/../gpt2-tiny/")])
        XCTAssertEqual(second["shared"], true)
        XCTAssertEqual(second["load_seconds"]?.doubleValue, 0)
        XCTAssertEqual(try live.call("models.load", ["name": "a", "source": .string(Fixtures.gpt2Tiny)])["shared"], true)
        try live.expectError(.badRequest, "models.load", ["name": "a", "source": .string(Fixtures.llamaTiny)])

        let models = try XCTUnwrap(try live.call("models.list")["models"]?.arrayValue)
        XCTAssertEqual(models.map { $0["name"] }, ["a", "b"])
        XCTAssertEqual(models[0]["shares_weights_with"], ["b"])
        let stats = try live.call("server.stats")
        XCTAssertEqual(stats["model_bytes"], models[0]["weight_bytes"], "one copy of the weights")

        XCTAssertEqual(try live.call("models.unload", ["name": "a"])["freed"], false)
        XCTAssertEqual(try live.call("models.unload", ["name": "b"])["freed"], true)
        XCTAssertEqual(try live.call("models.list")["models"], [])
        XCTAssertEqual(try live.call("server.stats")["model_bytes"], 0)
    }

    func testBareFileNamesResolveInTheModelsDirectory() throws {
        let live = try LiveDaemon()
        defer { live.stop() }
        let reply = try live.call("models.load", ["name": "l", "source": "llama-tiny"])
        XCTAssertEqual(reply["architecture"], "llama")
        XCTAssertEqual(reply["dimensions"]?["kv_heads"], 2)
    }

    func testPreloadAndKeepAlive() throws {
        let live = try LiveDaemon {
            $0.preload = [("tiny", Fixtures.gpt2Tiny)]
            $0.keepAlive = 2
        }
        defer { live.stop() }
        // Joining the preload's load: the reply comes when it is done.
        XCTAssertEqual(try live.call("models.load", ["name": "tiny", "source": .string(Fixtures.gpt2Tiny)])["name"], "tiny")
        // Idle for more than two seconds: unloaded at the next housekeeping round.
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, try live.call("models.list")["models"] != [] { Thread.sleep(forTimeInterval: 0.2) }
        XCTAssertEqual(try live.call("models.list")["models"], [])
    }

    func testDescribe() throws {
        let live = try LiveDaemon()
        defer { live.stop() }
        try live.call("models.load", ["name": "tiny", "source": .string(Fixtures.gpt2Tiny)])
        let reply = try live.call("models.describe", ["name": "tiny"])
        XCTAssertTrue(reply["printed"]?.stringValue?.hasPrefix("GPT2LMHeadModel(") ?? false)
        XCTAssertTrue(reply["printed"]?.stringValue?.contains("(0-1): 2 x GPT2Block(") ?? false)
        XCTAssertEqual(reply["tree"]?["children"]?.arrayValue?.first?["path"], "transformer")
        XCTAssertEqual(reply["dimensions"], ["layers": 2, "hidden": 64, "heads": 4, "kv_heads": 4, "head_dim": 16, "vocab": 512, "context": 64])
        XCTAssertEqual(reply["tokenizer"], .null)
        let sites = try XCTUnwrap(reply["sites"]?.arrayValue)
        XCTAssertTrue(sites.contains { $0["site"] == "transformer.h.1" && $0["io"] == "output" && $0["tuple"] == true })
        XCTAssertTrue(sites.contains { $0["site"] == "blocks.0.resid_post" })
        XCTAssertNil(try live.call("models.describe", ["name": "tiny", "sites": false])["sites"])
    }

    func testForwardSavesActivationsAndSendsTensorsInFrames() throws {
        let live = try LiveDaemon()
        defer { live.stop() }
        try live.call("models.load", ["name": "tiny", "source": .string(Fixtures.gpt2Tiny)])
        let client = try live.client()
        let reply = try client.call("forward", ["model": "tiny", "tokens": [[1, 2, 3], [4, 5]], "positions": [0, -1],
                                                "logits": true, "save": ["blocks.1.resid_post.output"], "frames": true])
        XCTAssertEqual(reply.body["positions"], [[0, 2], [0, 1]])
        XCTAssertEqual(reply.body["padding"], [0, 1])
        XCTAssertEqual(reply.attachments.count, 2, "logits and one saved site travel as frames")
        let logits = try WireTensor(XCTUnwrap(reply.body["logits"]), attachments: reply.attachments)
        XCTAssertEqual(logits.shape, [2, 2, 512])
        let saved = try WireTensor(XCTUnwrap(reply.body["saved"]?["blocks.1.resid_post.output"]), attachments: reply.attachments)
        XCTAssertEqual(saved.shape, [2, 3, 64])
        XCTAssertNil(reply.body["top"], "top_k defaults to none when logits or save are asked for")
    }

    func testShutdownEndsJobsAndRemovesTheSocketFile() throws {
        let live = try LiveDaemon()
        try live.call("models.load", ["name": "tiny", "source": .string(Fixtures.gpt2Tiny)])
        let client = try live.client()
        let heavy = MessageValue.array((0..<64).map { _ in MessageValue((0..<64).map { $0 }) })
        for id in 1...3 { try client.send(WireMessage(["id": .int(Int64(id)), "op": "forward", "model": "tiny", "tokens": heavy])) }
        Thread.sleep(forTimeInterval: 0.05)
        XCTAssertEqual(try live.call("server.shutdown")["stopping"], true)
        live.daemon.wait()
        // Every request got its final reply: ok if it finished, cancelled otherwise.
        var outcomes = [String]()
        while outcomes.count < 3, let reply = try client.receive(timeout: 5) {
            outcomes.append(reply.body["status"] == "ok" ? "ok" : reply.body["error"]?["code"]?.stringValue ?? "?")
        }
        XCTAssertEqual(outcomes.count, 3)
        XCTAssertTrue(outcomes.contains("cancelled"), "\(outcomes)")
        XCTAssertTrue(outcomes.allSatisfy { $0 == "ok" || $0 == "cancelled" }, "\(outcomes)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: String(live.endpoint.dropFirst("ipc://".count))))
    }

    func testASignalStopsGracefully() throws {
        let live = try LiveDaemon()
        // SIGUSR2 stands in for SIGTERM, which the test process must keep.
        live.daemon.stopOnSignals([SIGUSR2])
        XCTAssertEqual(try live.call("hello")["server"], "loupe")
        kill(getpid(), SIGUSR2)
        live.daemon.wait()
        XCTAssertFalse(FileManager.default.fileExists(atPath: String(live.endpoint.dropFirst("ipc://".count))))
    }

    func testStats() throws {
        let live = try LiveDaemon()
        defer { live.stop() }
        try live.call("models.load", ["name": "tiny", "source": .string(Fixtures.gpt2Tiny)])
        try live.call("forward", ["model": "tiny", "tokens": [[1, 2]]])
        let stats = try live.call("server.stats")
        XCTAssertGreaterThan(stats["uptime_seconds"]?.doubleValue ?? 0, 0)
        XCTAssertEqual(stats["requests"], 3)
        XCTAssertEqual(stats["models"], ["tiny"])
        XCTAssertGreaterThan(stats["model_bytes"]?.intValue ?? 0, 500_000)
        XCTAssertGreaterThan(stats["rss_bytes"]?.intValue ?? 0, 0)
        XCTAssertEqual(stats["jobs"], ["queued": 0, "running": 0, "retained": 2])
        XCTAssertEqual(stats["endpoint"]?.stringValue, live.endpoint)
        XCTAssertEqual(stats["pid"]?.intValue, Int(getpid()))
    }

    func testResultsExpire() throws {
        let live = try LiveDaemon {
            $0.maxRetainedResults = 2
        }
        defer { live.stop() }
        try live.call("models.load", ["name": "tiny", "source": .string(Fixtures.gpt2Tiny)])
        var jobs = [MessageValue]()
        for _ in 0..<3 { jobs.append(try XCTUnwrap(try live.call("forward", ["model": "tiny", "tokens": [[1, 2]]])["job"])) }
        try live.expectError(.notFound, "jobs.result", ["job": jobs[0]])
        XCTAssertEqual(try live.call("jobs.result", ["job": jobs[2]])["job"], jobs[2])
    }
}

final class ForwardDetailsTests: XCTestCase {
    func testTokensAsATensorInAnAttachmentFrame() throws {
        let live = try LiveDaemon()
        defer { live.stop() }
        try live.call("models.load", ["name": "tiny", "source": .string(Fixtures.gpt2Tiny)])
        let ids: [Int32] = [1, 2, 3, 4, 5, 6]
        let tensor: MessageValue = ["dtype": "i32", "shape": [2, 3], "data": ["frame": 1]]
        let reply = try live.client().call("forward", ["model": "tiny", "tokens": tensor, "top_k": 1],
                                           attachments: [ids.withUnsafeBytes { Array($0) }])
        XCTAssertEqual(reply.body["tokens"], [[1, 2, 3], [4, 5, 6]])
        // The same as sending the ids as arrays.
        let plain = try live.call("forward", ["model": "tiny", "tokens": [[1, 2, 3], [4, 5, 6]], "top_k": 1])
        XCTAssertEqual(reply.body["top"], plain["top"])
    }

    func testTopK() {
        let values: [Float] = [0.5, 3, -1, 3, 2, .nan, 7]
        values.withUnsafeBufferPointer { buffer in
            XCTAssertEqual(TopK.indices(buffer, k: 3), [6, 1, 3])
            XCTAssertEqual(TopK.indices(buffer, k: 0), [])
            XCTAssertEqual(TopK.indices(buffer, k: 10), [6, 1, 3, 4, 0, 2, 5])
        }
        // The sorting path for large k agrees with the insertion path.
        var generator = SystemRandomNumberGenerator()
        let many = (0..<5000).map { _ in Float.random(in: -10...10, using: &generator) }
        many.withUnsafeBufferPointer { buffer in
            XCTAssertEqual(Array(TopK.indices(buffer, k: 200).prefix(64)), TopK.indices(buffer, k: 64))
        }
    }
}

final class EndpointTests: XCTestCase {
    func testASecondDaemonDoesNotTakeALiveEndpoint() throws {
        let live = try LiveDaemon()
        defer { live.stop() }
        var configuration = DaemonConfiguration()
        configuration.endpoint = live.endpoint
        XCTAssertThrowsError(try Daemon(configuration: configuration, registry: Fixtures.registry(), logger: Fixtures.logger).start()) {
            XCTAssertTrue("\($0)".contains("already serving"), "\($0)")
        }
        XCTAssertEqual(try live.call("hello")["server"], "loupe", "the first daemon still serves")
    }

    func testAStaleSocketFileIsReplaced() throws {
        let path = NSTemporaryDirectory() + "loupe-stale-\(UUID().uuidString.prefix(8)).sock"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: nil))
        let live = try LiveDaemon { $0.endpoint = "ipc://" + path }
        defer { live.stop() }
        XCTAssertEqual(try live.call("hello")["server"], "loupe")
    }

    func testTCPOnAnEphemeralPort() throws {
        let live = try LiveDaemon { $0.endpoint = "tcp://127.0.0.1:*" }
        defer { live.stop() }
        XCTAssertTrue(live.endpoint.hasPrefix("tcp://127.0.0.1:") && !live.endpoint.hasSuffix(":*"), live.endpoint)
        XCTAssertEqual(try live.call("hello")["protocol"], MessageValue(WireProtocol.version))
        var configuration = DaemonConfiguration()
        configuration.endpoint = live.endpoint
        XCTAssertThrowsError(try Daemon(configuration: configuration, registry: Fixtures.registry(), logger: Fixtures.logger).start())
    }
}
