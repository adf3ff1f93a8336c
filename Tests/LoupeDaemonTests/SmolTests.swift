import Foundation
import LoupeModels
import LoupeSweeps
import LoupeTestSupport
import LoupeWire
import XCTest

/// The daemon with a real model (SmolLM2) warm: many clients, long jobs, cancelled jobs,
/// clients that vanish. One daemon and one load serve the whole class.
final class SmolTests: XCTestCase {
    nonisolated(unsafe) static var live: LiveDaemon?
    nonisolated(unsafe) static var setUpError: (any Error)?
    nonisolated(unsafe) static var path = ""

    override class func setUp() {
        do {
            path = try Fixtures.smol()
            let live = try LiveDaemon()
            try live.call("models.load", ["name": "smol", "source": .string(path)])
            self.live = live
        } catch {
            setUpError = error
        }
    }

    override class func tearDown() { live?.stop() }

    private func daemon() throws -> LiveDaemon {
        if let error = Self.setUpError { throw error }
        return try XCTUnwrap(Self.live)
    }

    /// Token ids for a long batch: `rows` rows of `length` tokens.
    private func longBatch(rows: Int, length: Int) -> MessageValue {
        .array((0..<rows).map { row in MessageValue((0..<length).map { 100 + (row * 31 + $0 * 7) % 40_000 }) })
    }

    func testFourClientsAtOnce() throws {
        let live = try daemon()
        let outcomes = Outcomes()
        let threads = (0..<4).map { index in
            Thread {
                do {
                    let client = try live.client()
                    // Already loaded by another client: this load must cost nothing.
                    let start = Date()
                    let load = try client.call("models.load", ["name": "smol", "source": .string(Self.path)]).body
                    let loadWall = Date().timeIntervalSince(start)
                    let printed = try client.call("models.describe", ["name": "smol", "sites": false]).body["printed"]?.stringValue ?? ""
                    let tokens = try client.call("tokenize", ["model": "smol", "text": .string(Fixtures.cleanPrompt)]).body["tokens"]
                    let run = try client.call("forward", ["model": "smol", "prompts": [.string(Fixtures.cleanPrompt), .string(Fixtures.corruptedPrompt)],
                                                          "top_k": 3, "logits": true]).body
                    outcomes.add(index, Outcome(load: load, loadWall: loadWall, printed: printed, tokens: tokens, run: run))
                } catch {
                    outcomes.fail(index, error)
                }
            }
        }
        threads.forEach { $0.start() }
        try outcomes.waitForAll(4, timeout: 300)

        let results = try outcomes.all()
        XCTAssertEqual(results.count, 4)
        for result in results {
            XCTAssertEqual(result.load["shared"], true)
            XCTAssertEqual(result.load["load_seconds"]?.doubleValue, 0)
            XCTAssertLessThan(result.loadWall, 0.5, "a warm model's load is a lookup")
            XCTAssertTrue(result.printed.hasPrefix("LlamaForCausalLM("), result.printed)
            XCTAssertEqual(result.tokens?.arrayValue?.count, 16)
            // The IOI answer: " John" (2322) first after the clean prompt.
            let top = result.run["top"]?.arrayValue?.first?.arrayValue?.first?.arrayValue
            XCTAssertEqual(top?.first?["id"], 2322)
            XCTAssertEqual(top?.first?["token"], " John")
            let logits = try WireTensor(XCTUnwrap(result.run["logits"])).floats()
            XCTAssertEqual(logits.count, 2 * 49_152)
            let clean = logits[2322] - logits[5099], corrupted = logits[49_152 + 2322] - logits[49_152 + 5099]
            XCTAssertEqual(clean, 5.137, accuracy: 0.1)
            XCTAssertEqual(corrupted, -3.829, accuracy: 0.1)
            // Every client got the very same numbers.
            XCTAssertEqual(result.run["logits"], results[0].run["logits"])
        }
    }

    func testCancelStopsALongJobWithinOneLayer() throws {
        let live = try daemon()
        let client = try live.client()
        try client.send(WireMessage(["id": 1, "op": "forward", "model": "smol", "tokens": longBatch(rows: 2, length: 192), "mode": "stream"]))
        var statuses = [String]()
        var job: MessageValue = .null
        // Let it compute a few layers first.
        while let reply = try client.receive(timeout: 60) {
            statuses.append(reply.body["status"]?.stringValue ?? "")
            job = reply.body["job"] ?? job
            if reply.body["status"] == "progress", (reply.body["done"]?.intValue ?? 0) >= 3 { break }
            XCTAssertNotEqual(reply.body["status"], "ok", "the job should be long enough to cancel")
        }
        XCTAssertEqual(Array(statuses.prefix(2)), ["accepted", "running"])
        let cancel = try live.call("jobs.cancel", ["job": job])
        XCTAssertEqual(cancel["state"], "cancelling")
        let doneAtCancel = try XCTUnwrap(cancel["progress"]?["done"]?.intValue)
        let cancelledAt = Date()

        var final: MessageValue?
        while final == nil, let reply = try client.receive(timeout: 60) {
            if reply.body["status"] == "error" || reply.body["status"] == "ok" { final = reply.body }
        }
        let stoppedAfter = Date().timeIntervalSince(cancelledAt)
        XCTAssertEqual(final?["error"]?["code"], "cancelled")
        let doneAtStop = try XCTUnwrap(final?["progress"]?["done"]?.intValue)
        XCTAssertLessThanOrEqual(doneAtStop - doneAtCancel, 1, "stopped within one layer of the request")
        XCTAssertLessThan(doneAtStop, 30)
        XCTAssertEqual(try live.call("jobs.status", ["job": job])["state"], "cancelled")
        print("cancel: asked at layer \(doneAtCancel), stopped at \(doneAtStop) (\(final?["progress"] ?? nil)), \(Int(stoppedAfter * 1000)) ms later; statuses \(statuses)")
    }

    /// A trace's backward counts its layers after the forward pass's (progress to twice the
    /// layers) and stops within one layer of `jobs.cancel`.
    func testCancelStopsATraceInItsBackward() throws {
        let live = try daemon()
        let client = try live.client()
        let nodes: [MessageValue] = [
            ["id": 0, "op": "get", "site": "blocks.0.resid_pre", "invoke": 0],
            ["id": 1, "op": "get", "site": "logits", "invoke": 1],
            ["id": 2, "op": "index", "x": ["ref": 1], "key": [0, -1, 2322]],
            ["id": 3, "op": "backward", "x": ["ref": 2]],
            ["id": 4, "op": "grad", "x": ["ref": 0]],
            ["id": 5, "op": "save", "x": ["ref": 4], "name": "g"],
        ]
        try client.send(WireMessage(["id": 1, "op": "trace", "model": "smol", "invokes": longBatch(rows: 2, length: 160),
                                     "nodes": .array(nodes), "mode": "stream"]))
        var job: MessageValue = .null
        while let reply = try client.receive(timeout: 120) {
            job = reply.body["job"] ?? job
            XCTAssertNotEqual(reply.body["status"], "ok", "the backward should be long enough to cancel")
            XCTAssertNotEqual(reply.body["status"], "error")
            if reply.body["status"] == "progress" {
                XCTAssertEqual(reply.body["total"], 60)
                if (reply.body["done"]?.intValue ?? 0) >= 32 { break }
            }
        }
        let cancel = try live.call("jobs.cancel", ["job": job])
        XCTAssertEqual(cancel["state"], "cancelling")
        let doneAtCancel = try XCTUnwrap(cancel["progress"]?["done"]?.intValue)
        var final: MessageValue?
        while final == nil, let reply = try client.receive(timeout: 120) {
            if reply.body["status"] == "error" || reply.body["status"] == "ok" { final = reply.body }
        }
        XCTAssertEqual(final?["error"]?["code"], "cancelled")
        let doneAtStop = try XCTUnwrap(final?["progress"]?["done"]?.intValue)
        XCTAssertLessThanOrEqual(doneAtStop - doneAtCancel, 1, "stopped within one layer of the request")
        XCTAssertLessThan(doneAtStop, 60)
    }

    /// The tutorial's IOI sweep on SmolLM2 through the daemon: prompts and answers as text,
    /// the clean and corrupted logit differences, and cells equal to the plain path.
    func testIOISweepsMatchThePlainPath() throws {
        let live = try daemon()
        let loaded = try LoadedModel.load(Self.path, registry: Fixtures.registry())
        let (model, tokenizer) = (loaded.model, try XCTUnwrap(loaded.tokenizer))
        let (clean, corrupted) = (tokenizer.encode(Fixtures.cleanPrompt), tokenizer.encode(Fixtures.corruptedPrompt))
        // The residual sweep here (the head sweep, slower in a debug build, is checked against
        // the plain path on the tiny models and by the sweep engine's own tests on SmolLM2).
        for kind in [SweepKind.residual] {
            let reply = try live.call("sweep", ["model": "smol", "clean": .string(Fixtures.cleanPrompt),
                                                "corrupted": ["prompt": .string(Fixtures.corruptedPrompt)], "kind": .string(kind.rawValue),
                                                "metric": ["logit_diff": ["answer": " John", "wrong": " Mary"]]])
            XCTAssertEqual(reply["clean"]?.doubleValue ?? 0, 5.137, accuracy: 2e-3)
            XCTAssertEqual(reply["corrupted"]?.doubleValue ?? 0, -3.829, accuracy: 2e-3)
            XCTAssertEqual(reply["metric"], ["logit_diff": ["answer": 2322, "wrong": 5099]])
            XCTAssertEqual(reply["clean_tokens"], MessageValue(clean))
            let values = (reply["values"]?.arrayValue ?? []).map { ($0.arrayValue ?? []).map { Float($0.doubleValue ?? .nan) } }
            XCTAssertEqual(values.count, 30)
            if kind == .residual {
                XCTAssertEqual(reply["cols"]?.arrayValue?.count, 16)
                XCTAssertEqual(reply["cols"]?.arrayValue?[1], " John_1")
                XCTAssertEqual(reply["first_difference"], 9)
            } else {
                XCTAssertEqual(reply["cols"]?.arrayValue?.last, "Head 8")
            }
            // A few layers of the plain batched path (every patch its own invocation) to compare.
            let layers = [0, 14, 29]
            let plain = try PatchingSweep(model: model, interventions: testInterventions).runPlain(
                SweepRequest(clean: clean, corrupted: corrupted, kind: kind, metric: .logitDifference(answer: 2322, wrong: 5099)),
                layers: layers)
            for (index, layer) in layers.enumerated() {
                for (a, b) in zip(values[layer], plain.values[index]) { XCTAssertEqual(a, b, accuracy: 1e-3, "\(kind) layer \(layer)") }
            }
        }
        // An answer that is not one token.
        let error = try live.expectError(.badRequest, "sweep", [
            "model": "smol", "clean": .string(Fixtures.cleanPrompt), "corrupted": .string(Fixtures.corruptedPrompt),
            "metric": ["logit_diff": ["answer": " John and", "wrong": " Mary"]]])
        XCTAssertEqual(error.field, "metric.logit_diff.answer")
        XCTAssertTrue(error.message.contains("2 tokens"), error.message)
    }

    /// A running sweep stops within one layer of `jobs.cancel`.
    func testCancelStopsARunningSweep() throws {
        let live = try daemon()
        let clean = (0..<24).map { 300 + $0 * 11 }
        var corrupted = clean
        corrupted[1] = 4242
        let client = try live.client()
        try client.send(WireMessage(["id": 1, "op": "sweep", "model": "smol", "clean": MessageValue(clean), "corrupted": MessageValue(corrupted),
                                     "kind": "heads", "metric": ["kl": [:]], "mode": "stream"]))
        var job: MessageValue = .null
        while let reply = try client.receive(timeout: 60) {
            job = reply.body["job"] ?? job
            if reply.body["status"] == "progress", (reply.body["done"]?.intValue ?? 0) >= 2 { break }
            XCTAssertNotEqual(reply.body["status"], "ok", "the sweep should be long enough to cancel")
            XCTAssertNotEqual(reply.body["status"], "error")
        }
        let cancel = try live.call("jobs.cancel", ["job": job])
        XCTAssertEqual(cancel["state"], "cancelling")
        let doneAtCancel = try XCTUnwrap(cancel["progress"]?["done"]?.intValue)
        var final: MessageValue?
        while final == nil, let reply = try client.receive(timeout: 60) {
            if reply.body["status"] == "error" || reply.body["status"] == "ok" { final = reply.body }
        }
        XCTAssertEqual(final?["error"]?["code"], "cancelled")
        let doneAtStop = try XCTUnwrap(final?["progress"]?["done"]?.intValue)
        XCTAssertLessThanOrEqual(doneAtStop - doneAtCancel, 1, "stopped within one layer of the request")
        XCTAssertLessThan(doneAtStop, 30)
    }

    /// `loupe patch --json --svg --html` against the warm daemon.
    func testPatchCommand() throws {
        let live = try daemon()
        let directory = NSTemporaryDirectory() + "loupe-patch-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let json = try LoupeProcess.run([
            "patch", "smol", "--json", "--clean", Fixtures.cleanPrompt, "--corrupt", Fixtures.corruptedPrompt,
            "--answer", " John", "--wrong", " Mary", "--endpoint", live.endpoint,
            "--svg", directory + "/residual.svg", "--html", directory + "/residual.html"])
        XCTAssertEqual(json.status, 0, json.errors)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any])
        XCTAssertEqual(object["clean_logit_diff"] as? Double ?? 0, 5.137, accuracy: 2e-3)
        XCTAssertEqual(object["corrupted_logit_diff"] as? Double ?? 0, -3.829, accuracy: 2e-3)
        XCTAssertEqual((object["rows"] as? [String])?.count, 30)
        let cols = object["cols"] as? [String] ?? []
        XCTAssertEqual(cols.count, 16)
        XCTAssertEqual(cols.dropFirst().first, " John_1")
        XCTAssertEqual((object["values"] as? [[Double]])?.count, 30)
        XCTAssertEqual((object["values"] as? [[Double]])?.last?.last ?? 0, 1, accuracy: 1e-3)
        XCTAssertNotNil(object["seconds"] as? Double)

        let svg = try SVGText(path: directory + "/residual.svg")
        XCTAssertEqual(svg.cells, 30 * 16)
        for label in cols + ["0", "29", "Layer", "Position", "Norm. Logit Diff"] {
            XCTAssertTrue(svg.texts.contains(label), "\(label.debugDescription) missing from the SVG")
        }
        let html = try String(contentsOfFile: directory + "/residual.html", encoding: .utf8)
        XCTAssertTrue(html.hasPrefix("<!DOCTYPE html>") && html.contains("<svg") && !html.contains("<script"), html)
    }

    func testResultFromANewConnection() throws {
        let live = try daemon()
        let job = try XCTUnwrap(try live.client().call("forward", ["model": "smol", "prompts": [.string(Fixtures.cleanPrompt)],
                                                                   "top_k": 3, "mode": "detach"]).body["job"])
        // That connection is gone; another one asks for the result (waiting if need be).
        let result = try live.call("jobs.result", ["job": job])
        XCTAssertEqual(result["job"], job)
        XCTAssertEqual(result["top"]?.arrayValue?.first?.arrayValue?.first?.arrayValue?.first?["id"], 2322)
        XCTAssertNotNil(result["timing"]?["run_ms"])
        XCTAssertEqual(try live.call("jobs.status", ["job": job])["state"], "done")
        // Asked again, from yet another connection: the same result.
        XCTAssertEqual(try live.call("jobs.result", ["job": job])["top"], result["top"])
    }

    func testTokenizeAndDetokenize() throws {
        let live = try daemon()
        let reply = try live.call("tokenize", ["model": "smol", "text": "After John and Mary"])
        XCTAssertEqual(reply["tokens"], [4582, 2322, 284, 5099])
        XCTAssertEqual(reply["pieces"], ["After", "ĠJohn", "Ġand", "ĠMary"])
        XCTAssertEqual(try live.call("detokenize", ["model": "smol", "tokens": [4582, 2322, 284, 5099]])["text"], "After John and Mary")
        let error = try live.expectError(.indexOutOfRange, "detokenize", ["model": "smol", "tokens": [1, 49_152]])
        XCTAssertEqual(error.field, "tokens.1")
        let describe = try live.call("models.describe", ["name": "smol", "sites": false])
        XCTAssertEqual(describe["tokenizer"]?["vocab_size"], 49_152)
        XCTAssertEqual(describe["dimensions"]?["kv_heads"], 3)
    }

    func testIOICommandOnTheWarmDaemon() throws {
        let live = try daemon()
        let result = try LoupeProcess.run(["ioi", "--endpoint", live.endpoint, "--model", Self.path])
        XCTAssertEqual(result.status, 0, result.errors)
        XCTAssertTrue(result.output.contains("already warm"), result.output)
        XCTAssertTrue(result.output.contains("clean logit difference (\" John\" - \" Mary\"): 5.1"), result.output)
        XCTAssertTrue(result.output.contains("corrupted logit difference (\" John\" - \" Mary\"): -3.8"), result.output)
    }

    func testAKilledClientDoesNotDisturbTheDaemon() throws {
        let live = try daemon()
        // A separate process sends a long job, says its id, and is killed mid-job.
        let script = """
        import sys, zmq, msgpack
        s = zmq.Context().socket(zmq.DEALER); s.connect(sys.argv[1])
        rows = [[100 + (r * 31 + i * 7) % 40000 for i in range(48)] for r in range(2)]
        s.send(msgpack.packb({"id": 1, "op": "forward", "model": "smol", "tokens": rows, "mode": "stream"}))
        while True:
            reply = msgpack.unpackb(s.recv())
            if reply["status"] == "running":
                print(reply["job"], flush=True)
        """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, live.endpoint]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let line = String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
        let job = try XCTUnwrap(Int(line.trimmingCharacters(in: .whitespacesAndNewlines)), "the client printed '\(line)'")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()

        // The daemon answers at once, the job runs on, and its result is there for anyone.
        let start = Date()
        XCTAssertEqual(try live.call("hello")["server"], "loupe")
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.5, "hello is answered while the job runs")
        XCTAssertEqual(try live.call("jobs.status", ["job": MessageValue(job)])["state"], "running")
        let result = try live.call("jobs.result", ["job": MessageValue(job)])
        XCTAssertEqual(result["tokens"]?.arrayValue?.count, 2)
        XCTAssertEqual(try live.call("models.list")["models"]?.arrayValue?.first?["running"], false)
    }
}

/// What one client of `testFourClientsAtOnce` saw.
private struct Outcome: @unchecked Sendable {
    let load: MessageValue
    let loadWall: Double
    let printed: String
    let tokens: MessageValue?
    let run: MessageValue
}

/// Collects the clients' outcomes across threads.
private final class Outcomes: @unchecked Sendable {
    private let lock = NSCondition()
    private var results: [Int: Result<Outcome, any Error>] = [:]

    func add(_ index: Int, _ outcome: Outcome) { set(index, .success(outcome)) }
    func fail(_ index: Int, _ error: any Error) { set(index, .failure(error)) }

    private func set(_ index: Int, _ result: Result<Outcome, any Error>) {
        lock.lock()
        results[index] = result
        lock.broadcast()
        lock.unlock()
    }

    func waitForAll(_ count: Int, timeout: Double) throws {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        while results.count < count {
            guard lock.wait(until: deadline) else { throw CocoaError(.userCancelled) }
        }
    }

    func all() throws -> [Outcome] {
        lock.lock()
        defer { lock.unlock() }
        return try results.keys.sorted().map { try results[$0]!.get() }
    }
}
