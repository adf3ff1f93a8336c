import Foundation
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import LoupeTrace
import XCTest

/// The tutorial's head-patching cell (22) on SmolLM2 as one trace through `head_patch`:
/// every cell against nnsight on HF transformers (Tests/Fixtures/sweeps, made by
/// scripts/nnsight_reference.py).
final class SmolLM2HeadPatchTests: XCTestCase {
    func testHeadPatchCellMatchesNNsight() throws {
        let runner = try Fixtures.shared.runner("SmolLM2-135M-Instruct.Q4_1.gguf")
        let reference = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/sweeps/smollm2-ioi-nnsight.json"))) as! [String: Any]
        let clean = reference["clean_tokens"] as! [Int], corrupted = reference["corrupted_tokens"] as! [Int]
        let ids = reference["answer_ids"] as! [Int]
        let golden = reference["heads"] as! [String: Any]
        let expected = golden["values"] as! [[Double]]
        let (layers, heads) = (runner.model.dimensions.layers, runner.model.dimensions.heads)

        let trace = tutorialHeadPatchingTrace(clean: clean, corrupted: corrupted, correct: ids[0], wrong: ids[1], layers: layers,
                                              heads: heads, gpt2: false, viaPlugin: true)
        let result = try runner.run(trace)
        XCTAssertEqual(Double(scalar(result["clean"])), golden["clean_logit_diff"] as! Double, accuracy: 2e-3)
        XCTAssertEqual(Double(scalar(result["corrupted"])), golden["corrupted_logit_diff"] as! Double, accuracy: 2e-3)
        var worst = 0.0
        for layer in 0..<layers {
            for head in 0..<heads {
                worst = max(worst, abs(Double(scalar(result["h\(layer)_\(head)"])) - expected[layer][head]))
            }
        }
        XCTAssertLessThanOrEqual(worst, 1e-3, "largest difference from nnsight")
    }
}
