import Foundation
import LoupeConformance
import LoupeFormats
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import XCTest

/// Gradients on the real SmolLM2 against torch autograd on the same float32 weights
/// (smollm2-gradients.safetensors, made by scripts/make_gradient_fixtures.py); every
/// fixture's are checked by the conformance suite's `gradients` check.
final class SmolLM2GradientTests: XCTestCase {
    /// The real SmolLM2 on the seed's corrupted IOI prompt, for the logit difference
    /// " John" − " Mary": every canonical site of layers 0, 14 and 29 against torch.
    func testSmolLM2MatchesTorchAtSeveralLayers() throws {
        let model = try LoadedModel.load(try fetchedModel("SmolLM2-135M-Instruct.Q4_1.gguf"), registry: testRegistry).model
        let golden = try SafetensorsFile(path: fixturesDirectory + "/models/smollm2-gradients.safetensors")
        let tokens = try golden.tensor("corrupted_tokens").toArray().map { Int($0) }
        let sites = GradientChecks.sites(model).filter { entry in [".0", ".14", ".29"].contains { entry.key.hasSuffix($0) } || entry.key == "final_norm" }
        let recorder = GradientRecorder(sites.map(\.site) + [Site("model.embed_tokens", .output)], keepValues: false)
        let result = try model.backward(TokenBatch([tokens]), hooks: recorder) { logits in
            GradientChecks.logitDifference(logits, [(0, tokens.count - 1, 2322, 5099)])
        }
        XCTAssertEqual(result.metric, try golden.tensor("metric.corrupted").toArray()[0], accuracy: 2e-3)
        for (key, site) in sites {
            XCTAssertNil(GradientChecks.mismatch(recorder.gradients[site], try golden.tensor("grad.\(key)"), relative: 1e-4), "SmolLM2 \(key)")
        }
        XCTAssertNil(GradientChecks.mismatch(recorder.gradients[Site("model.embed_tokens", .output)], try golden.tensor("grad.embed"), relative: 1e-4),
                     "SmolLM2 embeddings")
    }
}
