import LoupeModels
import LoupeTrace

/// Copies one attention head's output (z, the o_proj input split by head), per position
/// or at all positions, from a source invocation: the tutorial's head patching. With
/// `component` q, k or v it patches that head's query, key or value instead; keys and
/// values are indexed by key/value head, so with grouped-query attention `head` ranges
/// over the key/value heads there.
public enum HeadPatch: Intervention {
    public static let name = "head_patch"
    public static let summary = "copy one attention head's output (or q/k/v) from a source invocation, at chosen positions or all"
    public static let parameters: [InterventionParameter] = [
        InterventionParameter("source", .invoke, required: true, "the invocation to copy from"),
        InterventionParameter("layer", .int, required: true, "the layer"),
        InterventionParameter("head", .int, required: true, "the head (a key/value head for k and v)"),
        InterventionParameter("positions", .ints, "position or positions, negative from the end (default: all; needs equal lengths)"),
        InterventionParameter("component", .string, "z (default: the head's output), q, k or v"),
    ]

    public static func plan(_ arguments: InterventionArguments, _ context: InterventionContext) throws(TraceError) -> [InterventionStep] {
        let source = arguments.int("source")!, target = context.target
        let layer = try context.layer(arguments.int("layer")!, "layer")
        let component = try choice(arguments, "component", ["z", "q", "k", "v"], context)
        let d = context.dimensions
        let heads = component == "k" || component == "v" ? d.keyValueHeads : d.heads
        let head = arguments.int("head")!
        guard head >= 0 && head < heads else {
            throw context.error(.indexOutOfRange, "head", "head \(head) is out of range: \(component) has \(heads) heads")
        }
        let pairs = try pairedPositions(arguments.ints("positions"), target: target, source: source, context, "positions")
        let site = Site("blocks.\(layer).attn.\(component)", .output)
        return [InterventionStep(site: site, reads: [source]) { values in
            let into = values.value(target), from = values.value(source)
            for (t, s) in pairs where !(source == target && t == s) {
                // [1, pos, head, d_head]
                into.select(axis: 1, t).select(axis: 1, head).assign(from: from.select(axis: 1, s).select(axis: 1, head).copy())
            }
        }]
    }
}
