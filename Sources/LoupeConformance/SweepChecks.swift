import Foundation
import LoupeModels
import LoupeSweeps
import LoupeTrace

/// The `sweeps` check: every sweep kind, patched and ablated every way, against the plain
/// path (`PatchingSweep.runPlain`: one full invocation per cell, the metric read from full
/// logits), which shares nothing with the sweep's reuse of cached keys and values.
enum SweepChecks {
    /// In the metric's units (sweeps are compared raw, not normalised).
    static let tolerance: Float = 1e-4

    static func run(_ c: inout CheckContext) throws {
        let model = c.model, d = model.dimensions
        let p = ConformancePrompts(vocabulary: d.vocabulary)
        let (clean, corrupted, references) = p.forSweeps()
        let sweep = PatchingSweep(model: model, interventions: c.interventions)
        let logitDifference = SweepMetric.logitDifference(answer: p.answer, wrong: p.wrong)
        var requests = [(String, SweepRequest)]()
        // Neurons run on the plain path itself: nothing to check them against.
        for kind in SweepKind.allCases where kind != .neurons {
            for intervention in [SweepIntervention.patch, .ablate(.zero), .ablate(.mean), .ablate(.resample)] {
                let other = intervention == .ablate(.zero) || intervention == .ablate(.mean) ? nil : corrupted
                requests.append(("\(kind.rawValue) \(name(intervention))", SweepRequest(
                    pairs: [SweepPair(clean: clean, corrupted: other, metric: logitDifference)], kind: kind,
                    intervention: intervention, reference: intervention == .ablate(.mean) ? references : [], normalized: false)))
            }
        }
        // The other metrics, which read the whole unembedding.
        requests.append(("residual patch, KL from clean", SweepRequest(
            pairs: [SweepPair(clean: clean, corrupted: corrupted, metric: .klFromClean)], kind: .residual, normalized: false)))
        requests.append(("heads zero ablation, log p(answer)", SweepRequest(
            pairs: [SweepPair(clean: clean, corrupted: nil, metric: .logProbability(answer: p.answer))], kind: .heads,
            intervention: .ablate(.zero), normalized: false)))
        // Pairs of different lengths: their rows left-padded in the sweep's stacked passes.
        for intervention in [SweepIntervention.patch, .ablate(.resample)] {
            requests.append(("heads \(name(intervention)), pairs of \(clean.count) and \(p.shortClean.count) tokens", SweepRequest(
                pairs: [SweepPair(clean: clean, corrupted: corrupted, metric: logitDifference),
                        SweepPair(clean: p.shortClean, corrupted: p.shortCorrupted, metric: .logitDifference(answer: p.wrong, wrong: p.answer))],
                kind: .heads, intervention: intervention, normalized: false)))
        }

        var refused = 0
        for (label, request) in requests {
            let needed = sites(request, d)
            guard c.declares(needed) else {
                let absent = needed.first { !model.canonicalSites.contains($0.kind) }!
                refused += 1
                do {
                    _ = try sweep.run(request)
                    c.fail("sweep \(label) ran although the model does not declare \(absent.kind.rawValue)")
                } catch {
                    let text = "\(error)"
                    if !text.contains(absent.kind.rawValue) || !text.contains(model.architecture) {
                        c.fail("sweep \(label) over an undeclared site threw an error that does not name the site and the architecture: \(text)")
                    }
                }
                continue
            }
            let result: SweepResult, plain: SweepResult
            do {
                result = try sweep.run(request)
                plain = try sweep.runPlain(request)
            } catch {
                c.fail("sweep \(label) failed: \(error)")
                continue
            }
            compare(&c, result, plain, request, label, d)
        }
        c.note("\(requests.count - refused) sweeps against the plain path"
               + (refused == 0 ? "" : "; \(refused) over sites the model does not declare, refused with a typed error as they must be"))
    }

    /// Every pair's clean and corrupted values and every cell, and the mean matrix.
    static func compare(_ c: inout CheckContext, _ result: SweepResult, _ plain: SweepResult, _ request: SweepRequest, _ label: String,
                        _ d: ModelDimensions) {
        guard result.pairs.count == plain.pairs.count, result.pairs.count == request.pairs.count else {
            return c.fail("sweep \(label): \(result.pairs.count) pair results, the plain path \(plain.pairs.count), pairs asked \(request.pairs.count)")
        }
        var worst: (Float, String) = (0, "")
        func note(_ a: Float, _ b: Float, _ where_: @autoclosure () -> String) {
            let difference = abs(a - b)
            if difference.isNaN || difference > worst.0 { worst = (difference.isNaN ? .nan : difference, where_()) }
        }
        for (index, (got, expected)) in zip(result.pairs, plain.pairs).enumerated() {
            note(got.clean, expected.clean, "pair \(index)'s clean value")
            if (got.corrupted == nil) != (expected.corrupted == nil) {
                c.fail("sweep \(label), pair \(index): corrupted value \(String(describing: got.corrupted)), plain \(String(describing: expected.corrupted))")
            }
            note(got.corrupted ?? 0, expected.corrupted ?? 0, "pair \(index)'s corrupted value")
            let columns = request.columns(length: request.pairs[index].clean.count, d)
            guard got.values.count == d.layers, expected.values.count == d.layers,
                  got.values.allSatisfy({ $0.count == columns }), expected.values.allSatisfy({ $0.count == columns }) else {
                c.fail("sweep \(label), pair \(index): the matrix is not \(d.layers) x \(columns)")
                continue
            }
            for layer in 0..<d.layers {
                for column in 0..<columns {
                    note(got.values[layer][column], expected.values[layer][column], "pair \(index), layer \(layer), column \(column)")
                }
            }
        }
        if worst.0.isNaN || worst.0 > tolerance {
            c.fail("sweep \(label) against the plain path: max |difference| \(worst.0) > \(tolerance), at \(worst.1)")
        }
        if result.tokenLayers >= result.plainTokenLayers {
            c.fail("sweep \(label) computed \(result.tokenLayers) token-layers, no fewer than the plain path's \(result.plainTokenLayers)")
        }
    }

    /// The canonical sites a sweep reads or edits: its unit's, and every block's entering
    /// residual stream (each edited run starts from it).
    static func sites(_ request: SweepRequest, _ d: ModelDimensions) -> [CanonicalSite] {
        (0..<d.layers).flatMap { [.residPre($0), request.kind.site(layer: $0)] }
    }

    static func name(_ intervention: SweepIntervention) -> String {
        switch intervention {
        case .patch: return "patch"
        case .ablate(let method): return "\(method.rawValue) ablation"
        }
    }
}
