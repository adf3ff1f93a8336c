import Foundation
import Interventions
import LoupeModels
import LoupeTensor
import LoupeTrace
import LoupeTestSupport
import XCTest

/// Fixture models and their runners, loaded once per process.
final class Fixtures: @unchecked Sendable {
    static let shared = Fixtures()
    private var runners: [String: TraceRunner] = [:]
    private let lock = NSLock()

    func runner(_ name: String) throws -> TraceRunner {
        lock.lock()
        defer { lock.unlock() }
        if let runner = runners[name] { return runner }
        let path = name.hasSuffix(".gguf") ? try fetchedModel(name) : fixturesDirectory + "/models/" + name
        let model = try LoadedModel.load(path, registry: testRegistry).model
        let runner = try TraceRunner(model: model, interventions: testInterventions)
        runners[name] = runner
        return runner
    }
}

/// A hook that applies a closure at one site.
final class EditHook: ForwardHooks {
    let sites: [Site: (inout Tensor) -> Void]
    init(_ site: Site, _ edit: @escaping (inout Tensor) -> Void) { self.sites = [site: edit] }
    init(_ sites: [Site: (inout Tensor) -> Void]) { self.sites = sites }
    func wants(_ s: Site) -> Bool { sites[s] != nil }
    func visit(_ s: Site, _ value: inout Tensor) throws { sites[s]!(&value) }
}

/// Builds trace nodes with ids in order.
struct TraceBuilder {
    var nodes: [TraceValue] = []

    @discardableResult
    mutating func add(_ op: String, _ fields: [String: TraceValue] = [:]) -> TraceValue {
        let id = nodes.count
        var map = fields
        map["id"] = .int(id)
        map["op"] = .string(op)
        nodes.append(.map(map))
        return .ref(id)
    }

    mutating func get(_ site: String, io: String = "output", item: Int? = nil, invoke: Int) -> TraceValue {
        var fields: [String: TraceValue] = ["site": .string(site), "io": .string(io), "invoke": .int(invoke)]
        if let item { fields["item"] = .int(item) }
        return add("get", fields)
    }

    mutating func index(_ x: TraceValue, _ key: TraceValue) -> TraceValue { add("index", ["x": x, "key": key]) }
    mutating func sub(_ x: TraceValue, _ y: TraceValue) -> TraceValue { add("sub", ["x": x, "y": y]) }
    mutating func div(_ x: TraceValue, _ y: TraceValue) -> TraceValue { add("div", ["x": x, "y": y]) }
    mutating func save(_ x: TraceValue, _ name: String) { add("save", ["x": x, "name": .string(name)]) }

    /// logits[0, -1, a] - logits[0, -1, b] of one invocation.
    mutating func logitDiff(_ logits: TraceValue, _ a: Int, _ b: Int) -> TraceValue {
        sub(index(logits, [0, -1, .int(a)]), index(logits, [0, -1, .int(b)]))
    }

    func trace(_ invocations: [[Int]]) -> Trace { Trace(invocations: invocations, nodes: nodes) }
}

/// {slice: [nil, nil, nil]}: `:`.
let all: TraceValue = ["slice": [nil, nil, nil]]

/// A scalar tensor's value.
func scalar(_ t: Tensor?) -> Float { t?.toArray().first ?? .nan }

/// The tutorial's head-patching cell (22) as one trace: clean and corrupted runs, then per
/// layer and head a corrupted run whose o_proj input is rearranged into heads, has one head
/// replaced from the clean run and is rearranged back (or the same through `head_patch`).
/// Saves "clean", "corrupted" and the normalized logit difference "hL_H" of every cell.
func tutorialHeadPatchingTrace(clean: [Int], corrupted: [Int], correct: Int, wrong: Int, layers headLayers: Int,
                               heads: Int, gpt2: Bool, viaPlugin: Bool) -> Trace {
    let oProj = { (layer: Int) in gpt2 ? "transformer.h.\(layer).attn.c_proj" : "model.layers.\(layer).self_attn.o_proj" }
    var b = TraceBuilder()
    var cleanHeads = [[TraceValue]]()
    for layer in 0..<headLayers {
        let z = b.get(oProj(layer), io: "input", invoke: 0)
        let reshaped = b.add("split_heads", ["x": z, "heads": .int(heads)])
        cleanHeads.append((0..<heads).map { b.index(reshaped, [all, all, .int($0), all]) })
    }
    let cleanDiff = b.logitDiff(b.get("lm_head", invoke: 0), correct, wrong)
    b.save(cleanDiff, "clean")
    let corruptedDiff = b.logitDiff(b.get("lm_head", invoke: 1), correct, wrong)
    b.save(corruptedDiff, "corrupted")
    var invocations = [clean, corrupted]
    for layer in 0..<headLayers {
        for head in 0..<heads {
            let invoke = invocations.count
            invocations.append(corrupted)
            if viaPlugin {
                b.add("intervene", ["name": "head_patch", "invoke": .int(invoke),
                                    "params": ["source": 0, "layer": .int(layer), "head": .int(head)]])
            } else {
                let site = oProj(layer)
                let z = b.get(site, io: "input", invoke: invoke)
                let reshaped = b.add("split_heads", ["x": z, "heads": .int(heads)])
                b.add("setindex", ["x": reshaped, "key": [all, all, .int(head), all], "value": cleanHeads[layer][head]])
                let merged = b.add("merge_heads", ["x": reshaped])
                b.add("set", ["site": .string(site), "io": "input", "invoke": .int(invoke), "value": merged])
            }
            let patched = b.logitDiff(b.get("lm_head", invoke: invoke), correct, wrong)
            b.save(b.div(b.sub(patched, corruptedDiff), b.sub(cleanDiff, corruptedDiff)), "h\(layer)_\(head)")
        }
    }
    return b.trace(invocations)
}
