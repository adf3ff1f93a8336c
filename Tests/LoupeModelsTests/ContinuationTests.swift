import Foundation
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import XCTest

/// A pass that continues from cached keys and values computes exactly what the full pass
/// computes at the same positions.
final class ContinuationTests: XCTestCase {
    func testContinuationMatchesFullPass() throws {
        for name in ["gpt2-tiny", "llama-tiny", "llama-tiny-untied", "mistral-tiny"] {
            let model = try LoadedModel.load(fixturesDirectory + "/models/" + name, registry: testRegistry).model
            let tokens = [3, 141, 59, 26, 5, 35, 89, 79, 32, 38]
            let layers = model.dimensions.layers
            let residuals = (0..<layers).map { Site("blocks.\($0).resid_pre", .output) }
            let recorder = ActivationRecorder(residuals)
            let cache = KeyValueCache(layers: layers)
            let full = try model.forward(TokenBatch([tokens]), hooks: recorder, logits: .all, recorder: cache)
            XCTAssertEqual(cache.positions, tokens.count)
            // Rows that start at different positions, stacked in one continuation.
            let starts = [1, 4, 9, 4]
            for firstLayer in 0..<layers {
                let entering = recorder.values[residuals[firstLayer]]!.reshaped([tokens.count, -1])
                let stacked = Tensor(zeros: [starts.map { tokens.count - $0 }.reduce(0, +), model.dimensions.hidden])
                var row = 0
                for start in starts {
                    stacked.slice(axis: 0, row..<(row + tokens.count - start)).assign(from: entering.slice(axis: 0, start..<tokens.count))
                    row += tokens.count - start
                }
                let pass = ForwardPass(continuing: cache, starts: starts)
                let x = try model.run(layers: firstLayer..<layers, on: stacked, pass)
                let logits = try model.unembed(try model.finalNorm(x, pass), .last, pass)
                XCTAssertEqual(logits.shape, [starts.count, 1, model.dimensions.vocabulary])
                let expected = full.select(axis: 0, 0).select(axis: 0, tokens.count - 1)
                for (index, start) in starts.enumerated() {
                    XCTAssertLessThanOrEqual(maxDifference(logits.select(axis: 0, index).select(axis: 0, 0), expected), 1e-5,
                                             "\(name): from layer \(firstLayer), position \(start)")
                }
            }
        }
    }
}
