import Foundation
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import XCTest

/// What HF transformers computes on a real checkpoint's dequantized weights
/// (Tests/Fixtures/models/*-golden.json, written by scripts/make_model_fixtures.py).
struct RealModelGolden: Decodable {
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

    init(_ name: String) throws {
        self = try JSONDecoder().decode(Self.self, from: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/models/" + name)))
    }

    /// Both IOI pairs: the tokenizer's ids, and the clean and corrupted logit differences
    /// (run as one batch) within `tolerance` of HF's.
    func checkIOI(_ loaded: LoadedModel, tolerance: Float) throws {
        let tokenizer = try XCTUnwrap(loaded.tokenizer)
        for pair in [ioi_seed, ioi_tutorial] {
            XCTAssertEqual(tokenizer.encode(pair.clean.text), pair.clean.ids)
            XCTAssertEqual(tokenizer.encode(pair.corrupted.text), pair.corrupted.ids)
            let logits = try loaded.model.forward(TokenBatch([pair.clean.ids, pair.corrupted.ids]), logits: .last)
            for (row, expected) in [pair.clean.logit_diff, pair.corrupted.logit_diff].enumerated() {
                let last = logits.select(axis: 0, row).select(axis: 0, 0)
                XCTAssertEqual(last[pair.answer_ids[0]] - last[pair.answer_ids[1]], expected, accuracy: tolerance, pair.clean.text)
            }
        }
    }

    /// Top-20 next-token logits of varied prompts within `tolerance` of HF's, each prompt
    /// alone; and all prompts in one padded batch equal to each alone.
    func checkTopLogits(_ loaded: LoadedModel, tolerance: Float) throws {
        let tokenizer = try XCTUnwrap(loaded.tokenizer)
        XCTAssertGreaterThanOrEqual(prompts.count, 5)
        let batched = try loaded.model.forward(TokenBatch(prompts.map(\.ids)), logits: .last)
        for (row, prompt) in prompts.enumerated() {
            XCTAssertEqual(tokenizer.encode(prompt.text), prompt.ids, prompt.label)
            let alone = try loaded.model.forward(TokenBatch([prompt.ids]), logits: .last).reshaped([-1])
            for (id, expected) in zip(prompt.top20_ids, prompt.top20_logits) {
                XCTAssertEqual(alone[id], expected, accuracy: tolerance, "\(prompt.label): token \(id)")
            }
            let logits = alone.toArray()
            let top = logits.indices.sorted { logits[$0] > logits[$1] }.prefix(20)
            XCTAssertEqual(top.first, prompt.top20_ids.first, "\(prompt.label): top token")
            XCTAssertLessThanOrEqual(Set(top).symmetricDifference(prompt.top20_ids).count, 2, "\(prompt.label): top-20 set")
            let inBatch = batched.select(axis: 0, row).reshaped([-1])
            XCTAssertLessThanOrEqual(maxDifference(inBatch, alone), 1e-4, "\(prompt.label): padded batch row vs alone")
        }
    }
}

/// The real SmolLM2-135M (GGUF Q4_1, dequantized to float32) against HF transformers.
final class SmolLM2Tests: XCTestCase {
    nonisolated(unsafe) static var loaded: LoadedModel?
    let golden = try! RealModelGolden("smollm2-golden.json")

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
        try golden.checkIOI(loaded, tolerance: 2e-3)
        // The figures MODELS.md gives for the seed pair.
        XCTAssertEqual(golden.ioi_seed.clean.logit_diff, 5.137, accuracy: 1e-3)
        XCTAssertEqual(golden.ioi_seed.corrupted.logit_diff, -3.829, accuracy: 1e-3)
    }

    func testTopLogitsMatchTransformers() throws {
        try golden.checkTopLogits(try smolLM2(), tolerance: 2e-3)
    }

    /// A one-token pass (every linear layer on one row, as in a decode step) with the products
    /// read from the GGUF's quantized blocks equals the pass on the float32 matrices. (Gemma 3's
    /// block formats are checked against the dequantizer in QuantizedMatrixTests.)
    func testQuantizedProductsEqualFloat32() throws {
        let loaded = try smolLM2()
        XCTAssertTrue(Linear.quantizedProducts, "LOUPE_QUANTIZED_PRODUCTS=0 turns off what this test checks")
        let batch = TokenBatch([[2322]])
        let quantized = try loaded.model.forward(batch, logits: .all)
        Linear.quantizedProducts = false
        defer { Linear.quantizedProducts = true }
        let float32 = try loaded.model.forward(batch, logits: .all)
        // Two float32 summation orders through 30 layers: about 1e-4 on logits of size 10 to 20.
        let difference = maxDifference(quantized, float32)
        XCTAssertLessThanOrEqual(difference, 5e-4)
        XCTAssertGreaterThan(difference, 0, "the quantized products ran (their sums go in another order)")
        print("SmolLM2 one-token logits, quantized against float32 products: max difference \(difference)")
    }
}

/// The real Gemma 3 270M (GGUF Q5_0/Q4_K/Q8_0/Q6_K, dequantized to float32) against HF
/// transformers: 18 layers, local sliding-window layers around every sixth global one,
/// a SentencePiece tokenizer that adds BOS.
final class Gemma3Tests: XCTestCase {
    nonisolated(unsafe) static var loaded: LoadedModel?
    let golden = try! RealModelGolden("gemma3-golden.json")

    func gemma3() throws -> LoadedModel {
        if let loaded = Self.loaded { return loaded }
        let loaded = try LoadedModel.load(try fetchedModel("gemma-3-270m-q4_k_m.gguf"), registry: testRegistry)
        Self.loaded = loaded
        return loaded
    }

    func testSeedIOILogitDifferences() throws {
        let loaded = try gemma3()
        XCTAssertEqual(loaded.model.architecture, "gemma3")
        XCTAssertEqual(loaded.model.dimensions, ModelDimensions(layers: 18, hidden: 640, heads: 4, keyValueHeads: 1, headDim: 256,
                                                               intermediate: 2048, vocabulary: 262_144, context: 32768))
        try golden.checkIOI(loaded, tolerance: 1e-3)
        // What the issue and MODELS.md say of it: 17 tokens with BOS (2), " John" 3415, " Mary" 8712.
        XCTAssertEqual(golden.ioi_seed.clean.ids.count, 17)
        XCTAssertEqual(golden.ioi_seed.clean.ids.first, 2)
        XCTAssertEqual(golden.ioi_seed.answer_ids, [3415, 8712])
    }

    /// On the seed's clean prompt " John" leads, ahead of " the", " her", " Mary", " him".
    func testSeedPromptTopFive() throws {
        let loaded = try gemma3()
        let tokenizer = try XCTUnwrap(loaded.tokenizer)
        let logits = try loaded.model.forward(TokenBatch([golden.ioi_seed.clean.ids]), logits: .last).toArray()
        let top = logits.indices.sorted { logits[$0] > logits[$1] }.prefix(5)
        XCTAssertEqual(top.map { tokenizer.decode([$0]) }, [" John", " the", " her", " Mary", " him"])
    }

    func testTopLogitsMatchTransformers() throws {
        try golden.checkTopLogits(try gemma3(), tolerance: 2e-3)
    }
}
