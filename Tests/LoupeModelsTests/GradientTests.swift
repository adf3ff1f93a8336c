import Foundation
import LoupeFormats
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import XCTest

/// Gradients of activations against torch autograd on the same weights: every adapter's
/// fixture and the real SmolLM2 (gradients.safetensors, smollm2-gradients.safetensors,
/// made by scripts/make_gradient_fixtures.py).
final class GradientTests: XCTestCase {
    static let fixtures = ["gpt2-tiny", "llama-tiny", "llama-tiny-untied", "qwen2-tiny", "qwen3-tiny", "llama3-tiny",
                           "pythia-tiny", "pythia-tiny-sequential", "gemma3-tiny", "gemma2-tiny", "mistral-tiny"]

    /// The golden's metric for sequence i: logits[last, A] − logits[last, W].
    static func answers(_ i: Int, vocabulary: Int) -> (answer: Int, wrong: Int) {
        ((37 * i + 11) % vocabulary, (53 * i + 29) % vocabulary)
    }

    /// logits[row, position, answer] − logits[row, position, wrong], summed over `rows`, recorded on the tape.
    static func logitDifference(_ logits: Tensor, _ rows: [(row: Int, position: Int, answer: Int, wrong: Int)]) -> Tensor {
        var total = TensorMath.scalar(0)
        for r in rows {
            let at = logits.select(axis: 0, r.row).select(axis: 0, r.position)
            total = TensorMath.binary(total, TensorMath.binary(at.select(axis: 0, r.answer), at.select(axis: 0, r.wrong), .sub), .add)
        }
        return total
    }

    /// The sites compared, under the golden's key (`grad.KEY.L.i`).
    static func sites(_ model: any LanguageModel) -> [(key: String, site: Site)] {
        var list = [(key: String, site: Site)]()
        for l in 0..<model.dimensions.layers {
            let kinds: [(String, CanonicalSite)] = [("resid_pre", .residPre(l)), ("resid_post", .residPost(l)), ("attn_out", .attnOut(l)),
                                                   ("mlp_out", .mlpOut(l)), ("z", .z(l)), ("mlp_hidden", .mlpHidden(l)), ("q", .q(l)),
                                                   ("k", .k(l)), ("v", .v(l)), ("pattern", .pattern(l))]
            list += kinds.map { ("\($0.0).\(l)", $0.1.site) }
        }
        let finalNorm = model.architecture == "gpt2" ? "transformer.ln_f" : model.architecture == "gpt_neox" ? "gpt_neox.final_layer_norm" : "model.norm"
        return list + [("final_norm", Site(finalNorm, .output))]
    }

    /// Fails unless `actual` equals `expected` within `relative` of expected's largest magnitude.
    func assertRelativelyClose(_ actual: Tensor?, _ expected: Tensor, _ relative: Float, _ what: String,
                               file: StaticString = #filePath, line: UInt = #line) {
        guard let actual else { return XCTFail("\(what): no gradient", file: file, line: line) }
        XCTAssertEqual(actual.count, expected.count, "\(what): sizes", file: file, line: line)
        let a = actual.toArray(), e = expected.toArray()
        let scale = e.reduce(Float(0)) { max($0, abs($1)) }
        let worst = zip(a, e).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        XCTAssertLessThanOrEqual(worst, relative * max(scale, 1e-6), "\(what): max |difference| \(worst), largest |gradient| \(scale)",
                                 file: file, line: line)
    }

    /// Each sequence alone: the gradient at every canonical site, the final norm and the logits, within 1e-4 relative of torch's.
    func testEverySiteMatchesTorchOnEveryFixture() throws {
        for name in Self.fixtures {
            let model = try LoadedModel.load(fixturesDirectory + "/models/" + name, registry: testRegistry).model
            let golden = try SafetensorsFile(path: fixturesDirectory + "/models/\(name)/gradients.safetensors")
            let cases = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/models/\(name)/cases.json"))) as! [String: Any]
            let sites = Self.sites(model)
            for (i, tokens) in (cases["sequences"] as! [[Int]]).enumerated() {
                let recorder = GradientRecorder(sites.map(\.site) + [CanonicalSite.logits.site], keepValues: false)
                let (answer, wrong) = Self.answers(i, vocabulary: model.dimensions.vocabulary)
                let result = try model.backward(TokenBatch([tokens]), hooks: recorder) { logits in
                    Self.logitDifference(logits, [(0, tokens.count - 1, answer, wrong)])
                }
                XCTAssertEqual(result.metric, try golden.tensor("metric.\(i)").toArray()[0], accuracy: 1e-4, "\(name) metric \(i)")
                for (key, site) in sites {
                    assertRelativelyClose(recorder.gradients[site], try golden.tensor("grad.\(key).\(i)"), 1e-4, "\(name) \(key) of sequence \(i)")
                }
                assertRelativelyClose(recorder.gradients[CanonicalSite.logits.site], try golden.tensor("grad.logits.\(i)"), 1e-4, "\(name) logits \(i)")
            }
        }
    }

    /// All sequences as one left-padded batch, the metric summed over them: each row's
    /// gradients equal the sequence's alone, and the padding gets none.
    func testPaddedBatchRowsEqualEachSequenceAlone() throws {
        for name in ["llama-tiny", "gpt2-tiny", "pythia-tiny", "gemma2-tiny", "mistral-tiny"] {
            let model = try LoadedModel.load(fixturesDirectory + "/models/" + name, registry: testRegistry).model
            let golden = try SafetensorsFile(path: fixturesDirectory + "/models/\(name)/gradients.safetensors")
            let cases = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/models/\(name)/cases.json"))) as! [String: Any]
            let sequences = cases["sequences"] as! [[Int]]
            let batch = TokenBatch(sequences)
            let sites = Self.sites(model).filter { !$0.key.hasPrefix("pattern") }
            let recorder = GradientRecorder(sites.map(\.site), keepValues: false)
            _ = try model.backward(batch, hooks: recorder) { logits in
                Self.logitDifference(logits, sequences.indices.map { i in
                    let (answer, wrong) = Self.answers(i, vocabulary: model.dimensions.vocabulary)
                    return (i, batch.length - 1, answer, wrong)
                })
            }
            for (key, site) in sites {
                let gradient = try XCTUnwrap(recorder.gradients[site], "\(name) \(key)")
                for (i, tokens) in sequences.enumerated() {
                    let row = gradient.select(axis: 0, i)
                    let pad = batch.padding[i]
                    assertRelativelyClose(row.slice(axis: 0, pad..<batch.length).contiguous(), try golden.tensor("grad.\(key).\(i)"), 1e-4,
                                          "\(name) \(key), row \(i) of the padded batch")
                    if pad > 0 {
                        XCTAssertEqual(row.slice(axis: 0, 0..<pad).toArray().map(abs).max(), 0, "\(name) \(key): padding of row \(i) (\(tokens.count) tokens)")
                    }
                }
            }
        }
    }

    /// The real SmolLM2 on the seed's corrupted IOI prompt, for the logit difference
    /// " John" − " Mary": every canonical site of layers 0, 14 and 29 against torch.
    func testSmolLM2MatchesTorchAtSeveralLayers() throws {
        let model = try LoadedModel.load(try fetchedModel("SmolLM2-135M-Instruct.Q4_1.gguf"), registry: testRegistry).model
        let golden = try SafetensorsFile(path: fixturesDirectory + "/models/smollm2-gradients.safetensors")
        let tokens = try golden.tensor("corrupted_tokens").toArray().map { Int($0) }
        let sites = Self.sites(model).filter { entry in [".0", ".14", ".29"].contains { entry.key.hasSuffix($0) } || entry.key == "final_norm" }
        let recorder = GradientRecorder(sites.map(\.site) + [Site("model.embed_tokens", .output)], keepValues: false)
        let result = try model.backward(TokenBatch([tokens]), hooks: recorder, logits: .last) { logits in
            Self.logitDifference(logits, [(0, 0, 2322, 5099)])
        }
        XCTAssertEqual(result.metric, try golden.tensor("metric.corrupted").toArray()[0], accuracy: 2e-3)
        for (key, site) in sites {
            assertRelativelyClose(recorder.gradients[site], try golden.tensor("grad.\(key)"), 1e-4, "SmolLM2 \(key)")
        }
        assertRelativelyClose(recorder.gradients[Site("model.embed_tokens", .output)], try golden.tensor("grad.embed"), 1e-4, "SmolLM2 embeddings")
    }
}
