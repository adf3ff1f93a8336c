import Foundation
import LoupeTestSupport
import LoupeWire
import XCTest

/// `trace` with `generate` on the daemon: the streamed `tokens` replies, limits, cancel, and
/// `loupe generate`.
extension SmolTests {
    /// SmolLM2's greedy continuation equals HF's (scripts/make_generation_fixtures.py), and
    /// the streamed text deltas add up to its text.
    func testGenerateStreamsHFGreedyTokens() throws {
        let live = try XCTUnwrap(Self.live)
        let golden = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/models/smollm2-generation.json"))) as! [String: Any]
        let expected = golden["tokens"] as! [Int]
        var steps = [Int](), streamed = [Int](), text = ""
        let reply = try live.client().call("trace", [
            "model": "smol", "invokes": [["prompt": .string(golden["prompt"] as! String)]], "nodes": [],
            "generate": ["max_new_tokens": MessageValue(expected.count)],
        ], interim: { interim in
            guard interim["status"] == "tokens" else { return }
            steps.append(interim["step"]?.intValue ?? -1)
            streamed.append(interim["tokens"]?.arrayValue?.first?.intValue ?? -1)
            text += interim["text"]?.arrayValue?.first?.stringValue ?? "?"
        }).body
        let generation = try XCTUnwrap(reply["generation"])
        XCTAssertEqual(generation["tokens"], [MessageValue(expected)])
        XCTAssertEqual(generation["output"], [MessageValue((golden["ids"] as! [Int]) + expected)])
        XCTAssertEqual(generation["finish"], ["length"])
        XCTAssertEqual(generation["steps"], MessageValue(expected.count))
        XCTAssertEqual(steps, Array(0..<expected.count))
        XCTAssertEqual(streamed, expected)
        XCTAssertEqual(text, golden["text"] as! String)
    }

    func testGenerateCancels() throws {
        let live = try XCTUnwrap(Self.live)
        let client = try live.client()
        try client.send(WireMessage(["id": 1, "op": "trace", "model": "smol", "invokes": [[1, 2, 3]], "nodes": [],
                                     "generate": ["max_new_tokens": 500, "eos": false], "mode": "stream"]))
        var job: MessageValue = .null
        while let reply = try client.receive(timeout: 60) {
            job = reply.body["job"] ?? job
            if reply.body["status"] == "tokens" { break }
        }
        XCTAssertEqual(try live.call("jobs.cancel", ["job": job])["state"], "cancelling")
        var final: MessageValue?
        while final == nil, let reply = try client.receive(timeout: 60) {
            if reply.body["status"] == "error" || reply.body["status"] == "ok" { final = reply.body }
        }
        XCTAssertEqual(final?["error"]?["code"], "cancelled")
        XCTAssertLessThan(final?["progress"]?["done"]?.intValue ?? .max, 30 * 100)
        XCTAssertEqual(final?["progress"]?["total"]?.intValue, 30 * 500)
    }
}

final class GenerateTests: XCTestCase {
    func testLimitsAndErrors() throws {
        let live = try LiveDaemon {
            $0.maxGenerateTokens = 10
            $0.maxSavedBytes = 4 * 512 * 6
        }
        defer { live.stop() }
        try live.call("models.load", ["name": "tiny", "source": .string(Fixtures.gpt2Tiny)])
        let limits = try live.call("hello", ["protocol": MessageValue(WireProtocol.version)])["limits"]
        XCTAssertEqual(limits?["max_generate_tokens"], 10)
        XCTAssertEqual(WireProtocol.version, 4)
        func trace(_ generate: MessageValue, invokes: MessageValue = [[1, 2]], nodes: MessageValue = []) -> [String: MessageValue] {
            ["model": "tiny", "invokes": invokes, "nodes": nodes, "generate": generate]
        }
        var error = try live.expectError(.tooLarge, "trace", trace(["max_new_tokens": 6], invokes: [[1, 2], [3]]))
        XCTAssertEqual(error.field, "generate.max_new_tokens")
        error = try live.expectError(.tooLarge, "trace", trace(["max_new_tokens": 5], invokes: [MessageValue(Array(repeating: 1, count: 60))]))
        XCTAssertEqual(error.field, "generate.max_new_tokens")
        error = try live.expectError(.badRequest, "trace", trace(["max_new_tokens": 2, "top_p": 0]))
        XCTAssertEqual(error.field, "generate.top_p")
        let get: MessageValue = ["id": 1, "op": "get", "site": "blocks.0.resid_post", "steps": 2]
        error = try live.expectError(.indexOutOfRange, "trace", trace(["max_new_tokens": 2], nodes: [get]))
        XCTAssertEqual(error.field, "nodes.0.steps")
        error = try live.expectError(.badRequest, "trace", ["model": "tiny", "invokes": [[1, 2]], "nodes": [get]])
        XCTAssertEqual(error.field, "nodes.0.steps")
        // Saved values over every step count against --max-saved-mb: the logits of 3 steps
        // and those of step 0 again fit, of 7 steps ([1, 2, 512], then [1, 1, 512]) not.
        let saveAll: MessageValue = [["id": 1, "op": "get", "site": "logits", "steps": "all"],
                                     ["id": 2, "op": "save", "x": ["ref": 1], "name": "logits", "steps": "all"]]
        error = try live.expectError(.tooLarge, "trace", trace(["max_new_tokens": 7], nodes: saveAll))
        XCTAssertEqual(error.field, "nodes")
        // Per-step saves: a list and the steps they came from.
        let reply = try live.call("trace", trace(["max_new_tokens": 3, "eos": false], nodes: [
            ["id": 1, "op": "get", "site": "logits", "steps": "all"], ["id": 2, "op": "save", "x": ["ref": 1], "name": "logits", "steps": "all"],
            ["id": 3, "op": "get", "site": "logits"], ["id": 4, "op": "save", "x": ["ref": 3], "name": "first"],
        ]))
        XCTAssertEqual(reply["saved_steps"]?["logits"], [0, 1, 2])
        XCTAssertEqual(reply["saved"]?["logits"]?.arrayValue?.map { $0["shape"] }, [[1, 2, 512], [1, 1, 512], [1, 1, 512]])
        XCTAssertEqual(reply["saved"]?["first"]?["shape"], [1, 2, 512])
        XCTAssertNil(reply["saved_steps"]?["first"])
    }

    func testGenerateCommand() throws {
        let live = try LiveDaemon()
        defer { live.stop() }
        let golden = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.gpt2Tiny + "/generation.json"))) as! [String: Any]
        let single = golden["single"] as! [String: Any]
        let prompt = (single["prompt"] as! [Int]).map(String.init).joined(separator: ",")
        let endpoint = ["--endpoint", live.endpoint]
        XCTAssertEqual(try LoupeProcess.run(["load", "tiny", Fixtures.gpt2Tiny] + endpoint).status, 0)
        let json = try LoupeProcess.run(["generate", "tiny", prompt, "--ids", "-n", "6", "--json"] + endpoint)
        XCTAssertEqual(json.status, 0, json.errors)
        let parsed = try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any]
        let generation = parsed?["generation"] as? [String: Any]
        XCTAssertEqual(generation?["tokens"] as? [[Int]], [single["tokens"] as! [Int]])
        let sampled = try LoupeProcess.run(["generate", "tiny", prompt, "--ids", "-n", "4", "--temperature", "2", "--seed", "5"] + endpoint)
        XCTAssertEqual(sampled.status, 0, sampled.errors)
        XCTAssertTrue(sampled.errors.contains("4 tokens (length)") || sampled.errors.contains("(eos)"), sampled.errors)
    }
}
