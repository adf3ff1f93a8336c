import Foundation
import LoupeFormats
import LoupeModels
import LoupeSweeps
import LoupeTensor
import XCTest

import LoupeTestSupport

/// Attribution sweeps against torch autograd (the `attribution.*` estimates of every fixture's
/// gradients.safetensors and of smollm2-gradients.safetensors, written by
/// scripts/make_gradient_fixtures.py), against central differences of the metric for every
/// metric, and against the exact sweep's pairs and neurons.
final class AttributionSweepTests: XCTestCase {
    static let everyKind: [SweepKind] = [.residual, .mlp, .heads, .headPositions, .neurons]

    /// The golden estimates of one pair: (patched - corrupted) per cell, raw sums.
    func checkAgainstTorch(_ model: any LanguageModel, _ golden: SafetensorsFile, clean: [Int], corrupted: [Int], answer: Int, wrong: Int,
                           tolerance: Float, _ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        var request = SweepRequest(clean: clean, corrupted: corrupted, kind: .residual,
                                   metric: .logitDifference(answer: answer, wrong: wrong), normalized: false)
        let sweep = AttributionSweep(model: model)
        let result = try sweep.run(request, kinds: Self.everyKind)
        request.neuronPositions = .sum
        let summed = try sweep.run(request, kinds: [.neurons])
        let corruptedValue = try golden.tensor("attribution.metric_corrupted").toArray()[0]
        for result in result.results + summed.results {
            XCTAssertEqual(result.clean, try golden.tensor("attribution.metric_clean").toArray()[0], accuracy: tolerance, name, file: file, line: line)
            XCTAssertEqual(try XCTUnwrap(result.corrupted), corruptedValue, accuracy: tolerance, name, file: file, line: line)
        }
        let keys = ["attribution.residual", "attribution.mlp", "attribution.heads", "attribution.head_positions", "attribution.neurons_last"]
        for (result, key) in zip(result.results + summed.results, keys + ["attribution.neurons_sum"]) {
            let expected = try golden.tensor(key)
            let estimates = Tensor(shape: [result.values.count, result.values[0].count],
                                   values: result.values.joined().map { $0 - result.corrupted! })
            assertClose(estimates, expected.reshaped([model.dimensions.layers, -1]), tolerance: tolerance, "\(name) \(key)", file: file, line: line)
        }
        XCTAssertGreaterThan(result.savedBytes, 0)
        XCTAssertGreaterThanOrEqual(result.peakBytes, result.savedBytes)
        XCTAssertLessThanOrEqual(result.peakBytes, result.boundBytes, "\(name): the bound a limit checks holds")
    }

    func ids(_ golden: SafetensorsFile, _ key: String) throws -> [Int] { try golden.tensor(key).toArray().map { Int($0) } }

    /// Every fixture with gradients: each kind within 1e-4 of torch's
    /// Σ (clean - corrupted) · gradient, all kinds from one sweep.
    func testFixturesMatchTorch() throws {
        let directory = fixturesDirectory + "/models"
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
            .filter { FileManager.default.fileExists(atPath: "\(directory)/\($0)/gradients.safetensors") }.sorted()
        XCTAssertGreaterThanOrEqual(names.count, 10, "\(names)")
        for name in names {
            let model = try LoadedModel.load("\(directory)/\(name)", registry: testRegistry).model
            let golden = try SafetensorsFile(path: "\(directory)/\(name)/gradients.safetensors")
            let vocabulary = model.dimensions.vocabulary
            try checkAgainstTorch(model, golden, clean: try ids(golden, "attribution.clean_tokens"), corrupted: try ids(golden, "attribution.corrupted_tokens"),
                                  answer: (37 * 2 + 11) % vocabulary, wrong: (53 * 2 + 29) % vocabulary, tolerance: 1e-4, name)
        }
    }

    /// The real SmolLM2 on the seed's IOI pair, " John" - " Mary": within 1e-3 of torch.
    func testSmolLM2MatchesTorch() throws {
        let model = try LoadedModel.load(try fetchedModel("SmolLM2-135M-Instruct.Q4_1.gguf"), registry: testRegistry).model
        let golden = try SafetensorsFile(path: fixturesDirectory + "/models/smollm2-gradients.safetensors")
        try checkAgainstTorch(model, golden, clean: try ids(golden, "clean_tokens"), corrupted: try ids(golden, "corrupted_tokens"),
                              answer: 2322, wrong: 5099, tolerance: 1e-3, "SmolLM2")
    }

    let clean = [5, 17, 300, 42, 8, 99, 23, 61, 400]
    let corrupted = [5, 17, 300, 42, 8, 7, 23, 61, 400]

    /// Hooks that move one unit of the corrupted run part way to its clean value:
    /// unit + α · (clean - unit).
    final class MoveUnit: ForwardHooks {
        let site: Site
        let unit: (Tensor) -> Tensor
        let clean: Tensor
        let alpha: Float

        init(site: Site, clean: Tensor, alpha: Float, unit: @escaping (Tensor) -> Tensor) {
            (self.site, self.clean, self.alpha, self.unit) = (site, clean, alpha, unit)
        }

        func wants(_ site: Site) -> Bool { site == self.site }
        func visit(_ site: Site, _ value: inout Tensor) throws {
            let target = unit(value), from = unit(clean)
            let moved = zip(target.toArray(), from.toArray()).map { $0 + alpha * ($1 - $0) }
            target.assign(from: Tensor(shape: target.shape, values: moved))
        }
    }

    /// The metric on the corrupted prompt with the cell's unit moved by `alpha`: 1 is the
    /// exact patch, small ones give the derivative along (clean - corrupted).
    func moved(_ model: any LanguageModel, _ kind: SweepKind, layer: Int, column: Int, alpha: Float, metric: SweepMetric,
               neuronPositions: NeuronPositions = .last) throws -> Float {
        let site = kind.site(layer: layer).site
        let recorder = ActivationRecorder([site])
        let cleanLogits = try model.forward(TokenBatch([clean]), hooks: recorder, logits: .last).reshaped([-1])
        let last = clean.count - 1
        let unit: (Tensor) -> Tensor = switch kind {
        case .residual, .mlp: { $0.select(axis: 0, 0).select(axis: 0, column) }
        case .heads: { $0.select(axis: 0, 0).select(axis: 1, column) }
        case .headPositions: { $0.select(axis: 0, 0).select(axis: 0, column % self.clean.count).select(axis: 0, column / self.clean.count) }
        case .neurons: neuronPositions == .last ? { $0.select(axis: 0, 0).select(axis: 0, last).select(axis: 0, column) }
            : { $0.select(axis: 0, 0).select(axis: 1, column) }
        }
        let hooks = MoveUnit(site: site, clean: recorder.values[site]!, alpha: alpha, unit: unit)
        let logits = try model.forward(TokenBatch([corrupted]), hooks: hooks, logits: .last).reshaped([-1])
        let logProbabilities = { (row: Tensor) -> [Double] in
            let values = row.toArray().map(Double.init), peak = values.max()!
            let total = log(values.reduce(0.0) { $0 + exp($1 - peak) }) + peak
            return values.map { $0 - total }
        }
        switch metric {
        case .logitDifference(let answer, let wrong): return logits[answer] - logits[wrong]
        case .logProbability(let answer): return Float(logProbabilities(logits)[answer])
        case .klFromClean:
            let (p, q) = (logProbabilities(cleanLogits), logProbabilities(logits))
            return Float(zip(p, q).reduce(0.0) { $0 + exp($1.0) * ($1.0 - $1.1) })
        }
    }

    /// Every metric (KL through log-softmax): each estimate is the metric's derivative along
    /// the unit's (clean - corrupted) value, here by central differences of the forward pass.
    func testEveryMetricEstimatesTheDerivativeAlongTheUnit() throws {
        let model = try LoadedModel.load(fixturesDirectory + "/models/llama-tiny", registry: testRegistry).model
        let last = model.dimensions.layers - 1
        let cells: [(SweepKind, NeuronPositions, Int, Int)] = [(.residual, .last, 0, 5), (.residual, .last, last, 8), (.mlp, .last, 0, 6),
                                                              (.heads, .last, 0, 1), (.headPositions, .last, last, 2 * clean.count + 8),
                                                              (.neurons, .last, 0, 17), (.neurons, .sum, last, 3)]
        let epsilon: Float = 1e-2
        for metric in [SweepMetric.logitDifference(answer: 3, wrong: 11), .logProbability(answer: 3), .klFromClean] {
            for (kind, positions, layer, column) in cells {
                let request = SweepRequest(clean: clean, corrupted: corrupted, kind: kind, metric: metric, normalized: false, neuronPositions: positions)
                let result = try AttributionSweep(model: model).run(request, kinds: [kind]).results[0]
                let estimate = result.values[layer][column] - result.corrupted!
                let difference = (try moved(model, kind, layer: layer, column: column, alpha: epsilon, metric: metric, neuronPositions: positions)
                    - (try moved(model, kind, layer: layer, column: column, alpha: -epsilon, metric: metric, neuronPositions: positions))) / (2 * epsilon)
                XCTAssertEqual(estimate, difference, accuracy: 2e-3 + 1e-2 * abs(difference), "\(metric) \(kind) \(positions) layer \(layer) column \(column)")
                XCTAssertNotEqual(estimate, 0, "\(metric) \(kind): a cell after the first difference moves the metric")
            }
        }
    }

    /// The exact neurons sweep (the plain batched path) patches each neuron, at the last
    /// position or at every one.
    func testExactNeuronsPatchEachNeuron() throws {
        let model = try LoadedModel.load(fixturesDirectory + "/models/gpt2-tiny", registry: testRegistry).model
        let metric = SweepMetric.logitDifference(answer: 3, wrong: 11)
        for positions in NeuronPositions.allCases {
            let request = SweepRequest(clean: clean, corrupted: corrupted, kind: .neurons, metric: metric, normalized: false, neuronPositions: positions)
            let result = try PatchingSweep(model: model, interventions: testInterventions).run(request)
            XCTAssertEqual(result.values.map(\.count), [model.dimensions.intermediate, model.dimensions.intermediate])
            for (layer, column) in [(0, 0), (0, 200), (1, 77), (1, 255)] {
                let patched = try moved(model, .neurons, layer: layer, column: column, alpha: 1, metric: metric, neuronPositions: positions)
                XCTAssertEqual(result.values[layer][column], patched, accuracy: 1e-4, "\(positions) layer \(layer) neuron \(column)")
            }
        }
    }

    /// Several pairs: each pair's matrix is its own sweep's, and the reported one is the
    /// exact sweep's mean (raw cells averaged, normalised with the mean clean and corrupted
    /// values). Kinds without a column per position take pairs of different lengths, their
    /// rows left-padded in one batch.
    func testSeveralPairsAverageAsTheExactSweepDoes() throws {
        let model = try LoadedModel.load(fixturesDirectory + "/models/gpt2-tiny", registry: testRegistry).model
        let sweep = AttributionSweep(model: model)
        let second = SweepPair(clean: [9, 3, 300, 41, 8, 99, 12, 61, 400], corrupted: [9, 3, 300, 41, 77, 99, 12, 61, 400],
                               metric: .logProbability(answer: 3))
        let short = SweepPair(clean: [7, 300, 42, 8, 99], corrupted: [7, 300, 42, 8, 98], metric: .klFromClean)
        let first = SweepPair(clean: clean, corrupted: corrupted, metric: .logitDifference(answer: 3, wrong: 11))
        for (pairs, kinds) in [([first, second], Self.everyKind), ([first, short, second], [SweepKind.heads, .neurons])] {
            let together = try sweep.run(SweepRequest(pairs: pairs, kind: .residual), kinds: kinds)
            let alone = try pairs.map { try sweep.run(SweepRequest(pairs: [$0], kind: .residual, normalized: false), kinds: kinds) }
            for (index, kind) in kinds.enumerated() {
                let result = together.results[index]
                let raws = alone.map { $0.results[index] }
                for (pair, raw) in zip(result.pairs, raws) {
                    XCTAssertEqual(pair.clean, raw.clean, accuracy: 1e-5)
                    XCTAssertEqual(pair.corrupted!, raw.corrupted!, accuracy: 1e-5)
                    for (row, expected) in zip(pair.values, raw.values) {
                        for (a, b) in zip(row, expected) {
                            XCTAssertEqual(a * (raw.clean - raw.corrupted!), b - raw.corrupted!, accuracy: 1e-5, "\(kind) pair \(pairs.count)")
                        }
                    }
                }
                let count = Float(pairs.count)
                let (clean, corrupted) = (raws.map(\.clean).reduce(0, +) / count, raws.map { $0.corrupted! }.reduce(0, +) / count)
                XCTAssertEqual(result.clean, clean, accuracy: 1e-5)
                for (row, values) in result.values.enumerated() {
                    for (column, value) in values.enumerated() {
                        let mean = raws.map { $0.values[row][column] }.reduce(0, +) / count
                        XCTAssertEqual(value, (mean - corrupted) / (clean - corrupted), accuracy: 1e-4, "\(kind) mean, cell \(row), \(column)")
                    }
                }
            }
        }
    }

    func testComparisonCorrelatesAndFindsTheWorstCell() {
        let exact: [[Float]] = [[1, 2, 3], [4, 5, 6]]
        let scaled = SweepComparison(attribution: exact.map { $0.map { 2 * $0 + 1 } }, exact: exact)
        XCTAssertEqual(scaled.correlation!, 1, accuracy: 1e-12)
        XCTAssertEqual(SweepComparison(attribution: exact.map { $0.map { -$0 } }, exact: exact).correlation!, -1, accuracy: 1e-12)
        // Both have mean 3.5: Σ dx·dy = 9.5 and Σ dx² = Σ dy² = 17.5.
        let noisy = SweepComparison(attribution: [[2, 1, 6], [3, 5, 4]], exact: exact)
        XCTAssertEqual(noisy.correlation!, 9.5 / 17.5, accuracy: 1e-12)
        XCTAssertEqual([noisy.worst.row, noisy.worst.column], [0, 2])
        XCTAssertEqual([noisy.worst.attribution, noisy.worst.exact, noisy.worst.difference], [6, 3, 3])
        XCTAssertNil(SweepComparison(attribution: [[1, 1]], exact: [[1, 2]]).correlation, "a constant matrix correlates with nothing")
    }

    func testAblationIsRefused() throws {
        let model = try LoadedModel.load(fixturesDirectory + "/models/gpt2-tiny", registry: testRegistry).model
        let request = SweepRequest(pairs: [SweepPair(clean: clean, corrupted: corrupted, metric: .klFromClean)], kind: .heads, intervention: .ablate(.zero))
        XCTAssertThrowsError(try AttributionSweep(model: model).run(request, kinds: [.heads])) {
            XCTAssertEqual($0 as? SweepError, .ablationByAttribution)
        }
        XCTAssertThrowsError(try PatchingSweep(model: model, interventions: testInterventions).run(request.with(kind: .neurons))) {
            XCTAssertEqual($0 as? SweepError, .neuronAblation)
        }
    }
}
