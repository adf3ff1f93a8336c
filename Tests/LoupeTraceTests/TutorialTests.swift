import Foundation
import LoupeModels
import LoupeSweeps
import LoupeTensor
import LoupeTrace
import LoupeTestSupport
import XCTest

/// The tutorial's experiments written as traces, checked against the plain engine with
/// hand-written hooks (and, on SmolLM2, against the HF reference values).
final class TutorialTests: XCTestCase {
    // Two prompts of the tiny fixtures' vocabulary that differ at positions 3 and 6.
    let clean = [5, 17, 300, 42, 8, 99, 23, 61]
    let corrupted = [5, 17, 300, 7, 8, 99, 140, 61]
    let (correct, wrong) = (17, 42)

    /// Block output site for the tutorial's residual patching, and the tuple item to ask for.
    func blockSite(_ name: String, _ layer: Int) -> (path: String, item: Int?) {
        name.hasPrefix("gpt2") ? ("transformer.h.\(layer)", 0) : ("model.layers.\(layer)", nil)
    }

    func logitDiff(_ logits: Tensor) -> Float {
        let last = logits.select(axis: 0, 0).select(axis: 0, logits.shape[1] - 1)
        return last[correct] - last[wrong]
    }

    // MARK: Cells 8 and 9 on SmolLM2

    /// The clean and corrupted logit differences of the tutorial's IOI pair on SmolLM2,
    /// as one trace of two invocations, match the HF reference.
    func testSmolLM2CleanAndCorruptedLogitDifferences() throws {
        let runner = try Fixtures.shared.runner("SmolLM2-135M-Instruct.Q4_1.gguf")
        let golden = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/models/smollm2-golden.json"))) as! [String: Any]
        let seed = golden["ioi_seed"] as! [String: Any]
        let ids = seed["answer_ids"] as! [Int]
        let cleanCase = seed["clean"] as! [String: Any], corruptedCase = seed["corrupted"] as! [String: Any]
        var b = TraceBuilder()
        for invoke in 0..<2 {
            let logits = b.get("lm_head", invoke: invoke)
            b.save(b.logitDiff(logits, ids[0], ids[1]), invoke == 0 ? "clean_logit_diff" : "corrupted_logit_diff")
        }
        let result = try runner.run(b.trace([cleanCase["ids"] as! [Int], corruptedCase["ids"] as! [Int]]))
        XCTAssertEqual(result.logits, .last, "only the last position is read")
        XCTAssertEqual(Double(scalar(result["clean_logit_diff"])), cleanCase["logit_diff"] as! Double, accuracy: 2e-3)
        XCTAssertEqual(Double(scalar(result["corrupted_logit_diff"])), corruptedCase["logit_diff"] as! Double, accuracy: 2e-3)
        XCTAssertEqual(String(format: "%.3f", scalar(result["clean_logit_diff"])), "5.137")
        XCTAssertEqual(String(format: "%.3f", scalar(result["corrupted_logit_diff"])), "-3.829")
    }

    // MARK: Cell 13: the batched residual-stream patching

    /// The tutorial's batched cell as a trace: clean, corrupted, and one invocation per
    /// layer and position patching the clean block output into the corrupted run.
    func residualPatchingTrace(_ name: String, layers: Int) -> (Trace, labels: [[String]]) {
        var b = TraceBuilder()
        var cleanHS = [TraceValue]()
        for layer in 0..<layers {
            let site = blockSite(name, layer)
            cleanHS.append(b.get(site.path, item: site.item, invoke: 0))
        }
        let cleanDiff = b.logitDiff(b.get("lm_head", invoke: 0), correct, wrong)
        b.save(cleanDiff, "clean")
        let corruptedDiff = b.logitDiff(b.get("lm_head", invoke: 1), correct, wrong)
        b.save(corruptedDiff, "corrupted")
        var invocations = [clean, corrupted]
        var labels = [[String]]()
        for layer in 0..<layers {
            var row = [String]()
            for t in 0..<clean.count {
                let invoke = invocations.count
                invocations.append(corrupted)
                let site = blockSite(name, layer)
                let hidden = b.get(site.path, item: site.item, invoke: invoke)
                b.add("setindex", ["x": hidden, "key": [all, .int(t), all], "value": b.index(cleanHS[layer], [all, .int(t), all])])
                let patched = b.logitDiff(b.get("lm_head", invoke: invoke), correct, wrong)
                let result = b.div(b.sub(patched, corruptedDiff), b.sub(cleanDiff, corruptedDiff))
                b.save(result, "r\(layer)_\(t)")
                row.append("r\(layer)_\(t)")
            }
            labels.append(row)
        }
        return (b.trace(invocations), labels)
    }

    func testBatchedResidualPatchingEqualsOnePassPerPatch() throws {
        for name in ["gpt2-tiny", "llama-tiny"] {
            let runner = try Fixtures.shared.runner(name)
            let model = runner.model
            let layers = model.dimensions.layers
            let (trace, labels) = residualPatchingTrace(name, layers: layers)
            let result = try runner.run(trace)
            XCTAssertEqual(result.logits, .last, name)
            XCTAssertEqual(result.slots, (2 + layers * clean.count) * clean.count, name)

            // The plain path: every patch its own forward pass with a hook.
            let sites = (0..<layers).map { Site(blockSite(name, $0).path, .output) }
            let recorder = ActivationRecorder(sites)
            let cleanDiff = logitDiff(try model.forward(TokenBatch([clean]), hooks: recorder, logits: .last))
            let corruptedDiff = logitDiff(try model.forward(TokenBatch([corrupted]), logits: .last))
            XCTAssertEqual(scalar(result["clean"]), cleanDiff, accuracy: 1e-4, name)
            XCTAssertEqual(scalar(result["corrupted"]), corruptedDiff, accuracy: 1e-4, name)
            XCTAssertGreaterThan(abs(cleanDiff - corruptedDiff), 1e-3, "\(name): the prompts must matter")
            var moved = 0
            for layer in 0..<layers {
                for t in 0..<clean.count {
                    let cleanHidden = recorder.values[sites[layer]]!
                    let logits = try model.forward(TokenBatch([corrupted]), hooks: EditHook(sites[layer]) { value in
                        value.slice(axis: 1, t..<(t + 1)).assign(from: cleanHidden.slice(axis: 1, t..<(t + 1)))
                    }, logits: .last)
                    let expected = (logitDiff(logits) - corruptedDiff) / (cleanDiff - corruptedDiff)
                    let got = scalar(result[labels[layer][t]])
                    XCTAssertEqual(got, expected, accuracy: 1e-4, "\(name) layer \(layer) position \(t)")
                    if abs(expected) > 1e-3 { moved += 1 }
                }
            }
            XCTAssertGreaterThan(moved, 0, "\(name): some patch must change the result")
        }
    }

    // MARK: Cell 22: attention-head patching through o_proj's input

    let headLayers = 2, heads = 4

    /// The tutorial's head-patching cell on the first `headLayers` layers of a fixture.
    func headPatchingTrace(viaPlugin: Bool, model: String = "llama-tiny") -> Trace {
        tutorialHeadPatchingTrace(clean: clean, corrupted: corrupted, correct: correct, wrong: wrong, layers: headLayers,
                                  heads: heads, gpt2: model.hasPrefix("gpt2"), viaPlugin: viaPlugin)
    }

    func testHeadPatchingByRearrangingEqualsHeadPatchPluginAndPlainHooks() throws {
        let runner = try Fixtures.shared.runner("llama-tiny")
        let model = runner.model
        let d = model.dimensions
        XCTAssertEqual(d.heads, heads)
        XCTAssertLessThan(d.keyValueHeads, d.heads, "the fixture has grouped-query attention")
        let manual = try runner.run(headPatchingTrace(viaPlugin: false))
        let plugin = try runner.run(headPatchingTrace(viaPlugin: true))

        let sites = (0..<headLayers).map { Site("model.layers.\($0).self_attn.o_proj", .input) }
        let recorder = ActivationRecorder(sites)
        let cleanDiff = logitDiff(try model.forward(TokenBatch([clean]), hooks: recorder, logits: .last))
        let corruptedDiff = logitDiff(try model.forward(TokenBatch([corrupted]), logits: .last))
        XCTAssertEqual(scalar(manual["clean"]), cleanDiff, accuracy: 1e-4)
        XCTAssertEqual(scalar(plugin["corrupted"]), corruptedDiff, accuracy: 1e-4)
        var moved = 0
        for layer in 0..<headLayers {
            for head in 0..<heads {
                let columns = (head * d.headDim)..<((head + 1) * d.headDim)
                let source = recorder.values[sites[layer]]!
                let logits = try model.forward(TokenBatch([corrupted]), hooks: EditHook(sites[layer]) { z in
                    z.slice(axis: 2, columns).assign(from: source.slice(axis: 2, columns))
                }, logits: .last)
                let expected = (logitDiff(logits) - corruptedDiff) / (cleanDiff - corruptedDiff)
                XCTAssertEqual(scalar(manual["h\(layer)_\(head)"]), expected, accuracy: 1e-4, "rearranged, layer \(layer) head \(head)")
                XCTAssertEqual(scalar(plugin["h\(layer)_\(head)"]), expected, accuracy: 1e-4, "head_patch, layer \(layer) head \(head)")
                if abs(expected) > 1e-3 { moved += 1 }
            }
        }
        XCTAssertGreaterThan(moved, 0, "some head must matter")
    }

    // MARK: The same experiments as sweeps

    /// The trace of the tutorial's batched cell and the head-patching trace give the
    /// matrices the sweep engine computes with its own shortcuts.
    func testTutorialTracesEqualTheSweeps() throws {
        for name in ["gpt2-tiny", "llama-tiny"] {
            let runner = try Fixtures.shared.runner(name)
            let layers = runner.model.dimensions.layers
            let sweep = PatchingSweep(model: runner.model, interventions: testInterventions)
            let metric = SweepMetric.logitDifference(answer: correct, wrong: wrong)

            let (trace, labels) = residualPatchingTrace(name, layers: layers)
            let traced = try runner.run(trace)
            let residual = try sweep.run(SweepRequest(clean: clean, corrupted: corrupted, kind: .residual, metric: metric))
            XCTAssertEqual(scalar(traced["clean"]), residual.clean, accuracy: 1e-4, name)
            XCTAssertEqual(scalar(traced["corrupted"]), try XCTUnwrap(residual.corrupted), accuracy: 1e-4, name)
            for layer in 0..<layers {
                for t in 0..<clean.count {
                    XCTAssertEqual(scalar(traced[labels[layer][t]]), residual.values[layer][t], accuracy: 1e-4, "\(name) residual \(layer), \(t)")
                }
            }

            let headsTraced = try runner.run(headPatchingTrace(viaPlugin: false, model: name))
            let heads = try sweep.run(SweepRequest(clean: clean, corrupted: corrupted, kind: .heads, metric: metric))
            for layer in 0..<headLayers {
                for head in 0..<self.heads {
                    XCTAssertEqual(scalar(headsTraced["h\(layer)_\(head)"]), heads.values[layer][head], accuracy: 1e-4, "\(name) head \(layer), \(head)")
                }
            }
        }
    }

    // MARK: Shared rows

    /// Invocations with the same tokens share their rows until their first write: the same
    /// numbers as the plain batch (a row per invocation), with fewer token-layers computed.
    func testSharingRowsOfEqualInvocationsGivesThePlainBatchNumbers() throws {
        for name in ["gpt2-tiny", "llama-tiny"] {
            let runner = try Fixtures.shared.runner(name)
            let layers = runner.model.dimensions.layers
            var traces = [residualPatchingTrace(name, layers: layers).0]
            traces.append(headPatchingTrace(viaPlugin: false, model: name))
            // A write at the embedding, one after the last layer, and an unwritten duplicate.
            var b = TraceBuilder()
            let embedding = name.hasPrefix("gpt2") ? "transformer.wte" : "model.embed_tokens"
            let finalNorm = name.hasPrefix("gpt2") ? "transformer.ln_f" : "model.norm"
            b.add("setindex", ["x": b.get(embedding, invoke: 1), "key": [0, 2], "value": 0.25])
            b.add("setindex", ["x": b.get(finalNorm, invoke: 2), "key": [0, -1, ["slice": [nil, 8]]], "value": 0])
            for i in 0..<4 { b.save(b.get("lm_head", invoke: i), "logits\(i)") }
            traces.append(b.trace([clean, clean, clean, clean]))
            // Copying position 0 looks like a no-op, but the source was steered first.
            var c = TraceBuilder()
            let vector = Tensor(shape: [runner.model.dimensions.hidden], values: (0..<runner.model.dimensions.hidden).map { Float($0 % 3) - 1 })
            c.add("intervene", ["name": "steer", "invoke": 0, "params": ["layers": 0, "vector": .tensor(vector)]])
            let block = blockSite(name, 1)
            c.add("setindex", ["x": c.get(block.path, item: block.item, invoke: 1), "key": [all, 0],
                               "value": c.index(c.get(block.path, item: block.item, invoke: 0), [all, 0])])
            c.save(c.get("lm_head", invoke: 1), "copied")
            c.save(c.get("lm_head", invoke: 2), "untouched")
            traces.append(c.trace([clean, clean, clean]))
            for (k, trace) in traces.enumerated() {
                let compiled = try runner.compile(trace)
                let sharing = try runner.run(compiled)
                let plain = try runner.run(compiled, shareRows: false)
                XCTAssertEqual(sharing.names, plain.names)
                XCTAssertLessThan(sharing.tokenLayers, plain.tokenLayers, "\(name) trace \(k)")
                XCTAssertEqual(plain.tokenLayers, plain.plainTokenLayers)
                for saved in plain.names {
                    assertClose(sharing[saved], plain[saved]!, tolerance: 1e-4, "\(name) trace \(k): \(saved)")
                }
            }
            // Patches before position 3, where the prompts first differ, copy equal values:
            // those runs keep sharing the corrupted run's rows to the end.
            let cell = try runner.run(traces[0])
            XCTAssertEqual(cell.rows, 2 + layers * (clean.count - 3), name)
            let last = try runner.run(traces[2])
            XCTAssertEqual(last.rows, 3, "the unwritten duplicates share a row to the end")
            XCTAssertGreaterThan(maxDifference(last["logits1"]!, last["logits0"]!), 1e-4)
            XCTAssertGreaterThan(maxDifference(last["logits2"]!, last["logits0"]!), 1e-4)
            XCTAssertEqual(maxDifference(last["logits3"]!, last["logits0"]!), 0)
            let copied = try runner.run(traces[3])
            XCTAssertGreaterThan(maxDifference(copied["copied"]!, copied["untouched"]!), 1e-4, "\(name): the copy is a real write")
        }
    }
}
