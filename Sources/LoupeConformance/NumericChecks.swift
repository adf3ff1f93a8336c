import Foundation
import LoupeFormats
import LoupeModels
import LoupeTensor

/// The `hf-parity`, `padding` and `hooks` checks: numbers against HF's and against the
/// model's own.
enum NumericChecks {
    /// Against HF's outputs: logits and the activations at declared canonical sites within this.
    static let parityTolerance: Float = 1e-4
    /// Two computations of the same value by the model itself (padded and alone, watched and
    /// not, continued and full).
    static let selfTolerance: Float = 1e-5

    /// Each sequence alone: logits, and HF's activations where the model declares the site.
    static func parity(_ c: inout CheckContext) throws {
        guard let path = c.fixture.expected else { return c.fail("the fixture has no reference outputs") }
        let expected = try SafetensorsFile(path: path)
        let model = c.model, d = model.dimensions, declared = model.canonicalSites
        // (expected key prefix, site, how the value is laid out in the file)
        var references: [(key: String, site: Site, pattern: Bool)] = []
        func add(_ key: String, _ site: CanonicalSite) {
            if declared.contains(site.kind) { references.append((key, site.site, site.kind == .pattern)) }
        }
        add("resid_pre.0", .residPre(0))
        for l in 0..<d.layers {
            add("resid_post.\(l)", .residPost(l))
            add("attn_out.\(l)", .attnOut(l))
            add("mlp_out.\(l)", .mlpOut(l))
            add("z.\(l)", .z(l))
            add("pattern.\(l)", .pattern(l))
        }
        // lm_head's input is the final norm's output, whatever the architecture calls the norm.
        references.append(("final_norm", model.head.module.input, false))
        var compared = Set<String>(), absent = Set<String>()
        for (i, tokens) in c.fixture.sequences.enumerated() {
            let recorder = ActivationRecorder(references.map(\.site))
            let logits = try model.forward(TokenBatch([tokens]), hooks: recorder, logits: .all)
            let t = tokens.count
            guard let hf = try? expected.tensor("logits.\(i)") else {
                c.fail("\(path) has no logits.\(i)")
                continue
            }
            compare(&c, logits.reshaped([t, -1]), hf, parityTolerance, "logits of sequence \(i) against HF")
            for reference in references {
                let key = "\(reference.key).\(i)"
                guard expected.shape(of: key) != nil else {
                    absent.insert(reference.key.split(separator: ".").first.map(String.init) ?? reference.key)
                    continue
                }
                guard let value = recorder.values[reference.site] else {
                    c.fail("\(reference.site) never fired on sequence \(i)")
                    continue
                }
                // Hooks see [1, T, ...] (pattern: [1, H, T, T]); the file holds [T, ...] ([H, T, T]).
                let seen = reference.pattern ? value.reshaped(Array(value.shape.dropFirst())) : value.reshaped([t, -1])
                compare(&c, seen, try expected.tensor(key), parityTolerance, "\(reference.site) on sequence \(i) against HF's \(key)")
                compared.insert(reference.key.split(separator: ".").first.map(String.init) ?? reference.key)
            }
        }
        c.note("compared with HF: logits, " + compared.sorted().joined(separator: ", ")
               + (absent.isEmpty ? "" : "; the reference holds no " + absent.sorted().joined(separator: ", ")))
    }

    /// The sequences as one left-padded batch: each row equals its sequence alone.
    static func padding(_ c: inout CheckContext) throws {
        let model = c.model, sequences = c.fixture.sequences
        let batch = TokenBatch(sequences)
        guard Set(sequences.map(\.count)).count > 1 else {
            return c.fail("the fixture's sequences are all \(sequences[0].count) tokens long: nothing is padded")
        }
        let logits = try model.forward(batch, logits: .all)
        let hfBatched = c.fixture.expected.flatMap { try? SafetensorsFile(path: $0) }.flatMap { try? $0.tensor("batched.logits") }
        for (i, tokens) in sequences.enumerated() {
            let alone = try model.forward(TokenBatch([tokens]), logits: .all).select(axis: 0, 0)
            let pad = batch.padding[i]
            let row = logits.select(axis: 0, i).slice(axis: 0, pad..<batch.length).contiguous()
            compare(&c, row, alone, selfTolerance, "padded row \(i) (\(pad) pad slots) against sequence \(i) alone")
            if let hfBatched, hfBatched.shape.count == 3, hfBatched.shape[0] == sequences.count, hfBatched.shape[1] == batch.length {
                let hfRow = hfBatched.select(axis: 0, i).slice(axis: 0, pad..<batch.length).contiguous()
                compare(&c, row, hfRow, parityTolerance, "padded row \(i) against HF's padded batch")
            }
        }
        if hfBatched == nil { c.note("the reference holds no batched.logits: padded rows compared with the model's own alone runs only") }
        let last = try model.forward(batch, logits: .last)
        let expectedShape = [batch.rows, 1, model.dimensions.vocabulary]
        guard last.shape == expectedShape else {
            return c.fail("logits at the last position have shape \(last.shape), expected \(expectedShape)")
        }
        compare(&c, last.reshaped([batch.rows, -1]), logits.slice(axis: 1, (batch.length - 1)..<batch.length).reshaped([batch.rows, -1]),
                selfTolerance, "logits at the last position against the last column of the full logits")
    }

    /// Each generation step, continued from the keys and values of the earlier ones in a
    /// left-padded batch, computes what a full pass over the row's sequence so far does alone;
    /// hooks see one position per row from step 1 on.
    static func generation(_ c: inout CheckContext) throws {
        let model = c.model, prompts = c.fixture.sequences
        let new = min(4, model.dimensions.context - (prompts.map(\.count).max() ?? 0))
        guard new >= 2 else { return c.fail("the fixture's sequences leave no room in the context to generate") }
        let generation = try Generation(model: model, prompts: prompts, settings: GenerationSettings(maxNewTokens: new))
        let watch = ActivationRecorder([CanonicalSite.residPost(0).site])
        while !generation.isDone {
            let step = generation.step
            let out = try generation.next(hooks: model.canonicalSites.contains(.residPost) ? watch : nil)
            if let seen = watch.values[CanonicalSite.residPost(0).site], step > 0, seen.shape[1] != 1 {
                c.fail("step \(step): resid_post of layer 0 has shape \(seen.shape), expected one position per row")
            }
            for (row, prompt) in prompts.enumerated() {
                let sofar = prompt + generation.tokens[row].dropLast()
                let full = try model.forward(TokenBatch([sofar]), logits: .last).reshaped([-1])
                compare(&c, out.logits.select(axis: 0, row), full, selfTolerance, "generation step \(step), row \(row) against a full pass alone")
            }
        }
    }

    /// Watching every site changes nothing; a continuation from cached keys and values
    /// computes what the full pass does.
    static func hooks(_ c: inout CheckContext) throws {
        let model = c.model, sequences = c.fixture.sequences
        let batch = TokenBatch(sequences)
        let plain = try model.forward(batch, logits: .all)
        let watched = try model.forward(batch, hooks: WatchEverything(), logits: .all)
        compare(&c, watched, plain, selfTolerance, "logits of the padded batch with every site hooked against no hooks")

        // Continuations of the longest sequence from every layer, rows starting at different positions.
        let tokens = sequences.max { $0.count < $1.count }!
        guard tokens.count >= 3 else { return c.fail("the longest sequence has \(tokens.count) tokens: too short to continue") }
        let layers = model.dimensions.layers
        let entering = (0..<layers).map { CanonicalSite.residPre($0).site }
        let recorder = ActivationRecorder(entering)
        let cache = KeyValueCache(layers: layers)
        let full = try model.forward(TokenBatch([tokens]), hooks: recorder, logits: .all, recorder: cache)
        let expected = full.select(axis: 0, 0).select(axis: 0, tokens.count - 1)
        guard model.canonicalSites.contains(.residPre) else {
            return c.note("no resid_pre declared: continuations from a layer not checked")
        }
        let starts = [1, tokens.count / 2, tokens.count - 1, tokens.count / 2]
        for firstLayer in 0..<layers {
            guard let hidden = recorder.values[entering[firstLayer]] else { return c.fail("\(entering[firstLayer]) never fired") }
            let rows = hidden.reshaped([tokens.count, -1])
            let stacked = Tensor(zeros: [starts.map { tokens.count - $0 }.reduce(0, +), model.dimensions.hidden])
            var row = 0
            for start in starts {
                stacked.slice(axis: 0, row..<(row + tokens.count - start)).assign(from: rows.slice(axis: 0, start..<tokens.count))
                row += tokens.count - start
            }
            let pass = ForwardPass(continuing: cache, starts: starts)
            let x = try model.run(layers: firstLayer..<layers, on: stacked, pass)
            let logits = try model.unembed(try model.finalNorm(x, pass), .last, pass)
            for (index, start) in starts.enumerated() {
                compare(&c, logits.select(axis: 0, index).select(axis: 0, 0), expected, selfTolerance,
                        "a continuation from layer \(firstLayer), position \(start) against the full pass")
            }
        }
    }

    /// Records a failure when the two differ by more than `tolerance` anywhere (or in shape).
    static func compare(_ c: inout CheckContext, _ actual: Tensor, _ expected: Tensor, _ tolerance: Float, _ what: String) {
        guard actual.shape == expected.shape else {
            return c.fail("\(what): shape \(actual.shape), expected \(expected.shape)")
        }
        let difference = maxDifference(actual, expected)
        if !(difference <= tolerance) {
            c.fail("\(what): max |difference| \(difference) > \(tolerance)")
        }
    }

    /// Largest |a - b| over two tensors of one shape (NaN when either holds one).
    static func maxDifference(_ a: Tensor, _ b: Tensor) -> Float {
        var worst: Float = 0
        for (x, y) in zip(a.toArray(), b.toArray()) {
            let d = abs(x - y)
            if d.isNaN { return .nan }
            worst = max(worst, d)
        }
        return worst
    }
}

/// Wants every site and changes none.
final class WatchEverything: ForwardHooks {
    func wants(_ site: Site) -> Bool { true }
    func visit(_ site: Site, _ value: inout Tensor) throws {}
}
