import Foundation
import LoupeModels
import LoupeSweeps
import LoupeTensor
import LoupeTrace
import XCTest

/// The tutorial's batched residual cell on SmolLM2 as one trace (482 invocations of 16
/// tokens), timed with and without shared rows and against the sweep engine, whose matrix
/// it must equal, as it must equal nnsight's (Tests/Fixtures/sweeps); then the head-patching
/// cell, by hand and through head_patch, against nnsight's. A benchmark: it runs when
/// LOUPE_TRACE_BENCH=1, in a release build:
///
///     LOUPE_TRACE_BENCH=1 swift test -c release -Xswiftc -enable-testing --filter BenchmarkTests
final class BenchmarkTests: XCTestCase {
    func testTutorialBatchedCellOnSmolLM2() throws {
        try XCTSkipUnless(ProcessInfo.processInfo.environment["LOUPE_TRACE_BENCH"] == "1", "a benchmark: set LOUPE_TRACE_BENCH=1")
        let runner = try Fixtures.shared.runner("SmolLM2-135M-Instruct.Q4_1.gguf")
        let golden = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/models/smollm2-golden.json"))) as! [String: Any]
        let seed = golden["ioi_seed"] as! [String: Any]
        let ids = seed["answer_ids"] as! [Int]
        let clean = (seed["clean"] as! [String: Any])["ids"] as! [Int]
        let corrupted = (seed["corrupted"] as! [String: Any])["ids"] as! [Int]
        let layers = runner.model.dimensions.layers

        var b = TraceBuilder()
        let cleanHS = (0..<layers).map { b.get("model.layers.\($0)", invoke: 0) }
        let cleanDiff = b.logitDiff(b.get("lm_head", invoke: 0), ids[0], ids[1])
        b.save(cleanDiff, "clean")
        let corruptedDiff = b.logitDiff(b.get("lm_head", invoke: 1), ids[0], ids[1])
        b.save(corruptedDiff, "corrupted")
        var invocations = [clean, corrupted]
        for layer in 0..<layers {
            for t in 0..<clean.count {
                let invoke = invocations.count
                invocations.append(corrupted)
                let hidden = b.get("model.layers.\(layer)", invoke: invoke)
                b.add("setindex", ["x": hidden, "key": [all, .int(t), all], "value": b.index(cleanHS[layer], [all, .int(t), all])])
                let patched = b.logitDiff(b.get("lm_head", invoke: invoke), ids[0], ids[1])
                b.save(b.div(b.sub(patched, corruptedDiff), b.sub(cleanDiff, corruptedDiff)), "r\(layer)_\(t)")
            }
        }
        let trace = b.trace(invocations)

        var start = Date()
        let compiled = try runner.compile(trace)
        let compileSeconds = Date().timeIntervalSince(start)
        start = Date()
        let shared = try runner.run(compiled)
        let sharedSeconds = Date().timeIntervalSince(start)
        start = Date()
        let plain = try runner.run(compiled, shareRows: false)
        let plainSeconds = Date().timeIntervalSince(start)
        start = Date()
        let sweep = try PatchingSweep(model: runner.model).run(SweepRequest(clean: clean, corrupted: corrupted, kind: .residual,
                                                                           metric: .logitDifference(answer: ids[0], wrong: ids[1])))
        let sweepSeconds = Date().timeIntervalSince(start)

        var worst: Float = 0, worstPlain: Float = 0
        for layer in 0..<layers {
            for t in 0..<clean.count {
                worst = max(worst, abs(scalar(shared["r\(layer)_\(t)"]) - sweep.values[layer][t]))
                worstPlain = max(worstPlain, abs(scalar(shared["r\(layer)_\(t)"]) - scalar(plain["r\(layer)_\(t)"])))
            }
        }
        let nnsight = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/sweeps/smollm2-ioi-nnsight.json"))) as! [String: Any]
        let residualGolden = (nnsight["residual"] as! [String: Any])["values"] as! [[Double]]
        var worstGolden = 0.0
        for layer in 0..<layers {
            for t in 0..<clean.count { worstGolden = max(worstGolden, abs(Double(scalar(shared["r\(layer)_\(t)"])) - residualGolden[layer][t])) }
        }
        XCTAssertLessThan(worstGolden, 1e-3, "trace against nnsight on HF transformers")
        XCTAssertLessThan(worst, 1e-3, "trace against the sweep")
        XCTAssertLessThan(worstPlain, 1e-4, "shared rows against a row per invocation")
        XCTAssertEqual(Double(scalar(shared["clean"])), 5.137, accuracy: 2e-3)
        XCTAssertEqual(Double(scalar(shared["corrupted"])), -3.829, accuracy: 2e-3)
        print(String(format: "trace of the batched cell (%d invocations x %d tokens, %d nodes): compile %.3f s; run %.2f s with shared rows (%d token-layers), %.2f s with a row per invocation (%d); sweep %.2f s; max |trace - sweep| %.2g, |trace - nnsight| %.2g",
                     invocations.count, clean.count, trace.nodes.count, compileSeconds, sharedSeconds, shared.tokenLayers,
                     plainSeconds, plain.tokenLayers, sweepSeconds, worst, worstGolden))

        // Cell 22 on SmolLM2: o_proj's input split into heads, one head replaced, written
        // back; and the same through head_patch.
        let d = runner.model.dimensions
        let headsGolden = (nnsight["heads"] as! [String: Any])["values"] as! [[Double]]
        for viaPlugin in [false, true] {
            var h = TraceBuilder()
            var cleanHeads = [[TraceValue]]()
            for layer in 0..<layers {
                let split = h.add("split_heads", ["x": h.get("model.layers.\(layer).self_attn.o_proj", io: "input", invoke: 0), "heads": .int(d.heads)])
                cleanHeads.append((0..<d.heads).map { h.index(split, [all, all, .int($0), all]) })
            }
            let cleanD = h.logitDiff(h.get("lm_head", invoke: 0), ids[0], ids[1])
            let corruptedD = h.logitDiff(h.get("lm_head", invoke: 1), ids[0], ids[1])
            var headInvocations = [clean, corrupted]
            for layer in 0..<layers {
                for head in 0..<d.heads {
                    let invoke = headInvocations.count
                    headInvocations.append(corrupted)
                    let site = "model.layers.\(layer).self_attn.o_proj"
                    if viaPlugin {
                        h.add("intervene", ["name": "head_patch", "invoke": .int(invoke), "params": ["source": 0, "layer": .int(layer), "head": .int(head)]])
                    } else {
                        let split = h.add("split_heads", ["x": h.get(site, io: "input", invoke: invoke), "heads": .int(d.heads)])
                        h.add("setindex", ["x": split, "key": [all, all, .int(head), all], "value": cleanHeads[layer][head]])
                        h.add("set", ["site": .string(site), "io": "input", "invoke": .int(invoke), "value": h.add("merge_heads", ["x": split])])
                    }
                    let patched = h.logitDiff(h.get("lm_head", invoke: invoke), ids[0], ids[1])
                    h.save(h.div(h.sub(patched, corruptedD), h.sub(cleanD, corruptedD)), "h\(layer)_\(head)")
                }
            }
            start = Date()
            let result = try runner.run(h.trace(headInvocations))
            let seconds = Date().timeIntervalSince(start)
            var worstHeads = 0.0
            for layer in 0..<layers {
                for head in 0..<d.heads {
                    worstHeads = max(worstHeads, abs(Double(scalar(result["h\(layer)_\(head)"])) - headsGolden[layer][head]))
                }
            }
            XCTAssertLessThan(worstHeads, 1e-3, "head patching \(viaPlugin ? "through head_patch" : "by rearranging") against nnsight")
            print(String(format: "head patching trace %@ (%d invocations): %.2f s (%d token-layers of %d); max |trace - nnsight| %.2g",
                         viaPlugin ? "through head_patch" : "rearranging o_proj's input", headInvocations.count, seconds,
                         result.tokenLayers, result.plainTokenLayers, worstHeads))
        }
    }
}
