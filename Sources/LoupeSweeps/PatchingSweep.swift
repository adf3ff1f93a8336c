import Foundation
import LoupeModels
import LoupeTensor

/// Which activations a sweep patches from the clean run into the corrupted run.
public enum SweepKind: String, Sendable, CaseIterable {
    /// The residual stream after each layer, one position at a time: a layers x positions matrix.
    case residual
    /// One attention head's output (the output projection's input, split by head) at every
    /// position: a layers x heads matrix.
    case heads
    /// One head's output at one position: layers x (heads · positions), column
    /// `head * positions + position`.
    case headPositions = "head_positions"
}

/// What a sweep measures at the last position of each patched run.
public enum SweepMetric: Sendable, Equatable {
    /// logit(answer) - logit(wrong).
    case logitDifference(answer: Int, wrong: Int)
    /// log p(answer).
    case logProbability(answer: Int)
    /// KL(clean || patched) of the next-token distributions.
    case klFromClean
}

public struct SweepRequest: Sendable {
    public var clean: [Int]
    public var corrupted: [Int]
    public var kind: SweepKind
    public var metric: SweepMetric
    /// Report (patched - corrupted) / (clean - corrupted), as the tutorial does, instead of
    /// the raw metric.
    public var normalized: Bool

    public init(clean: [Int], corrupted: [Int], kind: SweepKind, metric: SweepMetric, normalized: Bool = true) {
        self.clean = clean
        self.corrupted = corrupted
        self.kind = kind
        self.metric = metric
        self.normalized = normalized
    }
}

public struct SweepResult: Sendable {
    /// One row per layer; a column per position (residual), per head (heads), or per head and
    /// position (head_positions: column head · positions + position).
    public let values: [[Float]]
    /// The metric on the clean and on the corrupted run.
    public let clean: Float
    public let corrupted: Float
    /// Positions before this one are the same in both prompts; patching them changes nothing.
    public let firstDifference: Int
    /// Token-layers computed, and what one batched forward pass of every patch would compute.
    public let tokenLayers: Int
    public let plainTokenLayers: Int
    public let seconds: Double
}

public enum SweepError: Error, Sendable, Equatable, CustomStringConvertible {
    case lengthsDiffer(clean: Int, corrupted: Int)
    case identicalPrompts
    case tokenOutOfRange(Int)

    public var description: String {
        switch self {
        case .lengthsDiffer(let clean, let corrupted):
            return "the clean prompt has \(clean) tokens and the corrupted \(corrupted): patching position by position needs equal lengths"
        case .identicalPrompts: return "the clean and corrupted prompts are the same tokens: there is nothing to patch"
        case .tokenOutOfRange(let id): return "answer token \(id) is outside the vocabulary"
        }
    }
}

/// Activation patching over every layer and position (or head), computed exactly but with
/// far less work than running every patch:
///
/// - A patch at layer L, position t changes nothing before layer L and, attention being
///   causal, nothing before position t. Each patched run therefore recomputes only layers
///   after L at positions t and later, attending to the corrupted run's cached keys and
///   values for earlier positions.
/// - Positions before the first token where the prompts differ hold the same activations in
///   both runs: patching them gives the corrupted run exactly, with no compute.
/// - Runs that need the same layer are stacked into one pass, so each weight matrix is
///   multiplied once per layer for all of them.
/// - The unembedding is computed only at the last position, and only at the answer tokens
///   when the metric is a logit difference.
public struct PatchingSweep {
    public let model: any LanguageModel

    public init(model: any LanguageModel) { self.model = model }

    /// `progress` is called with (layers done, layers) as the sweep advances; `cancelled` is
    /// checked before every layer.
    public func run(_ request: SweepRequest, progress: ((Int, Int) -> Void)? = nil,
                    cancelled: CancellationCheck? = nil) throws -> SweepResult {
        let start = Date()
        let (clean, corrupted) = (request.clean, request.corrupted)
        guard clean.count == corrupted.count else { throw SweepError.lengthsDiffer(clean: clean.count, corrupted: corrupted.count) }
        guard let firstDifference = clean.indices.first(where: { clean[$0] != corrupted[$0] }) else { throw SweepError.identicalPrompts }
        try checkAnswers(request.metric)
        let layers = model.dimensions.layers, length = clean.count

        // The two plain runs: what to patch in, what to patch into, and the corrupted run's keys and values.
        let recordedSites = (0..<layers).flatMap { l in
            request.kind == .residual ? [Site("blocks.\(l).resid_post", .output)]
                : [Site("blocks.\(l).resid_pre", .output), Site("blocks.\(l).attn.z", .output)]
        }
        let cleanRecord = ActivationRecorder(recordedSites), corruptedRecord = ActivationRecorder(recordedSites)
        let cache = KeyValueCache(layers: layers)
        let cleanFinal = try model.forward(TokenBatch([clean]), hooks: cleanRecord, logits: .none, cancelled: cancelled)
        let corruptedFinal = try model.forward(TokenBatch([corrupted]), hooks: corruptedRecord, logits: .none,
                                               cancelled: cancelled, recorder: cache)
        let scorer = try Scorer(model: model, metric: request.metric,
                                cleanLast: cleanFinal.select(axis: 0, 0).slice(axis: 0, (length - 1)..<length).contiguous())
        let cleanValue = try scorer.score(cleanFinal.select(axis: 0, 0).slice(axis: 0, (length - 1)..<length).contiguous())[0]
        let corruptedValue = try scorer.score(corruptedFinal.select(axis: 0, 0).slice(axis: 0, (length - 1)..<length).contiguous())[0]

        func recorded(_ record: ActivationRecorder, _ path: String) -> Tensor {
            let value = record.values[Site(path, .output)]!
            return value.reshaped([length, value.count / length])
        }

        // Every patched run, in the order its first recomputed layer comes.
        let heads = model.dimensions.heads
        var runs: [PatchedRun] = []
        for layer in 0..<layers {
            switch request.kind {
            case .residual:
                let cleanResidual = recorded(cleanRecord, "blocks.\(layer).resid_post")
                let corruptedResidual = recorded(corruptedRecord, "blocks.\(layer).resid_post")
                for position in firstDifference..<length {
                    let rows = corruptedResidual.slice(axis: 0, position..<length).copy()
                    rows.select(axis: 0, 0).assign(from: cleanResidual.select(axis: 0, position))
                    runs.append(PatchedRun(row: layer, column: position, firstLayer: layer + 1, start: position, hidden: rows, head: nil))
                }
            case .heads, .headPositions:
                let entering = recorded(corruptedRecord, "blocks.\(layer).resid_pre")
                let cleanZ = recorded(cleanRecord, "blocks.\(layer).attn.z").reshaped([length, heads, model.dimensions.headDim])
                for head in 0..<heads {
                    // A whole-head patch covers every position that differs; a positional one, one position.
                    let positions = request.kind == .heads ? [firstDifference] : Array(firstDifference..<length)
                    for position in positions {
                        let patched = request.kind == .heads ? position..<length : position..<(position + 1)
                        runs.append(PatchedRun(
                            row: layer, column: request.kind == .heads ? head : head * length + position, firstLayer: layer,
                            start: position, hidden: entering.slice(axis: 0, position..<length).copy(),
                            head: (index: head, cleanZ: cleanZ.slice(axis: 0, patched).select(axis: 1, head).contiguous())))
                    }
                }
            }
        }

        // Runs that start at the same position share passes (a head patch needs its rows
        // aligned); residual runs, patched before they enter, share passes whatever their start.
        let groups = request.kind == .headPositions
            ? Dictionary(grouping: runs, by: \.start).sorted { $0.key < $1.key }.map(\.value) : [runs]
        var patched: [(PatchedRun, Float)] = []
        var tokenLayers = 0
        for (index, group) in groups.enumerated() {
            let (values, computed) = try runTogether(group, cache: cache, scorer: scorer, cancelled: cancelled) { layer in
                progress?(index * layers + layer, groups.count * layers)
            }
            patched += values
            tokenLayers += computed
        }

        // The matrix: unpatched cells hold the corrupted run's value.
        let columns = [SweepKind.residual: length, .heads: heads, .headPositions: heads * length][request.kind]!
        var values = Array(repeating: Array(repeating: corruptedValue, count: columns), count: layers)
        for (run, value) in patched { values[run.row][run.column] = value }
        if request.normalized {
            let scale = cleanValue - corruptedValue
            values = values.map { $0.map { ($0 - corruptedValue) / scale } }
        }
        let invocations = 2 + layers * columns
        return SweepResult(values: values, clean: cleanValue, corrupted: corruptedValue, firstDifference: firstDifference,
                           tokenLayers: tokenLayers, plainTokenLayers: invocations * length * layers,
                           seconds: Date().timeIntervalSince(start))
    }

    /// Runs `runs` layer by layer, each joining at its first layer those already under way,
    /// all of them stacked into one pass per layer; returns each run's metric and the
    /// token-layers computed.
    private func runTogether(_ runs: [PatchedRun], cache: KeyValueCache, scorer: Scorer, cancelled: CancellationCheck?,
                             progress: (Int) -> Void) throws -> ([(PatchedRun, Float)], Int) {
        let layers = model.dimensions.layers
        var active: [PatchedRun] = []
        var hidden = Tensor(zeros: [0, model.dimensions.hidden])
        var tokenLayers = 0
        var waiting = runs[...]
        for layer in 0...layers {
            let joining = waiting.prefix { $0.firstLayer == layer }
            waiting = waiting.dropFirst(joining.count)
            let firstJoining = active.count
            active += joining
            hidden = stackRows([hidden] + joining.map(\.hidden))
            guard layer < layers, !active.isEmpty else { continue }
            // A head patch replaces its head's output in the layer it starts at.
            let patches = HeadPatches(site: Site("blocks.\(layer).attn.z", .output), runs: Array(active[firstJoining...]), firstRow: firstJoining)
            let pass = ForwardPass(continuing: cache, starts: active.map(\.start),
                                   hooks: patches.isEmpty ? nil : patches, cancelled: cancelled)
            try pass.checkCancelled()
            hidden = try model.layer(layer, hidden, pass)
            tokenLayers += pass.computedRows
            progress(layer + 1)
        }
        let pass = ForwardPass(continuing: cache, starts: active.map(\.start), cancelled: cancelled)
        let scores = try scorer.score(pass.rowsToUnembed(try model.finalNorm(hidden, pass), .last))
        return (Array(zip(active, scores)), tokenLayers)
    }

    private func checkAnswers(_ metric: SweepMetric) throws {
        let ids: [Int]
        switch metric {
        case .logitDifference(let answer, let wrong): ids = [answer, wrong]
        case .logProbability(let answer): ids = [answer]
        case .klFromClean: ids = []
        }
        if let bad = ids.first(where: { $0 < 0 || $0 >= model.dimensions.vocabulary }) { throw SweepError.tokenOutOfRange(bad) }
    }
}

/// One patched run: the cell it fills, the layer it starts at, the first position it
/// computes and its hidden states entering that layer.
struct PatchedRun {
    let row: Int
    let column: Int
    let firstLayer: Int
    let start: Int
    let hidden: Tensor
    /// For a head patch: which head, and the clean run's output of that head at the first
    /// positions it computes (all of them, or one).
    let head: (index: Int, cleanZ: Tensor)?
}

/// Replaces, in the rows of runs that start at this layer, their head's output with the
/// clean run's.
final class HeadPatches: ForwardHooks {
    let site: Site
    let patches: [(row: Int, head: Int, cleanZ: Tensor)]

    init(site: Site, runs: [PatchedRun], firstRow: Int) {
        self.site = site
        patches = runs.enumerated().compactMap { index, run in
            run.head.map { (firstRow + index, $0.index, $0.cleanZ) }
        }
    }

    var isEmpty: Bool { patches.isEmpty }
    func wants(_ s: Site) -> Bool { s == site }

    func visit(_ s: Site, _ value: inout Tensor) throws {
        // value: [rows, positions, heads, headDim]
        for patch in patches {
            value.select(axis: 0, patch.row).select(axis: 1, patch.head).slice(axis: 0, 0..<patch.cleanZ.shape[0]).assign(from: patch.cleanZ)
        }
    }
}

/// The rows of several [rows, width] matrices, one after another.
func stackRows(_ parts: [Tensor]) -> Tensor {
    let width = parts[0].columnCount
    let out = Tensor(zeros: [parts.map(\.rowCount).reduce(0, +), width])
    var row = 0
    for part in parts where part.rowCount > 0 {
        out.slice(axis: 0, row..<(row + part.rowCount)).assign(from: part.reshaped([part.rowCount, width]))
        row += part.rowCount
    }
    return out
}
