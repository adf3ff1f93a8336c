import Foundation
import LoupeModels
import LoupeTensor
import LoupeTrace
import LoupeTestSupport
import XCTest

/// Gradients in traces (`backward`, `grad`, `set_grad`): at every site against the engine's
/// `GradientRecorder`, through every trace op against central differences of the scalar,
/// in padded batches, and `set_grad` changing what flows on.
final class TraceGradientTests: XCTestCase {
    static let tokens = [3, 14, 15, 92, 65, 35]
    static let fixtures = ["gpt2-tiny", "gpt2-tiny-noprefix", "llama-tiny", "llama-tiny-untied", "llama3-tiny", "mistral-tiny",
                           "qwen2-tiny", "qwen3-tiny", "gemma2-tiny", "gemma3-tiny", "pythia-tiny", "pythia-tiny-sequential"]

    // MARK: Sites, against the engine

    /// The recorder's gradient at every site of `tokens` for logit(a) - logit(b) at the last
    /// position (nil where none flows).
    func recorded(_ runner: TraceRunner, _ batch: [[Int]], _ a: Int, _ b: Int, logits rows: LogitRows = .last) throws -> [Site: Tensor] {
        let recorder = GradientRecorder(runner.sites.map { Site($0.site, $0.io) }, keepValues: false)
        _ = try runner.model.backward(TokenBatch(batch), hooks: recorder, logits: rows) { logits in
            var total: Tensor?
            for row in 0..<batch.count {
                let last = logits.select(axis: 0, row).select(axis: 0, logits.shape[1] - 1)
                let difference = TensorMath.binary(last.select(axis: 0, a), last.select(axis: 0, b), .sub)
                total = total.map { TensorMath.binary($0, difference, .add) } ?? difference
            }
            return total!
        }
        return recorder.gradients
    }

    /// A trace of `invocations` whose scalar is the sum of each one's logit(a) - logit(b) at
    /// its last position, reading the gradient at every site in `sites` of every invocation
    /// (saved as "invoke:site").
    func traced(_ runner: TraceRunner, _ invocations: [[Int]], _ sites: [SiteInfo], _ a: Int, _ b: Int) throws -> TraceResult {
        var t = TraceBuilder()
        var gets = [(String, TraceValue)]()
        for (i, _) in invocations.enumerated() {
            for info in sites {
                gets.append(("\(i):\(info.site).\(info.io.rawValue)", t.get(info.site, io: info.io.rawValue, invoke: i)))
            }
        }
        var total: TraceValue?
        for i in invocations.indices {
            let difference = t.logitDiff(t.get("logits", invoke: i), a, b)
            total = total.map { t.add("add", ["x": $0, "y": difference]) } ?? difference
        }
        t.add("backward", ["x": total!])
        for (name, get) in gets { t.save(t.add("grad", ["x": get]), name) }
        return try runner.run(t.trace(invocations))
    }

    /// At every site the recorder sees a gradient, on every fixture architecture, the trace
    /// reads the same gradient.
    func testEverySiteMatchesTheEngine() throws {
        for model in Self.fixtures {
            let runner = try Fixtures.shared.runner(model)
            let expected = try recorded(runner, [Self.tokens], 5, 9, logits: .all)
            let sites = runner.sites.filter { expected[Site($0.site, $0.io)] != nil }
            XCTAssertTrue(sites.contains { $0.site == "blocks.0.resid_pre" } && sites.contains { $0.site == "blocks.1.attn.pattern" },
                          "\(model): the recorder saw gradients at the canonical sites")
            let result = try traced(runner, [Self.tokens], sites, 5, 9)
            XCTAssertEqual(result.logits, .all, "\(model): a gradient of the logits needs them all")
            for info in sites {
                let site = Site(info.site, info.io)
                let want = expected[site]!
                let scale = want.toArray().map(abs).max() ?? 0
                assertClose(result["0:\(site)"], want, tolerance: 1e-5 * max(1, scale), "\(model) \(site)")
            }
        }
    }

    /// Invocations of different lengths in one left-padded batch: each gets the gradients it
    /// gets alone; in the engine's padded layout the padding gets none.
    func testPaddedBatchesGiveEachInvocationItsOwnGradient() throws {
        let (short, long) = ([7, 3, 14, 15, 9], [3, 14, 15, 92, 65, 35, 89, 79])
        for model in ["gpt2-tiny", "llama-tiny", "gemma3-tiny"] {
            let runner = try Fixtures.shared.runner(model)
            let sites = runner.sites.filter { $0.site.hasPrefix("blocks.") }
            let together = try traced(runner, [short, long], sites, 5, 9)
            XCTAssertEqual(together.logits, .last)
            XCTAssertEqual(together.slots, 16, "\(model): a row per invocation")
            let alone = [try traced(runner, [short], sites, 5, 9), try traced(runner, [long], sites, 5, 9)]
            for info in sites {
                let name = "\(info.site).\(info.io.rawValue)"
                for i in 0..<2 {
                    let want = try XCTUnwrap(alone[i]["0:\(name)"])
                    assertClose(together["\(i):\(name)"], want, tolerance: 1e-5 * max(1, want.toArray().map(abs).max()!), "\(model) \(name) of invocation \(i)")
                }
            }
            let padded = try recorded(runner, [short, long], 5, 9)
            for (site, gradient) in padded where gradient.rank >= 3 && gradient.shape[1] == long.count {
                let padding = gradient.select(axis: 0, 0).slice(axis: 0, 0..<(long.count - short.count))
                XCTAssertEqual(padding.toArray().map(abs).max(), 0, "\(model) \(site): the padding's gradient")
            }
        }
    }

    /// With the logits read only at the last position, the unembedding runs there alone and
    /// the gradients are the same.
    func testLogitsAtTheLastPositionOnly() throws {
        let runner = try Fixtures.shared.runner("llama-tiny")
        var t = TraceBuilder()
        let h = t.get("blocks.1.resid_mid", invoke: 0)
        t.add("backward", ["x": t.logitDiff(t.get("lm_head", invoke: 0), 5, 9)])
        t.save(t.add("grad", ["x": h]), "g")
        let result = try runner.run(t.trace([Self.tokens]))
        XCTAssertEqual(result.logits, .last)
        assertClose(result["g"], try recorded(runner, [Self.tokens], 5, 9)[Site("blocks.1.resid_mid", .output)]!, tolerance: 1e-5, "resid_mid")
        let backward = try XCTUnwrap(result.backward)
        XCTAssertGreaterThan(backward.records, 0)
        XCTAssertGreaterThan(backward.savedBytes, 0)
        XCTAssertGreaterThanOrEqual(backward.peakBytes, backward.savedBytes)
    }

    // MARK: Every trace op, against central differences

    /// The scalar `build` makes, differentiated by the trace and by central differences along
    /// random directions, on the tiny GPT-2 and Llama. `build(&t, δ)` returns the scalar and
    /// the node whose gradient is read; δ (a constant node, nil in the gradient's own run) is
    /// the perturbation, which `build` adds where that node's value is used.
    func checkAgainstDifferences(_ what: String, models: [String] = ["gpt2-tiny", "llama-tiny"], _ invocations: [[Int]] = [tokens],
                                 step: Float = 0.01, file: StaticString = #filePath, line: UInt = #line,
                                 _ build: (inout TraceBuilder, TraceValue?) -> (scalar: TraceValue, of: TraceValue)) throws {
        for model in models {
            try checkAgainstDifferences("\(model) \(what)", model: model, invocations, step: step, file: file, line: line, build)
        }
    }

    private func checkAgainstDifferences(_ what: String, model: String, _ invocations: [[Int]], step: Float,
                                         file: StaticString, line: UInt,
                                         _ build: (inout TraceBuilder, TraceValue?) -> (scalar: TraceValue, of: TraceValue)) throws {
        let runner = try Fixtures.shared.runner(model)
        var t = TraceBuilder()
        let (s, x) = build(&t, nil)
        t.add("backward", ["x": s])
        t.save(t.add("grad", ["x": x]), "g")
        let g = try XCTUnwrap(try runner.run(t.trace(invocations))["g"], what, file: file, line: line)
        XCTAssertGreaterThan(g.toArray().map(abs).max() ?? 0, 0, "\(what): a gradient flows", file: file, line: line)
        func value(_ δ: Tensor) throws -> Double {
            var t = TraceBuilder()
            let constant = t.add("constant", ["value": .tensor(δ)])
            let (s, _) = build(&t, constant)
            t.save(s, "s")
            return Double(scalar(try runner.run(t.trace(invocations))["s"]))
        }
        var random = SeededGenerator(seed: 7)
        for _ in 0..<3 {
            let v = (0..<g.count).map { _ in Float.random(in: -1...1, using: &random) }
            let dot = zip(g.toArray(), v).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
            // Central differences, Richardson-extrapolated: the error is of order ε⁴.
            func slope(_ e: Float) throws -> Double {
                (try value(Tensor(shape: g.shape, values: v.map { $0 * e })) - value(Tensor(shape: g.shape, values: v.map { -$0 * e }))) / Double(2 * e)
            }
            let differences = (4 * (try slope(step)) - (try slope(2 * step))) / 3
            XCTAssertEqual(differences, dot, accuracy: 2e-3 * max(1, abs(dot)), "\(what): directional derivative", file: file, line: line)
        }
    }

    /// A seeded constant of `shape`, for weighting a value before summing it.
    func weights(_ t: inout TraceBuilder, _ shape: [Int], seed: UInt64) -> TraceValue {
        var random = SeededGenerator(seed: seed)
        let count = shape.reduce(1, *)
        return t.add("constant", ["value": .tensor(Tensor(shape: shape, values: (0..<count).map { _ in Float.random(in: -1...1, using: &random) }))])
    }

    /// Σ w·x for a seeded w.
    func weightedSum(_ t: inout TraceBuilder, _ x: TraceValue, _ shape: [Int], seed: UInt64) -> TraceValue {
        t.add("sum", ["x": t.add("mul", ["x": x, "y": weights(&t, shape, seed: seed)])])
    }

    func add(_ t: inout TraceBuilder, _ terms: [TraceValue]) -> TraceValue {
        terms.dropFirst().reduce(terms[0]) { t.add("add", ["x": $0, "y": $1]) }
    }

    /// The first layer's output of invocation 0, perturbed by δ as a value of its own (the
    /// model's pass is left alone): what the pure-computation cases start from.
    func start(_ t: inout TraceBuilder, _ δ: TraceValue?) -> (of: TraceValue, used: TraceValue) {
        let h = t.get("blocks.0.resid_post", invoke: 0)
        return (h, δ.map { t.add("add", ["x": h, "y": $0]) } ?? h)
    }

    func testIndexAndSetIndex() throws {
        try checkAgainstDifferences("index") { t, δ in
            let (h, x) = start(&t, δ)
            let gathered = t.index(x, [0, [1, 3, 1], all])                              // a row twice
            let strided = t.index(x, [0, -1, ["slice": [0, 64, 2]]])
            let newAxis = t.index(x, ["...", nil, 5])
            let lists = t.index(x, [0, [2, 4], [7, 9]])
            return (add(&t, [weightedSum(&t, gathered, [3, 64], seed: 1), weightedSum(&t, strided, [32], seed: 2),
                             weightedSum(&t, newAxis, [1, 6, 1], seed: 3), weightedSum(&t, lists, [2], seed: 4)]), h)
        }
        try checkAgainstDifferences("setindex") { t, δ in
            let (h, x) = start(&t, δ)
            let copy = t.add("clone", ["x": x])
            t.add("setindex", ["x": copy, "key": [0, 2], "value": t.add("mul", ["x": t.index(x, [0, 4]), "y": 2])])
            t.add("setindex", ["x": copy, "key": [0, [0, 5], ["slice": [0, 8]]], "value": t.index(x, [0, [1, 1], ["slice": [8, 16]]])])
            t.add("setindex", ["x": copy, "key": [0, 3, ["slice": [20, 30]]], "value": 0.5])  // a constant: no gradient goes on
            return (weightedSum(&t, t.add("mul", ["x": copy, "y": copy]), [1, 6, 64], seed: 5), h)
        }
    }

    func testArithmetic() throws {
        try checkAgainstDifferences("add sub mul div pow") { t, δ in
            let (h, x) = start(&t, δ)
            let a = t.index(x, [0, all, ["slice": [0, 16]]])
            let row = t.index(x, [0, 0, ["slice": [16, 32]]])                          // broadcast over rows
            let square = t.add("mul", ["x": a, "y": a])
            let terms = [
                t.add("sub", ["x": square, "y": t.add("mul", ["x": a, "y": row])]),
                t.add("div", ["x": a, "y": t.add("add", ["x": square, "y": 1])]),
                t.add("div", ["x": 1, "y": t.add("add", ["x": t.add("mul", ["x": row, "y": row]), "y": 2])]),
                t.add("pow", ["x": t.add("add", ["x": square, "y": 0.5]), "y": 0.7]),
                t.add("pow", ["x": 1.3, "y": a]),
                t.add("sub", ["x": 3, "y": row]),
            ]
            // Weights of either sign keep the sum, and its float32 rounding, small.
            let shapes = [[6, 16], [6, 16], [16], [6, 16], [6, 16], [16]]
            return (add(&t, terms.enumerated().map { weightedSum(&t, $1, shapes[$0], seed: 10 + UInt64($0)) }), h)
        }
    }

    func testUnaryOps() throws {
        try checkAgainstDifferences("neg exp log abs sqrt") { t, δ in
            let (h, x) = start(&t, δ)
            let a = t.index(x, [0, all, ["slice": [0, 16]]])
            let terms = [
                t.add("neg", ["x": a]),
                t.add("exp", ["x": t.add("mul", ["x": a, "y": 0.3])]),
                t.add("log", ["x": t.add("add", ["x": t.add("mul", ["x": a, "y": a]), "y": 1])]),
                t.add("abs", ["x": a]),
                t.add("sqrt", ["x": t.add("add", ["x": t.add("mul", ["x": a, "y": a]), "y": 0.5])]),
            ]
            return (add(&t, terms.enumerated().map { weightedSum(&t, $1, [6, 16], seed: 20 + UInt64($0)) }), h)
        }
    }

    func testReductions() throws {
        // Small steps: max and min must not change which element they pick.
        try checkAgainstDifferences("sum mean max min", step: 0.002) { t, δ in
            let (h, x) = start(&t, δ)
            let a = t.index(x, [0, all, ["slice": [0, 16]]])
            let terms = [
                weightedSum(&t, t.add("sum", ["x": a, "dim": 0]), [16], seed: 30),
                weightedSum(&t, t.add("mean", ["x": a, "dim": [1], "keepdim": true]), [6, 1], seed: 31),
                weightedSum(&t, t.add("max", ["x": a, "dim": -1]), [6], seed: 32),
                weightedSum(&t, t.add("min", ["x": a, "dim": 0]), [16], seed: 33),
                t.add("mul", ["x": t.add("max", ["x": a]), "y": 2]),
                t.add("mean", ["x": t.add("mul", ["x": a, "y": a])]),
            ]
            return (add(&t, terms), h)
        }
    }

    func testSoftmaxes() throws {
        try checkAgainstDifferences("softmax log_softmax") { t, δ in
            let (h, x) = start(&t, δ)
            let a = t.index(x, [0, all, ["slice": [0, 16]]])
            return (add(&t, [weightedSum(&t, t.add("softmax", ["x": a, "dim": -1]), [6, 16], seed: 40),
                             weightedSum(&t, t.add("log_softmax", ["x": a, "dim": 0]), [6, 16], seed: 41)]), h)
        }
    }

    func testMatmul() throws {
        try checkAgainstDifferences("matmul") { t, δ in
            let (h, x) = start(&t, δ)
            let a = t.index(x, [0, all, ["slice": [0, 16]]])
            let gram = t.add("matmul", ["x": a, "y": t.add("transpose", ["x": a, "dim0": 0, "dim1": 1])])
            let vector = t.add("matmul", ["x": a, "y": weights(&t, [16], seed: 50)])
            let batched = t.add("matmul", ["x": t.add("reshape", ["x": a, "shape": [2, 3, 16]]), "y": weights(&t, [16, 4], seed: 51)])
            return (add(&t, [weightedSum(&t, gram, [6, 6], seed: 52), weightedSum(&t, vector, [6], seed: 53),
                             weightedSum(&t, batched, [2, 3, 4], seed: 54)]), h)
        }
    }

    func testCatAndStack() throws {
        try checkAgainstDifferences("cat stack") { t, δ in
            let (h, x) = start(&t, δ)
            let a = t.index(x, [0, all, ["slice": [0, 16]]])
            let cat = t.add("cat", ["xs": [t.index(a, [["slice": [0, 2]]]), t.add("mul", ["x": t.index(a, [["slice": [3, 6]]]), "y": 2]),
                                           weights(&t, [1, 16], seed: 60)], "dim": 0])
            let stack = t.add("stack", ["xs": [t.index(a, 0), t.index(a, 5), t.index(a, 0)], "dim": 1])
            return (add(&t, [weightedSum(&t, cat, [6, 16], seed: 61), weightedSum(&t, stack, [16, 3], seed: 62)]), h)
        }
    }

    func testShapesAndClone() throws {
        try checkAgainstDifferences("reshape view transpose permute split_heads merge_heads clone") { t, δ in
            let (h, x) = start(&t, δ)
            let heads = t.add("split_heads", ["x": x, "heads": 4])                          // [1, 6, 4, 16]
            let permuted = t.add("permute", ["x": heads, "dims": [2, 0, 3, 1]])             // [4, 1, 16, 6]
            let viewed = t.add("view", ["x": t.add("clone", ["x": permuted]), "shape": [4, 96]])
            let reshaped = t.add("reshape", ["x": permuted, "shape": [64, -1]])            // a copy: not a view
            let merged = t.add("merge_heads", ["x": t.add("transpose", ["x": heads, "dim0": 1, "dim1": 2])])  // [1, 4, 96]
            return (add(&t, [weightedSum(&t, viewed, [4, 96], seed: 70), weightedSum(&t, reshaped, [64, 6], seed: 71),
                             weightedSum(&t, merged, [1, 4, 96], seed: 72)]), h)
        }
    }

    // MARK: Through the model: writes and interventions

    /// The leaving value's gradient: after the trace's own write at the site, δ perturbs what
    /// the model goes on with.
    func testSetAndTheValueLeavingTheSite() throws {
        try checkAgainstDifferences("set: the value leaving the site") { t, δ in
            let h = t.get("blocks.0.resid_post", invoke: 0)
            t.add("set", ["site": "blocks.0.resid_post", "invoke": 0, "value": t.add("mul", ["x": h, "y": 1.5])])
            if let δ { t.add("set", ["site": "blocks.0.resid_post", "invoke": 0, "value": t.add("add", ["x": h, "y": δ])]) }
            return (t.logitDiff(t.get("logits", invoke: 0), 5, 9), h)
        }
        try checkAgainstDifferences("set: the gradient goes to the value written") { t, δ in
            let h = t.get("blocks.0.resid_post", invoke: 0)
            if let δ { t.add("set", ["site": "blocks.0.resid_post", "invoke": 0, "value": t.add("add", ["x": h, "y": δ])]) }
            let before = t.add("clone", ["x": h])
            t.add("set", ["site": "blocks.0.resid_post", "invoke": 0, "value": t.add("mul", ["x": before, "y": 1.5])])
            return (t.logitDiff(t.get("logits", invoke: 0), 5, 9), before)
        }
        try checkAgainstDifferences("setindex through a site's view: to the value written") { t, δ in
            let h = t.get("blocks.0.resid_post", invoke: 0)
            let before = t.add("clone", ["x": h])
            let used = δ.map { t.add("add", ["x": before, "y": $0]) } ?? before
            let heads = t.add("split_heads", ["x": h, "heads": 4])
            t.add("setindex", ["x": heads, "key": [0, 2, 1], "value": t.add("mul", ["x": t.index(used, [0, 4, ["slice": [0, 16]]]), "y": 2])])
            return (t.logitDiff(t.get("logits", invoke: 0), 5, 9), before)
        }
        try checkAgainstDifferences("setindex through a site's view: the value leaving the site") { t, δ in
            let h = t.get("blocks.0.resid_post", invoke: 0)
            let heads = t.add("split_heads", ["x": h, "heads": 4])
            t.add("setindex", ["x": heads, "key": [0, 2, 1], "value": t.add("mul", ["x": t.index(h, [0, 4, ["slice": [0, 16]]]), "y": 2])])
            if let δ { t.add("set", ["site": "blocks.0.resid_post", "invoke": 0, "value": t.add("add", ["x": h, "y": δ])]) }
            return (t.logitDiff(t.get("logits", invoke: 0), 5, 9), h)
        }
    }

    /// A patched value's gradient goes to its source, as in torch.
    func testInterventions() throws {
        var corrupted = Self.tokens
        corrupted[2] = 40
        try checkAgainstDifferences("residual_patch", [Self.tokens, corrupted]) { t, δ in
            let clean = t.get("blocks.0.resid_post", invoke: 0)
            if let δ { t.add("set", ["site": "blocks.0.resid_post", "invoke": 0, "value": t.add("add", ["x": clean, "y": δ])]) }
            t.add("intervene", ["name": "residual_patch", "invoke": 1, "params": ["source": 0, "layers": 0, "positions": [2, 4]]])
            let patched = t.logitDiff(t.get("logits", invoke: 1), 5, 9)
            let own = t.add("mul", ["x": t.logitDiff(t.get("logits", invoke: 0), 5, 9), "y": 0.5])
            return (t.add("add", ["x": patched, "y": own]), clean)
        }
        try checkAgainstDifferences("steer, to its vector") { t, δ in
            let vector = t.add("mul", ["x": t.index(t.get("blocks.0.resid_pre", invoke: 0), [0, 2]), "y": 0.5])
            let used = δ.map { t.add("add", ["x": vector, "y": $0]) } ?? vector
            t.add("intervene", ["name": "steer", "invoke": 0, "params": ["layers": [0, 1], "vector": used, "positions": [1, -1]]])
            return (t.logitDiff(t.get("logits", invoke: 0), 5, 9), vector)
        }
    }

    // MARK: set_grad

    /// Doubling the gradient at layer 0's output doubles every gradient before it, exactly (a
    /// backward is linear in what flows back), and leaves those after it alone; a `grad`
    /// after the `set_grad` reads the doubled one.
    func testSetGradDoublesEveryGradientBeforeIt() throws {
        let runner = try Fixtures.shared.runner("gpt2-tiny")
        let order = Dictionary(runner.sites.enumerated().map { ("\($1.site).\($1.io.rawValue)", $0) }, uniquingKeysWith: min)
        let layerOutput = order["blocks.0.resid_post.output"]!
        func run(doubling: Bool) throws -> TraceResult {
            var t = TraceBuilder()
            let gets = runner.sites.map { ("\($0.site).\($0.io.rawValue)", t.get($0.site, io: $0.io.rawValue, invoke: 0)) }
            let h = t.get("blocks.0.resid_post", invoke: 0)
            t.add("backward", ["x": t.logitDiff(t.get("logits", invoke: 0), 5, 9)])
            let g = t.add("grad", ["x": h])
            t.save(g, "before")
            if doubling { t.add("set_grad", ["x": h, "value": t.add("mul", ["x": g, "y": 2])]) }
            t.save(t.add("grad", ["x": h]), "after")
            for (name, get) in gets { t.save(t.add("grad", ["x": get]), name) }
            return try runner.run(t.trace([Self.tokens]))
        }
        let (plain, doubled) = (try run(doubling: false), try run(doubling: true))
        assertClose(doubled["before"], plain["before"]!, tolerance: 0, "a grad before the set_grad")
        assertClose(doubled["after"], plain["before"]!.scaled(2), tolerance: 0, "a grad after it")
        var checked = 0
        for (name, at) in order where plain[name] != nil {
            let factor: Float = at <= layerOutput ? 2 : 1  // the layer's output too: these grads follow the set_grad
            assertClose(doubled[name], plain[name]!.scaled(factor), tolerance: 0, "\(name): \(factor)x")
            checked += 1
        }
        XCTAssertGreaterThan(checked, 60)
    }

    /// nnsight's `h.grad[:] = 0` and `a.grad = b.grad`: a gradient replaced by a constant, and
    /// by another site's.
    func testSetGradToAConstantAndToAnotherGradient() throws {
        let runner = try Fixtures.shared.runner("llama-tiny")
        var t = TraceBuilder()
        let early = t.get("blocks.0.resid_post", invoke: 0), late = t.get("blocks.1.resid_mid", invoke: 0)
        let first = t.get("blocks.0.resid_pre", invoke: 0)
        t.add("backward", ["x": t.logitDiff(t.get("logits", invoke: 0), 5, 9)])
        t.add("set_grad", ["x": late, "value": 0])
        t.save(t.add("grad", ["x": late]), "late")
        t.save(t.add("grad", ["x": early]), "early")
        t.save(t.add("grad", ["x": first]), "first")
        let zeroed = try runner.run(t.trace([Self.tokens]))
        XCTAssertEqual(zeroed["late"]?.toArray().map(abs).max(), 0)
        // Only the attention of layer 1 lies between: what flows past resid_mid is all that is zeroed.
        XCTAssertEqual(zeroed["early"]?.toArray().map(abs).max(), 0)
        XCTAssertEqual(zeroed["first"]?.toArray().map(abs).max(), 0)

        var u = TraceBuilder()
        let a = u.get("blocks.0.resid_post", invoke: 0), b = u.get("blocks.1.resid_post", invoke: 0)
        u.add("backward", ["x": u.logitDiff(u.get("logits", invoke: 0), 5, 9)])
        let gb = u.add("grad", ["x": b])
        u.save(gb, "b")
        u.add("set_grad", ["x": a, "value": gb])
        u.save(u.add("grad", ["x": a]), "a")
        let copied = try runner.run(u.trace([Self.tokens]))
        assertClose(copied["a"], copied["b"]!, tolerance: 0, "a.grad = b.grad")
    }
}

extension Tensor {
    func scaled(_ factor: Float) -> Tensor { Tensor(shape: shape, values: toArray().map { $0 * factor }) }
}
