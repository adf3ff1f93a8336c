import Foundation
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import XCTest

/// Gemma 3 and Gemma 2 on their tiny fixtures. The conformance suite compares both with HF
/// (logits, sites, padding, sweeps); these check what is particular to the family.
final class GemmaTests: XCTestCase {
    let tokens = [5, 300, 17, 42, 9, 511, 0, 77, 123, 64, 2, 400]

    func logits(_ source: String) throws -> Tensor {
        try LoadedModel.load(source, registry: testRegistry).model.forward(TokenBatch([tokens]))
    }

    func fixture(_ name: String) -> String { fixturesDirectory + "/models/" + name }

    /// nnsight's paths (model.layers[1].self_attn.q_norm, post_feedforward_layernorm) name Loupe's sites.
    func testModuleTreeIsTransformers() throws {
        let model = try LoadedModel.load(fixture("gemma3-tiny"), registry: testRegistry).model
        XCTAssertEqual(model.architecture, "gemma3")
        XCTAssertEqual(model.moduleTree.rendered(), """
            Gemma3ForCausalLM(
              (model): Gemma3TextModel(
                (embed_tokens): Gemma3TextScaledWordEmbedding(512, 64, padding_idx=0)
                (layers): ModuleList(
                  (0-2): 3 x Gemma3DecoderLayer(
                    (self_attn): Gemma3Attention(
                      (q_proj): Linear(in_features=64, out_features=64, bias=False)
                      (k_proj): Linear(in_features=64, out_features=32, bias=False)
                      (v_proj): Linear(in_features=64, out_features=32, bias=False)
                      (o_proj): Linear(in_features=64, out_features=64, bias=False)
                      (q_norm): Gemma3RMSNorm((16,), eps=1e-06)
                      (k_norm): Gemma3RMSNorm((16,), eps=1e-06)
                    )
                    (mlp): Gemma3MLP(
                      (gate_proj): Linear(in_features=64, out_features=96, bias=False)
                      (up_proj): Linear(in_features=64, out_features=96, bias=False)
                      (down_proj): Linear(in_features=96, out_features=64, bias=False)
                      (act_fn): GELUTanh()
                    )
                    (input_layernorm): Gemma3RMSNorm((64,), eps=1e-06)
                    (post_attention_layernorm): Gemma3RMSNorm((64,), eps=1e-06)
                    (pre_feedforward_layernorm): Gemma3RMSNorm((64,), eps=1e-06)
                    (post_feedforward_layernorm): Gemma3RMSNorm((64,), eps=1e-06)
                  )
                )
                (norm): Gemma3RMSNorm((64,), eps=1e-06)
                (rotary_emb): Gemma3RotaryEmbedding()
              )
              (lm_head): Linear(in_features=64, out_features=512, bias=False)
            )
            """)
    }

    /// Each detail the fixture was built to exercise changes the logits: the window of the
    /// local layers, their own RoPE base, the global layers' linear RoPE scaling, and
    /// query_pre_attn_scalar. (The fixture's logits themselves are HF's: conformance.)
    func testEachGemma3DetailMatters() throws {
        let reference = try logits(fixture("gemma3-tiny"))
        let edits: [(String, (inout [String: Any]) -> Void)] = [
            ("a window wider than the sequence", { $0["sliding_window"] = 64 }),
            ("every layer global", { $0["layer_types"] = ["full_attention", "full_attention", "full_attention"] }),
            ("no linear RoPE scaling", {
                $0["rope_parameters"] = ["full_attention": ["rope_type": "default", "rope_theta": 1_000_000.0],
                                         "sliding_attention": ["rope_type": "default", "rope_theta": 10_000.0]]
            }),
            ("the local RoPE base of the global layers", {
                $0["rope_parameters"] = ["full_attention": ["rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0],
                                         "sliding_attention": ["rope_type": "default", "rope_theta": 1_000_000.0]]
            }),
            ("query_pre_attn_scalar = head_dim", { $0["query_pre_attn_scalar"] = 16 }),
        ]
        for (what, edit) in edits {
            XCTAssertGreaterThan(maxDifference(try logits(try checkpoint("gemma3-tiny", editing: edit)), reference), 1e-3, what)
        }
        // transformers 4's form of the same RoPE: rope_theta, rope_local_base_freq and rope_scaling.
        let v4 = try checkpoint("gemma3-tiny") {
            $0.removeValue(forKey: "rope_parameters")
            $0["rope_theta"] = 1_000_000.0
            $0["rope_local_base_freq"] = 10_000.0
            $0["rope_scaling"] = ["rope_type": "linear", "factor": 2.0]
        }
        XCTAssertEqual(try logits(v4).toArray(), reference.toArray())
    }

    /// Gemma 2's soft-caps: logits never leave (-cap, cap); lm_head's own output site is the
    /// uncapped value, `logits` the capped one; without the attention cap the model differs.
    func testGemma2SoftCaps() throws {
        let model = try LoadedModel.load(fixture("gemma2-tiny"), registry: testRegistry).model
        XCTAssertEqual(model.architecture, "gemma2")
        XCTAssertEqual(model.logitSoftcap, 3)
        let recorder = ActivationRecorder([Site("lm_head", .output), CanonicalSite.logits.site])
        let output = try model.forward(TokenBatch([tokens]), hooks: recorder)
        XCTAssertTrue(output.toArray().allSatisfy { abs($0) < 3 })
        let raw = try XCTUnwrap(recorder.values[Site("lm_head", .output)]).toArray()
        let capped = try XCTUnwrap(recorder.values[CanonicalSite.logits.site]).toArray()
        XCTAssertGreaterThan(raw.map(abs).max() ?? 0, 3, "the fixture's raw logits reach past the cap")
        for (r, c) in zip(raw, capped) { XCTAssertEqual(c, 3 * tanh(r / 3), accuracy: 1e-5) }
        let reference = try logits(fixture("gemma2-tiny"))
        XCTAssertGreaterThan(maxDifference(try logits(try checkpoint("gemma2-tiny") { $0["attn_logit_softcapping"] = NSNull() }), reference), 1e-3)
        // Left out, a soft-cap takes Gemma2Config's default (50, 30), not none.
        let defaults = try LoadedModel.load(try checkpoint("gemma2-tiny") {
            $0.removeValue(forKey: "final_logit_softcapping")
            $0.removeValue(forKey: "attn_logit_softcapping")
        }, registry: testRegistry).model
        XCTAssertEqual(defaults.logitSoftcap, 30)
    }

    /// What Gemma does not compute is refused at load, naming the key and the value.
    func testUnsupportedConfigIsRefused() throws {
        assertBadConfig(try checkpoint("gemma3-tiny") { $0["hidden_activation"] = "gelu" }, key: "hidden_activation", mentioning: "gelu")
        assertBadConfig(try checkpoint("gemma2-tiny") { $0["hidden_activation"] = "relu" }, key: "hidden_activation", mentioning: "relu")
        assertBadConfig(try checkpoint("gemma3-tiny") { $0["use_bidirectional_attention"] = true },
                        key: "use_bidirectional_attention", mentioning: "true")
        assertBadConfig(try checkpoint("gemma3-tiny") { $0["num_experts"] = 8 }, key: "num_experts", mentioning: "8")
        assertBadConfig(try checkpoint("gemma3-tiny") {
            $0["rope_parameters"] = ["full_attention": ["rope_type": "yarn", "factor": 8.0, "rope_theta": 1_000_000.0],
                                     "sliding_attention": ["rope_type": "default", "rope_theta": 10_000.0]]
        }, key: "rope_parameters.full_attention.rope_type", mentioning: "yarn")
        assertBadConfig(try checkpoint("gemma3-tiny") { $0["rope_parameters"] = ["rope_type": "default", "rope_theta": 10_000.0] },
                        key: "rope_parameters", mentioning: "per layer type")
        assertBadConfig(try checkpoint("gemma3-tiny") { $0["rope_scaling"] = ["rope_type": "dynamic", "factor": 2.0] },
                        key: "rope_scaling.rope_type", mentioning: "dynamic")
        assertBadConfig(try checkpoint("gemma3-tiny") { $0["layer_types"] = ["sliding_attention", "chunked_attention", "full_attention"] },
                        key: "layer_types", mentioning: "chunked_attention")
        assertBadConfig(try checkpoint("gemma3-tiny") { $0["layer_types"] = ["full_attention"] }, key: "layer_types", mentioning: "1 layer types")
        assertBadConfig(try checkpoint("gemma3-tiny") { $0["sliding_window"] = 0 }, key: "sliding_window", mentioning: "0")
        assertBadConfig(try checkpoint("gemma3-tiny") { $0["model_type"] = "gemma3" }, key: "model_type", mentioning: "gemma3_text")
        // The same refusals reach Llama's family.
        assertBadConfig(try checkpoint("llama-tiny") { $0["hidden_act"] = "gelu" }, key: "hidden_act", mentioning: "gelu")
        assertBadConfig(try checkpoint("qwen2-tiny") { $0["num_experts"] = 4 }, key: "num_experts", mentioning: "4")
    }
}
