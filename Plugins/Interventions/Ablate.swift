import LoupeModels
import LoupeTensor
import LoupeTrace

/// Knocks out a head's output, an MLP's output or the residual stream at chosen
/// positions: sets it to zero, to its mean over reference invocations (per position), or
/// to its value in another invocation (resampling).
public enum Ablate: Intervention {
    public static let name = "ablate"
    public static let summary = "zero, mean-ablate or resample a head, an MLP or the residual stream at chosen positions"
    public static let parameters: [InterventionParameter] = [
        InterventionParameter("component", .string, required: true, "head (blocks.L.attn.z), mlp (blocks.L.mlp_out) or resid (blocks.L.resid_post)"),
        InterventionParameter("layer", .int, required: true, "the layer"),
        InterventionParameter("head", .int, "the head, for component head"),
        InterventionParameter("positions", .ints, "position or positions, negative from the end (default: all)"),
        InterventionParameter("mode", .string, "zero (default), mean or resample"),
        InterventionParameter("reference", .invokes, "for mean: the invocations to average over"),
        InterventionParameter("source", .invoke, "for resample: the invocation to take the value from"),
    ]

    public static func plan(_ arguments: InterventionArguments, _ context: InterventionContext) throws(TraceError) -> [InterventionStep] {
        let target = context.target
        let component = try choice(arguments, "component", ["head", "mlp", "resid"], context)
        let layer = try context.layer(arguments.int("layer")!, "layer")
        let mode = try choice(arguments, "mode", ["zero", "mean", "resample"], context)
        var chosenHead: Int?
        if component == "head" {
            guard let h = arguments.int("head") else { throw context.error(.badRequest, "head", "component head needs a head") }
            guard h >= 0 && h < context.dimensions.heads else {
                throw context.error(.indexOutOfRange, "head", "head \(h) is out of range: the model has \(context.dimensions.heads) heads")
            }
            chosenHead = h
        }
        let head = chosenHead
        let site: Site
        switch component {
        case "head": site = Site("blocks.\(layer).attn.z", .output)
        case "mlp": site = Site("blocks.\(layer).mlp_out", .output)
        default: site = Site("blocks.\(layer).resid_post", .output)
        }
        let requested = arguments.ints("positions")
        let positions = try context.positions(requested, invoke: target, "positions")
        /// The part of invocation `invoke`'s value ablated at one position: [1, hidden] or [1, d_head].
        let part: @Sendable (Tensor, Int) -> Tensor = { value, p in
            let row = value.select(axis: 1, p)
            return head.map { row.select(axis: 1, $0) } ?? row
        }
        switch mode {
        case "zero":
            return [InterventionStep(site: site) { values in
                let into = values.value(target)
                for p in positions { part(into, p).fill(0) }
            }]
        case "resample":
            guard let source = arguments.int("source") else { throw context.error(.badRequest, "source", "mode resample needs a source invocation") }
            let pairs = try pairedPositions(requested, target: target, source: source, context, "positions")
            return [InterventionStep(site: site, reads: [source]) { values in
                let into = values.value(target), from = values.value(source)
                let copies = pairs.map { part(from, $0.source).copy() }
                for ((t, _), value) in zip(pairs, copies) { part(into, t).assign(from: value) }
            }]
        default:
            guard let reference = arguments.ints("reference"), !reference.isEmpty else {
                throw context.error(.badRequest, "reference", "mode mean needs reference invocations")
            }
            // Each reference's positions, resolved in that invocation (negative from its end).
            var resolved = [[Int]]()
            for r in reference {
                if requested == nil, context.lengths[r] != context.lengths[target] {
                    throw context.error(.shapeMismatch, "reference", "invocation \(r) has \(context.lengths[r]) tokens and the target \(context.lengths[target]): give positions to mean-ablate across lengths")
                }
                resolved.append(try context.positions(requested, invoke: r, "positions"))
            }
            let referencePositions = resolved
            return [InterventionStep(site: site, reads: reference) { values in
                let means = positions.indices.map { i in
                    TraceMath.mean(zip(reference, referencePositions).map { r, ps in part(values.value(r), ps[i]).copy() })
                }
                let into = values.value(target)
                for (p, mean) in zip(positions, means) { part(into, p).assign(from: mean) }
            }]
        }
    }
}
