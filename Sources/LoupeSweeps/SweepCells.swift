import LoupeModels
import LoupeTrace

/// Where a cell's edit lands relative to the layers.
enum EditStage {
    /// On the residual stream between two layers: the edited value enters `firstLayer`.
    case beforeLayer
    /// At a site inside a layer (a head's output, the MLP's output): the step runs there.
    case inLayer
}

/// One cell of a sweep: the intervention step that edits its unit, and where it lands.
struct SweepCell {
    let pair: Int
    /// The matrix row (the index of the swept layer) and column.
    let row: Int
    let column: Int
    let step: InterventionStep
    /// The layer of the step's site.
    let layer: Int
    let stage: EditStage
    /// For an edit between layers: the layer the edited value enters.
    let firstLayer: Int
}

/// Every cell of a sweep, each planned by the intervention plugin that is its unit, as a
/// trace node would plan it: the sweep sets the unit's layer, head and position and the
/// invocations it reads, the plugin says what to do at which site.
///
/// Each cell is planned over the invocations [edited prompt, the pair's other prompt (when
/// the cells read it), reference prompts...].
struct SweepCells {
    let cells: [SweepCell]
    /// The sites the cells act at.
    let sites: Set<Site>
    /// The prompt each pair's cells edit, and the one they read from (none for zero or mean ablation).
    let targets: [[Int]]
    let others: [[Int]]

    /// `interventions`: where the cells' units are looked up by name (`residual_patch`,
    /// `head_patch`, `ablate`), so the sweeps name no plugin.
    init(_ request: SweepRequest, model: any LanguageModel, interventions: InterventionRegistry) throws {
        try request.validate(model.dimensions)
        // Every cell starts from the residual stream entering its layer.
        if let missing = model.unprovided(CanonicalSite.residPre(0).site) { throw missing }
        let intervention = request.intervention
        targets = request.pairs.map { intervention.editsClean ? $0.clean : $0.corrupted! }
        others = intervention.readsOther ? request.pairs.map { intervention.editsClean ? $0.corrupted! : $0.clean } : []
        let dimensions = model.dimensions
        var cells = [SweepCell]()
        for (pair, target) in targets.enumerated() {
            let length = target.count
            let lengths = [length] + (others.isEmpty ? [] : [others[pair].count]) + request.reference.map(\.count)
            // The built-in interventions plan from their arguments alone; none asks for a site's shape.
            let context = InterventionContext(node: 0, target: 0, dimensions: dimensions, lengths: lengths, siteInfo: { _ in nil })
            for (row, layer) in request.sweptLayers(dimensions).enumerated() {
                for column in 0..<request.columns(length: length, dimensions) {
                    let (head, position): (Int?, Int?) = switch request.kind {
                    case .residual, .mlp: (nil, column)
                    case .heads: (column, nil)
                    case .headPositions: (column / length, column % length)
                    // No intervention edits one hidden unit: `PatchingSweep` runs neurons on the plain path.
                    case .neurons: preconditionFailure("a neurons sweep has no intervention cells")
                    }
                    let (name, values) = Self.unit(request, layer: layer, head: head, position: position,
                                                   references: Array(lengths.indices.suffix(request.reference.count)))
                    guard let type = interventions.intervention(named: name) else {
                        throw SweepError.intervention("the \(name) intervention, which this sweep's cells are, is not registered")
                    }
                    let steps: [InterventionStep]
                    do { steps = try type.plan(InterventionArguments(node: 0, values: values), context) } catch {
                        throw SweepError.intervention("\(type.name) refused the cell at layer \(layer), column \(column): \(error.message)")
                    }
                    guard steps.count == 1, let step = steps.first, let canonical = CanonicalSite(step.site) else {
                        throw SweepError.intervention("\(type.name) plans \(steps.count) steps at \(steps.map(\.site)) for one cell; a sweep cell is one step at a canonical site")
                    }
                    if let missing = model.unprovided(step.site) { throw missing }
                    guard let (siteLayer, stage, firstLayer) = Self.placement(of: canonical) else {
                        throw SweepError.intervention("\(type.name) plans its step at \(canonical), outside any block")
                    }
                    cells.append(SweepCell(pair: pair, row: row, column: column, step: step, layer: siteLayer, stage: stage, firstLayer: firstLayer))
                }
            }
        }
        self.cells = cells
        sites = Set(cells.map(\.step.site))
    }

    /// The name of the intervention that edits one cell, and its arguments (invocation 1 is
    /// the pair's other prompt when the cells read it).
    static func unit(_ request: SweepRequest, layer: Int, head: Int?, position: Int?,
                     references: [Int]) -> (String, [String: TraceValue]) {
        var values: [String: TraceValue] = [:]
        if let head { values["head"] = .int(head) }
        if let position { values["positions"] = .array([.int(position)]) }
        let component = [SweepKind.residual: "resid", .heads: "head", .headPositions: "head", .mlp: "mlp"][request.kind]!
        switch (request.intervention, request.kind) {
        case (_, .neurons): preconditionFailure("a neurons sweep has no intervention cells")
        case (.patch, .residual):
            values["layers"] = .int(layer)
            values["source"] = 1
            return ("residual_patch", values)
        case (.patch, .heads), (.patch, .headPositions):
            values["layer"] = .int(layer)
            values["source"] = 1
            return ("head_patch", values)
        case (.patch, .mlp):
            // No plugin patches an MLP's output by name; resampling it from the clean run is that patch.
            values.merge(["component": .string(component), "layer": .int(layer), "mode": "resample", "source": 1]) { $1 }
            return ("ablate", values)
        case (.ablate(let method), _):
            values.merge(["component": .string(component), "layer": .int(layer), "mode": .string(method.rawValue)]) { $1 }
            switch method {
            case .zero: break
            case .resample: values["source"] = 1
            case .mean: values["reference"] = .array(references.map { .int($0) })
            }
            return ("ablate", values)
        }
    }

    /// The layer of a canonical site and whether the edit lands between layers (the residual
    /// stream entering or leaving a block) or inside one; nil for `logits`.
    static func placement(of site: CanonicalSite) -> (layer: Int, stage: EditStage, firstLayer: Int)? {
        switch site {
        case .residPre(let layer): return (layer, .beforeLayer, layer)
        case .residPost(let layer): return (layer, .beforeLayer, layer + 1)
        case .logits: return nil
        default: return site.layer.map { ($0, .inLayer, $0) }
        }
    }
}
