import Foundation
import LoupeModels
import LoupeTensor

/// Attribution patching (Nanda 2023; AtP in Kramár et al. 2024): every cell of every patching
/// matrix estimated to first order from one clean forward pass and one corrupted forward and
/// backward pass, however many cells and kinds.
///
/// Patching a unit from the clean run into the corrupted one changes the metric by about the
/// metric's gradient on the corrupted run dotted with the unit's (clean - corrupted) value. A
/// cell's estimate is that product summed over its unit: the residual stream or the MLP's
/// output at one position (over the hidden size), a head's output at every position or at one
/// (over d_head), a neuron at the last position or summed over positions. The estimate stands
/// for the exact sweep's (patched - corrupted), so the raw cell is corrupted + estimate, and
/// normalising and averaging over pairs are `PatchingSweep`'s.
public struct AttributionSweep {
    public let model: any LanguageModel

    public init(model: any LanguageModel) { self.model = model }

    /// One result per kind of `kinds`, in order, each shaped as `PatchingSweep.run` returns that
    /// kind's (`request.kind` is not read). `progress` gets (layers done, layers) of the two passes.
    public func run(_ request: SweepRequest, kinds: [SweepKind], progress: ((Int, Int) -> Void)? = nil,
                    cancelled: CancellationCheck? = nil) throws -> AttributionResult {
        let start = Date()
        let dimensions = model.dimensions
        for kind in kinds { try request.with(kind: kind).validate(dimensions, method: .attribution) }
        let swept = request.sweptLayers(dimensions)
        let sites = Set(kinds.flatMap { kind in swept.map { kind.site(layer: $0).site } })

        // The clean run: the units' values and the clean metric.
        let clean = try Recording(model, request.pairs.map(\.clean), sites: sites, cancelled: cancelled)
        let scorer = try Scorer(model: model, metrics: request.pairs.map(\.metric), cleanFinal: clean.lastFinal)
        let cleanValues = try scorer.score(clean.lastFinal, pairs: Array(request.pairs.indices))
        progress?(dimensions.layers, 2 * dimensions.layers)

        // The corrupted run, and the backward of the pairs' metrics summed: rows do not mix, so
        // each pair's rows get the gradient of its own metric.
        let corrupted = TokenBatch(request.pairs.map { $0.corrupted! })
        let recorder = GradientRecorder(Array(sites))
        var corruptedValues = [Float]()
        let backward = try model.backward(corrupted, hooks: recorder, logits: .last, cancelled: cancelled) { logits in
            let metrics = request.pairs.indices.map { pair in
                request.pairs[pair].metric.differentiable(logits.select(axis: 0, pair).select(axis: 0, 0),
                                                          cleanLogProbabilities: scorer.cleanLogProbabilities[pair])
            }
            corruptedValues = metrics.map { $0.toArray()[0] }
            return metrics.dropFirst().reduce(metrics[0]) { TensorMath.binary($0, $1, .add) }
        }
        progress?(2 * dimensions.layers, 2 * dimensions.layers)

        let seconds = Date().timeIntervalSince(start)
        let tokenLayers = (clean.batch.slots + corrupted.slots) * dimensions.layers
        let results = kinds.map { kind in
            var pairs = [PairSweep](), raw = [[[Float]]]()
            for (index, pair) in request.pairs.enumerated() {
                let rows = swept.map { layer in
                    let site = kind.site(layer: layer).site
                    let products = Self.products(clean: clean.value(site, row: index),
                                                 corrupted: unpadded(recorder.values[site]!, corrupted, row: index),
                                                 gradient: recorder.gradients[site].map { unpadded($0, corrupted, row: index) },
                                                 units: Self.units(kind, dimensions))
                    return Self.row(kind, products, request.neuronPositions).map { corruptedValues[index] + Float($0) }
                }
                raw.append(rows)
                pairs.append(PairSweep(values: PatchingSweep.normalize(rows, clean: cleanValues[index], corrupted: corruptedValues[index], request.normalized),
                                       clean: cleanValues[index], corrupted: corruptedValues[index], firstDifference: pair.firstDifference ?? 0))
            }
            let one = request.with(kind: kind)
            return PatchingSweep.result(pairs: pairs, raw: raw, request: one, tokenLayers: tokenLayers,
                                        plainTokenLayers: one.plainTokenLayers(dimensions), seconds: seconds)
        }
        return AttributionResult(kinds: kinds, results: results, savedBytes: backward.savedBytes, peakBytes: backward.peakBytes,
                                 boundBytes: Self.backwardBytes(request, dimensions), seconds: seconds)
    }

    /// An upper bound on the bytes the backward holds at once, known before it runs: the
    /// corrupted pass's (`ModelDimensions.backwardBytes`) and the metrics' ops on each pair's
    /// row of logits, which keep at most eight rows of the vocabulary.
    public static func backwardBytes(_ request: SweepRequest, _ dimensions: ModelDimensions) -> Int {
        let rows = request.pairs.count, length = request.pairs.map(\.clean.count).max() ?? 0
        return dimensions.backwardBytes(rows: rows, length: length, logitRows: rows) + 4 * 8 * dimensions.vocabulary * rows
    }

    /// The parts of a position's value that are each a unit: the whole (residual stream, MLP
    /// output), each head, each neuron.
    static func units(_ kind: SweepKind, _ dimensions: ModelDimensions) -> Int {
        switch kind {
        case .residual, .mlp: return 1
        case .heads, .headPositions: return dimensions.heads
        case .neurons: return dimensions.intermediate
        }
    }

    /// Σ (clean - corrupted) · gradient over each of `units` equal parts of a position's value,
    /// at each position: [positions][units], in Double. Values are [1, positions, ...]; no
    /// gradient means none reached the site.
    static func products(clean: Tensor, corrupted: Tensor, gradient: Tensor?, units: Int) -> [[Double]] {
        let positions = clean.shape[1]
        guard let gradient else { return Array(repeating: Array(repeating: 0, count: units), count: positions) }
        let (c, k, g) = (clean.toArray(), corrupted.toArray(), gradient.toArray())
        let width = c.count / (positions * units)
        return (0..<positions).map { position in
            (0..<units).map { unit in
                let part = ((position * units + unit) * width)..<((position * units + unit + 1) * width)
                return part.reduce(0.0) { $0 + (Double(c[$1]) - Double(k[$1])) * Double(g[$1]) }
            }
        }
    }

    /// One layer's row of the matrix from its products [positions][units], in the exact sweep's
    /// column order.
    static func row(_ kind: SweepKind, _ products: [[Double]], _ neuronPositions: NeuronPositions) -> [Double] {
        let summed = products.dropFirst().reduce(products[0]) { zip($0, $1).map(+) }
        switch kind {
        case .residual, .mlp: return products.map { $0[0] }
        case .heads: return summed
        case .headPositions: return products[0].indices.flatMap { head in products.map { $0[head] } }
        case .neurons: return neuronPositions == .last ? products[products.count - 1] : summed
        }
    }
}

public struct AttributionResult: Sendable {
    public let kinds: [SweepKind]
    /// One per kind, in order: estimates of `PatchingSweep.run`'s values, with the same clean
    /// and corrupted values and pair entries. `tokenLayers` counts the two forward passes.
    public let results: [SweepResult]
    /// Bytes the backward's records copied, the most its records and gradients held at once,
    /// and the bound on that known before it ran (`AttributionSweep.backwardBytes`).
    public let savedBytes: Int
    public let peakBytes: Int
    public let boundBytes: Int
    public let seconds: Double
}

/// An attribution matrix against the exact one.
public struct SweepComparison: Sendable {
    public struct Cell: Sendable {
        public let row: Int
        public let column: Int
        public let attribution: Float
        public let exact: Float
        public var difference: Float { attribution - exact }
    }

    /// Pearson's correlation over every cell; nil when either matrix is constant.
    public let correlation: Double?
    /// The cell where the two differ most.
    public let worst: Cell

    public init(attribution: [[Float]], exact: [[Float]]) {
        precondition(attribution.map(\.count) == exact.map(\.count), "matrices of different shapes")
        let (a, e) = (attribution.joined().map(Double.init), exact.joined().map(Double.init))
        let (meanA, meanE) = (a.reduce(0, +) / Double(a.count), e.reduce(0, +) / Double(e.count))
        var (cross, squaresA, squaresE) = (0.0, 0.0, 0.0)
        for (x, y) in zip(a, e) {
            cross += (x - meanA) * (y - meanE)
            squaresA += (x - meanA) * (x - meanA)
            squaresE += (y - meanE) * (y - meanE)
        }
        correlation = squaresA > 0 && squaresE > 0 ? cross / (squaresA * squaresE).squareRoot() : nil
        var worst = Cell(row: 0, column: 0, attribution: attribution[0][0], exact: exact[0][0])
        for (row, values) in attribution.enumerated() {
            for (column, value) in values.enumerated() where abs(value - exact[row][column]) > abs(worst.difference) {
                worst = Cell(row: row, column: column, attribution: value, exact: exact[row][column])
            }
        }
        self.worst = worst
    }
}
