import Foundation
import LoupeModels
import LoupeTensor
import LoupeTrace

extension PatchingSweep {
    /// The same sweep as the tutorial's batched trace computes it: for each pair, one forward
    /// pass over its prompts and one invocation per edited cell, every position of every
    /// layer, with full logits. Nothing is skipped or reused; `run` must give the same matrix.
    /// A patch is copied by hand here; an ablation is the cell's `ablate` step applied to its
    /// invocation as a trace applies it. `layers` limits the rows computed (those of the
    /// request when nil).
    public func runPlain(_ request: SweepRequest, layers: [Int]? = nil, cancelled: CancellationCheck? = nil) throws -> SweepResult {
        let start = Date()
        // Neurons have no intervention cells: they are patched by hand below, as every kind is.
        try request.validate(model.dimensions)
        let cells = request.kind == .neurons ? nil : try SweepCells(request, model: model, interventions: interventions)
        let swept = request.sweptLayers(model.dimensions)
        let layers = layers ?? swept
        var pairs: [PairSweep] = [], raw: [[[Float]]] = []
        var slots = 0
        for (index, pair) in request.pairs.enumerated() {
            let length = pair.clean.count
            let columns = request.columns(length: length, model.dimensions)
            // Rows: the clean prompt, the corrupted one, the references, then one per cell.
            let prompts = [pair.clean] + (pair.corrupted.map { [$0] } ?? []) + request.reference
            let target = request.intervention.editsClean ? 0 : 1
            let hooks: any ForwardHooks
            if request.intervention == .patch {
                let sites = layers.map { request.kind.site(layer: $0).site }
                if let missing = sites.lazy.compactMap({ model.unprovided($0) }).first { throw missing }
                hooks = CellPatches(sites: sites, columns: columns, positions: length, kind: request.kind,
                                    neuronPositions: request.neuronPositions, firstPatchedRow: prompts.count)
            } else {
                let chosen = Set(layers)
                let planned = cells!.cells.filter { $0.pair == index && chosen.contains(swept[$0.row]) }
                hooks = PlainSteps(planned.enumerated().map { (row: prompts.count + $0.offset, step: $0.element.step) },
                                   target: target, other: request.intervention.readsOther ? 1 - target : nil,
                                   references: Array(prompts.indices.suffix(request.reference.count)))
            }
            let invocations = prompts + Array(repeating: prompts[target], count: layers.count * columns)
            slots += invocations.count * length
            let logits = try model.forward(TokenBatch(invocations), hooks: hooks, logits: .last, cancelled: cancelled)
            let last = logits.reshaped([invocations.count, -1])
            let metric = FullLogitsMetric(pair.metric, cleanLogits: last.select(axis: 0, 0))
            let clean = metric(last.select(axis: 0, 0))
            let corrupted = pair.corrupted == nil ? nil : metric(last.select(axis: 0, 1))
            let values = (0..<layers.count).map { l in
                (0..<columns).map { c in metric(last.select(axis: 0, prompts.count + l * columns + c)) }
            }
            raw.append(values)
            pairs.append(PairSweep(values: Self.normalize(values, clean: clean, corrupted: corrupted, request.normalized),
                                   clean: clean, corrupted: corrupted, firstDifference: pair.firstDifference ?? 0))
        }
        return Self.result(pairs: pairs, raw: raw, request: request, tokenLayers: slots * model.dimensions.layers,
                           plainTokenLayers: slots * model.dimensions.layers, seconds: Date().timeIntervalSince(start))
    }
}

/// Row 0 is the clean run: at each patched site, row `firstPatchedRow + n` gets the clean
/// run's value of its own cell (a position of the residual stream or the MLP's output, a
/// head at every position, a head at one position, or a neuron at the last or every position).
final class CellPatches: ForwardHooks {
    let sites: [Site]
    let columns: Int
    let positions: Int
    let kind: SweepKind
    let neuronPositions: NeuronPositions
    let firstPatchedRow: Int

    init(sites: [Site], columns: Int, positions: Int, kind: SweepKind, neuronPositions: NeuronPositions, firstPatchedRow: Int) {
        self.sites = sites
        self.columns = columns
        self.positions = positions
        self.kind = kind
        self.neuronPositions = neuronPositions
        self.firstPatchedRow = firstPatchedRow
    }

    func wants(_ site: Site) -> Bool { sites.contains(site) }

    func visit(_ site: Site, _ value: inout Tensor) throws {
        let layerIndex = sites.firstIndex(of: site)!
        let clean = value.select(axis: 0, 0).copy()
        for column in 0..<columns {
            let row = value.select(axis: 0, firstPatchedRow + layerIndex * columns + column)
            switch kind {
            case .residual, .mlp: row.select(axis: 0, column).assign(from: clean.select(axis: 0, column))
            case .heads: row.select(axis: 1, column).assign(from: clean.select(axis: 1, column))
            case .headPositions:
                let (head, position) = (column / positions, column % positions)
                row.select(axis: 0, position).select(axis: 0, head).assign(from: clean.select(axis: 0, position).select(axis: 0, head))
            case .neurons:
                let (target, source) = neuronPositions == .last
                    ? (row.select(axis: 0, positions - 1), clean.select(axis: 0, positions - 1)) : (row, clean)
                target.select(axis: target.rank - 1, column).assign(from: source.select(axis: source.rank - 1, column))
            }
        }
    }
}

/// Applies each cell's intervention step to its own row of a full batch, reading the
/// batch's unedited rows as the step's other invocations.
final class PlainSteps: ForwardHooks {
    let steps: [(row: Int, step: InterventionStep)]
    let sites: Set<Site>
    /// Batch rows of the cells' invocations 1 (the other prompt, when there is one) and on.
    let readable: [Int]

    init(_ steps: [(row: Int, step: InterventionStep)], target: Int, other: Int?, references: [Int]) {
        self.steps = steps
        sites = Set(steps.map(\.step.site))
        readable = (other.map { [$0] } ?? []) + references
    }

    func wants(_ site: Site) -> Bool { sites.contains(site) }

    func visit(_ site: Site, _ value: inout Tensor) throws {
        let batch = value
        let readable = self.readable
        for (row, step) in steps where step.site == site {
            try step.apply(SiteValues(view: { invoke in
                let r = invoke == 0 ? row : readable[invoke - 1]
                return batch.slice(axis: 0, r..<(r + 1))
            }))
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
