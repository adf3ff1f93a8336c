import LoupeModels
import LoupeTensor
import LoupeTrace
import LoupeTestSupport
import XCTest

/// The bound a daemon refuses a backward by (`CompiledTrace.backwardBytes`) holds the most
/// the backward's tape measured, on every fixture architecture and on SmolLM2, for one
/// short invocation to several long ones, with the logits at the last position and everywhere.
final class BackwardMemoryTests: XCTestCase {
    /// The trace: each invocation's logit difference summed, and the gradient at every
    /// layer's output (the attribution pattern); with `allLogits` also the logits' gradient.
    func trace(_ runner: TraceRunner, rows: Int, length: Int, allLogits: Bool) -> Trace {
        let vocabulary = runner.model.dimensions.vocabulary
        let invocations = (0..<rows).map { r in (0..<(length - r)).map { ($0 * 7 + r * 3 + 1) % vocabulary } }
        var t = TraceBuilder()
        var gets = [TraceValue]()
        for i in invocations.indices {
            for layer in 0..<runner.model.dimensions.layers { gets.append(t.get("blocks.\(layer).resid_post", invoke: i)) }
        }
        var total: TraceValue?
        for i in invocations.indices {
            let logits = t.get("logits", invoke: i)
            if allLogits { gets.append(logits) }
            let difference = t.logitDiff(logits, 1, 2)
            total = total.map { t.add("add", ["x": $0, "y": difference]) } ?? difference
        }
        t.add("backward", ["x": total!])
        for (n, get) in gets.enumerated() { t.save(t.add("grad", ["x": get]), "g\(n)") }
        return t.trace(invocations)
    }

    func check(_ model: String, shapes: [(rows: Int, length: Int)], file: StaticString = #filePath, line: UInt = #line) throws {
        let runner = try Fixtures.shared.runner(model)
        for (rows, length) in shapes {
            for allLogits in [false, true] {
                let compiled = try runner.compile(trace(runner, rows: rows, length: length, allLogits: allLogits))
                let bound = try XCTUnwrap(compiled.backwardBytes)
                let measured = try XCTUnwrap(try runner.run(compiled).backward)
                print("\(model) \(rows)x\(length) \(allLogits ? "all" : "last"): peak \(measured.peakBytes), saved \(measured.savedBytes), bound \(bound), ratio \(String(format: "%.2f", Double(bound) / Double(measured.peakBytes)))")
                XCTAssertGreaterThanOrEqual(bound, measured.peakBytes, "\(model) \(rows)x\(length)", file: file, line: line)
            }
        }
    }

    func testTheBoundHoldsOnTheFixtures() throws {
        for model in TraceGradientTests.fixtures {
            try check(model, shapes: [(1, 1), (1, 5), (2, 16), (3, 64)])
        }
    }

    func testTheBoundHoldsOnSmolLM2() throws {
        try check("SmolLM2-135M-Instruct.Q4_1.gguf", shapes: [(1, 16), (2, 32)])
    }
}
