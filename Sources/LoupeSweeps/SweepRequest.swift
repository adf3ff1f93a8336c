import LoupeModels

/// Which unit a sweep edits, one cell at a time.
public enum SweepKind: String, Sendable, CaseIterable {
    /// The residual stream after each layer, one position at a time: a layers x positions matrix.
    case residual
    /// One attention head's output (the output projection's input, split by head) at every
    /// position: a layers x heads matrix.
    case heads
    /// One head's output at one position: layers x (heads · positions), column
    /// `head * positions + position`.
    case headPositions = "head_positions"
    /// The MLP's output of each layer, one position at a time: a layers x positions matrix.
    case mlp
    /// One MLP hidden unit (a neuron of `blocks.L.mlp.hidden`) at the last position or at
    /// every position (`NeuronPositions`): a layers x d_mlp matrix. The exact sweep computes it
    /// on the plain batched path only (no intervention edits one hidden unit), which fits
    /// small models; attribution estimates it for any.
    case neurons

    /// True when the matrix has a column per position (the pairs of a sweep must then be of
    /// one length).
    public var isPositional: Bool { self != .heads && self != .neurons }

    /// The site whose value a cell of this kind edits at `layer`.
    public func site(layer: Int) -> CanonicalSite {
        switch self {
        case .residual: return .residPost(layer)
        case .heads, .headPositions: return .z(layer)
        case .mlp: return .mlpOut(layer)
        case .neurons: return .mlpHidden(layer)
        }
    }
}

/// How a sweep computes its cells.
public enum SweepMethod: String, Sendable, CaseIterable {
    /// Each cell's edited run, computed exactly (`PatchingSweep`).
    case activation
    /// Each cell's first-order estimate from one clean forward pass and one corrupted forward
    /// and backward pass (`AttributionSweep`).
    case attribution
}

/// Where a `neurons` sweep patches each neuron.
public enum NeuronPositions: String, Sendable, CaseIterable {
    /// At the last position, where the metric is read.
    case last
    /// At every position (an attribution estimate sums over them).
    case sum
}

/// How an ablation replaces a unit's value (the `ablate` intervention's `mode`).
public enum AblationMethod: String, Sendable, CaseIterable {
    /// Zero.
    case zero
    /// Its mean, per position, over the request's reference prompts.
    case mean
    /// Its value in the pair's corrupted prompt.
    case resample
}

/// What each cell of a sweep does to its unit.
public enum SweepIntervention: Sendable, Equatable {
    /// Copies the unit from the clean run into the corrupted run (`residual_patch`,
    /// `head_patch`, or for MLPs `ablate` resampling from the clean run).
    case patch
    /// Ablates the unit in the clean run (the `ablate` intervention).
    case ablate(AblationMethod)

    /// The pair's prompt that every cell edits is the clean one (else the corrupted one).
    var editsClean: Bool { self != .patch }
    /// Cells read the pair's other prompt (patching reads the clean run, resampling the corrupted).
    var readsOther: Bool { self == .patch || self == .ablate(.resample) }
}

/// What a sweep measures at the last position of each edited run.
public enum SweepMetric: Sendable, Equatable {
    /// logit(answer) - logit(wrong).
    case logitDifference(answer: Int, wrong: Int)
    /// log p(answer).
    case logProbability(answer: Int)
    /// KL(clean || edited) of the next-token distributions.
    case klFromClean

    var answers: [Int] {
        switch self {
        case .logitDifference(let answer, let wrong): return [answer, wrong]
        case .logProbability(let answer): return [answer]
        case .klFromClean: return []
        }
    }
}

/// A clean prompt, its corrupted counterpart (optional for zero and mean ablation) and the
/// metric with this pair's answers.
public struct SweepPair: Sendable, Equatable {
    public var clean: [Int]
    public var corrupted: [Int]?
    public var metric: SweepMetric

    public init(clean: [Int], corrupted: [Int]?, metric: SweepMetric) {
        self.clean = clean
        self.corrupted = corrupted
        self.metric = metric
    }
}

public struct SweepRequest: Sendable {
    /// One pair or several; several are computed in the same stacked passes and averaged.
    public var pairs: [SweepPair]
    public var kind: SweepKind
    public var intervention: SweepIntervention
    /// For mean ablation: the prompts to average over, each as long as the pairs' prompts.
    public var reference: [[Int]]
    /// The layers swept, one matrix row each, in this order; nil for every layer.
    public var layers: [Int]?
    /// Report (edited - corrupted) / (clean - corrupted), as the tutorial does, instead of
    /// the raw metric. Without a corrupted prompt (zero or mean ablation) the baseline is 0:
    /// edited / clean.
    public var normalized: Bool
    /// For `neurons`: the last position or the sum over positions.
    public var neuronPositions: NeuronPositions

    public init(pairs: [SweepPair], kind: SweepKind, intervention: SweepIntervention = .patch, reference: [[Int]] = [],
                layers: [Int]? = nil, normalized: Bool = true, neuronPositions: NeuronPositions = .last) {
        self.pairs = pairs
        self.kind = kind
        self.intervention = intervention
        self.reference = reference
        self.layers = layers
        self.normalized = normalized
        self.neuronPositions = neuronPositions
    }

    /// The layers swept, one matrix row each.
    public func sweptLayers(_ dimensions: ModelDimensions) -> [Int] { layers ?? Array(0..<dimensions.layers) }

    /// A patching sweep of one pair.
    public init(clean: [Int], corrupted: [Int], kind: SweepKind, metric: SweepMetric, normalized: Bool = true,
                neuronPositions: NeuronPositions = .last) {
        self.init(pairs: [SweepPair(clean: clean, corrupted: corrupted, metric: metric)], kind: kind, normalized: normalized,
                  neuronPositions: neuronPositions)
    }

    /// The same request for another kind (the kinds of one attribution sweep).
    public func with(kind: SweepKind) -> SweepRequest {
        var request = self
        request.kind = kind
        return request
    }

    /// The first pair's.
    public var clean: [Int] { pairs[0].clean }
    public var corrupted: [Int]? { pairs[0].corrupted }
    public var metric: SweepMetric { pairs[0].metric }

    /// The matrix's columns for prompts of `length` tokens.
    public func columns(length: Int, _ dimensions: ModelDimensions) -> Int {
        switch kind {
        case .residual, .mlp: return length
        case .heads: return dimensions.heads
        case .headPositions: return dimensions.heads * length
        case .neurons: return dimensions.intermediate
        }
    }

    /// The token-layers of the plain batched path: every prompt and one invocation per cell,
    /// each in full through every layer.
    public func plainTokenLayers(_ dimensions: ModelDimensions) -> Int {
        var slots = reference.map(\.count).reduce(0, +)
        let rows = sweptLayers(dimensions).count
        for pair in pairs {
            let length = pair.clean.count
            slots += length * ((pair.corrupted == nil ? 1 : 2) + rows * columns(length: length, dimensions))
        }
        return slots * dimensions.layers
    }

    /// At most how many token rows the edited runs stack into one pass: each run computes
    /// from its first edited position to the end (the first difference when it copies from
    /// the other prompt, any position when it zeroes or averages).
    public func stackedRowsBound(_ dimensions: ModelDimensions) -> Int {
        let layerCount = sweptLayers(dimensions).count
        return pairs.map { pair in
            let first = intervention.readsOther ? pair.firstDifference ?? 0 : 0
            let changed = pair.clean.count - first
            let suffixes = changed * (changed + 1) / 2  // a run from each edited position to the end
            switch kind {
            case .residual, .mlp: return layerCount * suffixes
            case .heads: return layerCount * dimensions.heads * changed
            case .headPositions: return layerCount * dimensions.heads * suffixes
            // The plain batched pass: the pair's prompts and a full invocation per cell.
            case .neurons: return (2 + layerCount * dimensions.intermediate) * pair.clean.count
            }
        }.reduce(0, +)
    }

    /// Checks the request against the model before any compute, for `method`.
    public func validate(_ dimensions: ModelDimensions, method: SweepMethod = .activation) throws(SweepError) {
        if method == .attribution && intervention != .patch { throw .ablationByAttribution }
        if kind == .neurons && intervention != .patch { throw .neuronAblation }
        guard !pairs.isEmpty else { throw .noPairs }
        if let layers {
            guard !layers.isEmpty else { throw .noLayers }
            if let bad = layers.first(where: { !(0..<dimensions.layers).contains($0) }) { throw .layerOutOfRange(bad, layers: dimensions.layers) }
            if Set(layers).count != layers.count { throw .repeatedLayer }
        }
        for (index, pair) in pairs.enumerated() {
            guard !pair.clean.isEmpty else { throw .emptyPrompt(pair: index) }
            if let corrupted = pair.corrupted {
                guard corrupted.count == pair.clean.count else {
                    throw .lengthsDiffer(pair: index, clean: pair.clean.count, corrupted: corrupted.count)
                }
                if intervention.readsOther && pair.firstDifference == nil { throw .identicalPrompts(pair: index) }
            } else if intervention.readsOther || pairs[0].corrupted != nil {
                // Every pair has a corrupted prompt or none does: the mean is normalised by one baseline.
                throw .missingCorrupted(pair: index)
            }
            if index > 0, pairs[0].corrupted == nil, pair.corrupted != nil { throw .missingCorrupted(pair: 0) }
            if let bad = pair.metric.answers.first(where: { $0 < 0 || $0 >= dimensions.vocabulary }) {
                throw .tokenOutOfRange(bad, pair: index)
            }
            if kind.isPositional || intervention == .ablate(.mean), pair.clean.count != pairs[0].clean.count {
                throw .pairLengthsDiffer(pair: index, length: pair.clean.count, first: pairs[0].clean.count)
            }
        }
        if intervention == .ablate(.mean) {
            guard !reference.isEmpty else { throw .missingReference }
            for (index, prompt) in reference.enumerated() where prompt.count != pairs[0].clean.count {
                throw .referenceLength(index: index, length: prompt.count, expected: pairs[0].clean.count)
            }
        }
    }
}

extension SweepPair {
    /// The first position where the clean and corrupted prompts differ; nil when they are
    /// the same or there is no corrupted prompt.
    public var firstDifference: Int? {
        guard let corrupted else { return nil }
        return clean.indices.first { clean[$0] != corrupted[$0] }
    }
}

public enum SweepError: Error, Sendable, Equatable, CustomStringConvertible {
    case noPairs
    case noLayers
    case layerOutOfRange(Int, layers: Int)
    case repeatedLayer
    case emptyPrompt(pair: Int)
    case lengthsDiffer(pair: Int, clean: Int, corrupted: Int)
    case identicalPrompts(pair: Int)
    case missingCorrupted(pair: Int)
    case tokenOutOfRange(Int, pair: Int)
    /// Pairs of different lengths in a sweep with a column per position (or mean ablation).
    case pairLengthsDiffer(pair: Int, length: Int, first: Int)
    case missingReference
    case referenceLength(index: Int, length: Int, expected: Int)
    /// An intervention refused a cell (it should not: the sweep builds every cell's arguments).
    case intervention(String)
    /// Ablation asked of the attribution method, which estimates patches.
    case ablationByAttribution
    /// An ablation of neurons (no intervention ablates one hidden unit).
    case neuronAblation

    public var description: String {
        switch self {
        case .noPairs: return "a sweep needs at least one clean prompt"
        case .noLayers: return "layers is empty: leave it out to sweep every layer"
        case .layerOutOfRange(let layer, let layers): return "layer \(layer) is out of range: the model has \(layers) layers"
        case .repeatedLayer: return "layers names a layer twice"
        case .emptyPrompt(let pair): return "pair \(pair): the clean prompt has no tokens"
        case .lengthsDiffer(let pair, let clean, let corrupted):
            return "pair \(pair): the clean prompt has \(clean) tokens and the corrupted \(corrupted): a sweep edits position by position and needs equal lengths"
        case .identicalPrompts(let pair):
            return "pair \(pair): the clean and corrupted prompts are the same tokens: there is nothing to patch or resample"
        case .missingCorrupted(let pair):
            return "pair \(pair) has no corrupted prompt: patching and resampling copy from it, and the pairs of one sweep all have one or none"
        case .tokenOutOfRange(let id, let pair): return "pair \(pair): answer token \(id) is outside the vocabulary"
        case .pairLengthsDiffer(let pair, let length, let first):
            return "pair \(pair) has \(length) tokens and pair 0 \(first): a sweep with a column per position (and mean ablation) needs pairs of one length; a heads sweep takes any lengths"
        case .missingReference: return "mean ablation needs reference prompts to average over"
        case .referenceLength(let index, let length, let expected):
            return "reference prompt \(index) has \(length) tokens and the pairs \(expected): mean ablation averages position by position"
        case .intervention(let message): return message
        case .ablationByAttribution:
            return "method attribution estimates patching (intervention patch); ablate sweeps are exact only (method activation)"
        case .neuronAblation: return "kind neurons is patched only: no intervention ablates one hidden unit"
        }
    }
}

/// One pair's matrix and metric values.
public struct PairSweep: Sendable {
    /// One row per swept layer; a column per position (residual, mlp), per head (heads), or per head
    /// and position (head_positions: column head · positions + position).
    public let values: [[Float]]
    /// The metric on the clean run, and on the corrupted run when there is one.
    public let clean: Float
    public let corrupted: Float?
    /// Positions before this one are the same in both prompts (0 without a corrupted prompt).
    public let firstDifference: Int
}

public struct SweepResult: Sendable {
    /// The matrix: with several pairs, the mean (see `PatchingSweep.mean`).
    public let values: [[Float]]
    /// The metric on the clean and corrupted runs (means over the pairs).
    public let clean: Float
    public let corrupted: Float?
    /// The first pair's first differing position (the least over pairs with several).
    public let firstDifference: Int
    /// Each pair's own matrix and values.
    public let pairs: [PairSweep]
    /// Token-layers computed, and what one batched forward pass of every edit would compute.
    public let tokenLayers: Int
    public let plainTokenLayers: Int
    public let seconds: Double
}
