import Foundation
import LoupeModels
import LoupeSweeps
import LoupeTensor
import XCTest

import LoupeTestSupport

/// Ablation sweeps against the plain path (every cell its own invocation of one full pass,
/// edited by the `ablate` step), against ablations written out by hand, and sweeps over
/// batches of pairs against each pair alone.
final class AblationSweepTests: XCTestCase {
    let clean = [5, 17, 300, 42, 8, 99, 23, 61, 400]
    let corrupted = [5, 17, 300, 42, 8, 7, 23, 61, 400]
    let references = [[9, 14, 300, 41, 8, 98, 22, 61, 401], [5, 170, 30, 42, 80, 99, 3, 61, 40], [6, 17, 301, 42, 8, 97, 23, 60, 400]]
    let metric = SweepMetric.logitDifference(answer: 3, wrong: 11)

    func model(_ name: String) throws -> any LanguageModel {
        try LoadedModel.load(fixturesDirectory + "/models/" + name, registry: testRegistry).model
    }

    /// The sweep's matrices (mean and per pair) and values against `runPlain`'s.
    @discardableResult
    func check(_ model: any LanguageModel, _ request: SweepRequest, layers: [Int]? = nil, tolerance: Float = 1e-4,
               file: StaticString = #filePath, line: UInt = #line) throws -> SweepResult {
        let result = try PatchingSweep(model: model, interventions: testInterventions).run(request)
        let swept = request.sweptLayers(model.dimensions)
        let layers = layers ?? swept
        let plain = try PatchingSweep(model: model, interventions: testInterventions).runPlain(request, layers: layers)
        let context = "\(model.architecture) \(request.kind) \(request.intervention) \(request.metric) normalized \(request.normalized)"
        XCTAssertEqual(result.pairs.count, request.pairs.count, file: file, line: line)
        func compare(_ got: [[Float]], _ expected: [[Float]], clean: Float, corrupted: Float?, _ what: String) {
            let scale = request.normalized ? abs(clean - (corrupted ?? 0)) : 1
            for (index, layer) in layers.enumerated() {
                let row = swept.firstIndex(of: layer)!
                XCTAssertEqual(got[row].count, expected[index].count, file: file, line: line)
                for (column, value) in expected[index].enumerated() {
                    XCTAssertEqual(got[row][column] * scale, value * scale, accuracy: tolerance,
                                   "\(context) \(what): layer \(layer), column \(column)", file: file, line: line)
                }
            }
        }
        for (pair, (got, expected)) in zip(result.pairs, plain.pairs).enumerated() {
            XCTAssertEqual(got.clean, expected.clean, accuracy: tolerance, file: file, line: line)
            XCTAssertEqual(got.corrupted ?? 0, expected.corrupted ?? 0, accuracy: tolerance, file: file, line: line)
            compare(got.values, expected.values, clean: expected.clean, corrupted: expected.corrupted, "pair \(pair)")
        }
        compare(result.values, plain.values, clean: plain.clean, corrupted: plain.corrupted, "mean")
        XCTAssertLessThan(result.tokenLayers, result.plainTokenLayers, context, file: file, line: line)
        return result
    }

    func testEveryAblationKindMatchesThePlainPath() throws {
        for name in ["gpt2-tiny", "llama-tiny", "llama-tiny-untied"] {
            let model = try model(name)
            for kind in SweepKind.allCases where kind != .neurons {
                for method in AblationMethod.allCases {
                    let pair = SweepPair(clean: clean, corrupted: method == .resample ? corrupted : nil, metric: metric)
                    for normalized in [true, false] {
                        try check(model, SweepRequest(pairs: [pair], kind: kind, intervention: .ablate(method),
                                                      reference: method == .mean ? references : [], normalized: normalized))
                    }
                }
            }
            // The other metrics, and a corrupted prompt as the baseline of a zero ablation.
            for metric in [SweepMetric.logProbability(answer: 3), .klFromClean] {
                try check(model, SweepRequest(pairs: [SweepPair(clean: clean, corrupted: corrupted, metric: metric)], kind: .heads,
                                              intervention: .ablate(.zero), normalized: metric != .klFromClean))
                try check(model, SweepRequest(pairs: [SweepPair(clean: clean, corrupted: nil, metric: metric)], kind: .mlp,
                                              intervention: .ablate(.mean), reference: references, normalized: false))
            }
        }
    }

    /// The ablations written out by hand, one full forward pass per cell: the plain path
    /// applies the `ablate` step itself, so this checks what that step means.
    func testAblationsMeanWhatTheySay() throws {
        for name in ["gpt2-tiny", "llama-tiny"] {
            let model = try model(name)
            let heads = model.dimensions.heads, headDim = model.dimensions.headDim
            let layer = model.dimensions.layers - 1, head = heads - 1, position = 6
            func logitDifference(_ prompt: [Int], _ hooks: (any ForwardHooks)?) throws -> Float {
                let logits = try model.forward(TokenBatch([prompt]), hooks: hooks, logits: .last).reshaped([-1])
                return logits[3] - logits[11]
            }
            let z = Site("blocks.\(layer).attn.z", .output), mlp = Site("blocks.\(layer).mlp_out", .output)
            let resid = Site("blocks.\(layer).resid_post", .output)
            let recorded = ActivationRecorder([z, mlp, resid])
            _ = try model.forward(TokenBatch([corrupted]), hooks: recorded, logits: .none)
            let referenceRecords = try references.map { prompt in
                let record = ActivationRecorder([z, mlp, resid])
                _ = try model.forward(TokenBatch([prompt]), hooks: record, logits: .none)
                return record
            }

            let sweep = PatchingSweep(model: model, interventions: testInterventions)
            func cell(_ kind: SweepKind, _ method: AblationMethod, row: Int, column: Int) throws -> Float {
                let pair = SweepPair(clean: clean, corrupted: method == .resample ? corrupted : nil, metric: metric)
                return try sweep.run(SweepRequest(pairs: [pair], kind: kind, intervention: .ablate(method),
                                                  reference: method == .mean ? references : [], normalized: false)).values[row][column]
            }
            // Zero: head `head` at every position, [1, positions, heads, headDim].
            let zeroHead = try logitDifference(clean, EditHook(z) { $0.select(axis: 2, head).fill(0) })
            XCTAssertEqual(try cell(.heads, .zero, row: layer, column: head), zeroHead, accuracy: 1e-4, name)
            // Resample: the MLP's output at one position from the corrupted run.
            let source = recorded.values[mlp]!
            let resampled = try logitDifference(clean, EditHook(mlp) {
                $0.select(axis: 1, position).assign(from: source.select(axis: 1, position))
            })
            XCTAssertEqual(try cell(.mlp, .resample, row: layer, column: position), resampled, accuracy: 1e-4, name)
            // Mean: the residual stream at one position, averaged over the references.
            let mean = referenceRecords.map { $0.values[resid]!.select(axis: 1, position).toArray() }
                .reduce(into: [Float](repeating: 0, count: model.dimensions.hidden)) { sum, row in
                    for i in row.indices { sum[i] += row[i] / Float(self.references.count) }
                }
            let meaned = try logitDifference(clean, EditHook(resid) {
                $0.select(axis: 1, position).assign(from: Tensor(shape: [1, mean.count], values: mean))
            })
            XCTAssertEqual(try cell(.residual, .mean, row: layer, column: position), meaned, accuracy: 1e-4, name)
            // Zero: one head at one position.
            let zeroOne = try logitDifference(clean, EditHook(z) { $0.select(axis: 1, position).select(axis: 1, head).fill(0) })
            XCTAssertEqual(try cell(.headPositions, .zero, row: layer, column: head * clean.count + position), zeroOne, accuracy: 1e-4, name)
            XCTAssertNotEqual(zeroHead, try logitDifference(clean, nil), "\(name): the ablation must matter")
            _ = headDim
        }
    }

    /// Zero and mean ablation change every position, so nothing is skipped; a resample
    /// changes nothing before the first difference, whose cells are exactly the clean run.
    func testWhatAblationsSkip() throws {
        let model = try model("llama-tiny")
        let sweep = PatchingSweep(model: model, interventions: testInterventions)
        let zero = try sweep.run(SweepRequest(pairs: [SweepPair(clean: clean, corrupted: nil, metric: metric)], kind: .residual,
                                              intervention: .ablate(.zero), normalized: false))
        let resample = try sweep.run(SweepRequest(pairs: [SweepPair(clean: clean, corrupted: corrupted, metric: metric)], kind: .residual,
                                                  intervention: .ablate(.resample), normalized: true))
        XCTAssertEqual(resample.firstDifference, 5)
        for row in resample.values { XCTAssertEqual(Array(row[..<5]), Array(repeating: 1, count: 5)) }
        // A residual edit at layer L, position t recomputes layers after L at positions t on.
        let layers = model.dimensions.layers, n = clean.count
        let laterLayers = layers * (layers - 1) / 2
        XCTAssertEqual(zero.tokenLayers, laterLayers * (n * (n + 1) / 2), "zero ablation skips no position")
        XCTAssertEqual(resample.tokenLayers, laterLayers * ((n - 5) * (n - 4) / 2), "resampling skips the positions before the first difference")
    }

    // MARK: Batches of pairs

    /// Three pairs with their own answers; the third differs at another position.
    var pairs: [SweepPair] {
        [SweepPair(clean: clean, corrupted: corrupted, metric: metric),
         SweepPair(clean: [7, 17, 300, 42, 8, 99, 23, 61, 40], corrupted: [7, 17, 300, 42, 8, 98, 23, 61, 40],
                   metric: .logitDifference(answer: 20, wrong: 4)),
         SweepPair(clean: [5, 17, 300, 42, 81, 99, 23, 61, 400], corrupted: [5, 17, 31, 42, 81, 99, 23, 61, 400],
                   metric: .logitDifference(answer: 11, wrong: 3))]
    }

    func testPairsInOneSweepEqualEachPairAlone() throws {
        for name in ["gpt2-tiny", "llama-tiny"] {
            let model = try model(name)
            let sweep = PatchingSweep(model: model, interventions: testInterventions)
            let cases: [(SweepKind, SweepIntervention, [[Int]])] = [
                (.residual, .patch, []), (.heads, .patch, []), (.headPositions, .patch, []), (.mlp, .ablate(.resample), []),
                (.heads, .ablate(.mean), references), (.residual, .ablate(.zero), []),
            ]
            for (kind, intervention, reference) in cases {
                for normalized in [true, false] {
                    let together = try check(model, SweepRequest(pairs: pairs, kind: kind, intervention: intervention,
                                                                 reference: reference, normalized: normalized))
                    let context = "\(name) \(kind) \(intervention) normalized \(normalized)"
                    let alone = try pairs.map { pair in
                        try sweep.run(SweepRequest(pairs: [pair], kind: kind, intervention: intervention, reference: reference, normalized: false))
                    }
                    for (index, (got, single)) in zip(together.pairs, alone).enumerated() {
                        XCTAssertEqual(got.clean, single.clean, accuracy: 1e-5, context)
                        let values = normalized ? single.values.map { $0.map { ($0 - (single.corrupted ?? 0)) / (single.clean - (single.corrupted ?? 0)) } }
                            : single.values
                        let scale = normalized ? abs(single.clean - (single.corrupted ?? 0)) : 1
                        for (a, b) in zip(got.values.joined(), values.joined()) { XCTAssertEqual(a * scale, b * scale, accuracy: 1e-4, "\(context) pair \(index)") }
                    }
                    // The mean: raw values averaged over the pairs, normalised with the averaged clean and corrupted values.
                    let count = Float(pairs.count)
                    let clean = alone.map(\.clean).reduce(0, +) / count
                    let baseline = alone[0].corrupted == nil ? 0 : alone.map { $0.corrupted! }.reduce(0, +) / count
                    XCTAssertEqual(together.clean, clean, accuracy: 1e-5, context)
                    for row in together.values.indices {
                        for column in together.values[row].indices {
                            let raw = alone.map { $0.values[row][column] }.reduce(0, +) / count
                            let expected = normalized ? (raw - baseline) / (clean - baseline) : raw
                            XCTAssertEqual(together.values[row][column], expected, accuracy: 1e-4, "\(context) mean, \(row), \(column)")
                        }
                    }
                }
            }
        }
    }

    /// A heads sweep takes pairs of different lengths (rows padded on the left); a sweep with
    /// a column per position does not.
    func testPairsOfDifferentLengths() throws {
        let model = try model("llama-tiny")
        var pairs = self.pairs
        pairs[1] = SweepPair(clean: [7, 300, 42, 8, 99, 23], corrupted: [7, 300, 42, 8, 98, 23], metric: .logitDifference(answer: 20, wrong: 4))
        for intervention in [SweepIntervention.patch, .ablate(.zero), .ablate(.resample)] {
            let together = try check(model, SweepRequest(pairs: pairs, kind: .heads, intervention: intervention, normalized: false))
            for (index, pair) in pairs.enumerated() {
                let alone = try PatchingSweep(model: model, interventions: testInterventions).run(SweepRequest(pairs: [pair], kind: .heads, intervention: intervention, normalized: false))
                for (a, b) in zip(together.pairs[index].values.joined(), alone.values.joined()) {
                    XCTAssertEqual(a, b, accuracy: 1e-4, "\(intervention) pair \(index)")
                }
            }
        }
        for kind in [SweepKind.residual, .headPositions, .mlp] {
            XCTAssertThrowsError(try PatchingSweep(model: model, interventions: testInterventions).run(SweepRequest(pairs: pairs, kind: kind))) {
                XCTAssertEqual($0 as? SweepError, .pairLengthsDiffer(pair: 1, length: 6, first: 9))
            }
        }
    }

    /// A sweep of chosen layers gives those rows of the full sweep, in the order asked.
    func testChosenLayersAreRowsOfTheFullSweep() throws {
        let model = try model("llama-tiny")
        let layers = model.dimensions.layers
        for (kind, intervention) in [(SweepKind.residual, SweepIntervention.patch), (.heads, .ablate(.zero)), (.headPositions, .patch)] {
            let pair = SweepPair(clean: clean, corrupted: corrupted, metric: metric)
            let full = try PatchingSweep(model: model, interventions: testInterventions).run(SweepRequest(pairs: [pair], kind: kind, intervention: intervention))
            let chosen = [layers - 1, 0]
            let some = try check(model, SweepRequest(pairs: [pair], kind: kind, intervention: intervention, layers: chosen))
            XCTAssertEqual(some.values.count, 2)
            for (row, layer) in chosen.enumerated() {
                for (a, b) in zip(some.values[row], full.values[layer]) { XCTAssertEqual(a, b, accuracy: 1e-5, "\(kind) layer \(layer)") }
            }
            let last = try PatchingSweep(model: model, interventions: testInterventions).run(SweepRequest(pairs: [pair], kind: kind, intervention: intervention, layers: [layers - 1]))
            XCTAssertLessThan(last.tokenLayers, full.tokenLayers, "\(kind): only the chosen layers' runs are computed")
        }
        let sweep = PatchingSweep(model: model, interventions: testInterventions)
        let pair = SweepPair(clean: clean, corrupted: corrupted, metric: metric)
        XCTAssertThrowsError(try sweep.run(SweepRequest(pairs: [pair], kind: .heads, layers: [layers]))) {
            XCTAssertEqual($0 as? SweepError, .layerOutOfRange(layers, layers: layers))
        }
        XCTAssertThrowsError(try sweep.run(SweepRequest(pairs: [pair], kind: .heads, layers: [0, 0]))) {
            XCTAssertEqual($0 as? SweepError, .repeatedLayer)
        }
        XCTAssertThrowsError(try sweep.run(SweepRequest(pairs: [pair], kind: .heads, layers: []))) {
            XCTAssertEqual($0 as? SweepError, .noLayers)
        }
    }

    func testBadAblationRequests() throws {
        let sweep = PatchingSweep(model: try model("gpt2-tiny"), interventions: testInterventions)
        let alone = SweepPair(clean: clean, corrupted: nil, metric: metric)
        XCTAssertThrowsError(try sweep.run(SweepRequest(pairs: [alone], kind: .heads, intervention: .ablate(.resample)))) {
            XCTAssertEqual($0 as? SweepError, .missingCorrupted(pair: 0))
        }
        XCTAssertThrowsError(try sweep.run(SweepRequest(pairs: [alone], kind: .heads, intervention: .patch))) {
            XCTAssertEqual($0 as? SweepError, .missingCorrupted(pair: 0))
        }
        XCTAssertThrowsError(try sweep.run(SweepRequest(pairs: [alone], kind: .heads, intervention: .ablate(.mean)))) {
            XCTAssertEqual($0 as? SweepError, .missingReference)
        }
        XCTAssertThrowsError(try sweep.run(SweepRequest(pairs: [alone], kind: .heads, intervention: .ablate(.mean), reference: [[1, 2]]))) {
            XCTAssertEqual($0 as? SweepError, .referenceLength(index: 0, length: 2, expected: 9))
        }
        XCTAssertThrowsError(try sweep.run(SweepRequest(pairs: [alone, SweepPair(clean: clean, corrupted: corrupted, metric: metric)],
                                                        kind: .heads, intervention: .ablate(.zero)))) {
            XCTAssertEqual($0 as? SweepError, .missingCorrupted(pair: 0))
        }
        XCTAssertThrowsError(try sweep.run(SweepRequest(pairs: [], kind: .heads))) { XCTAssertEqual($0 as? SweepError, .noPairs) }
    }

    /// Sampled layers of SmolLM2 (the sweep asked for those layers only: a debug build is
    /// slow): a whole-head zero ablation, a mean ablation of the residual stream, an MLP
    /// resample and a resample of one head at one position, each cell against its own full
    /// invocation.
    func testSmolLM2AblationsMatchThePlainPath() throws {
        let loaded = try LoadedModel.load(try fetchedModel("SmolLM2-135M-Instruct.Q4_1.gguf"), registry: testRegistry)
        let tokenizer = try XCTUnwrap(loaded.tokenizer)
        let clean = tokenizer.encode("After John and Mary went to the store, Mary gave a bottle of milk to")
        let corrupted = tokenizer.encode("After John and Mary went to the store, John gave a bottle of milk to")
        let references = ["After Lisa and Mark went to the park, Mark gave a cup of tea to",
                          "When Sarah and David sat in the garden, David handed a glass of water to"].map(tokenizer.encode)
        XCTAssertEqual(references.map(\.count), [clean.count, clean.count], "the references must be as long as the prompt")
        let metric = SweepMetric.logitDifference(answer: 2322, wrong: 5099)
        try check(loaded.model, SweepRequest(pairs: [SweepPair(clean: clean, corrupted: nil, metric: metric)], kind: .heads,
                                             intervention: .ablate(.zero), layers: [0, 29]))
        try check(loaded.model, SweepRequest(pairs: [SweepPair(clean: clean, corrupted: nil, metric: metric)], kind: .residual,
                                             intervention: .ablate(.mean), reference: references, layers: [20]))
        try check(loaded.model, SweepRequest(pairs: [SweepPair(clean: clean, corrupted: corrupted, metric: metric)], kind: .mlp,
                                             intervention: .ablate(.resample), layers: [0, 29]))
        // One head at one position: every cell of the plain path is a full invocation, so a short prompt.
        let short = tokenizer.encode("Then Mary gave the milk to"), shortCorrupted = tokenizer.encode("Then John gave the milk to")
        XCTAssertEqual(short.count, shortCorrupted.count)
        try check(loaded.model, SweepRequest(pairs: [SweepPair(clean: short, corrupted: shortCorrupted, metric: metric)], kind: .headPositions,
                                             intervention: .ablate(.resample), layers: [12]))
        try check(loaded.model, SweepRequest(pairs: [SweepPair(clean: short, corrupted: nil, metric: metric)], kind: .headPositions,
                                             intervention: .ablate(.zero), layers: [7]))
    }
}

/// A hook that edits one site's value.
final class EditHook: ForwardHooks {
    let site: Site
    let edit: (Tensor) -> Void

    init(_ site: Site, _ edit: @escaping (Tensor) -> Void) {
        self.site = site
        self.edit = edit
    }

    func wants(_ s: Site) -> Bool { s == site }
    func visit(_ s: Site, _ value: inout Tensor) throws { edit(value) }
}
