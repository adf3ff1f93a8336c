import LoupeModels
import LoupeTrace

/// Adds a scaled vector to the residual stream at chosen layers and positions.
public enum Steer: Intervention {
    public static let name = "steer"
    public static let summary = "add scale x vector to the residual stream at chosen layers and positions"
    public static let parameters: [InterventionParameter] = [
        InterventionParameter("layers", .ints, required: true, "layer or layers"),
        InterventionParameter("vector", .tensor, required: true, "a [hidden] tensor (or {ref: n})"),
        InterventionParameter("scale", .double, "the factor (default 1)"),
        InterventionParameter("positions", .ints, "position or positions, negative from the end (default: all)"),
        InterventionParameter("stream", .string, "resid_post (default), resid_pre or resid_mid"),
    ]

    public static func plan(_ arguments: InterventionArguments, _ context: InterventionContext) throws(TraceError) -> [InterventionStep] {
        let target = context.target
        let hidden = context.dimensions.hidden
        let shape = arguments.tensorShape("vector")!
        guard TraceMath.broadcasts(shape, to: [1, hidden]) else {
            throw context.error(.shapeMismatch, "vector", "the vector has shape \(shape); steering needs [\(hidden)]")
        }
        let scale = Float(arguments.double("scale") ?? 1)
        let stream = try choice(arguments, "stream", ["resid_post", "resid_pre", "resid_mid"], context)
        var layers = [Int]()
        for l in arguments.ints("layers")! { layers.append(try context.layer(l, "layers")) }
        let positions = try context.positions(arguments.ints("positions"), invoke: target, "positions")
        return layers.map { layer in
            InterventionStep(site: Site("blocks.\(layer).\(stream)", .output)) { values in
                let vector = values.tensor("vector")!
                let into = values.value(target)
                for p in positions {
                    let row = into.select(axis: 1, p)
                    row.assign(from: TraceMath.add(row, vector, scale: scale))
                }
            }
        }
    }
}
