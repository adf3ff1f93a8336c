import Foundation
import LoupeFormats
import LoupeModels
import LoupeTensor

/// The `gradients` check: the backward through the adapter's forward pass.
///
/// Always, finite differences: at `resid_pre` of the first block and at every canonical site
/// the model declares in its last block, the gradient's product with a random direction
/// equals the metric's central difference along it (Richardson-extrapolated, within 2% of
/// the product's terms' magnitude): a
/// value the adapter computes outside the recorded kernels (a raw loop over a tensor's
/// memory) breaks the chain there and fails this. Where the fixture has torch's gradients
/// (`gradients.safetensors`, scripts/make_gradient_fixtures.py): every declared site of
/// every block, the final norm and the logits within 1e-4 of the largest gradient, each
/// sequence alone and as rows of one left-padded batch, whose padding gets no gradient.
public enum GradientChecks {
    /// The golden's metric for sequence i: logits[last, A] − logits[last, W] (scripts/make_gradient_fixtures.py).
    public static func answers(_ i: Int, vocabulary: Int) -> (answer: Int, wrong: Int) {
        ((37 * i + 11) % vocabulary, (53 * i + 29) % vocabulary)
    }

    /// Σ logits[row, position, answer] − logits[row, position, wrong], with ops that record.
    public static func logitDifference(_ logits: Tensor, _ rows: [(row: Int, position: Int, answer: Int, wrong: Int)]) -> Tensor {
        var total = TensorMath.scalar(0)
        for r in rows {
            let at = logits.select(axis: 0, r.row).select(axis: 0, r.position)
            total = TensorMath.binary(total, TensorMath.binary(at.select(axis: 0, r.answer), at.select(axis: 0, r.wrong), .sub), .add)
        }
        return total
    }

    /// The sites torch's gradients are kept for, under their keys (`grad.KEY.i`): the
    /// declared canonical ones of every block, and the final norm (lm_head's input).
    public static func sites(_ model: any LanguageModel) -> [(key: String, site: Site)] {
        let keys: [(String, CanonicalSite.Kind)] = [("resid_pre", .residPre), ("resid_post", .residPost), ("attn_out", .attnOut),
                                                   ("mlp_out", .mlpOut), ("z", .z), ("mlp_hidden", .mlpHidden), ("q", .q),
                                                   ("k", .k), ("v", .v), ("pattern", .pattern)]
        var list = [(key: String, site: Site)]()
        for l in 0..<model.dimensions.layers {
            for (key, kind) in keys where model.canonicalSites.contains(kind) {
                list.append(("\(key).\(l)", CanonicalSite(kind, layer: l).site))
            }
        }
        return list + [("final_norm", model.head.module.input)]
    }

    /// Fails unless `actual` equals `expected` within `relative` of expected's largest magnitude; nil when it does.
    public static func mismatch(_ actual: Tensor?, _ expected: Tensor, relative: Float) -> String? {
        guard let actual else { return "no gradient reached it" }
        guard actual.count == expected.count else { return "\(actual.count) elements, torch's has \(expected.count)" }
        let scale = expected.toArray().reduce(Float(0)) { max($0, abs($1)) }
        let worst = zip(actual.toArray(), expected.toArray()).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        return worst <= relative * max(scale, 1e-6) ? nil : "max |difference| \(worst), largest |gradient| \(scale)"
    }

    static func run(_ c: inout CheckContext) throws {
        try finiteDifferences(&c)
        let path = c.fixture.directory + "/gradients.safetensors"
        guard FileManager.default.fileExists(atPath: path) else {
            return c.note("no gradients.safetensors: checked against finite differences only")
        }
        try againstTorch(&c, try SafetensorsFile(path: path))
    }

    private static func finiteDifferences(_ c: inout CheckContext) throws {
        let model = c.model, d = model.dimensions
        guard let tokens = c.fixture.sequences.max(by: { $0.count < $1.count }) else { return }
        let (answer, wrong) = answers(0, vocabulary: d.vocabulary)
        let metric = { (logits: Tensor) in logitDifference(logits, [(0, tokens.count - 1, answer, wrong)]) }
        var sites = CanonicalSite.Kind.perLayer.filter(model.canonicalSites.contains).map { CanonicalSite($0, layer: d.layers - 1) }
        if model.canonicalSites.contains(.residPre) { sites.insert(.residPre(0), at: 0) }
        var generator = SplitMix(seed: 2024)
        for site in sites {
            let recorder = GradientRecorder([site.site], keepValues: false)
            _ = try model.backward(TokenBatch([tokens]), hooks: recorder, metric: metric)
            guard let gradient = recorder.gradients[site.site] else {
                c.fail("\(site): no gradient reached it"); continue
            }
            let direction = (0..<gradient.count).map { _ in Float(generator.next() % 2001) / 1000 - 1 }
            let terms = zip(gradient.toArray(), direction).map { Double($0) * Double($1) }
            let analytic = terms.reduce(0, +)
            func nudged(_ step: Float) throws -> Double {
                let logits = try model.forward(TokenBatch([tokens]), hooks: Nudge(site.site, direction, step))
                return Double(metric(logits).toArray()[0])
            }
            func difference(_ step: Float) throws -> Double { (try nudged(step) - nudged(-step)) / Double(2 * step) }
            let numeric = (4 * (try difference(2e-3)) - (try difference(4e-3))) / 3
            // Within 2% of the terms' magnitude: a sum that cancels to near zero leaves the
            // float32 differences little to measure.
            if !(abs(analytic - numeric) <= 2e-2 * max(terms.reduce(0) { $0 + abs($1) }, 1e-3)) {
                c.fail("\(site): the gradient gives \(analytic) along a random direction, finite differences \(numeric)")
            }
        }
    }

    private static func againstTorch(_ c: inout CheckContext, _ golden: SafetensorsFile) throws {
        let model = c.model, sequences = c.fixture.sequences
        let sites = sites(model)
        for (i, tokens) in sequences.enumerated() {
            let recorder = GradientRecorder(sites.map(\.site) + [CanonicalSite.logits.site], keepValues: false)
            let (answer, wrong) = answers(i, vocabulary: model.dimensions.vocabulary)
            let result = try model.backward(TokenBatch([tokens]), hooks: recorder) { logits in
                logitDifference(logits, [(0, tokens.count - 1, answer, wrong)])
            }
            let metric = try golden.tensor("metric.\(i)").toArray()[0]
            if !(abs(result.metric - metric) <= 1e-4) { c.fail("sequence \(i): metric \(result.metric), torch's \(metric)") }
            for (key, site) in sites + [("logits", CanonicalSite.logits.site)] {
                if let problem = mismatch(recorder.gradients[site], try golden.tensor("grad.\(key).\(i)"), relative: 1e-4) {
                    c.fail("\(key) of sequence \(i) alone against torch: \(problem)")
                }
            }
        }
        // One left-padded batch, the metric summed over its rows. Patterns are left out: a
        // padded row's pattern has the padding's keys too.
        let batch = TokenBatch(sequences)
        let batchSites = sites.filter { !$0.key.hasPrefix("pattern") }
        let recorder = GradientRecorder(batchSites.map(\.site), keepValues: false)
        _ = try model.backward(batch, hooks: recorder) { logits in
            logitDifference(logits, sequences.indices.map { i in
                let (answer, wrong) = answers(i, vocabulary: model.dimensions.vocabulary)
                return (i, batch.length - 1, answer, wrong)
            })
        }
        for (key, site) in batchSites {
            guard let gradient = recorder.gradients[site] else { c.fail("\(key) in the padded batch: no gradient"); continue }
            for i in sequences.indices {
                let row = gradient.select(axis: 0, i), pad = batch.padding[i]
                if let problem = mismatch(row.slice(axis: 0, pad..<batch.length).contiguous(), try golden.tensor("grad.\(key).\(i)"), relative: 1e-4) {
                    c.fail("\(key), row \(i) of the padded batch against torch: \(problem)")
                }
                if pad > 0, let largest = row.slice(axis: 0, 0..<pad).toArray().map(abs).max(), largest != 0 {
                    c.fail("\(key): the padding of row \(i) got gradient \(largest)")
                }
            }
        }
    }
}

/// Adds step · direction to one site's value.
private final class Nudge: ForwardHooks {
    let site: Site, direction: [Float], step: Float
    init(_ site: Site, _ direction: [Float], _ step: Float) { (self.site, self.direction, self.step) = (site, direction, step) }
    func wants(_ s: Site) -> Bool { s == site }
    func visit(_ s: Site, _ value: inout Tensor) throws {
        let nudged = value.copy()
        for i in 0..<nudged.count { nudged.data[i] += step * direction[i] }
        value = nudged
    }
}

/// SplitMix64: the suite's inputs are the same every run.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
