import LoupeTrace

/// Positions resolved in two invocations at once: the same entry (negative from each one's
/// end) in each; nil means every position, which needs equal lengths.
func pairedPositions(_ requested: [Int]?, target: Int, source: Int, _ context: InterventionContext,
                     _ parameter: String) throws(TraceError) -> [(target: Int, source: Int)] {
    if requested == nil, context.lengths[target] != context.lengths[source] {
        throw context.error(.shapeMismatch, parameter, "invocations \(target) and \(source) have \(context.lengths[target]) and \(context.lengths[source]) tokens: give positions to patch between invocations of different lengths")
    }
    let t = try context.positions(requested, invoke: target, parameter)
    let s = try context.positions(requested, invoke: source, parameter)
    return Array(zip(t, s))
}

/// One of a fixed set of strings.
func choice(_ arguments: InterventionArguments, _ name: String, _ options: [String], _ context: InterventionContext) throws(TraceError) -> String {
    let value = arguments.string(name) ?? options[0]
    guard options.contains(value) else {
        throw context.error(.badRequest, name, "\(name) must be one of \(options.joined(separator: ", ")), got \"\(value)\"")
    }
    return value
}
