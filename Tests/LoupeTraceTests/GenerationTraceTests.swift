import Foundation
import LoupeFormats
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import LoupeTrace
import XCTest

/// Traces with a `generate` section: per-step sites, saves and writes, and their errors.
final class GenerationTraceTests: XCTestCase {
    private func node(_ id: Int, _ op: String, _ fields: [String: TraceValue]) -> TraceValue {
        var map = fields
        map["id"] = .int(id)
        map["op"] = .string(op)
        return .map(map)
    }

    private func expectError(_ runner: TraceRunner, _ trace: Trace, _ settings: GenerationSettings?, _ code: TraceError.Code, _ field: String,
                             file: StaticString = #filePath, line: UInt = #line) {
        do {
            if let settings { _ = try runner.compileGeneration(trace, settings: settings) } else { _ = try runner.compile(trace) }
            XCTFail("expected \(code) at \(field)", file: file, line: line)
        } catch {
            XCTAssertEqual(error.code, code, "\(error)", file: file, line: line)
            XCTAssertEqual(error.field, field, "\(error)", file: file, line: line)
        }
    }

    /// Adding a vector to layer 0's output at every step, written as trace nodes, equals the
    /// torch forward hook that did it in HF's generate; the logits saved at every step too.
    func testEveryStepEditMatchesTorchHooks() throws {
        for name in ["gpt2-tiny", "llama-tiny", "mistral-tiny", "pythia-tiny", "gemma2-tiny"] {
            let runner = try Fixtures.shared.runner(name)
            let directory = fixturesDirectory + "/models/" + name
            let golden = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: directory + "/generation.json"))) as! [String: Any]
            let tensors = try SafetensorsFile(path: directory + "/generation.safetensors")
            let prompt = (golden["single"] as! [String: Any])["prompt"] as! [Int]
            let nodes = [
                node(1, "get", ["site": .string("blocks.0.resid_post"), "steps": .string("all")]),
                node(2, "add", ["x": .ref(1), "y": .tensor(try tensors.tensor("edit.vector")), "steps": .string("all")]),
                node(3, "set", ["site": .string("blocks.0.resid_post"), "value": .ref(2), "steps": .string("all")]),
                node(4, "get", ["site": .string("logits"), "steps": .string("all")]),
                node(5, "index", ["x": .ref(4), "key": .array([.int(0), .int(-1)]), "steps": .string("all")]),
                node(6, "save", ["x": .ref(5), "name": .string("logits"), "steps": .string("all")]),
            ]
            let settings = GenerationSettings(maxNewTokens: golden["new_tokens"] as! Int,
                                              eos: Set(golden["eos"] as! [Int]))
            let plan = try runner.compileGeneration(Trace(invocations: [prompt], nodes: nodes), settings: settings)
            var seen = [Int]()
            let result = try runner.generate(plan, onStep: { step, chosen, _ in
                seen.append(step)
                XCTAssertEqual(chosen.count, 1)
            })
            let expected = (golden["edit"] as! [String: Any])["tokens"] as! [Int]
            XCTAssertEqual(result.tokens, [expected], name)
            XCTAssertEqual(result.output, [prompt + expected], name)
            XCTAssertEqual(seen, Array(0..<result.steps), name)
            XCTAssertEqual(result.savedSteps["logits"], Array(0..<result.steps), name)
            XCTAssertFalse(result.single.contains("logits"))
            let logits = try tensors.tensor("edit.logits")
            for (s, value) in result.saved["logits"]!.enumerated() {
                assertClose(value.reshaped([-1]), logits.select(axis: 0, s), tolerance: 1e-4, "\(name) logits at step \(s)")
            }
        }
    }

    /// Site values from step 1 on have one position per invocation, attention keys the
    /// invocation's own (padding removed); a value from step 0 is kept for later steps.
    func testStepShapesAndValuesKeptAcrossSteps() throws {
        let runner = try Fixtures.shared.runner("llama-tiny")
        let heads = runner.model.dimensions.heads, hidden = runner.model.dimensions.hidden
        let nodes = [
            node(1, "get", ["site": .string("blocks.1.attn.pattern"), "invoke": .int(1), "steps": .int(2)]),
            node(2, "save", ["x": .ref(1), "name": .string("pattern"), "steps": .int(2)]),
            node(3, "get", ["site": .string("blocks.0.resid_post"), "invoke": .int(0)]),
            node(4, "index", ["x": .ref(3), "key": .array([.int(0), .int(-1)])]),
            node(5, "get", ["site": .string("blocks.0.resid_post"), "invoke": .int(1), "steps": .array([.int(1), .null])]),
            node(6, "set", ["site": .string("blocks.0.resid_post"), "invoke": .int(1), "value": .ref(4), "steps": .array([.int(1), .null])]),
            node(7, "save", ["x": .ref(5), "name": .string("written"), "steps": .array([.int(1), .null])]),
        ]
        let plan = try runner.compileGeneration(Trace(invocations: [[5, 6, 7, 8, 9], [10, 11]], nodes: nodes),
                                                settings: GenerationSettings(maxNewTokens: 4))
        let result = try runner.generate(plan)
        XCTAssertEqual(result.steps, 4)
        XCTAssertTrue(result.single.contains("pattern"))
        let pattern = result.saved["pattern"]![0]
        XCTAssertEqual(pattern.shape, [1, heads, 1, 2 + 2])
        for h in 0..<heads {
            let row = pattern.select(axis: 1, h).reshaped([-1]).toArray()
            XCTAssertEqual(row.reduce(0, +), 1, accuracy: 1e-5)
        }
        XCTAssertEqual(result.savedSteps["written"], [1, 2, 3])
        for value in result.saved["written"]! { XCTAssertEqual(value.shape, [1, 1, hidden]) }
    }

    func testTypedErrors() throws {
        let runner = try Fixtures.shared.runner("gpt2-tiny")
        let settings = GenerationSettings(maxNewTokens: 3)
        let get = { (steps: TraceValue) in self.node(1, "get", ["site": .string("blocks.0.resid_post"), "steps": steps]) }
        // A step at or past max_new_tokens.
        expectError(runner, Trace(invocations: [[1, 2]], nodes: [get(.int(3))]), settings, .indexOutOfRange, "nodes.0.steps")
        expectError(runner, Trace(invocations: [[1, 2]], nodes: [get(.array([.int(1), .int(4)]))]), settings, .indexOutOfRange, "nodes.0.steps")
        // A node reading one of other steps that is not a single earlier step.
        expectError(runner, Trace(invocations: [[1, 2]], nodes: [
            get(.array([.int(1), .int(3)])),
            node(2, "save", ["x": .ref(1), "name": .string("x"), "steps": .string("all")]),
        ]), settings, .outOfOrder, "nodes.1.steps")
        expectError(runner, Trace(invocations: [[1, 2]], nodes: [
            get(.int(2)),
            node(2, "save", ["x": .ref(1), "name": .string("x"), "steps": .int(1)]),
        ]), settings, .outOfOrder, "nodes.1.steps")
        // Steps in a trace without generate.
        expectError(runner, Trace(invocations: [[1, 2]], nodes: [get(.int(1))]), nil, .badRequest, "nodes.0.steps")
        expectError(runner, Trace(invocations: [[1, 2]], nodes: [get(.string("all"))]), nil, .badRequest, "nodes.0.steps")
        // The prompt and the new tokens past the context.
        expectError(runner, Trace(invocations: [Array(repeating: 1, count: 62)], nodes: []), settings, .tooLarge, "generate.max_new_tokens")
        // A shape that only fails at a later step names the request's node.
        expectError(runner, Trace(invocations: [[1, 2]], nodes: [
            get(.string("all")),
            node(2, "index", ["x": .ref(1), "key": .array([.int(0), .int(1)]), "steps": .string("all")]),
        ]), settings, .indexOutOfRange, "nodes.1.key")
        // The generate section's own fields.
        XCTAssertThrowsError(try GenerateRequest(.map(["max_new_tokens": .int(0)]), eos: [], vocabulary: 10)) {
            XCTAssertEqual(($0 as? TraceError)?.field, "generate.max_new_tokens")
        }
        XCTAssertThrowsError(try GenerateRequest(.map(["max_new_tokens": .int(2), "stop_tokens": .array([.int(10)])]), eos: [], vocabulary: 10)) {
            XCTAssertEqual(($0 as? TraceError)?.code, .indexOutOfRange)
        }
    }

    func testCancellation() throws {
        let runner = try Fixtures.shared.runner("gpt2-tiny")
        let plan = try runner.compileGeneration(Trace(invocations: [[1, 2]], nodes: []), settings: GenerationSettings(maxNewTokens: 8))
        let calls = Calls()
        XCTAssertThrowsError(try runner.generate(plan, cancelled: { calls.count() > 5 })) {
            XCTAssertEqual($0 as? ModelError, .cancelled)
        }
    }
}

private final class Calls: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func count() -> Int { lock.withLock { n += 1; return n } }
}
