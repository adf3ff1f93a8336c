import LoupeModels
import LoupeTensor
import Synchronization

/// One parameter of an intervention, published by `hello` so clients can check requests.
public struct InterventionParameter: Sendable, Equatable {
    public enum Kind: String, Sendable {
        /// An integer.
        case int
        /// An integer or an array of integers.
        case ints
        case double
        case bool
        case string
        /// A tensor: a literal tensor or `{ref: n}` to a node's value.
        case tensor
        /// An invocation index.
        case invoke
        /// An array of invocation indices.
        case invokes
    }

    public let name: String
    public let kind: Kind
    public let required: Bool
    public let summary: String

    public init(_ name: String, _ kind: Kind, required: Bool = false, _ summary: String) {
        self.name = name
        self.kind = kind
        self.required = required
        self.summary = summary
    }

    public var schema: TraceValue {
        ["name": .string(name), "type": .string(kind.rawValue), "required": .bool(required), "summary": .string(summary)]
    }
}

/// An intervention: a named, parameterised edit of site values, usable as a trace node
/// (`{op: "intervene", name, invoke, params}`) and as the unit of a sweep. A new one is one
/// type conforming to this protocol and one `register` line.
public protocol Intervention: Sendable {
    /// The name a trace uses ("residual_patch").
    static var name: String { get }
    /// One sentence for `hello`.
    static var summary: String { get }
    static var parameters: [InterventionParameter] { get }

    /// Checks the arguments against the model and the invocations (before any compute) and
    /// says what to do at which site. `context.target` is the invocation being edited.
    static func plan(_ arguments: InterventionArguments, _ context: InterventionContext) throws(TraceError) -> [InterventionStep]
}

extension Intervention {
    public static var schema: TraceValue {
        ["name": .string(name), "summary": .string(summary), "parameters": .array(parameters.map(\.schema))]
    }
}

/// What an intervention does at one site while the forward pass is there.
public struct InterventionStep: Sendable {
    /// Where it acts (an HF path or a canonical name, and a side).
    public let site: Site
    /// Invocations other than the target whose value at this site it reads; validation
    /// checks they exist.
    public let reads: [Int]
    /// Edits the site's values in place (through `SiteValues.value(_:)`).
    public let apply: @Sendable (SiteValues) throws -> Void

    public init(site: Site, reads: [Int] = [], apply: @escaping @Sendable (SiteValues) throws -> Void) {
        self.site = site
        self.reads = reads
        self.apply = apply
    }
}

/// The values at the site an intervention step runs at, each invocation's as a live view
/// (its rows only, without left padding; writes change the forward pass), and the
/// intervention's tensor parameters.
public struct SiteValues {
    let view: (Int) -> Tensor
    let tensors: [String: Tensor]

    /// Values for a caller other than the trace executor (a sweep applying a step to its own
    /// rows): `view(invoke)` gives invocation `invoke`'s value, [1, its length, ...].
    public init(view: @escaping (Int) -> Tensor, tensors: [String: Tensor] = [:]) {
        self.view = view
        self.tensors = tensors
    }

    /// Invocation `invoke`'s value at this site: [1, its length, ...].
    public func value(_ invoke: Int) -> Tensor { view(invoke) }

    /// A `tensor` parameter, resolved.
    public func tensor(_ parameter: String) -> Tensor? { tensors[parameter] }
}

/// What an intervention can know while it plans.
public struct InterventionContext {
    public let node: Int
    /// The invocation it edits.
    public let target: Int
    public let dimensions: ModelDimensions
    /// Each invocation's token count.
    public let lengths: [Int]
    let siteInfo: (Site) -> SiteInfo?

    /// `lengths` are the token counts of the invocations an intervention may name;
    /// `siteInfo` gives a site's symbolic shape.
    public init(node: Int, target: Int, dimensions: ModelDimensions, lengths: [Int], siteInfo: @escaping (Site) -> SiteInfo?) {
        self.node = node
        self.target = target
        self.dimensions = dimensions
        self.lengths = lengths
        self.siteInfo = siteInfo
    }

    /// The shape of `site` for invocation `invoke` (batch 1, its own length), or nil when
    /// the model has no such site.
    public func shape(of site: Site, invoke: Int) -> [Int]? {
        siteInfo(site).map { info in
            info.shape.map { $0 == SiteInfo.batchDim ? 1 : ($0 == SiteInfo.sequenceDim ? lengths[invoke] : $0) }
        }
    }

    /// An error about parameter `parameter`, naming this node.
    public func error(_ code: TraceError.Code, _ parameter: String?, _ message: String) -> TraceError {
        TraceError(code, node: node, field: "nodes.\(node).params" + (parameter.map { "." + $0 } ?? ""), message)
    }

    /// Checks a layer index.
    public func layer(_ value: Int, _ parameter: String) throws(TraceError) -> Int {
        guard value >= 0 && value < dimensions.layers else {
            throw error(.indexOutOfRange, parameter, "layer \(value) is out of range: the model has \(dimensions.layers) layers")
        }
        return value
    }

    /// Checks an invocation index.
    public func invoke(_ value: Int, _ parameter: String) throws(TraceError) -> Int {
        guard value >= 0 && value < lengths.count else {
            throw error(.indexOutOfRange, parameter, "invocation \(value) is out of range: the trace has \(lengths.count)")
        }
        return value
    }

    /// Positions of invocation `invoke` (negative counts from its end), resolved; nil means all.
    public func positions(_ values: [Int]?, invoke: Int, _ parameter: String) throws(TraceError) -> [Int] {
        let length = lengths[invoke]
        guard let values else { return Array(0..<length) }
        var resolved = [Int]()
        for p in values {
            let r = p < 0 ? p + length : p
            guard r >= 0 && r < length else {
                throw error(.indexOutOfRange, parameter, "position \(p) is out of range for invocation \(invoke) of \(length) tokens")
            }
            resolved.append(r)
        }
        return resolved
    }
}

/// An intervention's arguments, checked against its parameter list before `plan` sees them.
public struct InterventionArguments {
    let node: Int
    let values: [String: TraceValue]
    /// Static shapes of tensor parameters (literal or referenced).
    let tensorShapes: [String: [Int]]

    /// Arguments already checked against the intervention's parameters (the trace compiler
    /// checks a node's; a sweep builds each cell's).
    public init(node: Int, values: [String: TraceValue], tensorShapes: [String: [Int]] = [:]) {
        self.node = node
        self.values = values
        self.tensorShapes = tensorShapes
    }

    private func field(_ name: String) -> String { "nodes.\(node).params.\(name)" }

    public func has(_ name: String) -> Bool { values[name].map { !$0.isNull } ?? false }

    public func int(_ name: String) -> Int? { values[name]?.intValue }
    public func double(_ name: String) -> Double? { values[name]?.doubleValue }
    public func bool(_ name: String) -> Bool? { values[name]?.boolValue }
    public func string(_ name: String) -> String? { values[name]?.stringValue }

    /// An integer or an array of integers, as an array; nil when absent.
    public func ints(_ name: String) -> [Int]? {
        guard let value = values[name], !value.isNull else { return nil }
        if let one = value.intValue { return [one] }
        return value.arrayValue?.compactMap(\.intValue)
    }

    /// A tensor parameter's shape.
    public func tensorShape(_ name: String) -> [Int]? { tensorShapes[name] }
}

/// The interventions known to this process; plugins add themselves with one `register` call.
public final class InterventionRegistry: Sendable {
    private let types = Mutex<[String: any Intervention.Type]>([:])

    public init() {}

    public func register(_ type: any Intervention.Type) {
        types.withLock { $0[type.name] = type }
    }

    public var names: [String] { types.withLock { $0.keys.sorted() } }

    public func intervention(named name: String) -> (any Intervention.Type)? { types.withLock { $0[name] } }

    /// Every intervention's name, summary and parameters, for `hello`.
    public var schema: TraceValue {
        .array(types.withLock { list in list.keys.sorted().map { list[$0]!.schema } })
    }
}
