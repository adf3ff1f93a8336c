import Foundation
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import XCTest

/// The real SmolLM2-135M (GGUF Q4_1, dequantized to float32) against HF transformers on
/// the same dequantized weights (Tests/Fixtures/models/smollm2-golden.json).
final class SmolLM2Tests: XCTestCase {
    nonisolated(unsafe) static var loaded: LoadedModel?

    struct Golden: Decodable {
        struct Pair: Decodable {
            struct Run: Decodable { let text: String; let ids: [Int]; let logit_diff: Float }
            let answer_ids: [Int]
            let clean: Run
            let corrupted: Run
        }
        struct Prompt: Decodable { let label: String; let text: String; let ids: [Int]; let top20_ids: [Int]; let top20_logits: [Float] }
        let ioi_seed: Pair
        let ioi_tutorial: Pair
        let prompts: [Prompt]
    }

    let golden = try! JSONDecoder().decode(Golden.self, from: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/models/smollm2-golden.json")))

    func smolLM2() throws -> LoadedModel {
        if let loaded = Self.loaded { return loaded }
        let loaded = try LoadedModel.load(try fetchedModel("SmolLM2-135M-Instruct.Q4_1.gguf"), registry: testRegistry)
        Self.loaded = loaded
        return loaded
    }

    func testSeedIOILogitDifferences() throws {
        let loaded = try smolLM2()
        XCTAssertEqual(loaded.model.architecture, "llama")
        XCTAssertEqual(loaded.model.dimensions, ModelDimensions(layers: 30, hidden: 576, heads: 9, keyValueHeads: 3, headDim: 64,
                                                               intermediate: 1536, vocabulary: 49152, context: 8192))
        for pair in [golden.ioi_seed, golden.ioi_tutorial] {
            let tokenizer = try XCTUnwrap(loaded.tokenizer)
            XCTAssertEqual(tokenizer.encode(pair.clean.text), pair.clean.ids)
            XCTAssertEqual(tokenizer.encode(pair.corrupted.text), pair.corrupted.ids)
            let logits = try loaded.model.forward(TokenBatch([pair.clean.ids, pair.corrupted.ids]), logits: .last)
            for (row, expected) in [pair.clean.logit_diff, pair.corrupted.logit_diff].enumerated() {
                let last = logits.select(axis: 0, row).select(axis: 0, 0)
                XCTAssertEqual(last[pair.answer_ids[0]] - last[pair.answer_ids[1]], expected, accuracy: 2e-3, pair.clean.text)
            }
        }
        // The figures MODELS.md gives for the seed pair.
        XCTAssertEqual(golden.ioi_seed.clean.logit_diff, 5.137, accuracy: 1e-3)
        XCTAssertEqual(golden.ioi_seed.corrupted.logit_diff, -3.829, accuracy: 1e-3)
    }

    /// Top-20 next-token logits of varied prompts, each alone and all in one padded batch.
    func testTopLogitsMatchTransformers() throws {
        let loaded = try smolLM2()
        let tokenizer = try XCTUnwrap(loaded.tokenizer)
        XCTAssertGreaterThanOrEqual(golden.prompts.count, 5)
        let batched = try loaded.model.forward(TokenBatch(golden.prompts.map(\.ids)), logits: .last)
        for (row, prompt) in golden.prompts.enumerated() {
            XCTAssertEqual(tokenizer.encode(prompt.text), prompt.ids, prompt.label)
            let alone = try loaded.model.forward(TokenBatch([prompt.ids]), logits: .last).reshaped([-1])
            for (id, expected) in zip(prompt.top20_ids, prompt.top20_logits) {
                XCTAssertEqual(alone[id], expected, accuracy: 2e-3, "\(prompt.label): token \(id)")
            }
            let logits = alone.toArray()
            let top = logits.indices.sorted { logits[$0] > logits[$1] }.prefix(20)
            XCTAssertEqual(top.first, prompt.top20_ids.first, "\(prompt.label): top token")
            XCTAssertEqual(Set(top).symmetricDifference(prompt.top20_ids).count <= 2, true, "\(prompt.label): top-20 set")
            let inBatch = batched.select(axis: 0, row).reshaped([-1])
            XCTAssertLessThanOrEqual(maxDifference(inBatch, alone), 1e-4, "\(prompt.label): padded batch row vs alone")
        }
    }
}
