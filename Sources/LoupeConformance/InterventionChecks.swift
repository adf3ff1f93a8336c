import Foundation
import LoupeModels
import LoupeTensor
import LoupeTrace

/// The `interventions` check: each registered intervention the suite has cases for, run in
/// a batched trace, against the same edit written as hooks on the edited prompt run alone.
///
/// The trace's invocations are [clean, corrupted, third, longer]; every case edits
/// invocation 1 (corrupted) and reads 0 and 2; the longer fourth makes the others left-padded.
enum InterventionChecks {
    /// One use of an intervention and the hooks that do the same by hand.
    struct Case {
        let intervention: String
        let label: String
        let params: [String: TraceValue]
        /// The canonical sites it acts at or reads.
        let sites: [CanonicalSite]
        /// The edits on corrupted alone, given each prompt's recorded values at `sites`.
        let edits: (_ recorded: Recorded) -> [Site: (inout Tensor) -> Void]
    }

    /// Values recorded on each of clean (0), corrupted (1) and third (2) alone: [1, T, ...].
    struct Recorded {
        let values: [[Site: Tensor]]
        func callAsFunction(_ invoke: Int, _ site: CanonicalSite) -> Tensor { values[invoke][site.site]! }
    }

    static func run(_ c: inout CheckContext) throws {
        let model = c.model, d = model.dimensions
        let prompts = ConformancePrompts(vocabulary: d.vocabulary)
        let invocations = [prompts.clean, prompts.corrupted, prompts.third, prompts.longer]
        let runner = try TraceRunner(model: model, sites: try c.sites(), interventions: c.interventions)
        let all = cases(d, length: ConformancePrompts.length)
        let unedited = try model.forward(TokenBatch([prompts.corrupted]), logits: .all)
        var ran = [String: Int]()
        var refused = 0
        for item in all where c.interventions.intervention(named: item.intervention) != nil {
            let what = "\(item.intervention) (\(item.label))"
            let trace = Trace(invocations: invocations, nodes: [
                ["id": 0, "op": "intervene", "name": .string(item.intervention), "invoke": 1, "params": .map(item.params)],
                ["id": 1, "op": "get", "site": .string(CanonicalSite.logits.path), "io": "output", "invoke": 1],
                ["id": 2, "op": "save", "x": .ref(1), "name": "logits"],
            ])
            ran[item.intervention, default: 0] += 1
            guard c.declares(item.sites) else {
                // A site the model does not provide: a thrown error naming it, never a crash.
                let absent = item.sites.first { !model.canonicalSites.contains($0.kind) }!
                refused += 1
                do {
                    _ = try runner.run(trace)
                    c.fail("\(what) ran although the model does not declare \(absent.kind.rawValue)")
                } catch {
                    let text = "\(error)"
                    if !text.contains(absent.kind.rawValue) || !text.contains(model.architecture) {
                        c.fail("\(what) at an undeclared site threw an error that does not name the site and the architecture: \(text)")
                    }
                }
                continue
            }
            let traced: Tensor
            do {
                guard let saved = try runner.run(trace)["logits"] else { c.fail("\(what): the trace saved nothing"); continue }
                traced = saved
            } catch {
                c.fail("\(what): the trace failed: \(error)")
                continue
            }
            // The same by hand: each prompt alone, recorded; then corrupted alone, edited.
            let sites = item.sites.map(\.site)
            var values = [[Site: Tensor]]()
            for tokens in [prompts.clean, prompts.corrupted, prompts.third] {
                let recorder = ActivationRecorder(sites)
                _ = try model.forward(TokenBatch([tokens]), hooks: recorder, logits: .none)
                values.append(recorder.values)
            }
            guard values.allSatisfy({ v in sites.allSatisfy { v[$0] != nil } }) else {
                c.fail("\(what): a declared site among \(sites) never fired")
                continue
            }
            let expected = try model.forward(TokenBatch([prompts.corrupted]), hooks: Edits(item.edits(Recorded(values: values))), logits: .all)
            NumericChecks.compare(&c, traced, expected, NumericChecks.parityTolerance, "\(what) in a padded trace against hooks on the prompt alone")
            let effect = NumericChecks.maxDifference(expected, unedited)
            if !(effect > 1e-4) {
                c.fail("\(what) changes the logits by \(effect) only: the comparison proves nothing on this fixture")
            }
        }
        let registered = c.interventions.names
        let covered = registered.filter { ran[$0] != nil }
        c.note("checked: " + covered.map { "\($0) (\(ran[$0]!) cases)" }.joined(separator: ", ")
               + (refused == 0 ? "" : "; \(refused) of them at sites the model does not declare, refused with a typed error as they must be"))
        let uncovered = registered.filter { ran[$0] == nil }
        if !uncovered.isEmpty { c.note("not checked (the suite has no case for them): " + uncovered.joined(separator: ", ")) }
    }

    /// The cases, for a model of dimensions `d` and prompts of `length` tokens.
    static func cases(_ d: ModelDimensions, length: Int) -> [Case] {
        let last = d.layers - 1, lastHead = d.heads - 1, lastKV = d.keyValueHeads - 1
        let firstAndLast = Array(Set([0, last])).sorted()
        let hidden = d.hidden
        let vector = Tensor(shape: [hidden], values: (0..<hidden).map { Float(($0 * 37) % 11) / 10 - 0.5 })
        /// value[:, t] = source[:, t] at each position.
        func copy(_ source: Tensor, _ positions: [Int]) -> (inout Tensor) -> Void {
            { value in for t in positions { value.select(axis: 1, t).assign(from: source.select(axis: 1, t)) } }
        }
        /// value[:, t, head] = source[:, t, head] at each position.
        func copyHead(_ source: Tensor, _ head: Int, _ positions: [Int]) -> (inout Tensor) -> Void {
            { value in for t in positions { value.select(axis: 1, t).select(axis: 1, head).assign(from: source.select(axis: 1, t).select(axis: 1, head)) } }
        }
        let every = Array(0..<length)
        return [
            Case(intervention: "residual_patch", label: "resid_post of layers \(firstAndLast) at positions 3 and -2",
                 params: ["source": 0, "layers": .array(firstAndLast.map { .int($0) }), "positions": [3, -2]],
                 sites: firstAndLast.map { .residPost($0) }) { r in
                Dictionary(uniqueKeysWithValues: firstAndLast.map { l in (CanonicalSite.residPost(l).site, copy(r(0, .residPost(l)), [3, length - 2])) })
            },
            Case(intervention: "residual_patch", label: "resid_pre of layer \(last) from the third prompt",
                 params: ["source": 2, "layers": .int(last), "stream": "resid_pre"], sites: [.residPre(last)]) { r in
                [CanonicalSite.residPre(last).site: copy(r(2, .residPre(last)), every)]
            },
            Case(intervention: "residual_patch", label: "resid_mid of layer 0 at position 6",
                 params: ["source": 0, "layers": 0, "positions": [6], "stream": "resid_mid"], sites: [.residMid(0)]) { r in
                [CanonicalSite.residMid(0).site: copy(r(0, .residMid(0)), [6])]
            },
            Case(intervention: "head_patch", label: "z of head \(lastHead), layer \(last), positions 3, 6, 7",
                 params: ["source": 0, "layer": .int(last), "head": .int(lastHead), "positions": [3, 6, 7]], sites: [.z(last)]) { r in
                [CanonicalSite.z(last).site: copyHead(r(0, .z(last)), lastHead, [3, 6, 7])]
            },
            Case(intervention: "head_patch", label: "q of head 0, layer 0, from the third prompt",
                 params: ["source": 2, "layer": 0, "head": 0, "component": "q"], sites: [.q(0)]) { r in
                [CanonicalSite.q(0).site: copyHead(r(2, .q(0)), 0, every)]
            },
            Case(intervention: "head_patch", label: "k of key/value head \(lastKV), layer \(last), last position",
                 params: ["source": 0, "layer": .int(last), "head": .int(lastKV), "component": "k", "positions": [-1]], sites: [.k(last)]) { r in
                [CanonicalSite.k(last).site: copyHead(r(0, .k(last)), lastKV, [length - 1])]
            },
            Case(intervention: "head_patch", label: "v of key/value head \(lastKV), layer 0",
                 params: ["source": 0, "layer": 0, "head": .int(lastKV), "component": "v"], sites: [.v(0)]) { r in
                [CanonicalSite.v(0).site: copyHead(r(0, .v(0)), lastKV, every)]
            },
            Case(intervention: "ablate", label: "zero head \(min(1, lastHead)) of layer 0",
                 params: ["component": "head", "layer": 0, "head": .int(min(1, lastHead))], sites: [.z(0)]) { _ in
                [CanonicalSite.z(0).site: { $0.select(axis: 2, min(1, lastHead)).fill(0) }]
            },
            Case(intervention: "ablate", label: "zero the MLP of layer \(last) at positions -1 and 2",
                 params: ["component": "mlp", "layer": .int(last), "positions": [-1, 2]], sites: [.mlpOut(last)]) { _ in
                [CanonicalSite.mlpOut(last).site: { value in
                    value.select(axis: 1, length - 1).fill(0)
                    value.select(axis: 1, 2).fill(0)
                }]
            },
            Case(intervention: "ablate", label: "mean of clean and third for resid_post of layer 0 at positions 3 and 6",
                 params: ["component": "resid", "layer": 0, "positions": [3, 6], "mode": "mean", "reference": [0, 2]],
                 sites: [.residPost(0)]) { r in
                let a = r(0, .residPost(0)), b = r(2, .residPost(0))
                return [CanonicalSite.residPost(0).site: { value in
                    for t in [3, 6] {
                        let x = a.select(axis: 1, t).toArray(), y = b.select(axis: 1, t).toArray()
                        value.select(axis: 1, t).assign(from: Tensor(shape: [1, x.count], values: zip(x, y).map { ($0 + $1) / 2 }))
                    }
                }]
            },
            Case(intervention: "ablate", label: "resample head \(lastHead) of layer \(last) from the third prompt",
                 params: ["component": "head", "layer": .int(last), "head": .int(lastHead), "mode": "resample", "source": 2],
                 sites: [.z(last)]) { r in
                [CanonicalSite.z(last).site: copyHead(r(2, .z(last)), lastHead, every)]
            },
            // At a position whose token clean and corrupted do not share: a parallel block's MLP
            // (GPT-NeoX, Pythia) reads layer 0's input, its own token's embedding alone, so at a
            // shared token the resample would change nothing.
            Case(intervention: "ablate", label: "resample the MLP of layer 0 at position 6 from clean",
                 params: ["component": "mlp", "layer": 0, "positions": [6], "mode": "resample", "source": 0], sites: [.mlpOut(0)]) { r in
                [CanonicalSite.mlpOut(0).site: copy(r(0, .mlpOut(0)), [6])]
            },
            Case(intervention: "steer", label: "2.5 x a vector into resid_post of layer 0 at positions 0 and -1",
                 params: ["layers": 0, "vector": .tensor(vector), "scale": 2.5, "positions": [0, -1]], sites: [.residPost(0)]) { _ in
                [CanonicalSite.residPost(0).site: { value in
                    for t in [0, length - 1] {
                        let row = value.select(axis: 1, t)
                        row.assign(from: Tensor(shape: row.shape, values: zip(row.toArray(), vector.toArray()).map { $0 + 2.5 * $1 }))
                    }
                }]
            },
            Case(intervention: "steer", label: "-1 x a vector into resid_mid of layer \(last) everywhere",
                 params: ["layers": .int(last), "vector": .tensor(vector), "scale": -1, "stream": "resid_mid"], sites: [.residMid(last)]) { _ in
                [CanonicalSite.residMid(last).site: { value in
                    for t in 0..<length {
                        let row = value.select(axis: 1, t)
                        row.assign(from: Tensor(shape: row.shape, values: zip(row.toArray(), vector.toArray()).map { $0 - $1 }))
                    }
                }]
            },
        ]
    }
}

/// Applies a closure at each of its sites.
final class Edits: ForwardHooks {
    let edits: [Site: (inout Tensor) -> Void]
    init(_ edits: [Site: (inout Tensor) -> Void]) { self.edits = edits }
    func wants(_ site: Site) -> Bool { edits[site] != nil }
    func visit(_ site: Site, _ value: inout Tensor) throws { edits[site]!(&value) }
}
