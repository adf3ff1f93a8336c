import Foundation
import LoupeFormats
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import LoupeTrace
import XCTest

/// The trace ops `call` and `weight`: the logit lens against HF (the tiny fixtures' module
/// calls are checked by the conformance suite's `module-calls`), gradients through a call,
/// SmolLM2's lens and weights, and every typed error.
final class ModuleCallTests: XCTestCase {
    let tokens = [5, 17, 300, 42, 8, 99]

    func call(_ t: inout TraceBuilder, _ module: String, _ x: TraceValue) -> TraceValue {
        t.add("call", ["module": .string(module), "x": x])
    }

    /// The logit lens of every layer of llama-tiny in one trace, against HF's, and lm_head's
    /// weight (tied) as the embedding table, read-only views of both.
    func testLogitLensTraceMatchesHF() throws {
        let runner = try Fixtures.shared.runner("llama-tiny")
        let directory = fixturesDirectory + "/models/llama-tiny"
        let cases = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: directory + "/cases.json"))) as! [String: Any]
        let ids = (cases["sequences"] as! [[Int]])[0]
        let golden = try SafetensorsFile(path: directory + "/module-calls.safetensors")
        var t = TraceBuilder()
        for layer in 0..<runner.model.dimensions.layers {
            let h = t.get("model.layers.\(layer)", invoke: 0)
            t.save(call(&t, "lm_head", call(&t, "model.norm", h)), "lens\(layer)")
        }
        t.save(t.add("weight", ["module": "lm_head", "name": "weight"]), "head")
        t.save(t.add("weight", ["module": "model.embed_tokens", "name": "weight"]), "table")
        let result = try runner.run(t.trace([ids]))
        for layer in 0..<runner.model.dimensions.layers {
            assertClose(result["lens\(layer)"]?.reshaped([ids.count, -1]), try golden.tensor("lens.model.norm.\(layer)"), "lens of layer \(layer)")
        }
        XCTAssertEqual(result["head"]?.toArray(), result["table"]?.toArray())
        XCTAssertEqual(result["head"]?.shape, [runner.model.dimensions.vocabulary, runner.model.dimensions.hidden])
    }

    /// The gradient of a logit difference read through the lens of the last layer equals
    /// the one read from the model's own logits (the same function, computed by calls).
    func testBackwardThroughCallsEqualsTheModels() throws {
        let runner = try Fixtures.shared.runner("llama-tiny")
        let last = runner.model.dimensions.layers - 1
        func gradient(viaCalls: Bool) throws -> Tensor {
            var t = TraceBuilder()
            let h = t.get("model.layers.0", invoke: 0)
            let logits = viaCalls ? call(&t, "lm_head", call(&t, "model.norm", t.get("model.layers.\(last)", invoke: 0)))
                                  : t.get("lm_head", invoke: 0)
            t.add("backward", ["x": t.logitDiff(logits, 7, 11)])
            t.save(t.add("grad", ["x": h]), "grad")
            return try XCTUnwrap(try runner.run(t.trace([tokens]))["grad"])
        }
        let expected = try gradient(viaCalls: false)
        XCTAssertGreaterThan(expected.toArray().map(abs).max() ?? 0, 0)
        assertClose(try gradient(viaCalls: true), expected, tolerance: 1e-5, "gradient through call")
    }

    /// SmolLM2 (the dequantized GGUF): the logit lens of all 30 layers in one trace at the last
    /// position, at transformers' top 5 ids within 1e-3, and its best id; q_proj's weight as HF's (rows
    /// un-permuted), with a sum and rows from make_model_fixtures.py's golden.
    func testSmolLM2LogitLensAndWeights() throws {
        let runner = try Fixtures.shared.runner("SmolLM2-135M-Instruct.Q4_1.gguf")
        let golden = try SafetensorsFile(path: fixturesDirectory + "/models/smollm2-lens.safetensors")
        let ids = try golden.tensor("tokens").toArray().map { Int($0) }
        let layers = runner.model.dimensions.layers
        let values = try golden.tensor("top_values"), topIDs = try golden.tensor("top_ids")
        // Every layer's last position stacked, then one norm and one lm_head call (one pass
        // over the 49152-row table instead of 30).
        var t = TraceBuilder()
        let rows = (0..<layers).map { t.index(t.get("model.layers.\($0)", invoke: 0), [0, -1]) }
        let lens = call(&t, "lm_head", call(&t, "model.norm", t.add("stack", ["xs": .array(rows)])))
        // The lens at HF's five best ids, and its own best id (a full sort is slow in a debug build).
        let layerOf = (0..<layers).flatMap { Array(repeating: TraceValue.int($0), count: 5) }
        let best = topIDs.toArray().map { TraceValue.int(Int($0)) }
        t.save(t.index(lens, [.array(layerOf), .array(best)]), "values")
        t.save(t.add("argmax", ["x": lens, "dim": -1]), "best")
        let probe = "model.layers.0.self_attn.q_proj"
        t.save(t.add("weight", ["module": .string(probe), "name": "weight"]), "q")
        let result = try runner.run(t.trace([ids]))
        assertClose(result["values"]?.reshaped([layers, 5]), values, tolerance: 1e-3, "lens at HF's top 5 ids")
        let argmax = try XCTUnwrap(result["best"]).toArray()
        for layer in 0..<layers {
            // The best id, where it leads by more than the tolerance.
            let v = values.select(axis: 0, layer).toArray()
            if v[0] - v[1] > 2e-3 { XCTAssertEqual(argmax[layer], topIDs.select(axis: 0, layer).toArray()[0], "layer \(layer)") }
        }
        let reference = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/models/smollm2-golden.json"))) as! [String: Any]
        let probes = (reference["weight_probes"] as! [String: Any])["\(probe).weight"] as! [String: Any]
        let q = try XCTUnwrap(result["q"])
        XCTAssertEqual(q.shape, probes["shape"] as! [Int])
        XCTAssertEqual(q.toArray().reduce(0.0) { $0 + Double($1) }, probes["sum"] as! Double, accuracy: 1e-2)
        for (row, first) in probes["first8_of_rows"] as! [String: [Double]] {
            XCTAssertEqual(Array(q.select(axis: 0, Int(row)!).toArray().prefix(8)).map(Double.init), first, "row \(row)")
        }
    }

    /// Compiling, or running, `build`'s trace fails with `code` at the node it returns, field `key`.
    func assertFails(_ code: TraceError.Code, key: String, mentions: [String] = [], model: String = "gpt2-tiny",
                     file: StaticString = #filePath, line: UInt = #line, _ build: (inout TraceBuilder) -> TraceValue) throws {
        var t = TraceBuilder()
        let at = build(&t).reference
        do {
            _ = try Fixtures.shared.runner(model).run(t.trace([tokens]))
            XCTFail("expected \(code.rawValue)", file: file, line: line)
        } catch let error as TraceError {
            XCTAssertEqual(error.code, code, error.description, file: file, line: line)
            XCTAssertEqual(error.node, at, error.description, file: file, line: line)
            XCTAssertEqual(error.field, "nodes.\(at ?? -1).\(key)", error.description, file: file, line: line)
            for word in mentions { XCTAssertTrue(error.message.contains(word), "\(error) should mention \(word)", file: file, line: line) }
        }
    }

    func testTypedErrors() throws {
        try assertFails(.unknownSite, key: "module", mentions: ["transformer.h.9.mlp"]) { t in
            call(&t, "transformer.h.9.mlp", t.get("transformer.h.0", invoke: 0))
        }
        try assertFails(.badRequest, key: "module", mentions: ["transformer.h.0.attn (GPT2Attention) cannot be called in a trace"]) { t in
            call(&t, "transformer.h.0.attn", t.get("transformer.h.0", invoke: 0))
        }
        try assertFails(.shapeMismatch, key: "x", mentions: ["transformer.ln_f", "[..., 64]", "[1, 6, 256]"]) { t in
            call(&t, "transformer.ln_f", t.get("transformer.h.0.mlp.c_fc", invoke: 0))
        }
        try assertFails(.indexOutOfRange, key: "x", mentions: ["512"]) { t in
            call(&t, "transformer.wte", [1, 512])
        }
        try assertFails(.badRequest, key: "x", mentions: ["read-only", "clone it first"]) { t in
            let row = t.index(t.add("weight", ["module": "lm_head", "name": "weight"]), [0])
            return t.add("setindex", ["x": row, "key": [0], "value": 1])
        }
        try assertFails(.unknownSite, key: "name", mentions: ["lm_head", "bias"]) { t in
            t.add("weight", ["module": "lm_head", "name": "bias"])
        }
        try assertFails(.unknownSite, key: "module", mentions: ["nowhere"]) { t in
            t.add("weight", ["module": "nowhere", "name": "weight"])
        }
    }
}
