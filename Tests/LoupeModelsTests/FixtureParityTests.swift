import Foundation
import LoupeFormats
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import XCTest

/// Tiny seeded-random GPT-2 and Llama models against HF transformers' outputs on the same
/// weights (Tests/Fixtures/models, made by scripts/make_model_fixtures.py).
final class FixtureParityTests: XCTestCase {
    struct Fixture {
        let model: any LanguageModel
        let sequences: [[Int]]
        let expected: SafetensorsFile
    }

    func fixture(_ name: String, expectedFrom: String? = nil) throws -> Fixture {
        let directory = fixturesDirectory + "/models/" + name
        let loaded = try LoadedModel.load(directory, registry: testRegistry)
        let casesDirectory = fixturesDirectory + "/models/" + (expectedFrom ?? name)
        let cases = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: casesDirectory + "/cases.json"))) as! [String: Any]
        return Fixture(model: loaded.model, sequences: cases["sequences"] as! [[Int]],
                       expected: try SafetensorsFile(path: casesDirectory + "/expected.safetensors"))
    }

    /// Every sequence alone: logits and every recorded site against HF.
    func checkAlone(_ f: Fixture, file: StaticString = #filePath, line: UInt = #line) throws {
        let layers = f.model.dimensions.layers
        for (i, tokens) in f.sequences.enumerated() {
            var sites = [Site("blocks.0.resid_pre", .output), Site(finalNormPath(f.model), .output)]
            for l in 0..<layers {
                sites += ["resid_post", "attn_out", "mlp_out", "attn.z", "attn.pattern"].map { Site("blocks.\(l).\($0)", .output) }
            }
            let recorder = ActivationRecorder(sites)
            let logits = try f.model.forward(TokenBatch([tokens]), hooks: recorder, logits: .all)
            let t = tokens.count
            assertClose(logits.reshaped([t, -1]), try f.expected.tensor("logits.\(i)"), "logits of sequence \(i)", file: file, line: line)
            func recorded(_ path: String) -> Tensor { recorder.values[Site(path, .output)]! }
            assertClose(recorded("blocks.0.resid_pre").reshaped([t, -1]), try f.expected.tensor("resid_pre.0.\(i)"), "resid_pre 0 of \(i)", file: file, line: line)
            assertClose(recorded(finalNormPath(f.model)).reshaped([t, -1]), try f.expected.tensor("final_norm.\(i)"), "final norm of \(i)", file: file, line: line)
            for l in 0..<layers {
                for (site, key) in [("resid_post", "resid_post"), ("attn_out", "attn_out"), ("mlp_out", "mlp_out"), ("attn.z", "z")] {
                    assertClose(recorded("blocks.\(l).\(site)").reshaped([t, -1]), try f.expected.tensor("\(key).\(l).\(i)"),
                                "\(site) of layer \(l), sequence \(i)", file: file, line: line)
                }
                let pattern = recorded("blocks.\(l).attn.pattern")
                assertClose(pattern.reshaped(Array(pattern.shape.dropFirst())), try f.expected.tensor("pattern.\(l).\(i)"),
                            "pattern of layer \(l), sequence \(i)", file: file, line: line)
            }
        }
    }

    /// All sequences as one left-padded batch: each row's logits equal the sequence alone,
    /// and HF's own padded batch.
    func checkBatched(_ f: Fixture, file: StaticString = #filePath, line: UInt = #line) throws {
        let batch = TokenBatch(f.sequences)
        let logits = try f.model.forward(batch, logits: .all)
        let hfBatched = try f.expected.tensor("batched.logits")
        for (i, tokens) in f.sequences.enumerated() {
            let pad = batch.padding[i]
            let row = logits.select(axis: 0, i).slice(axis: 0, pad..<batch.length).contiguous()
            assertClose(row, try f.expected.tensor("logits.\(i)"), "batched row \(i) vs alone", file: file, line: line)
            let hfRow = hfBatched.select(axis: 0, i).slice(axis: 0, pad..<batch.length).contiguous()
            assertClose(row, hfRow, "batched row \(i) vs HF's padded batch", file: file, line: line)
            XCTAssertEqual(row.shape[0], tokens.count)
        }
        // Logits at the last position only are the last rows of the full logits.
        let last = try f.model.forward(batch, logits: .last)
        XCTAssertEqual(last.shape, [batch.rows, 1, f.model.dimensions.vocabulary])
        assertClose(last.reshaped([batch.rows, -1]), logits.slice(axis: 1, (batch.length - 1)..<batch.length).reshaped([batch.rows, -1]),
                    "last-position logits", file: file, line: line)
    }

    private func finalNormPath(_ model: any LanguageModel) -> String {
        switch model.architecture {
        case "gpt2": return "transformer.ln_f"
        case "gpt_neox": return "gpt_neox.final_layer_norm"
        default: return "model.norm"
        }
    }

    func testGPT2MatchesTransformers() throws {
        let f = try fixture("gpt2-tiny")
        try checkAlone(f)
        try checkBatched(f)
    }

    func testGPT2WithoutPrefixMatchesTransformers() throws {
        let f = try fixture("gpt2-tiny-noprefix", expectedFrom: "gpt2-tiny")
        try checkAlone(f)
    }

    func testLlamaGroupedQueryMatchesTransformers() throws {
        let f = try fixture("llama-tiny")
        XCTAssertEqual(f.model.dimensions.heads, 4)
        XCTAssertEqual(f.model.dimensions.keyValueHeads, 2)
        try checkAlone(f)
        try checkBatched(f)
    }

    func testQwen2MatchesTransformers() throws {
        let f = try fixture("qwen2-tiny")
        XCTAssertEqual(f.model.architecture, "qwen2")
        XCTAssertEqual(f.model.moduleTree.type, "Qwen2ForCausalLM")
        try checkAlone(f)
        try checkBatched(f)
    }

    func testQwen3MatchesTransformers() throws {
        let f = try fixture("qwen3-tiny")
        XCTAssertEqual(f.model.architecture, "qwen3")
        XCTAssertEqual(f.model.dimensions.headDim, 24)
        try checkAlone(f)
        try checkBatched(f)
    }

    /// Llama 3.1's scaled RoPE, from the transformers-4 config the fixture has (`rope_scaling`).
    func testLlama3RopeScalingMatchesTransformers() throws {
        let f = try fixture("llama3-tiny")
        try checkAlone(f)
        try checkBatched(f)
    }

    /// The same checkpoint with transformers 5's config form (`rope_parameters`) gives the same logits.
    func testLlama3RopeScalingFromTransformers5Config() throws {
        let source = fixturesDirectory + "/models/llama3-tiny"
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("loupe-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.copyItem(atPath: source + "/model.safetensors", toPath: directory + "/model.safetensors")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: source + "/config.json"))) as! [String: Any]
        var parameters = config.removeValue(forKey: "rope_scaling") as! [String: Any]
        parameters["rope_theta"] = config.removeValue(forKey: "rope_theta")
        config["rope_parameters"] = parameters
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: directory + "/config.json"))
        let model = try LoadedModel.load(directory, registry: testRegistry).model
        let expected = try SafetensorsFile(path: source + "/expected.safetensors")
        let cases = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: source + "/cases.json"))) as! [String: Any]
        for (i, tokens) in (cases["sequences"] as! [[Int]]).enumerated() {
            let logits = try model.forward(TokenBatch([tokens]), logits: .all)
            assertClose(logits.reshaped([tokens.count, -1]), try expected.tensor("logits.\(i)"), "logits of sequence \(i)")
        }
    }

    /// Pythia's form: parallel residual, rotary over a quarter of each head, untied embed_out.
    func testGPTNeoXParallelMatchesTransformers() throws {
        let f = try fixture("pythia-tiny")
        XCTAssertEqual(f.model.architecture, "gpt_neox")
        try checkAlone(f)
        try checkBatched(f)
    }

    /// Sequential residual, an odd rotary_ndims, no attention biases, tied embeddings.
    func testGPTNeoXSequentialMatchesTransformers() throws {
        let f = try fixture("pythia-tiny-sequential")
        try checkAlone(f)
        try checkBatched(f)
    }

    /// A window of 4 positions on every layer, head_dim 24 (not hidden / heads), untied.
    func testMistralSlidingWindowMatchesTransformers() throws {
        let f = try fixture("mistral-tiny")
        XCTAssertEqual(f.model.architecture, "mistral")
        XCTAssertEqual(f.model.moduleTree.type, "MistralForCausalLM")
        try checkAlone(f)
        try checkBatched(f)
    }

    func testLlamaUntiedWithBiasAndHeadDimMatchesTransformers() throws {
        let f = try fixture("llama-tiny-untied")
        XCTAssertEqual(f.model.dimensions.headDim, 24)
        try checkAlone(f)
        try checkBatched(f)
    }
}
