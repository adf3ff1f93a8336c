import LoupeModels
import LoupeTensor

/// When a node runs: at site `site` (its index in the model's firing order; -1 before
/// the forward pass) while invocation `invoke` is served.
struct Event: Comparable {
    let site: Int
    let invoke: Int
    static let start = Event(site: -1, invoke: -1)
    static func < (a: Event, b: Event) -> Bool { (a.site, a.invoke) < (b.site, b.invoke) }
}

/// An argument that is a node's value or a literal.
enum Operand {
    case node(Int)
    case literal(Tensor)

    /// The node, when the operand is one.
    var node: Int? { if case .node(let n) = self { return n } else { return nil } }
}

/// A site read or written by one invocation.
struct SiteRef {
    let site: Site
    let order: Int
    let invoke: Int
    let info: SiteInfo
}

enum Op {
    case get(SiteRef)
    case set(SiteRef, value: Operand)
    case constant(Tensor)
    case index(Int, ResolvedIndex, raw: [IndexItem])
    case setIndex(Int, ResolvedIndex, value: Operand)
    case binary(TensorMath.BinaryOp, Operand, Operand)
    case unary(TensorMath.UnaryOp, Int)
    case matmul(Operand, Operand)
    case reduce(TensorMath.Reduction, Int, dims: [Int]?, keepdim: Bool)
    case softmax(Int, dim: Int, log: Bool)
    case reshape(Int, [Int])
    case permute(Int, [Int])
    case clone(Int)
    case full([Int], Float)
    case cat([Operand], dim: Int, stack: Bool)
    case topk(Int, k: Int, dim: Int, largest: Bool, indices: Bool)
    /// Module `module`'s own computation on x (`LanguageModel.call(module:_:)`).
    case call(Operand, module: String, model: any LanguageModel)
    /// A parameter, read-only (its node's alias is `SiteAlias.weight`).
    case weight(Tensor)
    case intervene([CompiledStep], tensors: [String: Operand])
    case save(Int, name: String)
    /// The scalar the backward differentiates.
    case backward(Int)
    /// The gradient of node x's value, read where it flows (`Probe`).
    case grad(Int)
    /// Replaces the gradient of node x's value where it flows.
    case setGrad(Int, value: Operand)

    /// The node whose value's gradient a `grad` or `set_grad` reads or replaces.
    var gradientOf: Int? {
        switch self {
        case .grad(let x), .setGrad(let x, _): return x
        default: return nil
        }
    }
}

/// The site and invocation whose live value a node's value views, or a weight's storage.
struct SiteAlias {
    let order: Int
    let invoke: Int

    /// A view of a model's parameter: no site, and nothing may write through it.
    static let weight = SiteAlias(order: -1, invoke: -1)
    var isWeight: Bool { order < 0 }
}

struct CompiledStep {
    let step: InterventionStep
    let order: Int
    let event: Event
    /// The invocation it edits.
    let target: Int
}

struct CompiledNode {
    let id: Int
    let op: Op
    /// The value's shape; nil for nodes without a value (intervene).
    let shape: [Int]?
    let event: Event
    /// The site whose live buffer this value views (writes through it change the pass).
    let alias: SiteAlias?
    var aliasSite: Int? { alias?.order }
    /// Node indices this node reads.
    let inputs: [Int]
    /// True when the value needs a gradient (a `grad`, `set_grad` and what depends on them):
    /// the node runs during the backward.
    var inBackward = false
}

/// Where the backward reads or replaces a gradient: a site's value for one invocation as
/// the pass leaves the site, or a node's value where the node computed it.
enum ProbeTarget: Hashable {
    case site(order: Int, invoke: Int)
    case node(Int)
}

/// A point of the forward pass the backward stops at, and the nodes that run there: the
/// gradient is then the one flowing through the target's value at that point.
struct Probe {
    let target: ProbeTarget
    /// Backward nodes, in trace order.
    var nodes: [Int] = []
}

/// A trace checked against a model: every node typed, shaped and scheduled.
public struct CompiledTrace {
    let invocations: [[Int]]
    let nodes: [CompiledNode]
    public let logits: LogitMode
    /// Per site order: the tasks to run there, in order.
    let tasks: [Int: [Task]]
    /// Tasks that need no site (constants and what follows from them).
    let startTasks: [Task]
    let sites: [SiteInfo]
    /// For each node, the last site order at which a task reads it (Int.max: saved).
    let lastUse: [Int]
    /// For each invocation, the stage from which it needs rows of its own: -1 (the
    /// embedding), a layer, the layer count (the final norm and unembedding), or Int.max
    /// when nothing writes it. Until then it shares the rows of invocations with the same
    /// tokens.
    let diverges: [Int]
    /// `setindex` nodes that copy positions from an invocation with the same tokens up to
    /// and past those positions, neither written before: the values are already equal
    /// (attention is causal), so with shared rows the write is left out and the invocation
    /// keeps sharing.
    let noOpWrites: Set<Int>
    /// The `backward` node, if any.
    let backward: Int?
    /// Where the backward stops to run nodes (`Task.probe` places them in the forward pass).
    let probes: [Probe]
    /// An upper bound on the bytes the backward holds at once (nil without a backward).
    public let backwardBytes: Int?

    /// The `backward` node's id and its place in the request's `nodes`, for errors about it.
    public var backwardNode: (id: Int, position: Int)? { backward.map { (nodes[$0].id, $0) } }

    enum Task {
        case node(Int)
        case step(node: Int, step: Int)
        /// Records `probes[n]` on the tape.
        case probe(Int)
    }

    /// Bytes the saved values take as float32, known before anything runs (the daemon's
    /// limit on saved bytes per trace reads it).
    public var savedBytes: Int {
        nodes.reduce(0) { total, node in
            guard case .save = node.op, let shape = node.shape else { return total }
            return total + shape.reduce(1, *) * 4
        }
    }

    /// Op names of the trace language, for `hello`.
    public static let ops: [String] = [
        "get", "set", "constant", "index", "setindex",
        "add", "sub", "mul", "div", "pow", "neg", "exp", "log", "abs", "sqrt",
        "matmul", "sum", "mean", "max", "min", "argmax", "argmin", "softmax", "log_softmax",
        "reshape", "view", "transpose", "permute", "split_heads", "merge_heads",
        "clone", "zeros_like", "ones_like", "full_like", "full", "cat", "stack", "topk",
        "call", "weight", "intervene", "save", "backward", "grad", "set_grad",
    ]
}

/// Turns a `Trace` into a `CompiledTrace`, or the first error, naming its node.
struct Compiler {
    let model: any LanguageModel
    let sites: [SiteInfo]
    let siteOrder: [Site: Int]
    let interventions: InterventionRegistry
    let trace: Trace
    let mode: LogitMode
    /// The generation step the trace runs at (`GenerationPlan`): from step 1 on, every
    /// site has one position per invocation, and attention keys `count + step`.
    var step = 0

    static let headSites: Set<Site> = [Site("lm_head", .input), Site("lm_head", .output), Site("logits", .output)]

    private var nodes: [CompiledNode] = []
    private var indexOfID: [Int: Int] = [:]
    private var savedNames: Set<String> = []
    /// The `backward` node's index, once one is compiled.
    private var backwardNode: Int?
    /// Elements of the values computed so far that are not views of a site.
    private var ownElements = 0

    init(model: any LanguageModel, sites: [SiteInfo], siteOrder: [Site: Int], interventions: InterventionRegistry,
         trace: Trace, mode: LogitMode) {
        self.model = model
        self.sites = sites
        self.siteOrder = siteOrder
        self.interventions = interventions
        self.trace = trace
        self.mode = mode
    }

    /// Checks the invocations against the model.
    static func checkInvocations(_ invocations: [[Int]], _ d: ModelDimensions) throws(TraceError) {
        guard !invocations.isEmpty else { throw TraceError(.badRequest, field: "invokes", "a trace needs at least one invocation") }
        for (i, tokens) in invocations.enumerated() {
            guard !tokens.isEmpty else { throw TraceError(.badRequest, field: "invokes.\(i)", "invocation \(i) has no tokens") }
            guard tokens.count <= d.context else {
                throw TraceError(.tooLarge, field: "invokes.\(i)", "invocation \(i) has \(tokens.count) tokens; the model's context is \(d.context)")
            }
            if let j = tokens.firstIndex(where: { $0 < 0 || $0 >= d.vocabulary }) {
                throw TraceError(.indexOutOfRange, field: "invokes.\(i).tokens.\(j)", "token id \(tokens[j]) is outside the vocabulary of \(d.vocabulary)")
            }
        }
    }

    mutating func compile() throws(TraceError) -> [CompiledNode] {
        for (position, raw) in trace.nodes.enumerated() {
            guard case .map(let fields) = raw else {
                throw TraceError(.badRequest, field: "nodes.\(position)", "a node is a map {id, op, ...}, got \(raw.typeName)")
            }
            guard let id = fields["id"]?.intValue else {
                throw TraceError(.badRequest, field: "nodes.\(position).id", "every node needs an integer id")
            }
            guard indexOfID[id] == nil else {
                throw TraceError(.badRequest, node: id, field: "nodes.\(position).id", "node id \(id) is used twice")
            }
            guard let op = fields["op"]?.stringValue else {
                throw TraceError(.badRequest, node: id, field: "nodes.\(position).op", "every node needs an op (a string)")
            }
            var reader = NodeReader(id: id, position: position, fields: fields)
            let node = try compileNode(op, &reader)
            // Values of their own (not views of a site) count against one budget for the
            // whole trace: many values of the largest size would otherwise add up without bound.
            if node.alias == nil, let shape = node.shape {
                ownElements += shape.reduce(1, *)
                guard ownElements <= Compiler.maxElements else {
                    throw reader.error(.tooLarge, "op", "the trace's values would hold more than the \(Compiler.maxElements) elements one trace may compute with; split it")
                }
            }
            indexOfID[id] = nodes.count
            nodes.append(node)
        }
        try checkGradients()
        return nodes
    }

    /// A `grad` or `set_grad` needs the backward, and a value the backward's scalar can depend
    /// on: one the model computes after every site the scalar depends on cannot change it.
    private func checkGradients() throws(TraceError) {
        let asks = nodes.indices.filter { nodes[$0].op.gradientOf != nil }
        guard let b = backwardNode, case .backward(let scalar) = nodes[b].op else {
            if let first = asks.first {
                throw TraceError(.badRequest, node: nodes[first].id, field: "nodes.\(first).op",
                                 "a gradient needs a backward node in the trace: {op: \"backward\", x: the scalar to differentiate}")
            }
            return
        }
        for n in asks {
            let x = nodes[n].op.gradientOf!
            let site = gradientSite(x)
            if site > nodes[scalar].event.site {
                throw TraceError(.badRequest, node: nodes[n].id, field: "nodes.\(n).x",
                                 "the backward's scalar (node \(nodes[scalar].id), of node \(nodes[b].id)) does not depend on node \(nodes[x].id): the model computes \(sites[site].site).\(sites[site].io.rawValue) after every site the scalar depends on")
            }
        }
    }

    /// The site a gradient of node x's value is taken at: a site's own for its value, else
    /// the latest site x depends on.
    private func gradientSite(_ x: Int) -> Int {
        switch nodes[x].op {
        case .get(let ref), .set(let ref, _): return ref.order
        default: return nodes[x].event.site
        }
    }

    // MARK: Helpers

    private func shape(_ n: Int) -> [Int] { nodes[n].shape ?? [] }

    private func event(of operands: [Operand]) -> Event {
        operands.reduce(Event.start) { e, o in
            if case .node(let n) = o { return max(e, nodes[n].event) }
            return e
        }
    }

    private func operandShape(_ o: Operand) -> [Int] {
        switch o {
        case .node(let n): return shape(n)
        case .literal(let t): return t.shape
        }
    }

    private func nodeIndex(_ value: TraceValue?, _ reader: NodeReader, _ key: String) throws(TraceError) -> Int {
        guard let value else { throw reader.error(.badRequest, key, "missing field \(key): a node reference {ref: n}") }
        guard let id = value.reference else {
            throw reader.error(.badRequest, key, "\(key) must be a node reference {ref: n}, got \(value.typeName)")
        }
        return try resolve(id, reader, key)
    }

    private func resolve(_ id: Int, _ reader: NodeReader, _ key: String) throws(TraceError) -> Int {
        guard let index = indexOfID[id] else {
            if id == reader.id {
                throw reader.error(.badRequest, key, "node \(id) refers to itself (a cycle)")
            }
            throw reader.error(.badRequest, key, "node \(id) is not defined before node \(reader.id): nodes may refer only to earlier nodes (so no cycles)")
        }
        guard nodes[index].shape != nil else {
            throw reader.error(.badRequest, key, "node \(id) (\(opName(nodes[index].op))) has no value to use")
        }
        return index
    }

    private func opName(_ op: Op) -> String {
        switch op {
        case .intervene: return "intervene"
        case .backward: return "backward"
        case .setGrad: return "set_grad"
        default: return "node"
        }
    }

    private func operand(_ value: TraceValue?, _ reader: NodeReader, _ key: String) throws(TraceError) -> Operand {
        guard let value else { throw reader.error(.badRequest, key, "missing field \(key)") }
        if let id = value.reference { return .node(try resolve(id, reader, key)) }
        return .literal(try Compiler.literal(value, reader, key))
    }

    /// A literal tensor: a tensor, a number, or nested arrays of numbers.
    static func literal(_ value: TraceValue, _ reader: NodeReader, _ key: String) throws(TraceError) -> Tensor {
        if let t = value.tensorValue { return t }
        if let d = value.doubleValue { return TensorMath.scalar(Float(d)) }
        if case .bool(let b) = value { return TensorMath.scalar(b ? 1 : 0) }
        guard case .array = value else {
            throw reader.error(.badRequest, key, "\(key) must be a node reference, a number or a tensor, got \(value.typeName)")
        }
        var shape = [Int](), values = [Float]()
        func walk(_ v: TraceValue, depth: Int) -> Bool {
            if let d = v.doubleValue {
                guard depth == shape.count else { return false }
                values.append(Float(d))
                return true
            }
            guard let items = v.arrayValue else { return false }
            if depth == shape.count { shape.append(items.count) } else if depth > shape.count || shape[depth] != items.count { return false }
            for item in items where !walk(item, depth: depth + 1) { return false }
            return true
        }
        guard walk(value, depth: 0), values.count == shape.reduce(1, *) else {
            throw reader.error(.badRequest, key, "\(key) must be a rectangular nested array of numbers")
        }
        return Tensor(shape: shape, values: values)
    }

    private func site(_ reader: NodeReader) throws(TraceError) -> SiteRef {
        var path = try reader.string("site")
        var io: SiteIO = .output
        if let ioName = reader.fields["io"]?.stringValue {
            guard let parsed = SiteIO(rawValue: ioName) else { throw reader.error(.badRequest, "io", "io must be \"input\" or \"output\", got \"\(ioName)\"") }
            io = parsed
        } else if reader.fields["io"].map({ !$0.isNull }) ?? false {
            throw reader.error(.badRequest, "io", "io must be \"input\" or \"output\"")
        } else if path.hasSuffix(".input") || path.hasSuffix(".output") {
            let suffix = path.hasSuffix(".input") ? ".input" : ".output"
            if siteOrder[Site(path, .output)] == nil && siteOrder[Site(path, .input)] == nil {
                io = suffix == ".input" ? .input : .output
                path = String(path.dropLast(suffix.count))
            }
        }
        let site = Site(path, io)
        guard let order = siteOrder[site] else {
            if let missing = model.unprovided(site) { throw reader.error(.unknownSite, "site", missing.description) }
            throw reader.error(.unknownSite, "site", "the model has no site \(site) (models.describe lists them)")
        }
        let info = sites[order]
        if let item = reader.fields["item"], !item.isNull {
            guard let i = item.intValue else { throw reader.error(.badRequest, "item", "item must be an integer") }
            guard info.tuple else {
                throw reader.error(.badRequest, "item", "\(site) is a tensor, not a tuple: leave item out")
            }
            guard i == 0 else {
                throw reader.error(.indexOutOfRange, "item", "only element 0 (the hidden state) of \(site)'s tuple is available")
            }
        }
        let invoke: Int
        if let value = reader.fields["invoke"], !value.isNull {
            guard let i = value.intValue else { throw reader.error(.badRequest, "invoke", "invoke must be an integer") }
            guard i >= 0 && i < trace.invocations.count else {
                throw reader.error(.indexOutOfRange, "invoke", "invocation \(i) is out of range: the trace has \(trace.invocations.count)")
            }
            invoke = i
        } else if trace.invocations.count == 1 {
            invoke = 0
        } else {
            throw reader.error(.badRequest, "invoke", "invoke is required when a trace has more than one invocation")
        }
        return SiteRef(site: site, order: order, invoke: invoke, info: info)
    }

    /// The value's shape at `ref` for its invocation alone.
    private func siteShape(_ ref: SiteRef) -> [Int] {
        let count = trace.invocations[ref.invoke].count
        let length = step > 0 || (mode == .last && Compiler.headSites.contains(ref.site)) ? 1 : count
        var sequenceAxes = 0
        return ref.info.shape.map { d in
            guard d == SiteInfo.sequenceDim else { return d == SiteInfo.batchDim ? 1 : d }
            sequenceAxes += 1
            return sequenceAxes == 2 ? count + step : length  // the second is the pattern's keys
        }
    }

    private func dim(_ d: Int, rank: Int, _ reader: NodeReader, _ key: String) throws(TraceError) -> Int {
        let r = d < 0 ? d + rank : d
        guard r >= 0 && r < max(rank, 1) && !(rank == 0 && r != 0) else {
            throw reader.error(.indexOutOfRange, key, "dimension \(d) is out of range for a tensor of rank \(rank)")
        }
        return r
    }

    /// The most elements one value may hold (1 GiB of float32).
    static let maxElements = 1 << 28

    /// Refuses shapes whose element count overflows or passes `maxElements`.
    static func checkSize(_ shape: [Int], _ reader: NodeReader, _ key: String) throws(TraceError) {
        var count = 1
        for d in shape where d > 0 {
            let (product, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow, product <= maxElements else {
                throw reader.error(.tooLarge, key, "a tensor of shape \(shape) is larger than the \(maxElements) elements one value may hold")
            }
            count = product
        }
    }

    private func make(_ reader: NodeReader, _ op: Op, shape: [Int]?, inputs: [Operand], alias: SiteAlias? = nil,
                      event extra: Event = .start) throws(TraceError) -> CompiledNode {
        let indices = inputs.compactMap(\.node)
        if let shape { try Compiler.checkSize(shape, reader, "op") }
        return CompiledNode(id: reader.id, op: op, shape: shape, event: max(event(of: inputs), extra), alias: alias, inputs: indices,
                            inBackward: indices.contains { nodes[$0].inBackward })
    }

    /// Refuses a write into the forward pass that needs a gradient: the pass is over by then.
    private func checkForward(_ o: Operand, _ r: NodeReader, _ key: String) throws(TraceError) {
        if let n = o.node, nodes[n].inBackward {
            throw r.error(.outOfOrder, key, "this writes into the forward pass a value computed from a gradient, which exists only once the pass is over and the backward runs")
        }
    }

    // MARK: Ops

    private mutating func compileNode(_ op: String, _ r: inout NodeReader) throws(TraceError) -> CompiledNode {
        switch op {
        case "get":
            let ref = try site(r)
            return CompiledNode(id: r.id, op: .get(ref), shape: siteShape(ref), event: Event(site: ref.order, invoke: ref.invoke),
                                alias: SiteAlias(order: ref.order, invoke: ref.invoke), inputs: [])

        case "set":
            let ref = try site(r)
            let value = try operand(r.fields["value"], r, "value")
            try checkForward(value, r, "value")
            let target = siteShape(ref)
            guard TensorMath.broadcasts(operandShape(value), to: target) else {
                throw r.error(.shapeMismatch, "value", "cannot set \(ref.site) of shape \(target) to a value of shape \(operandShape(value))")
            }
            let e = event(of: [value])
            if e.site > ref.order {
                throw r.error(.outOfOrder, "value", "the value is only known after the model has passed \(ref.site), so it cannot replace it")
            }
            return try make(r, .set(ref, value: value), shape: target, inputs: [value], alias: SiteAlias(order: ref.order, invoke: ref.invoke),
                        event: Event(site: ref.order, invoke: ref.invoke))

        case "constant":
            guard let value = r.fields["value"] else { throw r.error(.badRequest, "value", "missing field value") }
            let t = try Compiler.literal(value, r, "value")
            return try make(r, .constant(t), shape: t.shape, inputs: [])

        case "index":
            let x = try nodeIndex(r.fields["x"], r, "x")
            guard let keyValue = r.fields["key"] else { throw r.error(.badRequest, "key", "missing field key") }
            let key = try IndexItem.parseKey(keyValue, node: r.id, field: r.path("key"))
            let resolved = try ResolvedIndex(key, shape: shape(x), node: r.id, field: r.path("key"))
            return try make(r, .index(x, resolved, raw: key), shape: resolved.shape, inputs: [.node(x)],
                        alias: resolved.isView ? nodes[x].alias : nil)

        case "setindex":
            let x = try nodeIndex(r.fields["x"], r, "x")
            if nodes[x].alias?.isWeight == true {
                throw r.error(.badRequest, "x", "weights are read-only: clone it first (node \(nodes[x].id) views a weight)")
            }
            guard let keyValue = r.fields["key"] else { throw r.error(.badRequest, "key", "missing field key") }
            let key = try IndexItem.parseKey(keyValue, node: r.id, field: r.path("key"))
            let resolved = try ResolvedIndex(key, shape: shape(x), node: r.id, field: r.path("key"))
            let value = try operand(r.fields["value"], r, "value")
            guard TensorMath.broadcasts(operandShape(value), to: resolved.shape) else {
                throw r.error(.shapeMismatch, "value", "cannot assign a value of shape \(operandShape(value)) to an indexed region of shape \(resolved.shape)")
            }
            if nodes[x].alias != nil { try checkForward(value, r, "value") }
            let node = try make(r, .setIndex(x, resolved, value: value), shape: shape(x), inputs: [.node(x), value], alias: nodes[x].alias)
            if let alias = nodes[x].aliasSite, node.event.site > alias {
                throw r.error(.outOfOrder, "value", "this write into \(sites[alias].site).\(sites[alias].io.rawValue) needs a value the model computes only after that site")
            }
            return node

        case "add", "sub", "mul", "div", "pow":
            let x = try operand(r.fields["x"], r, "x"), y = try operand(r.fields["y"], r, "y")
            guard let out = TensorMath.broadcastShape(operandShape(x), operandShape(y)) else {
                throw r.error(.shapeMismatch, nil, "shapes \(operandShape(x)) and \(operandShape(y)) do not broadcast")
            }
            return try make(r, .binary(TensorMath.BinaryOp(rawValue: op)!, x, y), shape: out, inputs: [x, y])

        case "neg", "exp", "log", "abs", "sqrt":
            let x = try nodeIndex(r.fields["x"], r, "x")
            return try make(r, .unary(TensorMath.UnaryOp(rawValue: op)!, x), shape: shape(x), inputs: [.node(x)])

        case "matmul":
            let x = try operand(r.fields["x"], r, "x"), y = try operand(r.fields["y"], r, "y")
            guard let out = TensorMath.matmulShape(operandShape(x), operandShape(y)) else {
                throw r.error(.shapeMismatch, nil, "cannot matmul shapes \(operandShape(x)) and \(operandShape(y))")
            }
            return try make(r, .matmul(x, y), shape: out, inputs: [x, y])

        case "sum", "mean", "max", "min", "argmax", "argmin":
            let x = try nodeIndex(r.fields["x"], r, "x")
            let rank = shape(x).count
            var dims: [Int]?
            if let value = r.fields["dim"], !value.isNull {
                var list = [Int]()
                if let one = value.intValue { list = [one] } else if let many = value.arrayValue {
                    for (i, v) in many.enumerated() {
                        guard let d = v.intValue else { throw r.error(.badRequest, "dim.\(i)", "dims are integers") }
                        list.append(d)
                    }
                } else { throw r.error(.badRequest, "dim", "dim must be an integer, an array of integers or nil") }
                var resolved = [Int]()
                for d in list { resolved.append(try dim(d, rank: rank, r, "dim")) }
                guard Set(resolved).count == resolved.count else { throw r.error(.badRequest, "dim", "dim \(list) repeats a dimension") }
                if op.hasPrefix("arg") && resolved.count != 1 { throw r.error(.badRequest, "dim", "\(op) takes one dim or nil") }
                dims = rank == 0 ? [] : resolved
            }
            let keepdim = try r.bool("keepdim", default: false)
            let kind = TensorMath.Reduction(rawValue: op)!
            let axes = dims ?? Array(0..<rank)
            if kind != .sum && kind != .mean, axes.contains(where: { shape(x)[$0] == 0 }) {
                throw r.error(.shapeMismatch, "dim", "\(op) over an empty dimension")
            }
            var out = (0..<rank).filter { !axes.contains($0) }.map { shape(x)[$0] }
            if keepdim { out = shape(x).enumerated().map { axes.contains($0.offset) ? 1 : $0.element } }
            return try make(r, .reduce(kind, x, dims: dims, keepdim: keepdim), shape: out, inputs: [.node(x)])

        case "softmax", "log_softmax":
            let x = try nodeIndex(r.fields["x"], r, "x")
            guard shape(x).count > 0 else { throw r.error(.shapeMismatch, "x", "\(op) needs a tensor of rank 1 or more") }
            let d = try dim(try r.int("dim"), rank: shape(x).count, r, "dim")
            return try make(r, .softmax(x, dim: d, log: op == "log_softmax"), shape: shape(x), inputs: [.node(x)])

        case "reshape", "view":
            let x = try nodeIndex(r.fields["x"], r, "x")
            let target = try r.ints("shape")
            try Compiler.checkSize(target.map { Swift.max($0, 1) }, r, "shape")
            let count = shape(x).reduce(1, *)
            var resolved = target
            let wild = target.filter { $0 == -1 }.count
            guard wild <= 1, target.allSatisfy({ $0 >= -1 }) else {
                throw r.error(.badRequest, "shape", "a shape holds non-negative sizes and at most one -1")
            }
            if let w = target.firstIndex(of: -1) {
                let known = target.filter { $0 != -1 }.reduce(1, *)
                guard known > 0, count % known == 0 else {
                    throw r.error(.shapeMismatch, "shape", "cannot reshape \(shape(x)) to \(target)")
                }
                resolved[w] = count / known
            }
            guard resolved.reduce(1, *) == count else { throw r.error(.shapeMismatch, "shape", "cannot reshape \(shape(x)) to \(target)") }
            return try make(r, .reshape(x, resolved), shape: resolved, inputs: [.node(x)], alias: nodes[x].alias)

        case "transpose":
            let x = try nodeIndex(r.fields["x"], r, "x")
            let rank = shape(x).count
            guard rank > 0 else { throw r.error(.shapeMismatch, "x", "transpose needs a tensor of rank 1 or more") }
            let a = try dim(try r.int("dim0"), rank: rank, r, "dim0"), b = try dim(try r.int("dim1"), rank: rank, r, "dim1")
            var order = Array(0..<rank)
            order.swapAt(a, b)
            return try make(r, .permute(x, order), shape: order.map { shape(x)[$0] }, inputs: [.node(x)], alias: nodes[x].alias)

        case "permute":
            let x = try nodeIndex(r.fields["x"], r, "x")
            let rank = shape(x).count
            var order = [Int]()
            for d in try r.ints("dims") { order.append(try dim(d, rank: rank, r, "dims")) }
            guard order.sorted() == Array(0..<rank) else {
                throw r.error(.badRequest, "dims", "dims \(order) is not a permutation of the \(rank) dimensions")
            }
            return try make(r, .permute(x, order), shape: order.map { shape(x)[$0] }, inputs: [.node(x)], alias: nodes[x].alias)

        case "split_heads":
            // 'b s (nh dh) -> b s nh dh': the last dim split into heads.
            let x = try nodeIndex(r.fields["x"], r, "x")
            let heads = try r.int("heads")
            let s = shape(x)
            guard let last = s.last, heads > 0, last % heads == 0 else {
                throw r.error(.shapeMismatch, "heads", "cannot split the last dimension of \(s) into \(heads) heads")
            }
            let out = Array(s.dropLast()) + [heads, last / heads]
            return try make(r, .reshape(x, out), shape: out, inputs: [.node(x)], alias: nodes[x].alias)

        case "merge_heads":
            // 'b s nh dh -> b s (nh dh)'.
            let x = try nodeIndex(r.fields["x"], r, "x")
            let s = shape(x)
            guard s.count >= 2 else { throw r.error(.shapeMismatch, "x", "merge_heads needs a tensor of rank 2 or more, got \(s)") }
            let out = Array(s.dropLast(2)) + [s[s.count - 2] * s[s.count - 1]]
            return try make(r, .reshape(x, out), shape: out, inputs: [.node(x)], alias: nodes[x].alias)

        case "clone":
            let x = try nodeIndex(r.fields["x"], r, "x")
            return try make(r, .clone(x), shape: shape(x), inputs: [.node(x)])

        case "zeros_like", "ones_like", "full_like":
            let x = try nodeIndex(r.fields["x"], r, "x")
            let value: Float = op == "zeros_like" ? 0 : op == "ones_like" ? 1 : Float(try r.double("value"))
            // Depends on x only for its shape: it can run before the pass.
            return CompiledNode(id: r.id, op: .full(shape(x), value), shape: shape(x), event: .start, alias: nil, inputs: [])

        case "full":
            let s = try r.ints("shape")
            guard s.allSatisfy({ $0 >= 0 }) else { throw r.error(.badRequest, "shape", "sizes must be non-negative") }
            try Compiler.checkSize(s, r, "shape")
            return try make(r, .full(s, Float(try r.double("value"))), shape: s, inputs: [])

        case "cat", "stack":
            guard let list = r.fields["xs"]?.arrayValue, !list.isEmpty else {
                throw r.error(.badRequest, "xs", "xs must be a non-empty array of operands")
            }
            var parts = [Operand]()
            for (i, v) in list.enumerated() { parts.append(try operand(v, r, "xs.\(i)")) }
            let shapes = parts.map(operandShape)
            let first = shapes[0]
            let d = try dim(try r.int("dim", default: 0), rank: first.count + (op == "stack" ? 1 : 0), r, "dim")
            var out: [Int]
            if op == "stack" {
                guard shapes.allSatisfy({ $0 == first }) else { throw r.error(.shapeMismatch, "xs", "stack needs equal shapes, got \(shapes)") }
                out = first
                out.insert(parts.count, at: d)
            } else {
                guard !first.isEmpty, shapes.allSatisfy({ s in
                    s.count == first.count && s.enumerated().allSatisfy { $0.offset == d || $0.element == first[$0.offset] }
                }) else { throw r.error(.shapeMismatch, "xs", "cat needs shapes equal outside dim \(d), got \(shapes)") }
                out = first
                out[d] = shapes.map { $0[d] }.reduce(0, +)
            }
            return try make(r, .cat(parts, dim: d, stack: op == "stack"), shape: out, inputs: parts)

        case "topk":
            let x = try nodeIndex(r.fields["x"], r, "x")
            let s = shape(x)
            guard !s.isEmpty else { throw r.error(.shapeMismatch, "x", "topk needs a tensor of rank 1 or more") }
            let d = try dim(try r.int("dim", default: -1), rank: s.count, r, "dim")
            let k = try r.int("k")
            guard k >= 0 && k <= s[d] else { throw r.error(.indexOutOfRange, "k", "k = \(k) but dimension \(d) has \(s[d]) entries") }
            var out = s
            out[d] = k
            return try make(r, .topk(x, k: k, dim: d, largest: try r.bool("largest", default: true), indices: try r.bool("indices", default: false)),
                        shape: out, inputs: [.node(x)])

        case "call":
            return try call(r)

        case "weight":
            let path = try r.string("module")
            _ = try module(path, r)
            let name = try r.string("name")
            guard let parameter = model.modules.parameter("\(path).\(name)") else {
                throw r.error(.unknownSite, "name", "\(path) has no parameter \(name)")
            }
            return CompiledNode(id: r.id, op: .weight(parameter), shape: parameter.shape, event: .start, alias: .weight, inputs: [])

        case "intervene":
            return try intervene(&r)

        case "save":
            let x = try nodeIndex(r.fields["x"], r, "x")
            let name = try r.string("name")
            guard !savedNames.contains(name) else { throw r.error(.badRequest, "name", "the name \"\(name)\" is saved twice") }
            savedNames.insert(name)
            return try make(r, .save(x, name: name), shape: shape(x), inputs: [.node(x)], alias: nodes[x].alias)

        case "backward":
            let x = try nodeIndex(r.fields["x"], r, "x")
            if let first = backwardNode {
                throw r.error(.badRequest, "op", "a trace takes one backward, and node \(nodes[first].id) is one already")
            }
            guard shape(x).reduce(1, *) == 1 else {
                throw r.error(.shapeMismatch, "x", "backward needs a scalar (one element), but node \(nodes[x].id) has shape \(shape(x)): reduce it first (sum, mean, or index one element)")
            }
            if nodes[x].inBackward {
                throw r.error(.outOfOrder, "x", "the backward's scalar depends on a gradient, which exists only once the backward runs")
            }
            guard nodes[x].event.site >= 0 else {
                throw r.error(.badRequest, "x", "node \(nodes[x].id) depends on no value of the model: there is nothing to differentiate")
            }
            backwardNode = nodes.count
            return try make(r, .backward(x), shape: nil, inputs: [.node(x)])

        case "grad", "set_grad":
            var x = try nodeIndex(r.fields["x"], r, "x")
            while case .save(let source, _) = nodes[x].op { x = source }  // save returns its value
            if nodes[x].inBackward {
                throw r.error(.badRequest, "x", "node \(nodes[x].id) is computed from a gradient: gradients of gradients are not taken")
            }
            var node: CompiledNode
            if op == "grad" {
                node = try make(r, .grad(x), shape: shape(x), inputs: [.node(x)])
            } else {
                let value = try operand(r.fields["value"], r, "value")
                guard TensorMath.broadcasts(operandShape(value), to: shape(x)) else {
                    throw r.error(.shapeMismatch, "value", "cannot set the gradient of a value of shape \(shape(x)) to one of shape \(operandShape(value))")
                }
                node = try make(r, .setGrad(x, value: value), shape: nil, inputs: [.node(x), value])
            }
            node.inBackward = true
            return node

        default:
            throw r.error(.unknownOp, "op", "unknown trace op \"\(op)\" (known: \(CompiledTrace.ops.joined(separator: ", ")))")
        }
    }

    /// The type of module `path` of the model's tree, or `unknown_site` naming the field `module`.
    private func module(_ path: String, _ r: NodeReader) throws(TraceError) -> String {
        var node = model.moduleTree
        while node.path != path {
            guard let next = node.children.first(where: { path == $0.path || path.hasPrefix($0.path + ".") }) else {
                throw r.error(.unknownSite, "module", "the model has no module \(path) (models.describe lists them)")
            }
            node = next
        }
        return node.type
    }

    private func call(_ r: NodeReader) throws(TraceError) -> CompiledNode {
        let path = try r.string("module")
        let type = try module(path, r)
        guard let call = model.modules.call(path) else {
            throw r.error(.badRequest, "module", "\(path.isEmpty ? "the root" : path) (\(type)) cannot be called in a trace")
        }
        let x = try operand(r.fields["x"], r, "x")
        let given = operandShape(x)
        guard let out = call.outputShape(given), given.reduce(1, *) > 0 else {
            throw r.error(.shapeMismatch, "x", "\(path) takes x of shape \(call.expected), got \(given)")
        }
        if case .sequence = call.input, given[1] > model.dimensions.context {
            throw r.error(.tooLarge, "x", "\(path) runs on at most the model's context of \(model.dimensions.context) positions, got \(given[1])")
        }
        return try make(r, .call(x, module: path, model: model), shape: out, inputs: [x])
    }

    private mutating func intervene(_ r: inout NodeReader) throws(TraceError) -> CompiledNode {
        let name = try r.string("name")
        guard let type = interventions.intervention(named: name) else {
            throw r.error(.unknownIntervention, "name", "no intervention named \"\(name)\" (registered: \(interventions.names.joined(separator: ", ")))")
        }
        let target = try r.int("invoke", default: trace.invocations.count == 1 ? 0 : -1)
        guard target >= 0 && target < trace.invocations.count else {
            throw r.error(target == -1 ? .badRequest : .indexOutOfRange, "invoke",
                          target == -1 ? "invoke is required when a trace has more than one invocation"
                                       : "invocation \(target) is out of range: the trace has \(trace.invocations.count)")
        }
        let params = r.fields["params"]?.mapValue ?? [:]
        if let bad = r.fields["params"], bad.mapValue == nil, !bad.isNull {
            throw r.error(.badRequest, "params", "params must be a map")
        }
        let known = Dictionary(uniqueKeysWithValues: type.parameters.map { ($0.name, $0) })
        for key in params.keys.sorted() where known[key] == nil {
            throw r.error(.badRequest, "params.\(key)", "\(name) has no parameter \"\(key)\" (it takes \(type.parameters.map(\.name).joined(separator: ", ")))")
        }
        var tensors = [String: Operand](), shapes = [String: [Int]]()
        for p in type.parameters {
            let key = "params.\(p.name)"
            guard let value = params[p.name], !value.isNull else {
                if p.required { throw r.error(.badRequest, key, "\(name) needs parameter \(p.name) (\(p.kind.rawValue))") }
                continue
            }
            let ok: Bool
            switch p.kind {
            case .int, .invoke: ok = value.intValue != nil
            case .ints: ok = value.intValue != nil || (value.arrayValue?.allSatisfy { $0.intValue != nil } ?? false)
            case .invokes: ok = value.arrayValue?.allSatisfy { $0.intValue != nil } ?? false
            case .double: ok = value.doubleValue != nil
            case .bool: ok = value.boolValue != nil
            case .string: ok = value.stringValue != nil
            case .tensor:
                let o = try operand(value, r, key)
                try checkForward(o, r, key)
                tensors[p.name] = o
                shapes[p.name] = operandShape(o)
                ok = true
            }
            guard ok else { throw r.error(.badRequest, key, "\(p.name) must be \(p.kind.rawValue), got \(value.typeName)") }
            if p.kind == .invoke, let i = value.intValue, !(i >= 0 && i < trace.invocations.count) {
                throw r.error(.indexOutOfRange, key, "invocation \(i) is out of range: the trace has \(trace.invocations.count)")
            }
            if p.kind == .invokes, let bad = value.arrayValue?.compactMap(\.intValue).first(where: { !($0 >= 0 && $0 < trace.invocations.count) }) {
                throw r.error(.indexOutOfRange, key, "invocation \(bad) is out of range: the trace has \(trace.invocations.count)")
            }
        }
        let sites = self.sites, order = self.siteOrder
        let context = InterventionContext(node: r.id, target: target, dimensions: model.dimensions,
                                          lengths: trace.invocations.map { step > 0 ? 1 : $0.count },
                                          siteInfo: { order[$0].map { sites[$0] } })
        let arguments = InterventionArguments(node: r.id, values: params, tensorShapes: shapes)
        let steps = try type.plan(arguments, context)
        let inputs = Array(tensors.values)
        let paramEvent = event(of: inputs)
        var compiled = [CompiledStep]()
        for step in steps {
            guard let o = siteOrder[step.site] else {
                let why = model.unprovided(step.site).map { ": \($0)" } ?? ""
                throw r.error(.unknownSite, "name", "\(name) acts at \(step.site), which this model does not have\(why)")
            }
            if paramEvent.site > o {
                throw r.error(.outOfOrder, "params", "\(name) writes at \(step.site) but its parameters are known only after the model has passed it")
            }
            for i in step.reads where !(i >= 0 && i < trace.invocations.count) {
                throw r.error(.indexOutOfRange, "params", "invocation \(i) is out of range: the trace has \(trace.invocations.count)")
            }
            let e = max(paramEvent, Event(site: o, invoke: ([target] + step.reads).max()!))
            compiled.append(CompiledStep(step: step, order: o, event: e, target: target))
        }
        let last = compiled.map(\.event).max() ?? paramEvent
        return CompiledNode(id: r.id, op: .intervene(compiled, tensors: tensors), shape: nil, event: last, alias: nil,
                            inputs: inputs.compactMap(\.node))
    }
}

/// Typed access to one node's fields, with errors naming the node and field.
struct NodeReader {
    let id: Int
    let position: Int
    let fields: [String: TraceValue]

    func path(_ key: String) -> String { "nodes.\(position).\(key)" }

    func error(_ code: TraceError.Code, _ key: String?, _ message: String) -> TraceError {
        TraceError(code, node: id, field: key.map(path) ?? "nodes.\(position)", message)
    }

    func string(_ key: String) throws(TraceError) -> String {
        guard let v = fields[key] else { throw error(.badRequest, key, "missing field \(key) (a string)") }
        guard let s = v.stringValue else { throw error(.badRequest, key, "\(key) must be a string, got \(v.typeName)") }
        return s
    }

    func int(_ key: String, default fallback: Int? = nil) throws(TraceError) -> Int {
        guard let v = fields[key], !v.isNull else {
            if let fallback { return fallback }
            throw error(.badRequest, key, "missing field \(key) (an integer)")
        }
        guard let i = v.intValue else { throw error(.badRequest, key, "\(key) must be an integer, got \(v.typeName)") }
        return i
    }

    func double(_ key: String) throws(TraceError) -> Double {
        guard let v = fields[key] else { throw error(.badRequest, key, "missing field \(key) (a number)") }
        guard let d = v.doubleValue else { throw error(.badRequest, key, "\(key) must be a number, got \(v.typeName)") }
        return d
    }

    func bool(_ key: String, default fallback: Bool) throws(TraceError) -> Bool {
        guard let v = fields[key], !v.isNull else { return fallback }
        guard let b = v.boolValue else { throw error(.badRequest, key, "\(key) must be a boolean, got \(v.typeName)") }
        return b
    }

    func ints(_ key: String) throws(TraceError) -> [Int] {
        guard let v = fields[key] else { throw error(.badRequest, key, "missing field \(key) (an array of integers)") }
        guard let a = v.arrayValue else { throw error(.badRequest, key, "\(key) must be an array of integers, got \(v.typeName)") }
        var out = [Int]()
        for (i, e) in a.enumerated() {
            guard let n = e.intValue else { throw error(.badRequest, "\(key).\(i)", "\(key) holds integers only") }
            out.append(n)
        }
        return out
    }
}
