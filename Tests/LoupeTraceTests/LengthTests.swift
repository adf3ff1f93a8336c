import Foundation
import LoupeModels
import LoupeTensor
import LoupeTrace
import LoupeTestSupport
import XCTest

/// Invocations of different lengths in one batch give each one's numbers alone.
final class LengthTests: XCTestCase {
    let sequences = [[226, 166, 280, 485, 436, 17, 429], [458, 54, 322], [60, 258, 420, 112, 62, 371, 65, 88, 327, 400, 344, 160], [216]]

    func sites(_ model: String) -> [(site: String, io: String, item: Int?)] {
        model.hasPrefix("gpt2")
            ? [("transformer.h.1", "output", 0), ("transformer.h.0.attn.c_proj", "input", nil), ("blocks.0.attn.pattern", "output", nil), ("lm_head", "output", nil)]
            : [("model.layers.1", "output", nil), ("model.layers.0.self_attn.o_proj", "input", nil), ("blocks.0.attn.pattern", "output", nil), ("lm_head", "output", nil)]
    }

    func testEachInvocationSeesItsOwnNumbers() throws {
        for model in ["gpt2-tiny", "llama-tiny"] {
            let runner = try Fixtures.shared.runner(model)
            var b = TraceBuilder()
            for invoke in sequences.indices {
                for (i, s) in sites(model).enumerated() {
                    b.save(b.get(s.site, io: s.io, item: s.item, invoke: invoke), "\(invoke).\(i)")
                }
            }
            let result = try runner.run(b.trace(sequences))
            XCTAssertEqual(result.logits, .all)
            for (invoke, tokens) in sequences.enumerated() {
                let recorder = ActivationRecorder(sites(model).map { Site($0.site, SiteIO(rawValue: $0.io)!) })
                _ = try runner.model.forward(TokenBatch([tokens]), hooks: recorder)
                for (i, s) in sites(model).enumerated() {
                    let alone = recorder.values[Site(s.site, SiteIO(rawValue: s.io)!)]!
                    XCTAssertEqual(result["\(invoke).\(i)"]?.shape[1], s.site.hasSuffix("pattern") ? runner.model.dimensions.heads : tokens.count)
                    assertClose(result["\(invoke).\(i)"], alone, "\(model) invocation \(invoke) at \(s.site).\(s.io)")
                }
            }
        }
    }

    /// Only the last position's logits are computed when only they are read, also with padding.
    func testLastPositionLogitsWithPadding() throws {
        for model in ["gpt2-tiny", "llama-tiny"] {
            let runner = try Fixtures.shared.runner(model)
            var b = TraceBuilder()
            for invoke in sequences.indices {
                b.save(b.index(b.get("lm_head", invoke: invoke), [0, -1]), "last\(invoke)")
            }
            let result = try runner.run(b.trace(sequences))
            XCTAssertEqual(result.logits, .last)
            for (invoke, tokens) in sequences.enumerated() {
                let alone = try runner.model.forward(TokenBatch([tokens]), logits: .last)
                assertClose(result["last\(invoke)"], alone.select(axis: 0, 0).select(axis: 0, 0), "\(model) invocation \(invoke)")
            }
        }
    }

    /// Patching across lengths: the last position of a long prompt's block output into a
    /// short prompt's last position, by hand and through residual_patch.
    func testPatchingBetweenInvocationsOfDifferentLengths() throws {
        for model in ["gpt2-tiny", "llama-tiny"] {
            let runner = try Fixtures.shared.runner(model)
            let (long, short) = (sequences[2], sequences[0])
            let block = model.hasPrefix("gpt2") ? ("transformer.h.0", 0 as Int?) : ("model.layers.0", nil)
            var b = TraceBuilder()
            let source = b.get(block.0, item: block.1, invoke: 0)
            let target = b.get(block.0, item: block.1, invoke: 1)
            b.add("setindex", ["x": target, "key": [all, -1], "value": b.index(source, [all, -1])])
            b.save(b.get("lm_head", invoke: 1), "manual")
            b.add("intervene", ["name": "residual_patch", "invoke": 2, "params": ["source": 0, "layers": 0, "positions": -1]])
            b.save(b.get("lm_head", invoke: 2), "plugin")
            b.save(b.get("lm_head", invoke: 0), "source")
            let result = try runner.run(b.trace([long, short, short]))

            let site = Site(block.0, .output)
            let recorder = ActivationRecorder([site])
            let longLogits = try runner.model.forward(TokenBatch([long]), hooks: recorder)
            let last = recorder.values[site]!.slice(axis: 1, (long.count - 1)..<long.count)
            let expected = try runner.model.forward(TokenBatch([short]), hooks: EditHook(site) { value in
                value.slice(axis: 1, (short.count - 1)..<short.count).assign(from: last)
            })
            assertClose(result["manual"], expected, "\(model) patched by hand")
            assertClose(result["plugin"], expected, "\(model) patched by residual_patch")
            assertClose(result["source"], longLogits, "\(model) the source is untouched")
        }
    }
}

/// A multi-token answer scored teacher-forced in a trace: the sum of the answer tokens'
/// log-probabilities, each at the position before it.
final class MultiTokenAnswerTests: XCTestCase {
    func testSumOfAnswerLogProbabilities() throws {
        let runner = try Fixtures.shared.runner("llama-tiny")
        let prompt = [5, 17, 300, 42, 8], answers = [[99, 23, 61], [140, 7, 61]]
        var b = TraceBuilder()
        for (i, answer) in answers.enumerated() {
            let logits = b.get("lm_head", invoke: i)
            let logp = b.add("log_softmax", ["x": b.index(logits, 0), "dim": -1])
            let positions = (0..<answer.count).map { TraceValue.int(prompt.count - 1 + $0) }
            let picked = b.index(logp, [.array(positions), .array(answer.map { .int($0) })])
            b.save(b.add("sum", ["x": picked]), "score\(i)")
        }
        let result = try runner.run(b.trace(answers.map { prompt + $0 }))
        for (i, answer) in answers.enumerated() {
            let logits = try runner.model.forward(TokenBatch([prompt + answer])).select(axis: 0, 0)
            var expected = 0.0
            for (k, token) in answer.enumerated() {
                let row = logits.select(axis: 0, prompt.count - 1 + k).toArray().map(Double.init)
                let peak = row.max()!
                expected += row[token] - peak - log(row.reduce(0) { $0 + exp($1 - peak) })
            }
            XCTAssertEqual(Double(scalar(result["score\(i)"])), expected, accuracy: 1e-4, "answer \(i)")
        }
    }
}
