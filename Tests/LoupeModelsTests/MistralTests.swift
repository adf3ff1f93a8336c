import Foundation
import LoupeFormats
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import XCTest

/// Mistral on its fixture (scripts/make_model_fixtures.py): mistral-tiny, a window of 4
/// positions on every layer, head_dim 24 with hidden 64 and 4 heads, 2 key/value heads. The
/// conformance suite compares it with HF; these check what is particular to the family.
final class MistralTests: XCTestCase {
    let fixture = fixturesDirectory + "/models/mistral-tiny"

    func load(_ directory: String) throws -> any LanguageModel {
        try LoadedModel.load(directory, registry: testRegistry).model
    }

    /// The fixture's 12-token sequence (cases.json) and HF's logits for it, [12, vocab].
    func longestCase() throws -> (tokens: [Int], logits: Tensor) {
        let cases = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixture + "/cases.json"))) as? [String: Any])
        let sequences = try XCTUnwrap(cases["sequences"] as? [[Int]])
        let index = try XCTUnwrap(sequences.indices.max { sequences[$0].count < sequences[$1].count })
        XCTAssertEqual(sequences[index].count, 12)
        let expected = try SafetensorsFile(path: fixture + "/expected.safetensors")
        return (sequences[index], try expected.tensor("logits.\(index)"))
    }

    func logits(_ model: any LanguageModel, _ tokens: [Int]) throws -> Tensor {
        let logits = try model.forward(TokenBatch([tokens]), logits: .all)
        return logits.reshaped([tokens.count, -1])
    }

    /// A GGUF file holding nothing but `general.architecture`.
    func gguf(architecture: String) throws -> String {
        var bytes: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
        func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes.append(contentsOf: s.utf8) }
        u32(0x4655_4747)  // "GGUF"
        u32(3)  // version
        u64(0)  // tensors
        u64(1)  // metadata entries
        string("general.architecture")
        u32(8)  // a string
        string(architecture)
        while bytes.count % 32 != 0 { bytes.append(0) }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("loupe-mistral-\(UUID().uuidString).gguf").path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    func testLoadsAsMistral() throws {
        let model = try load(fixture)
        XCTAssertEqual(model.architecture, "mistral")
        XCTAssertEqual(model.dimensions, ModelDimensions(layers: 2, hidden: 64, heads: 4, keyValueHeads: 2, headDim: 24,
                                                         intermediate: 96, vocabulary: 512, context: 64))
        XCTAssertEqual(model.canonicalSites, Set(CanonicalSite.Kind.allCases))
    }

    /// The fixture prints exactly as transformers 5.25 prints it (`print(model)`), so nnsight's
    /// paths (model.layers[1].self_attn.o_proj) name Loupe's sites.
    func testModuleTreePrintsAsTransformers() throws {
        XCTAssertEqual(try load(fixture).moduleTree.rendered(), """
            MistralForCausalLM(
              (model): MistralModel(
                (embed_tokens): Embedding(512, 64)
                (layers): ModuleList(
                  (0-1): 2 x MistralDecoderLayer(
                    (self_attn): MistralAttention(
                      (q_proj): Linear(in_features=64, out_features=96, bias=False)
                      (k_proj): Linear(in_features=64, out_features=48, bias=False)
                      (v_proj): Linear(in_features=64, out_features=48, bias=False)
                      (o_proj): Linear(in_features=96, out_features=64, bias=False)
                    )
                    (mlp): MistralMLP(
                      (gate_proj): Linear(in_features=64, out_features=96, bias=False)
                      (up_proj): Linear(in_features=64, out_features=96, bias=False)
                      (down_proj): Linear(in_features=96, out_features=64, bias=False)
                      (act_fn): SiLUActivation()
                    )
                    (input_layernorm): MistralRMSNorm((64,), eps=1e-05)
                    (post_attention_layernorm): MistralRMSNorm((64,), eps=1e-05)
                  )
                )
                (norm): MistralRMSNorm((64,), eps=1e-05)
                (rotary_emb): MistralRotaryEmbedding()
              )
              (lm_head): Linear(in_features=64, out_features=512, bias=False)
            )
            """)
    }

    /// The window is what makes the fixture's logits HF's: the same weights attending to the
    /// whole prefix (sliding_window null, or a window longer than the sequence) agree with HF
    /// on the first 4 positions, which see their whole prefix either way, and differ after.
    func testSlidingWindowChangesTheLogits() throws {
        let (tokens, hf) = try longestCase()
        let windowed = try logits(try load(fixture), tokens)
        assertClose(windowed, hf, "windowed logits against HF's")

        let whole = try logits(try load(try checkpoint("mistral-tiny") { $0["sliding_window"] = NSNull() }), tokens)
        let inside = 0..<4, outside = 4..<tokens.count
        assertClose(whole.slice(axis: 0, inside).contiguous(), hf.slice(axis: 0, inside).contiguous(),
                    "positions 0-3 see their whole prefix inside the window")
        for position in outside {
            let row = { (t: Tensor) in t.slice(axis: 0, position..<(position + 1)).contiguous() }
            XCTAssertGreaterThan(maxDifference(row(whole), row(hf)), 1e-2, "position \(position) without the window")
        }
        // A window as long as the sequence is no window; left out, sliding_window is 4096.
        let long = try logits(try load(try checkpoint("mistral-tiny") { $0["sliding_window"] = tokens.count }), tokens)
        XCTAssertEqual(long.toArray(), whole.toArray())
        let absent = try logits(try load(try checkpoint("mistral-tiny") { $0["sliding_window"] = nil }), tokens)
        XCTAssertEqual(absent.toArray(), whole.toArray())
        // One position short of the sequence: only the last query loses a key.
        let short = try logits(try load(try checkpoint("mistral-tiny") { $0["sliding_window"] = tokens.count - 1 }), tokens)
        let last = tokens.count - 1
        XCTAssertEqual(short.slice(axis: 0, 0..<last).contiguous().toArray(), whole.slice(axis: 0, 0..<last).contiguous().toArray())
        XCTAssertGreaterThan(maxDifference(short.slice(axis: 0, last..<tokens.count).contiguous(),
                                           whole.slice(axis: 0, last..<tokens.count).contiguous()), 1e-3)
    }

    /// attn.pattern is zero outside the window: query i attends to keys max(0, i - 3) ... i,
    /// and those weights sum to one.
    func testPatternIsZeroOutsideTheWindow() throws {
        let model = try load(fixture)
        let length = 9
        let recorder = ActivationRecorder((0..<2).map { CanonicalSite.pattern($0).site })
        _ = try model.forward(TokenBatch([Array(100..<(100 + length))]), hooks: recorder)
        for layer in 0..<2 {
            let pattern = try XCTUnwrap(recorder.values[CanonicalSite.pattern(layer).site])
            XCTAssertEqual(pattern.shape, [1, 4, length, length])
            let values = pattern.contiguous().toArray()
            for head in 0..<4 {
                for i in 0..<length {
                    let row = Array(values[((head * length) + i) * length..<((head * length) + i + 1) * length])
                    for j in 0..<length {
                        let inside = j <= i && j > i - 4
                        if inside {
                            XCTAssertGreaterThan(row[j], 0, "layer \(layer) head \(head): \(i) attends to \(j)")
                        } else {
                            XCTAssertEqual(row[j], 0, "layer \(layer) head \(head): \(i) does not attend to \(j)")
                        }
                    }
                    XCTAssertEqual(row.reduce(0, +), 1, accuracy: 1e-5)
                }
            }
        }
    }

    /// Read as MistralConfig reads it: num_key_value_heads left out is 8 (which 4 heads cannot
    /// share), null one per query head (which the 2-head k_proj does not fit); MistralAttention
    /// has no biases whatever attention_bias says.
    func testConfigDefaultsAreMistralConfigs() throws {
        assertBadConfig(try checkpoint("mistral-tiny") { $0["num_key_value_heads"] = nil }, key: "num_key_value_heads", mentioning: "8")
        XCTAssertThrowsError(try load(try checkpoint("mistral-tiny") { $0["num_key_value_heads"] = NSNull() })) { error in
            guard case ModelError.format(let format) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(format.item, "model.layers.0.self_attn.k_proj.weight")
        }
        let (tokens, hf) = try longestCase()
        let biased = try checkpoint("mistral-tiny") { $0["attention_bias"] = true; $0["mlp_bias"] = true }
        assertClose(try logits(try load(biased), tokens), hf, "attention_bias and mlp_bias are ignored, as HF ignores them")
        let withoutContext = try load(try checkpoint("mistral-tiny") { $0["max_position_embeddings"] = nil })
        XCTAssertEqual(withoutContext.dimensions.context, 131_072)
    }

    /// What Mistral does not compute is refused at load, naming the key and the value.
    func testUnsupportedConfigIsRefused() throws {
        for activation in ["gelu", "relu", "gelu_pytorch_tanh"] {
            assertBadConfig(try checkpoint("mistral-tiny") { $0["hidden_act"] = activation }, key: "hidden_act", mentioning: activation)
        }
        for type in ["llama3", "yarn", "linear", "dynamic"] {
            assertBadConfig(try checkpoint("mistral-tiny") { $0["rope_parameters"] = ["rope_type": type, "rope_theta": 100000.0, "factor": 2.0] },
                            key: "rope_parameters.rope_type", mentioning: type)
        }
        // Beside the fixture's default rope_parameters: transformers 5 takes rope_scaling over them.
        assertBadConfig(try checkpoint("mistral-tiny") { $0["rope_scaling"] = ["type": "linear", "factor": 2.0] },
                        key: "rope_scaling.rope_type", mentioning: "linear")
        for window in [0, -4] {
            assertBadConfig(try checkpoint("mistral-tiny") { $0["sliding_window"] = window }, key: "sliding_window", mentioning: "\(window)")
        }
        XCTAssertThrowsError(try load(try checkpoint("mistral-tiny") { $0["sliding_window"] = "four" })) { error in
            guard case ModelError.format(let format) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(format.kind, .badValue)
            XCTAssertEqual(format.item, "sliding_window")
        }
        // Mistral GGUF files (llama.cpp writes Mistral 7B as llama) are refused by name.
        let file = try GGUFFile(path: try gguf(architecture: "mistral"))
        XCTAssertThrowsError(try testRegistry.adapter(forModelType: "mistral").load(.gguf(file))) { error in
            guard case ModelError.badConfig(_, let key, let message) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "general.architecture")
            XCTAssertTrue(message.contains("mistral GGUF"), message)
        }
        // The default rotary type loads, and rope_parameters' theta is read.
        XCTAssertNoThrow(try load(try checkpoint("mistral-tiny") { $0["rope_scaling"] = ["rope_type": "default"] }))
        let otherTheta = try load(try checkpoint("mistral-tiny") { $0["rope_parameters"] = ["rope_type": "default", "rope_theta": 500.0] })
        let (tokens, hf) = try longestCase()
        XCTAssertGreaterThan(maxDifference(try logits(otherTheta, tokens), hf), 1e-3, "rope_theta is read from rope_parameters")
    }
}
