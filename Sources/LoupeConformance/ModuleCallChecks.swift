import Foundation
import LoupeFormats
import LoupeModels
import LoupeTensor

/// The `module-calls` check: what the trace op `call` runs of each module, and the
/// parameters `weight` reads.
///
/// - Every module with a weight of its own, every decoder layer and every `mlp` is callable.
/// - Each callable module, called on the value a forward pass showed at its input (an
///   embedding: on the tokens, or on the positions for a table of positions), gives the value the pass showed at its output, within 1e-5.
/// - Where the fixture has `module-calls.safetensors` (scripts/make_module_call_fixtures.py):
///   the logit lens lm_head(norm(h)) of every layer's output, an MLP and a layer called on
///   HF's values, against HF's within 1e-4; every parameter HF has, by name, with its sum,
///   sum of |x| and first values (HF's layout), and none HF does not have.
enum ModuleCallChecks {
    static func run(_ c: inout CheckContext) throws {
        let model = c.model, tree = model.moduleTree
        let tokens = c.fixture.sequences[0]
        var modules = [ModuleNode]()
        func walk(_ node: ModuleNode, parent: ModuleNode?) {
            if !node.path.isEmpty { modules.append(node) }
            let isLayer = parent?.type == "ModuleList" && node.children.count > 0 && Int(node.name) != nil
            let mustCall = model.modules.parameter(node.path + ".weight") != nil || node.name == "mlp" || isLayer
            if mustCall && model.modules.call(node.path) == nil { c.fail("\(node.path) (\(node.type)) cannot be called") }
            for child in node.children { walk(child, parent: node) }
        }
        walk(tree, parent: nil)

        // Against the forward pass's own values.
        let sites = modules.flatMap { [Site($0.path, .input), Site($0.path, .output)] }
        let recorder = ActivationRecorder(sites)
        _ = try model.forward(TokenBatch([tokens]), hooks: recorder, logits: .all)
        var called = 0
        for node in modules {
            guard let call = model.modules.call(node.path) else { continue }
            let x: Tensor
            if case .tokenIDs(let rows) = call.input {
                // Token ids, or position ids for a table of positions (GPT-2's wpe) the tokens overflow.
                let ids = tokens.allSatisfy { $0 < rows } ? tokens : Array(0..<tokens.count)
                x = Tensor(shape: [1, tokens.count], values: ids.map(Float.init))
            } else if let input = recorder.values[Site(node.path, .input)] {
                x = input
            } else {
                c.fail("\(node.path) is callable but its input site never fired")
                continue
            }
            guard let expected = recorder.values[Site(node.path, .output)] else {
                c.fail("\(node.path) is callable but its output site never fired")
                continue
            }
            guard call.outputShape(x.shape) != nil else {
                c.fail("\(node.path) cannot be called on its own input of shape \(x.shape) (it takes \(call.expected))")
                continue
            }
            let got = try model.call(module: node.path, x)
            let scale = max(1, expected.toArray().map(abs).max() ?? 0)
            NumericChecks.compare(&c, got, expected, NumericChecks.selfTolerance * scale, "call(\(node.path)) against the forward pass")
            called += 1
        }
        c.note("\(called) callable modules reproduce the forward pass")

        let path = c.fixture.directory + "/module-calls.safetensors"
        guard FileManager.default.fileExists(atPath: path) else { return c.note("no HF module-call reference (module-calls.safetensors)") }
        try againstHF(&c, try SafetensorsFile(path: path), length: tokens.count)
    }

    private static func againstHF(_ c: inout CheckContext, _ file: SafetensorsFile, length: Int) throws {
        let model = c.model, head = model.head.module.path, tolerance = NumericChecks.parityTolerance
        func value(_ key: String) throws -> Tensor { try file.tensor(key) }
        func batched(_ t: Tensor) -> Tensor { t.reshaped([1] + t.shape) }
        var hfParameters = Set<String>()
        for key in file.tensorNames.sorted() {
            let parts = key.split(separator: ".", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            let rest = parts[1]
            switch parts[0] {
            case "lens":
                // lens.<norm path>.<layer>
                guard let dot = rest.lastIndex(of: "."), let layer = Int(rest[rest.index(after: dot)...]) else { continue }
                let norm = String(rest[..<dot])
                let hidden = batched(try value("hidden.\(layer)"))
                let lens = try model.call(module: head, try model.call(module: norm, hidden))
                NumericChecks.compare(&c, lens.reshaped([length, -1]), try value(key), tolerance, "logit lens of layer \(layer) against HF")
            case "call":
                let got = try model.call(module: rest, batched(try value("input.\(rest)")))
                NumericChecks.compare(&c, got.reshaped([length, -1]), try value(key), tolerance, "call(\(rest)) against HF")
            case "param_sum":
                hfParameters.insert(rest)
                guard let parameter = model.modules.parameter(rest) else {
                    c.fail("HF's parameter \(rest) is not one of the model's")
                    continue
                }
                let values = parameter.toArray()
                let sums = try value(key).toArray(), row = try value("param_row.\(rest)").toArray()
                let (sum, sumAbs) = values.reduce((0.0, 0.0)) { ($0.0 + Double($1), $0.1 + Double(abs($1))) }
                if abs(sum - Double(sums[0])) > 1e-5 * (Double(sums[1]) + 1) || abs(sumAbs - Double(sums[1])) > 1e-5 * (Double(sums[1]) + 1) {
                    c.fail("\(rest): sum \(sum), sum |x| \(sumAbs); HF's \(sums[0]), \(sums[1])")
                }
                if Array(values.prefix(row.count)) != row { c.fail("\(rest): first values \(values.prefix(row.count)), HF's \(row)") }
            default:
                continue
            }
        }
        for name in model.modules.parameterNames where !hfParameters.contains(name) {
            c.fail("parameter \(name) is not one of HF's")
        }
    }
}
