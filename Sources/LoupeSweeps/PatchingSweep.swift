import Foundation
import LoupeModels
import LoupeTensor
import LoupeTrace

/// Activation patching and ablation over every layer and position (or head), computed
/// exactly but with far less work than running every edit:
///
/// - Each cell is an intervention plugin (`SweepCells`): its step is applied to the cell's
///   own rows while they pass the site, so a sweep edits exactly as a trace does.
/// - An edit at layer L, position t changes nothing before layer L and, attention being
///   causal, nothing before position t. Each edited run therefore recomputes only layers
///   from L on (after L for the residual stream after L) at positions t and later, attending
///   to the unedited run's cached keys and values for earlier positions. Where the edit
///   starts is found by applying it to the unedited run's recorded value: positions it does
///   not change (before the first difference of the prompts, when patching) cost nothing, and
///   a cell it does not change at all is the unedited run. Zero and mean ablation change
///   every position, so a whole-head ablation recomputes every position from its layer on.
/// - Runs that need the same layer are stacked into one pass, those of several pairs too, so
///   each weight matrix is multiplied once per layer for all of them.
/// - The unembedding is computed only at the last position, and only at the answer tokens
///   when the metric is a logit difference.
public struct PatchingSweep {
    public let model: any LanguageModel
    /// Where the cells' interventions are looked up by name.
    public let interventions: InterventionRegistry

    public init(model: any LanguageModel, interventions: InterventionRegistry) {
        self.model = model
        self.interventions = interventions
    }

    /// `progress` is called with (layers done, layers) as the sweep advances; `cancelled` is
    /// checked before every layer.
    public func run(_ request: SweepRequest, progress: ((Int, Int) -> Void)? = nil,
                    cancelled: CancellationCheck? = nil) throws -> SweepResult {
        // No intervention edits one hidden unit: neurons are patched on the plain path.
        if request.kind == .neurons { return try runPlain(request, cancelled: cancelled) }
        let start = Date()
        let layers = model.dimensions.layers
        let cells = try SweepCells(request, model: model, interventions: interventions)

        // The plain runs: the edited prompts (with their keys and values), the prompts they
        // read from, and what the cells read at their sites.
        let sites = cells.sites
        let enteringSites = Set(cells.cells.filter { $0.stage == .inLayer }.map { CanonicalSite.residPre($0.layer).site })
        let cache = KeyValueCache(layers: layers)
        let targets = try Recording(model, cells.targets, sites: sites.union(enteringSites), cancelled: cancelled, cache: cache)
        // The pair's other prompt: what patching and resampling read, and the baseline a zero or
        // mean ablation is normalised with when the request gives one.
        let otherPrompts = request.intervention.editsClean ? request.pairs.compactMap(\.corrupted) : request.pairs.map(\.clean)
        let others = otherPrompts.isEmpty ? nil
            : try Recording(model, otherPrompts, sites: request.intervention.readsOther ? sites : [], cancelled: cancelled)
        let references = request.reference.isEmpty ? nil : try Recording(model, request.reference, sites: sites, cancelled: cancelled)
        let scorer = try Scorer(model: model, metrics: request.pairs.map(\.metric), cleanFinal: request.intervention.editsClean ? targets.lastFinal : others!.lastFinal)
        let unedited = try scorer.score(targets.lastFinal, pairs: Array(request.pairs.indices))
        let otherValues = try others.map { try scorer.score($0.lastFinal, pairs: Array(request.pairs.indices)) }

        // Every edited run: its cell's edit applied to the recorded value tells where it starts.
        var runs: [EditedRun] = []
        for cell in cells.cells {
            let pair = cell.pair
            let sources = SourceValues(others: request.intervention.readsOther ? others : nil, references: references, pair: pair, site: cell.step.site)
            let recorded = targets.value(cell.step.site, row: pair)
            let edited = recorded.copy()
            try cell.step.apply(sources.values(target: edited))
            guard let first = firstChangedPosition(recorded, edited) else { continue }
            let length = targets.lengths[pair]
            let hidden: Tensor
            switch cell.stage {
            case .beforeLayer: hidden = edited.select(axis: 0, 0).slice(axis: 0, first..<length).copy()
            case .inLayer: hidden = targets.value(CanonicalSite.residPre(cell.layer).site, row: pair)
                .select(axis: 0, 0).slice(axis: 0, first..<length).copy()
            }
            runs.append(EditedRun(cell: cell, firstLayer: cell.stage == .beforeLayer ? cell.firstLayer : cell.layer,
                                  start: first, slot: targets.batch.padding[pair] + first, hidden: hidden, sources: sources,
                                  recorded: recorded))
        }

        // Runs edited inside a layer are seen by hooks, which need their rows aligned: they
        // share passes with runs that start at the same slot. Runs edited between layers share
        // passes whatever their start. Within a pass runs join in the order of their first layer.
        let grouped = Dictionary(grouping: runs) { $0.cell.stage == .inLayer ? $0.slot : -1 }
        let groups = grouped.keys.sorted().map { key in grouped[key]!.enumerated().sorted { ($0.element.firstLayer, $0.offset) < ($1.element.firstLayer, $1.offset) }.map(\.element) }
        var edited: [(EditedRun, Float)] = []
        var tokenLayers = 0
        for (index, group) in groups.enumerated() {
            let (values, computed) = try runTogether(group, cache: cache, targets: targets, scorer: scorer, cancelled: cancelled) { layer in
                progress?(index * layers + layer, groups.count * layers)
            }
            edited += values
            tokenLayers += computed
        }

        // Each pair's matrix: cells the edit leaves alone hold the unedited run's value.
        let dimensions = model.dimensions, rows = request.sweptLayers(dimensions).count
        var raw = request.pairs.indices.map { pair in
            Array(repeating: Array(repeating: unedited[pair], count: request.columns(length: request.pairs[pair].clean.count, dimensions)),
                  count: rows)
        }
        for (run, value) in edited { raw[run.cell.pair][run.cell.row][run.cell.column] = value }
        let (cleanValues, corruptedValues) = request.intervention.editsClean ? (unedited, otherValues) : (otherValues!, unedited)
        var pairs: [PairSweep] = []
        for pair in request.pairs.indices {
            pairs.append(PairSweep(values: Self.normalize(raw[pair], clean: cleanValues[pair], corrupted: corruptedValues?[pair], request.normalized),
                                   clean: cleanValues[pair], corrupted: corruptedValues?[pair],
                                   firstDifference: request.pairs[pair].firstDifference ?? 0))
        }
        return Self.result(pairs: pairs, raw: raw, request: request, tokenLayers: tokenLayers,
                           plainTokenLayers: request.plainTokenLayers(dimensions), seconds: Date().timeIntervalSince(start))
    }

    /// (value - corrupted) / (clean - corrupted), or value / clean without a corrupted run;
    /// the raw values when `normalized` is false.
    static func normalize(_ values: [[Float]], clean: Float, corrupted: Float?, _ normalized: Bool) -> [[Float]] {
        guard normalized else { return values }
        let baseline = corrupted ?? 0
        return values.map { $0.map { ($0 - baseline) / (clean - baseline) } }
    }

    /// The result of a sweep over `pairs`: with one pair its own matrix; with several the
    /// mean, as the TransformerLens and ARENA IOI notebooks average over a batch: the raw
    /// metric averaged over pairs cell by cell, then normalised with the averaged clean and
    /// corrupted values.
    static func result(pairs: [PairSweep], raw: [[[Float]]], request: SweepRequest, tokenLayers: Int, plainTokenLayers: Int,
                       seconds: Double) -> SweepResult {
        let count = Float(pairs.count)
        let clean = pairs.map(\.clean).reduce(0, +) / count
        let corrupted = pairs[0].corrupted == nil ? nil : pairs.map { $0.corrupted! }.reduce(0, +) / count
        let values: [[Float]]
        if pairs.count == 1 {
            values = pairs[0].values
        } else {
            let mean = raw[0].indices.map { row in
                raw[0][row].indices.map { column in raw.map { $0[row][column] }.reduce(0, +) / count }
            }
            values = normalize(mean, clean: clean, corrupted: corrupted, request.normalized)
        }
        return SweepResult(values: values, clean: clean, corrupted: corrupted, firstDifference: pairs.map(\.firstDifference).min()!,
                           pairs: pairs, tokenLayers: tokenLayers, plainTokenLayers: plainTokenLayers, seconds: seconds)
    }

    /// Runs `runs` layer by layer, each joining at its first layer those already under way,
    /// all of them stacked into one pass per layer; returns each run's metric and the
    /// token-layers computed.
    private func runTogether(_ runs: [EditedRun], cache: KeyValueCache, targets: Recording, scorer: Scorer,
                             cancelled: CancellationCheck?, progress: (Int) -> Void) throws -> ([(EditedRun, Float)], Int) {
        let layers = model.dimensions.layers
        var active: [EditedRun] = []
        var hidden = Tensor(zeros: [0, model.dimensions.hidden])
        var tokenLayers = 0
        var waiting = runs[...]
        func continuation(hooks: (any ForwardHooks)?) -> ForwardPass {
            ForwardPass(continuing: cache, rows: active.map(\.cell.pair), padding: active.map { targets.batch.padding[$0.cell.pair] },
                        starts: active.map(\.slot), hooks: hooks, cancelled: cancelled)
        }
        for layer in 0...layers {
            let joining = waiting.prefix { $0.firstLayer == layer }
            waiting = waiting.dropFirst(joining.count)
            let firstJoining = active.count
            active += joining
            hidden = stackRows([hidden] + joining.map(\.hidden))
            guard layer < layers, !active.isEmpty else { continue }
            // A run edited inside this layer gets its edit at the cell's site.
            let edits = StepHooks(active.enumerated().dropFirst(firstJoining).filter { $0.element.cell.stage == .inLayer }
                .map { (row: $0.offset, run: $0.element) })
            let pass = continuation(hooks: edits.isEmpty ? nil : edits)
            try pass.checkCancelled()
            hidden = try model.layer(layer, hidden, pass)
            tokenLayers += pass.computedRows
            progress(layer + 1)
        }
        let pass = continuation(hooks: nil)
        let scores = try scorer.score(pass.rowsToUnembed(try model.finalNorm(hidden, pass), .last), pairs: active.map(\.cell.pair))
        return (Array(zip(active, scores)), tokenLayers)
    }
}

/// The first position (axis 1 of [1, positions, ...]) where two values differ; nil when
/// they are equal.
func firstChangedPosition(_ before: Tensor, _ after: Tensor) -> Int? {
    let a = before.select(axis: 0, 0).contiguous(), b = after.select(axis: 0, 0).contiguous()
    let width = a.count / max(a.shape[0], 1)
    for position in 0..<a.shape[0] {
        let offset = position * width
        for i in 0..<width where a.data[offset + i] != b.data[offset + i] { return position }
    }
    return nil
}

/// One edited run: its cell, the layer it joins at, the first position (and padded slot)
/// it computes, and its hidden states entering that layer.
final class EditedRun {
    let cell: SweepCell
    let firstLayer: Int
    let start: Int
    let slot: Int
    let hidden: Tensor
    /// The values the cell's step reads from other prompts, and the target's own recorded
    /// value at the site (for the positions before `start`, which the run does not compute).
    let sources: SourceValues
    let recorded: Tensor

    init(cell: SweepCell, firstLayer: Int, start: Int, slot: Int, hidden: Tensor, sources: SourceValues, recorded: Tensor) {
        self.cell = cell
        self.firstLayer = firstLayer
        self.start = start
        self.slot = slot
        self.hidden = hidden
        self.sources = sources
        self.recorded = recorded
    }
}

/// Applies each joining run's intervention step to its own rows at the step's site: the
/// run's computed positions, completed with the recorded earlier ones, are what the step
/// sees as its target, as a trace's step sees an invocation's value.
final class StepHooks: ForwardHooks {
    let edits: [(row: Int, run: EditedRun)]
    let sites: Set<Site>

    init(_ edits: [(row: Int, run: EditedRun)]) {
        self.edits = edits
        sites = Set(edits.map(\.run.cell.step.site))
    }

    var isEmpty: Bool { edits.isEmpty }
    func wants(_ site: Site) -> Bool { sites.contains(site) }

    func visit(_ site: Site, _ value: inout Tensor) throws {
        // value: [rows, computed positions, ...]
        for (row, run) in edits where run.cell.step.site == site {
            let live = value.select(axis: 0, row)
            let whole = run.recorded.copy()
            let computed = whole.select(axis: 0, 0).slice(axis: 0, run.start..<run.recorded.shape[1])
            computed.assign(from: live)
            try run.cell.step.apply(run.sources.values(target: whole))
            live.assign(from: computed)
        }
    }
}

/// One plain forward pass over a batch of prompts, keeping the values at the sites asked
/// for and the final hidden state at each prompt's last position.
struct Recording {
    let batch: TokenBatch
    let lengths: [Int]
    let values: [Site: Tensor]
    /// [prompts, hidden].
    let lastFinal: Tensor

    init(_ model: any LanguageModel, _ prompts: [[Int]], sites: Set<Site>, cancelled: CancellationCheck?, cache: KeyValueCache? = nil) throws {
        batch = TokenBatch(prompts)
        lengths = prompts.map(\.count)
        let recorder = ActivationRecorder(Array(sites))
        let final = try model.forward(batch, hooks: recorder, logits: .none, cancelled: cancelled, recorder: cache)
        // A site the model never showed (an adapter that declares more than it fires) is an
        // error here, so `value` below always finds what it is asked for.
        if let missing = sites.first(where: { recorder.values[$0] == nil }) {
            throw ModelError.siteNotProvided(site: missing.path, architecture: model.architecture)
        }
        values = recorder.values
        lastFinal = final.select(axis: 1, batch.length - 1).contiguous()
    }

    /// Prompt `row`'s value at `site` without its padding: [1, its length, ...] (a view).
    func value(_ site: Site, row: Int) -> Tensor { unpadded(values[site]!, batch, row: row) }
}

/// Row `row` of a batch's value [rows, padded length, ...] without its padding: [1, its
/// length, ...] (a view).
func unpadded(_ value: Tensor, _ batch: TokenBatch, row: Int) -> Tensor {
    value.slice(axis: 0, row..<(row + 1)).slice(axis: 1, batch.padding[row]..<batch.length)
}

/// What a cell's step may read besides its target: invocation 0 is the target, then the
/// pair's other prompt (when the cells read it), then the reference prompts.
struct SourceValues {
    let other: Tensor?
    let references: [Tensor]

    init(others: Recording?, references: Recording?, pair: Int, site: Site) {
        other = others?.value(site, row: pair)
        self.references = references.map { r in r.lengths.indices.map { r.value(site, row: $0) } } ?? []
    }

    func values(target: Tensor) -> SiteValues {
        let other = self.other, references = self.references
        return SiteValues(view: { invoke in
            if invoke == 0 { return target }
            if let other { return invoke == 1 ? other : references[invoke - 2] }
            return references[invoke - 1]
        })
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
