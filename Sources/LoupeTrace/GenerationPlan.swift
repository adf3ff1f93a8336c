import LoupeModels
import LoupeTensor

/// A node's `steps`: the generation steps it runs at (TRACE.md, "Generation").
struct StepSet: Equatable {
    let range: Range<Int>
    /// Written as one step (an integer, or left out): its saved value is one tensor, not a list.
    let single: Bool

    static let first = StepSet(range: 0..<1, single: true)

    /// Reads node `position`'s `steps` for a generation of `maxSteps` steps (nil: a plain trace).
    static func read(_ fields: [String: TraceValue], id: Int?, position: Int, maxSteps: Int?) throws(TraceError) -> StepSet {
        let field = "nodes.\(position).steps"
        func fail(_ code: TraceError.Code, _ message: String) -> TraceError { TraceError(code, node: id, field: field, message) }
        guard let value = fields["steps"], !value.isNull else { return .first }
        let parsed: StepSet
        if let s = value.intValue {
            parsed = StepSet(range: s..<(s + 1), single: true)
        } else if value.stringValue == "all" {
            parsed = StepSet(range: 0..<(maxSteps ?? 1), single: false)
        } else if let pair = value.arrayValue, pair.count == 2, pair.allSatisfy({ $0.isNull || $0.intValue != nil }) {
            let start = pair[0].intValue ?? 0, stop = pair[1].intValue ?? maxSteps ?? 1
            guard start < stop || start < 0 || stop < 0 else { throw fail(.badRequest, "steps [\(start), \(stop)) is empty") }
            parsed = StepSet(range: min(start, stop)..<max(start, stop), single: false)
        } else {
            throw fail(.badRequest, "steps is a step number, [start, stop] (either may be nil) or \"all\", got \(value.typeName)")
        }
        guard let maxSteps else {
            guard parsed == .first else {
                throw fail(.badRequest, "steps other than 0 need a generation: add a generate section to the trace")
            }
            return parsed
        }
        guard parsed.range.lowerBound >= 0, parsed.range.upperBound <= maxSteps else {
            throw fail(.indexOutOfRange, "steps \(parsed.range.lowerBound)..<\(parsed.range.upperBound) reach past the \(maxSteps) steps of max_new_tokens (steps count from 0)")
        }
        return parsed
    }

    /// A trace without `generate` takes only step 0.
    static func checkPlain(_ trace: Trace) throws(TraceError) {
        for (position, node) in trace.nodes.enumerated() {
            guard let fields = node.mapValue else { continue }
            _ = try read(fields, id: fields["id"]?.intValue, position: position, maxSteps: nil)
        }
    }
}

/// A trace's `generate` section (PROTOCOL.md, "trace"), read into the engine's settings.
public struct GenerateRequest: Sendable {
    public let settings: GenerationSettings

    /// `eos`: the model's end-of-sequence ids, used unless the request says `eos: false`.
    public init(_ value: TraceValue, eos: [Int], vocabulary: Int) throws(TraceError) {
        guard let fields = value.mapValue else {
            throw TraceError(.badRequest, field: "generate", "generate is a map {max_new_tokens, ...}, got \(value.typeName)")
        }
        let known: Set<String> = ["max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "seed", "eos", "stop_tokens"]
        if let unknown = fields.keys.sorted().first(where: { !known.contains($0) }) {
            throw TraceError(.badRequest, field: "generate.\(unknown)", "generate has no field \(unknown) (it takes \(known.sorted().joined(separator: ", ")))")
        }
        func fail(_ key: String, _ message: String) -> TraceError { TraceError(.badRequest, field: "generate.\(key)", message) }
        func present(_ key: String) -> TraceValue? { fields[key].flatMap { $0.isNull ? nil : $0 } }
        func int(_ key: String, _ fallback: Int?) throws(TraceError) -> Int {
            guard let v = present(key) else {
                if let fallback { return fallback }
                throw fail(key, "missing field \(key) (an integer)")
            }
            guard let i = v.intValue else { throw fail(key, "\(key) must be an integer, got \(v.typeName)") }
            return i
        }
        func number(_ key: String, _ fallback: Double) throws(TraceError) -> Double {
            guard let v = present(key) else { return fallback }
            guard let d = v.doubleValue, d.isFinite else { throw fail(key, "\(key) must be a number, got \(v.typeName)") }
            return d
        }
        func bool(_ key: String, _ fallback: Bool) throws(TraceError) -> Bool {
            guard let v = present(key) else { return fallback }
            guard let b = v.boolValue else { throw fail(key, "\(key) must be a boolean, got \(v.typeName)") }
            return b
        }
        let maxNewTokens = try int("max_new_tokens", nil)
        guard maxNewTokens >= 1 else { throw fail("max_new_tokens", "max_new_tokens must be at least 1, got \(maxNewTokens)") }
        let temperature = try number("temperature", 1), topK = try int("top_k", 50), topP = try number("top_p", 1)
        guard temperature > 0 else { throw fail("temperature", "temperature must be above 0, got \(temperature)") }
        guard topK >= 0 else { throw fail("top_k", "top_k must be 0 (off) or more, got \(topK)") }
        guard topP > 0 && topP <= 1 else { throw fail("top_p", "top_p must be in (0, 1], got \(topP)") }
        let seed = try int("seed", 0)
        var stops = Set<Int>()
        if let list = present("stop_tokens") {
            guard let items = list.arrayValue else { throw fail("stop_tokens", "stop_tokens must be an array of token ids") }
            for (i, item) in items.enumerated() {
                guard let id = item.intValue else { throw fail("stop_tokens.\(i)", "token ids are integers, got \(item.typeName)") }
                guard id >= 0 && id < vocabulary else {
                    throw TraceError(.indexOutOfRange, field: "generate.stop_tokens.\(i)", "token id \(id) is outside the vocabulary of \(vocabulary)")
                }
                stops.insert(id)
            }
        }
        let sampling = try bool("do_sample", false) ? Sampling(temperature: Float(temperature), topK: topK, topP: topP, seed: seed) : nil
        settings = GenerationSettings(maxNewTokens: maxNewTokens, sampling: sampling, eos: try bool("eos", true) ? Set(eos) : [],
                                      stopTokens: stops)
    }
}

/// A generation trace checked against a model: which nodes run at which steps, and the
/// trace each step compiles to. Step s runs the nodes whose `steps` hold s; a value one of
/// them reads from an earlier step enters as a constant; nodes that depend on no site run
/// wherever they are read.
public struct GenerationPlan {
    let trace: Trace
    public let settings: GenerationSettings
    let steps: [StepSet]
    /// Per node: the indices of the nodes it reads, and whether it depends on no site.
    let reads: [[Int]]
    let independent: [Bool]
    /// Ids for the saves that keep values for later steps, past every node id.
    let spareID: Int
    /// A bound on the bytes the saved values take as float32: each save's value at its
    /// first step, and at its last (the largest of the later ones: only the pattern's keys
    /// grow) for each of the others.
    public internal(set) var savedBytes = 0

    static let siteOps: Set<String> = ["get", "set", "intervene"]
    static let backwardOps: Set<String> = ["backward", "grad", "set_grad"]
    static let carryPrefix = "\u{0}carry."

    var nodeCount: Int { trace.nodes.count }
    public var invocations: Int { trace.invocations.count }

    /// Nodes running at step s.
    func active(_ n: Int, _ s: Int) -> Bool { steps[n].range.contains(s) }
}

/// What a generation trace returns.
public struct GenerationTraceResult: @unchecked Sendable {
    /// Per save name: its value at each step it ran, in step order.
    public let saved: [String: [Tensor]]
    public let savedSteps: [String: [Int]]
    /// Names whose node runs at one step written as one (`steps` an integer or left out): the
    /// reply holds that tensor, not a list.
    public let single: Set<String>
    public let names: [String]
    /// Passes run.
    public let steps: Int
    /// New ids per invocation, and the prompt followed by them.
    public let tokens: [[Int]]
    public let output: [[Int]]
    public let finish: [FinishReason]
}

extension TraceRunner {
    /// Checks a generation trace: its `steps`, the references between steps, and every step's
    /// nodes against the model as they run at their first and last steps.
    public func compileGeneration(_ trace: Trace, settings: GenerationSettings) throws(TraceError) -> GenerationPlan {
        try Compiler.checkInvocations(trace.invocations, model.dimensions)
        let longest = trace.invocations.map(\.count).max() ?? 0
        if longest + settings.maxNewTokens > model.dimensions.context {
            throw TraceError(.tooLarge, field: "generate.max_new_tokens",
                             "the longest prompt (\(longest) tokens) and \(settings.maxNewTokens) new tokens pass the model's context of \(model.dimensions.context)")
        }
        var steps = [StepSet](), reads = [[Int]](), independent = [Bool](), indexOf = [Int: Int](), spare = 0
        for (n, node) in trace.nodes.enumerated() {
            let fields = node.mapValue ?? [:]
            let id = fields["id"]?.intValue
            let op = fields["op"]?.stringValue ?? ""
            if GenerationPlan.backwardOps.contains(op) {
                throw TraceError(.badRequest, node: id, field: "nodes.\(n).op", "\(op) is not available in a generation trace")
            }
            let mine = try StepSet.read(fields, id: id, position: n, maxSteps: settings.maxNewTokens)
            let inputs = fields.filter { $0.key != "id" }.values.flatMap(Self.references).compactMap { indexOf[$0] }
            for m in inputs where !independent[m] && steps[m] != mine {
                let other = steps[m].range
                guard other.count == 1, other.lowerBound <= mine.range.lowerBound else {
                    throw TraceError(.outOfOrder, node: id, field: "nodes.\(n).steps",
                                     "node \(id ?? n) runs at steps \(mine.range.lowerBound)..<\(mine.range.upperBound) but reads node \(trace.nodes[m]["id"]?.intValue ?? m), which runs at steps \(other.lowerBound)..<\(other.upperBound): a node reads nodes of its own steps, or of one step at or before its first")
                }
            }
            steps.append(mine)
            reads.append(inputs)
            independent.append(!GenerationPlan.siteOps.contains(op) && inputs.allSatisfy { independent[$0] })
            if let id { indexOf[id] = n; spare = max(spare, id + 1) }
        }
        var plan = GenerationPlan(trace: trace, settings: settings, steps: steps, reads: reads, independent: independent, spareID: spare)
        // Every step's nodes with the shapes of their first and last steps (only the pattern's
        // keys grow in between); values kept from earlier steps stand in as zeros of their shape.
        var checkpoints = Set([0])
        for s in steps { checkpoints.formUnion([s.range.lowerBound, s.range.upperBound - 1]) }
        var shapes = [Int: [Int]]()
        for s in checkpoints.sorted() {
            let (sub, positions) = plan.trace(at: s) { m in
                .map(["id": .int(trace.nodes[m]["id"]?.intValue ?? m), "op": .string("full"),
                      "shape": .array((shapes[m] ?? []).map { .int($0) }), "value": .int(0)])
            }
            let compiled = try plan.mapErrors(positions) { () throws(TraceError) in try compile(sub, step: s) }
            for (k, n) in positions.enumerated() where n >= 0 {
                let range = plan.steps[n].range, shape = compiled.nodes[k].shape ?? []
                if range.lowerBound == s { shapes[n] = shape }
                guard trace.nodes[n]["op"]?.stringValue == "save" else { continue }
                let bytes = 4 * shape.reduce(1, *)
                if range.lowerBound == s { plan.savedBytes += bytes }
                if range.upperBound - 1 == s, range.count > 1 { plan.savedBytes += bytes * (range.count - 1) }
            }
        }
        return plan
    }

    /// Runs a generation trace; `onStep` sees every step's choices as they are made (the
    /// generation's `tokens` hold every row's so far).
    public func generate(_ plan: GenerationPlan, cancelled: CancellationCheck? = nil,
                         onStep: (_ step: Int, _ chosen: [Int?], _ generation: Generation) throws -> Void = { _, _, _ in })
        throws -> GenerationTraceResult {
        let generation: Generation
        do { generation = try Generation(model: model, prompts: plan.trace.invocations, settings: plan.settings) } catch let error as ModelError {
            throw TraceError(.tooLarge, field: "generate.max_new_tokens", error.description)
        }
        var kept = [Int: Tensor]()
        var saved = [String: [Tensor]](), savedSteps = [String: [Int]](), names = [String](), single = Set<String>()
        for (n, node) in plan.trace.nodes.enumerated() where node["op"]?.stringValue == "save" {
            guard let name = node["name"]?.stringValue else { continue }
            names.append(name)
            if plan.steps[n].single { single.insert(name) }
        }
        while !generation.isDone {
            let s = generation.step
            let (sub, positions) = plan.trace(at: s) { m in
                .map(["id": .int(plan.trace.nodes[m]["id"]?.intValue ?? m), "op": .string("constant"), "value": .tensor(kept[m]!)])
            }
            let compiled = try plan.mapErrors(positions) { () throws(TraceError) in try compile(sub, step: s) }
            let hooks = TraceHooks(compiled, batch: generation.batch, rows: Array(plan.trace.invocations.indices), shareRows: false)
            hooks.step = s
            try hooks.runStart()
            let idle = compiled.tasks.isEmpty
            let out = try generation.next(hooks: idle ? nil : hooks, logits: compiled.logits == .all ? .all : .last, cancelled: cancelled)
            let result = hooks.result((0, 0))
            for (name, value) in result.saved {
                if name.hasPrefix(GenerationPlan.carryPrefix) {
                    kept[Int(name.dropFirst(GenerationPlan.carryPrefix.count))!] = value
                } else {
                    saved[name, default: []].append(value)
                    savedSteps[name, default: []].append(s)
                }
            }
            try onStep(s, out.chosen, generation)
        }
        return GenerationTraceResult(saved: saved, savedSteps: savedSteps, single: single, names: names, steps: generation.step,
                                     tokens: generation.tokens,
                                     output: zip(plan.trace.invocations, generation.tokens).map { $0 + $1 },
                                     finish: generation.finish.map { $0 ?? .length })
    }

    /// Node ids that `value` references (`{ref: n}`), at any depth.
    static func references(_ value: TraceValue) -> [Int] {
        if let id = value.reference { return [id] }
        switch value {
        case .map(let fields): return fields.values.flatMap(references)
        case .array(let items): return items.flatMap(references)
        default: return []
        }
    }
}

extension GenerationPlan {
    /// The trace step s runs: its nodes, the nodes without sites they read, and, made by
    /// `carried`, the values they read from earlier steps; then a save of each value a later
    /// step reads. `positions` maps its nodes to the request's (-1 for those saves).
    func trace(at s: Int, carried: (Int) -> TraceValue) -> (Trace, positions: [Int]) {
        var included = [Bool](repeating: false, count: nodeCount), asConstant = [Bool](repeating: false, count: nodeCount)
        for n in (0..<nodeCount).reversed() where active(n, s) || included[n] {
            included[n] = true
            for m in reads[n] {
                if active(m, s) || independent[m] { included[m] = true } else { asConstant[m] = true }
            }
        }
        var nodes = [TraceValue](), positions = [Int]()
        for n in 0..<nodeCount where included[n] || asConstant[n] {
            nodes.append(included[n] ? trace.nodes[n] : carried(n))
            positions.append(n)
        }
        // Values of this step that a later step reads.
        var keep = Set<Int>()
        for n in 0..<nodeCount where steps[n].range.upperBound - 1 > s {
            for m in reads[n] where active(m, s) && !independent[m] && steps[m].range.count == 1 { keep.insert(m) }
        }
        for (k, m) in keep.sorted().enumerated() {
            nodes.append(.map(["id": .int(spareID + k), "op": .string("save"), "x": .map(["ref": trace.nodes[m]["id"] ?? .int(m)]),
                               "name": .string(GenerationPlan.carryPrefix + "\(m)")]))
            positions.append(-1)
        }
        return (Trace(invocations: trace.invocations, nodes: nodes), positions)
    }

    /// Runs `body`, naming the request's nodes in its errors instead of the step trace's.
    func mapErrors<T>(_ positions: [Int], _ body: () throws(TraceError) -> T) throws(TraceError) -> T {
        do { return try body() } catch {
            guard let field = error.field, field.hasPrefix("nodes.") else { throw error }
            let rest = field.dropFirst("nodes.".count)
            let digits = rest.prefix { $0.isNumber }
            guard let k = Int(digits), k < positions.count, positions[k] >= 0 else { throw error }
            throw TraceError(error.code, node: error.node, field: "nodes.\(positions[k])" + rest.dropFirst(digits.count), error.message)
        }
    }
}
