import Foundation
import LoupeModels
import LoupeSweeps
import LoupeTensor
import XCTest

import LoupeTestSupport

let registry = testRegistry
let fixtures = fixturesDirectory

/// Every sweep against the plain path (`runPlain`): each patched cell as its own invocation
/// of one full batched forward pass, the metric read from the full logits.
final class SweepTests: XCTestCase {
    func check(_ model: any LanguageModel, _ request: SweepRequest, layers: [Int]? = nil, tolerance: Float = 1e-4,
               file: StaticString = #filePath, line: UInt = #line) throws -> SweepResult {
        let result = try PatchingSweep(model: model, interventions: testInterventions).run(request)
        let layers = layers ?? Array(0..<model.dimensions.layers)
        let plain = try PatchingSweep(model: model, interventions: testInterventions).runPlain(request, layers: layers)
        XCTAssertEqual(result.clean, plain.clean, accuracy: tolerance, file: file, line: line)
        XCTAssertEqual(result.corrupted == nil, plain.corrupted == nil, file: file, line: line)
        XCTAssertEqual(result.corrupted ?? 0, plain.corrupted ?? 0, accuracy: tolerance, file: file, line: line)
        let expected = plain.values
        // A normalized cell divides by clean - corrupted (or clean), which may be small:
        // compare in the metric's own units.
        let scale = request.normalized ? abs(plain.clean - (plain.corrupted ?? 0)) : 1
        for (index, layer) in layers.enumerated() {
            for (column, value) in expected[index].enumerated() {
                XCTAssertEqual(result.values[layer][column] * scale, value * scale, accuracy: tolerance,
                               "\(model.architecture) \(request.kind) \(request.intervention) \(request.metric) normalized \(request.normalized): layer \(layer), column \(column)",
                               file: file, line: line)
            }
        }
        XCTAssertLessThan(result.tokenLayers, result.plainTokenLayers, file: file, line: line)
        return result
    }

    let clean = [5, 17, 300, 42, 8, 99, 23, 61, 400]
    let corrupted = [5, 17, 300, 42, 8, 7, 23, 61, 400]

    func testFixtureSweepsMatchThePlainPath() throws {
        for name in ["gpt2-tiny", "llama-tiny", "llama-tiny-untied"] {
            let model = try LoadedModel.load(fixtures + "/models/" + name, registry: registry).model
            for kind in SweepKind.allCases where kind != .neurons {
                for metric in [SweepMetric.logitDifference(answer: 3, wrong: 11), .logProbability(answer: 3), .klFromClean] {
                    for normalized in [true, false] {
                        _ = try check(model, SweepRequest(clean: clean, corrupted: corrupted, kind: kind, metric: metric, normalized: normalized))
                    }
                }
            }
        }
    }

    /// One head at one position: the sweep stacks runs that start at the same position.
    func testHeadPositionSweepsMatchThePlainPath() throws {
        for name in ["gpt2-tiny", "llama-tiny"] {
            let model = try LoadedModel.load(fixtures + "/models/" + name, registry: registry).model
            let result = try check(model, SweepRequest(clean: clean, corrupted: corrupted, kind: .headPositions,
                                                       metric: .logitDifference(answer: 3, wrong: 11), normalized: false))
            XCTAssertEqual(result.values[0].count, model.dimensions.heads * clean.count)
        }
    }

    func testPositionsBeforeTheFirstDifferenceAreExactlyUnpatched() throws {
        let model = try LoadedModel.load(fixtures + "/models/llama-tiny", registry: registry).model
        let result = try PatchingSweep(model: model, interventions: testInterventions).run(SweepRequest(clean: clean, corrupted: corrupted, kind: .residual,
                                                                      metric: .logitDifference(answer: 3, wrong: 11)))
        XCTAssertEqual(result.firstDifference, 5)
        for row in result.values { XCTAssertEqual(Array(row[..<5]), Array(repeating: 0, count: 5)) }
        // Patching the last position of the last layer gives the clean run itself.
        XCTAssertEqual(result.values[model.dimensions.layers - 1][clean.count - 1], 1, accuracy: 1e-5)
    }

    func testBadRequests() throws {
        let model = try LoadedModel.load(fixtures + "/models/gpt2-tiny", registry: registry).model
        let sweep = PatchingSweep(model: model, interventions: testInterventions)
        let metric = SweepMetric.logitDifference(answer: 3, wrong: 11)
        XCTAssertThrowsError(try sweep.run(SweepRequest(clean: clean, corrupted: [1, 2], kind: .residual, metric: metric))) {
            XCTAssertEqual($0 as? SweepError, .lengthsDiffer(pair: 0, clean: 9, corrupted: 2))
        }
        XCTAssertThrowsError(try sweep.run(SweepRequest(clean: clean, corrupted: clean, kind: .residual, metric: metric))) {
            XCTAssertEqual($0 as? SweepError, .identicalPrompts(pair: 0))
        }
        XCTAssertThrowsError(try sweep.run(SweepRequest(clean: clean, corrupted: corrupted, kind: .heads,
                                                        metric: .logitDifference(answer: 3, wrong: 512)))) {
            XCTAssertEqual($0 as? SweepError, .tokenOutOfRange(512, pair: 0))
        }
    }

    /// The tutorial's two experiments on SmolLM2, on a sample of layers (the plain path is
    /// slow in a debug build): every sampled cell as its own full invocation.
    func testSmolLM2TutorialSweepsMatchThePlainPath() throws {
        let path = try fetchedModel("SmolLM2-135M-Instruct.Q4_1.gguf")
        let loaded = try LoadedModel.load(path, registry: registry)
        let tokenizer = try XCTUnwrap(loaded.tokenizer)
        let clean = tokenizer.encode("After John and Mary went to the store, Mary gave a bottle of milk to")
        let corrupted = tokenizer.encode("After John and Mary went to the store, John gave a bottle of milk to")
        let metric = SweepMetric.logitDifference(answer: 2322, wrong: 5099)
        let residual = try check(loaded.model, SweepRequest(clean: clean, corrupted: corrupted, kind: .residual, metric: metric),
                                 layers: [0, 14, 29])
        XCTAssertEqual(residual.clean, 5.137, accuracy: 2e-3)
        XCTAssertEqual(try XCTUnwrap(residual.corrupted), -3.829, accuracy: 2e-3)
        XCTAssertEqual(residual.values[0].count, 16)
        _ = try check(loaded.model, SweepRequest(clean: clean, corrupted: corrupted, kind: .heads, metric: metric), layers: [0, 29])
    }
}

/// The tutorial's two experiments against nnsight on HF transformers, on the same dequantized
/// weights (Tests/Fixtures/sweeps, made by scripts/nnsight_reference.py): SmolLM2, and Gemma 3,
/// whose tokenizer puts BOS first.
final class NNsightParityTests: XCTestCase {
    struct Reference: Decodable {
        struct Matrix: Decodable { let clean_logit_diff: Float; let corrupted_logit_diff: Float; let values: [[Float]] }
        let clean_prompt: String
        let corrupted_prompt: String
        let clean_tokens: [Int]
        let corrupted_tokens: [Int]
        let answers: [String]?
        let answer_ids: [Int]
        let residual: Matrix
        let heads: Matrix
    }

    func testEveryCellMatchesNNsightOnSmolLM2() throws {
        try checkEveryCell("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-ioi-nnsight.json", shape: (layers: 30, positions: 16, heads: 9))
    }

    func testEveryCellMatchesNNsightOnGemma3() throws {
        try checkEveryCell("gemma-3-270m-q4_k_m.gguf", "gemma3-ioi-nnsight.json", shape: (layers: 18, positions: 17, heads: 4))
    }

    /// Every cell of both matrices within 1e-3 of nnsight's, the prompts' and the answers' ids
    /// as nnsight's tokenizer made them.
    func checkEveryCell(_ model: String, _ fixture: String, shape: (layers: Int, positions: Int, heads: Int)) throws {
        let path = try fetchedModel(model)
        let reference = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: URL(fileURLWithPath: fixtures + "/sweeps/" + fixture)))
        let loaded = try LoadedModel.load(path, registry: registry)
        let tokenizer = try XCTUnwrap(loaded.tokenizer)
        let clean = tokenizer.encode(reference.clean_prompt)
        let corrupted = tokenizer.encode(reference.corrupted_prompt)
        XCTAssertEqual(clean, reference.clean_tokens)
        XCTAssertEqual(corrupted, reference.corrupted_tokens)
        XCTAssertEqual(clean.count, shape.positions)
        // The answers without special tokens, as nnsight_reference.py tokenizes them.
        XCTAssertEqual((reference.answers ?? [" John", " Mary"]).map { tokenizer.encodeWithoutSpecialTokens($0) },
                       reference.answer_ids.map { [$0] })
        XCTAssertEqual(reference.residual.values.count, shape.layers)
        XCTAssertEqual(reference.heads.values.first?.count, shape.heads)
        for (kind, expected) in [(SweepKind.residual, reference.residual), (.heads, reference.heads)] {
            let result = try PatchingSweep(model: loaded.model, interventions: testInterventions).run(SweepRequest(
                clean: clean, corrupted: corrupted, kind: kind,
                metric: .logitDifference(answer: reference.answer_ids[0], wrong: reference.answer_ids[1])))
            XCTAssertEqual(result.clean, expected.clean_logit_diff, accuracy: 2e-3)
            XCTAssertEqual(try XCTUnwrap(result.corrupted), expected.corrupted_logit_diff, accuracy: 2e-3)
            XCTAssertEqual(result.values.count, expected.values.count)
            var worst: Float = 0
            for (row, expectedRow) in zip(result.values, expected.values) {
                XCTAssertEqual(row.count, expectedRow.count)
                for (value, reference) in zip(row, expectedRow) { worst = max(worst, abs(value - reference)) }
            }
            XCTAssertLessThanOrEqual(worst, 1e-3, "\(kind): largest difference from nnsight")
        }
    }
}

/// A cancelled sweep stops before its next layer.
final class SweepCancellationTests: XCTestCase {
    func testCancellationIsCheckedBeforeEveryLayer() throws {
        let model = try LoadedModel.load(fixturesDirectory + "/models/llama-tiny", registry: testRegistry).model
        let request = SweepRequest(clean: [5, 17, 300, 42, 8, 99], corrupted: [5, 17, 300, 7, 8, 99], kind: .heads,
                                   metric: .logitDifference(answer: 3, wrong: 11))
        nonisolated(unsafe) var layersDone = 0
        XCTAssertThrowsError(try PatchingSweep(model: model, interventions: testInterventions).run(request, progress: { done, _ in layersDone = done },
                                                                cancelled: { layersDone >= 1 })) {
            XCTAssertEqual($0 as? ModelError, .cancelled)
        }
        XCTAssertEqual(layersDone, 1, "the sweep stopped right after the layer during which it was cancelled")
    }
}
