import Foundation
import LoupeModels
import LoupeTensor

/// Runs traces on one model: validates them against its sites, then runs every
/// invocation as one left-padded batch in one forward pass, evaluating each node when the
/// pass reaches the site it depends on.
public final class TraceRunner: @unchecked Sendable {
    public let model: any LanguageModel
    public let sites: [SiteInfo]
    public let interventions: InterventionRegistry
    let siteOrder: [Site: Int]
    /// The stage each site fires in: -1 before the first layer, a layer, or the layer count after the last.
    let siteStage: [Int]

    /// `sites`: the model's `discoverSites()`, if the caller keeps them (found here otherwise).
    public init(model: any LanguageModel, sites: [SiteInfo]? = nil, interventions: InterventionRegistry = InterventionRegistry()) throws {
        self.model = model
        self.sites = try sites ?? model.discoverSites()
        self.interventions = interventions
        var order = [Site: Int]()
        for (i, info) in self.sites.enumerated() where order[Site(info.site, info.io)] == nil {
            order[Site(info.site, info.io)] = i
        }
        self.siteOrder = order
        // A site belongs to the layer its module path numbers (transformer.h.3..., model.layers.3...,
        // blocks.3...); sites without a number sit before the first layer or after the last.
        var stages = [Int](), seenLayer = false
        let layers = model.dimensions.layers
        for info in self.sites {
            if let number = info.site.split(separator: ".").lazy.compactMap({ Int($0) }).first {
                stages.append(number)
                seenLayer = true
            } else {
                stages.append(seenLayer ? layers : -1)
            }
        }
        self.siteStage = stages
    }

    /// Checks a trace and plans its execution; throws the first error, naming its node.
    public func compile(_ trace: Trace) throws(TraceError) -> CompiledTrace {
        try StepSet.checkPlain(trace)
        return try compile(trace, step: 0)
    }

    /// The trace as it runs at generation step `step` (GenerationPlan).
    func compile(_ trace: Trace, step: Int) throws(TraceError) -> CompiledTrace {
        try Compiler.checkInvocations(trace.invocations, model.dimensions)
        var compiler = Compiler(model: model, sites: sites, siteOrder: siteOrder, interventions: interventions, trace: trace, mode: .all)
        compiler.step = step
        var nodes = try compiler.compile()
        let mode = logitMode(nodes)
        if mode == .last {
            var again = Compiler(model: model, sites: sites, siteOrder: siteOrder, interventions: interventions, trace: trace, mode: .last)
            again.step = step
            nodes = try again.compile()
        }
        return try schedule(nodes, trace: trace, mode: mode)
    }

    /// Validates and runs a trace.
    public func run(_ trace: Trace, cancelled: CancellationCheck? = nil) throws -> TraceResult {
        try run(try compile(trace), cancelled: cancelled)
    }

    /// Runs a compiled trace. With `shareRows` (the default), invocations with the same
    /// tokens share one row of the batch until the first layer where something writes one
    /// of them; the numbers are those of the plain batch, where every invocation has its own
    /// row (`shareRows: false`). A trace with a backward runs its forward pass under a
    /// gradient tape, with a row per invocation (each gets a gradient of its own), then the
    /// backward, which runs the nodes that need gradients on its way.
    public func run(_ compiled: CompiledTrace, cancelled: CancellationCheck? = nil, shareRows: Bool = true) throws -> TraceResult {
        guard compiled.backward != nil else {
            let (hooks, work) = try forward(compiled, cancelled: cancelled, shareRows: shareRows)
            return hooks.result(work)
        }
        let tape = GradientTape()
        let (hooks, work) = try tape.recording { try forward(compiled, cancelled: cancelled, shareRows: false) }
        try hooks.runBackward(tape)
        return hooks.result(work, backward: BackwardStats(savedBytes: tape.savedBytes, peakBytes: tape.peakBytes, records: tape.recordCount,
                                                          boundBytes: compiled.backwardBytes ?? 0))
    }

    /// The forward pass: its hooks (holding the values) and the token-layers it computed.
    private func forward(_ compiled: CompiledTrace, cancelled: CancellationCheck?, shareRows: Bool) throws
        -> (TraceHooks, (tokenLayers: Int, plainTokenLayers: Int)) {
        let invocations = compiled.invocations
        try model.validate(TokenBatch(invocations))
        let diverges = shareRows ? compiled.diverges : Array(repeating: -1, count: invocations.count)
        // The rows before the embedding: one per invocation written from the start, one per
        // set of equal token lists for the rest.
        var rowOf = [Int](repeating: -1, count: invocations.count)
        var rowTokens = [[Int]]()
        var shared = [[Int]: Int]()
        for (i, tokens) in invocations.enumerated() {
            if diverges[i] <= -1 {
                rowOf[i] = rowTokens.count
                rowTokens.append(tokens)
            } else if let row = shared[tokens] {
                rowOf[i] = row
            } else {
                shared[tokens] = rowTokens.count
                rowOf[i] = rowTokens.count
                rowTokens.append(tokens)
            }
        }
        let hooks = TraceHooks(compiled, batch: TokenBatch(rowTokens), rows: rowOf, shareRows: shareRows)
        try hooks.runStart()
        let layers = model.dimensions.layers
        var pass = ForwardPass(batch: TokenBatch(rowTokens), hooks: hooks, cancelled: cancelled)
        var x = try model.embed(pass)
        var tokenLayers = 0
        for stage in 0...layers {
            // Invocations written from this stage on get rows of their own.
            let splitting = invocations.indices.filter { diverges[$0] == stage }
            if !splitting.isEmpty {
                var sources = [Int](), newRowOf = rowOf, newTokens = [[Int]]()
                for row in rowTokens.indices {
                    let members = invocations.indices.filter { rowOf[$0] == row }
                    let staying = members.filter { diverges[$0] != stage }
                    let leaving = members.filter { diverges[$0] == stage }
                    var owners = leaving.map { [$0] }
                    if !staying.isEmpty { owners.insert(staying, at: 0) }
                    for group in owners {
                        for i in group { newRowOf[i] = newTokens.count }
                        sources.append(row)
                        newTokens.append(rowTokens[row])
                    }
                }
                if sources != Array(rowTokens.indices) {
                    x = Self.gatherRows(x.contiguous(), sources, length: pass.keyCount)
                }
                rowOf = newRowOf
                rowTokens = newTokens
                pass = ForwardPass(batch: TokenBatch(rowTokens), hooks: hooks, cancelled: cancelled)
                hooks.update(batch: TokenBatch(rowTokens), rows: rowOf)
            }
            if stage < layers {
                try pass.checkCancelled()
                // The backward passes here once it is done with the layer: a cancelled job stops there too.
                GradientTape.current?.mark { [pass] in try pass.checkCancelled() }
                x = try model.layer(stage, x, pass)
                tokenLayers += rowTokens.count * pass.keyCount
            }
        }
        let rows: LogitRows = compiled.logits == .all ? .all : compiled.logits == .last ? .last : .none
        _ = try model.unembed(try model.finalNorm(x, pass), rows, pass)
        return (hooks, (tokenLayers, invocations.count * pass.keyCount * layers))
    }

    /// Rows `sources` of hidden states [rows · length, hidden], in that order.
    static func gatherRows(_ x: Tensor, _ sources: [Int], length: Int) -> Tensor {
        let out = Tensor(zeros: [sources.count * length, x.columnCount])
        for (k, row) in sources.enumerated() {
            out.slice(axis: 0, (k * length)..<((k + 1) * length)).assign(from: x.slice(axis: 0, (row * length)..<((row + 1) * length)))
        }
        return out
    }

    /// Logits only where they are read: none when no node touches the unembedding; only the
    /// last position when every read of it indexes position -1 and nothing writes it.
    private func logitMode(_ nodes: [CompiledNode]) -> LogitMode {
        var heads = Set<Int>()
        for (i, node) in nodes.enumerated() {
            switch node.op {
            case .get(let ref) where Compiler.headSites.contains(ref.site): heads.insert(i)
            case .set(let ref, _) where Compiler.headSites.contains(ref.site): return .all
            case .intervene(let steps, _) where steps.contains(where: { Compiler.headSites.contains($0.step.site) }): return .all
            default: break
            }
        }
        if heads.isEmpty { return .none }
        for node in nodes where !heads.isDisjoint(with: node.inputs) {
            guard case .index(let x, _, let raw) = node.op, heads.contains(x), node.inputs == [x], raw.count >= 2,
                  raw[1] == .int(-1) else { return .all }
            switch raw[0] {
            case .int, .slice: continue
            default: return .all
            }
        }
        return .last
    }

    private func schedule(_ nodes: [CompiledNode], trace: Trace, mode: LogitMode) throws(TraceError) -> CompiledTrace {
        var keyed = [Int: [(key: (Int, Int, Int), task: CompiledTrace.Task)]]()
        var start = [CompiledTrace.Task]()
        var lastUse = [Int](repeating: -1, count: nodes.count)
        var backward: Int?
        for (i, node) in nodes.enumerated() {
            if node.inBackward {
                // Runs during the backward: what it reads of the forward pass is kept to the end.
                // A gradient's own target is not read: its probe sees the value where it flows.
                var reads = node.inputs
                if case .grad = node.op { reads = [] }
                if case .setGrad(_, let value) = node.op { reads = value.node.map { [$0] } ?? [] }
                for n in reads where !nodes[n].inBackward { lastUse[n] = Int.max }
                continue
            }
            switch node.op {
            case .backward(let x):
                backward = i
                lastUse[x] = Int.max
            case .intervene(let steps, _):
                for (s, step) in steps.enumerated() {
                    keyed[step.order, default: []].append(((step.event.invoke, i, s), .step(node: i, step: s)))
                    for n in node.inputs { lastUse[n] = max(lastUse[n], step.order) }
                }
            default:
                if node.event.site < 0 {
                    start.append(.node(i))
                } else {
                    keyed[node.event.site, default: []].append(((node.event.invoke, i, 0), .node(i)))
                }
                for n in node.inputs { lastUse[n] = max(lastUse[n], node.event.site) }
            }
            if case .save = node.op { lastUse[i] = Int.max }
        }
        var tasks = keyed.mapValues { list in list.sorted { $0.key < $1.key }.map(\.task) }
        let probes = try placeProbes(nodes, tasks: &tasks, start: &start)
        // Writes that copy positions between invocations whose tokens agree up to there.
        var candidates = [Int: (source: Int, target: Int, order: Int)]()
        for (i, node) in nodes.enumerated() {
            if let found = noOpCandidate(node, nodes, trace: trace, mode: mode) { candidates[i] = found }
        }
        // The first site each invocation's values are written at, other writes aside.
        var firstWrite = [Int](repeating: Int.max, count: trace.invocations.count)
        func write(_ invoke: Int, _ order: Int) { firstWrite[invoke] = min(firstWrite[invoke], order) }
        for (i, node) in nodes.enumerated() where candidates[i] == nil {
            switch node.op {
            case .set(let ref, _): write(ref.invoke, ref.order)
            case .setIndex: if let alias = node.alias { write(alias.invoke, alias.order) }
            case .intervene(let steps, _): for step in steps { write(step.target, step.order) }
            default: break
            }
        }
        // A candidate is a no-op when neither invocation was written before or at its site.
        // Rejecting one makes it a write, which may reject others: repeat until nothing changes.
        var noOps = Set(candidates.keys)
        var changed = true
        while changed {
            changed = false
            for (i, c) in candidates.sorted(by: { $0.key < $1.key }) where noOps.contains(i) {
                if !(firstWrite[c.source] > c.order && firstWrite[c.target] > c.order) {
                    noOps.remove(i)
                    write(c.target, c.order)
                    changed = true
                }
            }
        }
        let diverges = firstWrite.map { $0 == Int.max ? Int.max : siteStage[$0] }
        let rows = trace.invocations.count, length = trace.invocations.map(\.count).max() ?? 0
        return CompiledTrace(invocations: trace.invocations, nodes: nodes, logits: mode, tasks: tasks, startTasks: start,
                             sites: sites, lastUse: lastUse, diverges: diverges, noOpWrites: noOps,
                             backward: backward, probes: probes,
                             backwardBytes: backward.map { _ in backwardBytes(nodes, rows: rows, length: length, mode: mode) })
    }

    /// Places a probe in the forward pass for every value whose gradient a node reads or
    /// replaces, and gives each backward node the probe it runs at: the one, of those whose
    /// gradients it needs, that the backward reaches last (the earliest in the forward pass).
    private func placeProbes(_ nodes: [CompiledNode], tasks: inout [Int: [CompiledTrace.Task]],
                             start: inout [CompiledTrace.Task]) throws(TraceError) -> [Probe] {
        func target(_ x: Int) -> ProbeTarget {
            switch nodes[x].op {
            case .get(let ref), .set(let ref, _): return .site(order: ref.order, invoke: ref.invoke)
            default: return .node(x)
            }
        }
        var probes = [Probe](), probeOf = [ProbeTarget: Int]()
        var before = [Int: [(position: Int, probe: Int)]]()  // task list (-1: before the pass) -> probes to insert
        for node in nodes {
            guard let x = node.op.gradientOf, probeOf[target(x)] == nil else { continue }
            let t = target(x)
            switch t {
            case .site(let order, let invoke):
                // As the pass leaves the site: after the last write into this invocation's value there.
                let last = tasks[order]!.lastIndex { writes($0, order: order, invoke: invoke, nodes) }
                before[order, default: []].append((last.map { $0 + 1 } ?? 0, probes.count))
            case .node(let n):
                // Where the node computed its value.
                let list = nodes[n].event.site
                let position = (list < 0 ? start : tasks[list]!).firstIndex { if case .node(n) = $0 { return true }; return false }!
                before[list, default: []].append((position + 1, probes.count))
            }
            probeOf[t] = probes.count
            probes.append(Probe(target: t))
        }
        func inserting(_ list: [CompiledTrace.Task], _ at: [(position: Int, probe: Int)]) -> [CompiledTrace.Task] {
            var out = [CompiledTrace.Task]()
            for position in 0...list.count {
                out += at.filter { $0.position == position }.map { .probe($0.probe) }
                if position < list.count { out.append(list[position]) }
            }
            return out
        }
        for (list, at) in before {
            if list < 0 { start = inserting(start, at) } else { tasks[list] = inserting(tasks[list]!, at) }
        }
        // The forward order of the probes; the backward meets them in reverse.
        var sequence = [Int](repeating: 0, count: probes.count), count = 0
        for list in [start] + tasks.keys.sorted().map({ tasks[$0]! }) {
            for task in list {
                if case .probe(let p) = task { sequence[p] = count }
                count += 1
            }
        }
        var runsAt = [Int?](repeating: nil, count: nodes.count)
        for (i, node) in nodes.enumerated() where node.inBackward {
            let at = node.op.gradientOf.map { probeOf[target($0)]! }
                ?? node.inputs.compactMap { runsAt[$0] }.min { sequence[$0] < sequence[$1] }!
            if case .setGrad(let x, .node(let v)) = node.op, let needed = runsAt[v], sequence[needed] < sequence[at] {
                throw TraceError(.outOfOrder, node: node.id, field: "nodes.\(i).value",
                                 "the value needs a gradient the backward reaches only after it has passed node \(nodes[x].id)'s value (gradients flow from the last site to the first)")
            }
            runsAt[i] = at
            probes[at].nodes.append(i)
        }
        return probes
    }

    /// True when `task` writes invocation `invoke`'s value at site `order`.
    private func writes(_ task: CompiledTrace.Task, order: Int, invoke: Int, _ nodes: [CompiledNode]) -> Bool {
        switch task {
        case .node(let n):
            if case .set(let ref, _) = nodes[n].op { return ref.order == order && ref.invoke == invoke }
            if case .setIndex = nodes[n].op, let alias = nodes[n].alias { return alias.order == order && alias.invoke == invoke }
            return false
        case .step(let n, let s):
            guard case .intervene(let steps, _) = nodes[n].op else { return false }
            return steps[s].order == order && steps[s].target == invoke
        case .probe:
            return false
        }
    }

    /// An upper bound on the bytes a backward of this trace holds at once: the model's
    /// (`ModelDimensions.backwardBytes`, every invocation in a row of its own) and the trace's
    /// own ops on the model's values, each of which saves at most its operands and three times
    /// its result, and gets a gradient of its result's size.
    private func backwardBytes(_ nodes: [CompiledNode], rows: Int, length: Int, mode: LogitMode) -> Int {
        let logitRows = mode == .all ? rows * length : mode == .last ? rows : 0
        var floats = 0
        for node in nodes where node.event.site >= 0 && node.alias == nil && !node.inBackward {
            guard let shape = node.shape else { continue }
            floats += 4 * shape.reduce(1, *) + node.inputs.reduce(0) { $0 + (nodes[$1].shape ?? []).reduce(1, *) }
            if case .call(let x, _, _) = node.op {
                // A module call holds at most what one layer does on its rows.
                var layer = model.dimensions
                layer.layers = 1
                let given = x.node.flatMap { nodes[$0].shape } ?? shape
                let (rows, length) = given.count == 3 ? (given[0], given[1]) : (given.dropLast().reduce(1, *), 1)
                floats += layer.backwardBytes(rows: rows, length: length, logitRows: 0) / 4
            }
        }
        return model.dimensions.backwardBytes(rows: rows, length: length, logitRows: logitRows) + 4 * floats
    }

    /// `get(S, k)[key] = get(S, j)[key]`, with the key picking only positions before the
    /// first token where invocations j and k differ.
    private func noOpCandidate(_ node: CompiledNode, _ nodes: [CompiledNode], trace: Trace, mode: LogitMode)
        -> (source: Int, target: Int, order: Int)? {
        guard case .setIndex(let x, let key, .node(let v)) = node.op, case .get(let target) = nodes[x].op,
              case .index(let g, let sourceKey, _) = nodes[v].op, case .get(let source) = nodes[g].op,
              source.order == target.order, source.invoke != target.invoke, key.isView, sourceKey.steps == key.steps,
              nodes[x].shape == nodes[g].shape, !Compiler.headSites.contains(target.site) else { return nil }
        let (a, b) = (trace.invocations[source.invoke], trace.invocations[target.invoke])
        var prefix = 0
        while prefix < min(a.count, b.count) && a[prefix] == b[prefix] { prefix += 1 }
        // The highest position the key touches on each sequence axis.
        var axis = 0
        for step in key.steps {
            if case .newAxis = step { continue }
            if target.info.shape[axis] == SiteInfo.sequenceDim {
                let highest: Int
                switch step {
                case .select(let i): highest = i
                case .range(let start, let count, let by): highest = count == 0 ? -1 : start + (count - 1) * by
                case .list(let entries): highest = entries.max() ?? -1
                case .newAxis: highest = -1
                }
                if highest >= prefix { return nil }
            }
            axis += 1
        }
        // Axes the key leaves whole.
        for rest in axis..<target.info.shape.count where target.info.shape[rest] == SiteInfo.sequenceDim {
            if trace.invocations[target.invoke].count > prefix { return nil }
        }
        return (source.invoke, target.invoke, target.order)
    }
}

/// The hooks of one trace run.
final class TraceHooks: ForwardHooks {
    let plan: CompiledTrace
    private(set) var batch: TokenBatch
    /// The batch row each invocation's values live in (invocations share rows while equal).
    private(set) var rows: [Int]
    private var values: [Tensor?]
    private var wanted: Set<Site> = []
    private let orderOf: [Site: Int]

    /// False for the plain batch (a row per invocation), which runs every write.
    let shareRows: Bool
    /// The generation step the pass runs (0 in a plain trace): its attention keys are
    /// `batch.length + step` slots.
    var step = 0
    /// During a backward: the node whose ops the backward is passing through, if any.
    private var failing: Int?

    init(_ plan: CompiledTrace, batch: TokenBatch, rows: [Int], shareRows: Bool) {
        self.plan = plan
        self.shareRows = shareRows
        self.batch = batch
        self.rows = rows
        self.values = Array(repeating: nil, count: plan.nodes.count)
        var orderOf = [Site: Int]()
        for order in plan.tasks.keys {
            let info = plan.sites[order]
            orderOf[Site(info.site, info.io)] = order
        }
        self.orderOf = orderOf
        self.wanted = Set(orderOf.keys)
    }

    func wants(_ site: Site) -> Bool { wanted.contains(site) }

    func update(batch: TokenBatch, rows: [Int]) {
        self.batch = batch
        self.rows = rows
    }

    func runStart() throws {
        let frame = Frame(seen: nil, info: nil, batch: batch, rows: rows, slots: batch.length + step)
        for task in plan.startTasks { try run(task, frame) }
    }

    func visit(_ site: Site, _ value: inout Tensor) throws {
        guard let order = orderOf[site], let tasks = plan.tasks[order] else { return }
        let frame = Frame(seen: value, info: plan.sites[order], batch: batch, rows: rows, slots: batch.length + step)
        for task in tasks { try run(task, frame) }
        keepPastSite(order, storage: value.storage)
    }

    func result(_ work: (tokenLayers: Int, plainTokenLayers: Int), backward: BackwardStats? = nil) -> TraceResult {
        var saved = [String: Tensor](), names = [String]()
        for (i, node) in plan.nodes.enumerated() {
            if case .save(_, let name) = node.op, let value = values[i] {
                saved[name] = value.copy()
                names.append(name)
            }
        }
        return TraceResult(saved: saved, names: names, logits: plan.logits, slots: plan.invocations.count * batch.length,
                           rows: batch.rows, tokenLayers: work.tokenLayers, plainTokenLayers: work.plainTokenLayers,
                           backward: backward)
    }

    /// Sends the gradient of the `backward` node's scalar back through the pass; the probes
    /// run the nodes that need gradients on the way. A record that refuses a gradient (topk's
    /// values, an intervention's closure) fails naming the node whose op made it.
    func runBackward(_ tape: GradientTape) throws {
        guard let b = plan.backward, case .backward(let x) = plan.nodes[b].op else { return }
        let scalar = values[x]!
        guard tape.isTracked(scalar) else {
            throw TraceError(.badRequest, node: plan.nodes[b].id, field: "nodes.\(b).x",
                             "node \(plan.nodes[x].id) does not depend on the model's activations (an argmax, say): there is nothing to differentiate")
        }
        do {
            try tape.backward(from: scalar, seed: Tensor(shape: scalar.shape, values: [1]))
        } catch let error as GradientError {
            let n = failing ?? b
            throw TraceError(.badRequest, node: plan.nodes[n].id, field: "nodes.\(n).op", "the backward cannot pass through node \(plan.nodes[n].id): \(error)")
        }
    }

    /// What runs where the backward reaches probe `p`: its nodes, in trace order, with the
    /// gradient flowing through `view` at that point.
    private func reach(_ p: Int, _ view: GradientView, _ gradients: Gradients) throws {
        let frame = Frame(seen: nil, info: nil, batch: batch, rows: rows, slots: batch.length + step)
        for n in plan.probes[p].nodes {
            let node = plan.nodes[n]
            switch node.op {
            case .grad(let x):
                guard let flowing = gradients.of(view) else {
                    let b = plan.backward!
                    throw TraceError(.badRequest, node: node.id, field: "nodes.\(n).x",
                                     "no gradient reaches node \(plan.nodes[x].id): the scalar of the backward (node \(plan.nodes[b].id)) does not depend on it")
                }
                values[n] = flowing.copy()  // the buffer goes on changing as the backward goes on
            case .setGrad(_, let value):
                let target = gradients.buffer(view)
                assignSafely(target, TensorMath.broadcast(operand(value), to: target.shape))
            default:
                try compute(n, frame)
            }
        }
    }

    /// A site's value as each invocation sees it.
    struct Frame {
        let seen: Tensor?
        let info: SiteInfo?
        let batch: TokenBatch
        let rows: [Int]
        /// Slots of a padded row that the pass attends to.
        let slots: Int

        /// Invocation `invoke`'s rows, without its left padding: positions count as in the
        /// invocation alone.
        func view(_ invoke: Int) -> Tensor {
            let row = rows[invoke]
            var v = seen!.slice(axis: 0, row..<(row + 1))
            let pad = batch.padding[row]
            if pad > 0, let info {
                for (axis, symbol) in info.shape.enumerated() where symbol == SiteInfo.sequenceDim && v.shape[axis] == slots {
                    v = v.slice(axis: axis, pad..<slots)
                }
            }
            return v
        }
    }

    private func operand(_ o: Operand) -> Tensor {
        switch o {
        case .node(let n): return values[n]!
        case .literal(let t): return t
        }
    }

    private func run(_ task: CompiledTrace.Task, _ frame: Frame) throws {
        let tape = GradientTape.current
        switch task {
        case .step(let n, let s):
            guard case .intervene(let steps, let tensors) = plan.nodes[n].op else { return }
            let resolved = tensors.mapValues(operand)
            try marked(n, tape) { try steps[s].step.apply(SiteValues(view: frame.view, tensors: resolved)) }
        case .node(let n):
            try marked(n, tape) { try compute(n, frame) }
        case .probe(let p):
            guard let tape else { return }
            let value: Tensor
            switch plan.probes[p].target {
            case .site(_, let invoke): value = frame.view(invoke)
            case .node(let n): value = values[n]!
            }
            let view = GradientView(value)
            tape.probe(value) { [unowned self] gradients in try self.reach(p, view, gradients) }
        }
    }

    /// Runs `body` between two marks on the tape, so that a backward failing inside what it
    /// recorded knows node `n` did it (the later mark runs first, going backwards).
    private func marked(_ n: Int, _ tape: GradientTape?, _ body: () throws -> Void) throws {
        tape?.mark { [unowned self] in self.failing = nil }
        try body()
        tape?.mark { [unowned self] in self.failing = n }
    }

    /// Evaluates node `n` into `values`.
    private func compute(_ n: Int, _ frame: Frame) throws {
        let node = plan.nodes[n]
        let value = try evaluate(node, n, frame)
        guard value.shape == node.shape else {
            throw TraceError(.shapeMismatch, node: node.id, "internal: node \(node.id) computed shape \(value.shape), validation expected \(node.shape ?? [])")
        }
        values[n] = value
    }

    private func evaluate(_ node: CompiledNode, _ index: Int, _ frame: Frame) throws -> Tensor {
        switch node.op {
        case .get(let ref):
            return frame.view(ref.invoke)
        case .set(let ref, let o):
            let target = frame.view(ref.invoke)
            assignSafely(target, TensorMath.broadcast(operand(o), to: target.shape))
            return target
        case .constant(let t):
            return t
        case .index(let x, let key, _):
            return key.read(values[x]!)
        case .setIndex(let x, let key, let o):
            if !(shareRows && plan.noOpWrites.contains(index)) { key.write(operand(o), into: values[x]!) }
            return values[x]!
        case .binary(let op, let a, let b):
            return TensorMath.binary(operand(a), operand(b), op)
        case .unary(let op, let x):
            return TensorMath.unary(values[x]!, op)
        case .matmul(let a, let b):
            return TensorMath.matmul(operand(a), operand(b))
        case .reduce(let kind, let x, let dims, let keepdim):
            return TensorMath.reduce(values[x]!, kind, dims: dims, keepdim: keepdim)
        case .softmax(let x, let dim, let log):
            return TensorMath.softmax(values[x]!, dim: dim, log: log)
        case .reshape(let x, let shape):
            return TensorMath.reshape(values[x]!, shape)
        case .permute(let x, let order):
            return values[x]!.permuted(order)
        case .clone(let x):
            return values[x]!.copy()
        case .full(let shape, let value):
            return Tensor(shape: shape, values: [Float](repeating: value, count: shape.reduce(1, *)))
        case .cat(let parts, let dim, let stack):
            let tensors = parts.map(operand)
            return stack ? TensorMath.stack(tensors, dim: dim) : TensorMath.cat(tensors, dim: dim)
        case .topk(let x, let k, let dim, let largest, let indices):
            return TensorMath.topk(values[x]!, k: k, dim: dim, largest: largest, indices: indices)
        case .call(let x, let module, let model):
            do {
                return try model.call(module: module, operand(x))
            } catch let error as ModelError {
                throw TraceError(.indexOutOfRange, node: node.id, field: "nodes.\(index).x", "\(module): \(error)")
            }
        case .weight(let parameter):
            return parameter
        case .save(let x, _):
            return values[x]!
        case .intervene:
            return Tensor(zeros: [])
        case .backward, .grad, .setGrad:
            preconditionFailure("node \(node.id) belongs to the backward (TraceHooks.runBackward)")
        }
    }

    /// After a site: values still needed later that view the engine's buffer (which the
    /// pass goes on to reuse) move to private storage, views of one region together so
    /// they still alias each other; values nobody needs any more are dropped.
    private func keepPastSite(_ order: Int, storage: TensorStorage) {
        var spans = [(node: Int, low: Int, high: Int)]()
        for (n, value) in values.enumerated() {
            guard let value else { continue }
            if plan.lastUse[n] <= order && plan.nodes[n].event.site >= 0 {
                values[n] = nil
                continue
            }
            guard value.storage === storage, value.count > 0 else { continue }
            var low = value.offset, high = value.offset
            for (size, stride) in zip(value.shape, value.strides) { high += (size - 1) * stride }
            for (size, stride) in zip(value.shape, value.strides) where stride < 0 { low += (size - 1) * stride }
            spans.append((n, low, high))
        }
        spans.sort { $0.low < $1.low }
        var i = 0
        while i < spans.count {
            var j = i + 1, high = spans[i].high
            while j < spans.count && spans[j].low <= high { high = max(high, spans[j].high); j += 1 }
            let low = spans[i].low
            let copy = Tensor(storage: storage, shape: [high - low + 1], offset: low).copy().storage
            for span in spans[i..<j] {
                let v = values[span.node]!
                values[span.node] = Tensor(storage: copy, shape: v.shape, strides: v.strides, offset: v.offset - low)
            }
            i = j
        }
    }
}

extension TensorMath {
    /// A reshape that is a view whenever PyTorch's `view` would be one (also for views with
    /// size-1 dims of any stride, as an invocation's rows are), else a copy.
    static func reshape(_ t: Tensor, _ shape: [Int]) -> Tensor {
        if let strides = viewStrides(t.shape, t.strides, shape) {
            return Tensor(storage: t.storage, shape: shape, strides: strides, offset: t.offset)
        }
        return t.copy().reshaped(shape)
    }

    /// PyTorch's stride computation for `view` (ATen's computeStride).
    static func viewStrides(_ old: [Int], _ oldStrides: [Int], _ new: [Int]) -> [Int]? {
        let count = old.reduce(1, *)
        if count == 0 || old.isEmpty { return Tensor.contiguousStrides(for: new) }
        var newStrides = [Int](repeating: 0, count: new.count)
        var viewD = new.count - 1
        var chunkBase = oldStrides[old.count - 1]
        var tensorNumel = 1, viewNumel = 1
        for tensorD in stride(from: old.count - 1, through: 0, by: -1) {
            tensorNumel *= old[tensorD]
            if tensorD == 0 || (old[tensorD - 1] != 1 && oldStrides[tensorD - 1] != tensorNumel * chunkBase) {
                while viewD >= 0 && (viewNumel < tensorNumel || new[viewD] == 1) {
                    newStrides[viewD] = viewNumel * chunkBase
                    viewNumel *= new[viewD]
                    viewD -= 1
                }
                if viewNumel != tensorNumel { return nil }
                if tensorD > 0 {
                    chunkBase = oldStrides[tensorD - 1]
                    tensorNumel = 1
                    viewNumel = 1
                }
            }
        }
        return viewD == -1 ? newStrides : nil
    }
}
