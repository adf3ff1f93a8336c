import Foundation
import LoupeModels
import LoupeSweeps
import LoupeTensor
import LoupeTrace
import XCTest

/// The tutorial's batched residual cell on SmolLM2 as one trace (482 invocations of 16
/// tokens), timed with and without shared rows and against the sweep engine, whose matrix
/// it must equal. A benchmark: it runs when LOUPE_TRACE_BENCH=1, in a release build:
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
        XCTAssertLessThan(worst, 1e-3, "trace against the sweep")
        XCTAssertLessThan(worstPlain, 1e-4, "shared rows against a row per invocation")
        XCTAssertEqual(Double(scalar(shared["clean"])), 5.137, accuracy: 2e-3)
        XCTAssertEqual(Double(scalar(shared["corrupted"])), -3.829, accuracy: 2e-3)
        print(String(format: "trace of the batched cell (%d invocations x %d tokens, %d nodes): compile %.3f s; run %.2f s with shared rows (%d token-layers), %.2f s with a row per invocation (%d); sweep %.2f s; max |trace - sweep| %.2g",
                     invocations.count, clean.count, trace.nodes.count, compileSeconds, sharedSeconds, shared.tokenLayers,
                     plainSeconds, plain.tokenLayers, sweepSeconds, worst))
    }
}
