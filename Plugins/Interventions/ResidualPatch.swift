import LoupeModels
import LoupeTrace

/// Copies the residual stream at chosen layers and positions from a source invocation
/// into the target: the tutorial's `h[L].output[0][:, t, :] = clean_hs[L][:, t, :]`.
public enum ResidualPatch: Intervention {
    public static let name = "residual_patch"
    public static let summary = "copy the residual stream at chosen layers and positions from a source invocation"
    public static let parameters: [InterventionParameter] = [
        InterventionParameter("source", .invoke, required: true, "the invocation to copy from"),
        InterventionParameter("layers", .ints, "layer or layers (default: every layer)"),
        InterventionParameter("positions", .ints, "position or positions, negative from the end (default: all; needs equal lengths)"),
        InterventionParameter("stream", .string, "resid_post (default: a block's output), resid_pre or resid_mid"),
    ]

    public static func plan(_ arguments: InterventionArguments, _ context: InterventionContext) throws(TraceError) -> [InterventionStep] {
        let source = arguments.int("source")!
        let target = context.target
        let stream = try choice(arguments, "stream", ["resid_post", "resid_pre", "resid_mid"], context)
        var layers = [Int]()
        for l in arguments.ints("layers") ?? Array(0..<context.dimensions.layers) { layers.append(try context.layer(l, "layers")) }
        let pairs = try pairedPositions(arguments.ints("positions"), target: target, source: source, context, "positions")
        return layers.map { layer in
            InterventionStep(site: Site("blocks.\(layer).\(stream)", .output), reads: [source]) { values in
                let into = values.value(target), from = values.value(source)
                for (t, s) in pairs where !(source == target && t == s) {
                    into.select(axis: 1, t).assign(from: from.select(axis: 1, s).copy())
                }
            }
        }
    }
}
