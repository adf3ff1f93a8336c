import Foundation
import LoupeModels
import LoupeTensor

extension PatchingSweep {
    /// The same sweep as the tutorial's batched trace computes it: one forward pass over the
    /// clean run, the corrupted run and one corrupted invocation per patched cell, every
    /// position of every layer, with full logits. Nothing is skipped or reused; `run` must
    /// give the same matrix. `layers` limits the rows computed (all when nil).
    public func runPlain(_ request: SweepRequest, layers: [Int]? = nil, cancelled: CancellationCheck? = nil) throws -> SweepResult {
        let start = Date()
        let layers = layers ?? Array(0..<model.dimensions.layers)
        let length = request.clean.count
        let columns = [SweepKind.residual: length, .heads: model.dimensions.heads, .headPositions: model.dimensions.heads * length][request.kind]!
        let sites = layers.map { Site(request.kind == .residual ? "blocks.\($0).resid_post" : "blocks.\($0).attn.z", .output) }
        let patches = CellPatches(sites: sites, columns: columns, positions: length, kind: request.kind, firstPatchedRow: 2)
        let invocations = [request.clean, request.corrupted] + Array(repeating: request.corrupted, count: sites.count * columns)
        let logits = try model.forward(TokenBatch(invocations), hooks: patches, logits: .all, cancelled: cancelled)
        let last = logits.slice(axis: 1, (length - 1)..<length).reshaped([invocations.count, -1])
        let metric = FullLogitsMetric(request.metric, cleanLogits: last.select(axis: 0, 0))
        let (cleanValue, corruptedValue) = (metric(last.select(axis: 0, 0)), metric(last.select(axis: 0, 1)))
        let values = (0..<sites.count).map { l in
            (0..<columns).map { c -> Float in
                let value = metric(last.select(axis: 0, 2 + l * columns + c))
                return request.normalized ? (value - corruptedValue) / (cleanValue - corruptedValue) : value
            }
        }
        return SweepResult(values: values, clean: cleanValue, corrupted: corruptedValue, firstDifference: 0,
                           tokenLayers: invocations.count * length * model.dimensions.layers,
                           plainTokenLayers: invocations.count * length * model.dimensions.layers,
                           seconds: Date().timeIntervalSince(start))
    }
}

/// Row 0 is the clean run: at each patched site, row `firstPatchedRow + n` gets the clean
/// run's value of its own cell (a position of the residual stream, a head at every position,
/// or a head at one position).
final class CellPatches: ForwardHooks {
    let sites: [Site]
    let columns: Int
    let positions: Int
    let kind: SweepKind
    let firstPatchedRow: Int

    init(sites: [Site], columns: Int, positions: Int, kind: SweepKind, firstPatchedRow: Int) {
        self.sites = sites
        self.columns = columns
        self.positions = positions
        self.kind = kind
        self.firstPatchedRow = firstPatchedRow
    }

    func wants(_ site: Site) -> Bool { sites.contains(site) }

    func visit(_ site: Site, _ value: inout Tensor) throws {
        let layerIndex = sites.firstIndex(of: site)!
        let clean = value.select(axis: 0, 0).copy()
        for column in 0..<columns {
            let row = value.select(axis: 0, firstPatchedRow + layerIndex * columns + column)
            switch kind {
            case .residual: row.select(axis: 0, column).assign(from: clean.select(axis: 0, column))
            case .heads: row.select(axis: 1, column).assign(from: clean.select(axis: 1, column))
            case .headPositions:
                let (head, position) = (column / positions, column % positions)
                row.select(axis: 0, position).select(axis: 0, head).assign(from: clean.select(axis: 0, position).select(axis: 0, head))
            }
        }
    }
}

/// A metric read from a full row of logits.
struct FullLogitsMetric {
    let metric: SweepMetric
    let cleanLogProbabilities: [Double]

    init(_ metric: SweepMetric, cleanLogits: Tensor) {
        self.metric = metric
        cleanLogProbabilities = Scorer.logSoftmax(cleanLogits.reshaped([1, -1]))[0]
    }

    func callAsFunction(_ logits: Tensor) -> Float {
        let row = logits.reshaped([1, -1])
        switch metric {
        case .logitDifference(let answer, let wrong): return row[0, answer] - row[0, wrong]
        case .logProbability(let answer): return Float(Scorer.logSoftmax(row)[0][answer])
        case .klFromClean:
            let patched = Scorer.logSoftmax(row)[0]
            return Float(zip(cleanLogProbabilities, patched).reduce(0.0) { $0 + exp($1.0) * ($1.0 - $1.1) })
        }
    }
}
