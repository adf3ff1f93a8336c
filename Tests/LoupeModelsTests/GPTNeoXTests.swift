import Foundation
import LoupeFormats
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import XCTest

/// GPT-NeoX (Pythia) on its two fixtures (scripts/make_model_fixtures.py): pythia-tiny, a
/// parallel block saved as the hub's Pythia checkpoints are, and pythia-tiny-sequential.
/// The conformance suite compares both with HF; these check what is particular to the family.
final class GPTNeoXTests: XCTestCase {
    func load(_ fixture: String) throws -> any LanguageModel {
        try LoadedModel.load(fixturesDirectory + "/models/" + fixture, registry: testRegistry).model
    }

    func logits(_ directory: String) throws -> Tensor {
        try LoadedModel.load(directory, registry: testRegistry).model.forward(TokenBatch([[5, 300, 17, 42, 9, 511, 0, 77]]))
    }

    func testLoadsAsGPTNeoX() throws {
        let model = try load("pythia-tiny")
        XCTAssertEqual(model.architecture, "gpt_neox")
        XCTAssertEqual(model.dimensions, ModelDimensions(layers: 2, hidden: 48, heads: 3, keyValueHeads: 3, headDim: 16,
                                                         intermediate: 128, vocabulary: 512, context: 64))
        XCTAssertEqual(model.canonicalSites, Set(CanonicalSite.Kind.allCases))
    }

    /// Both fixtures print exactly as transformers 5.25 prints them (`print(model)`), so
    /// nnsight's paths (gpt_neox.layers[1].attention.query_key_value) name Loupe's sites.
    func testModuleTreesPrintAsTransformers() throws {
        XCTAssertEqual(try load("pythia-tiny").moduleTree.rendered(), """
            GPTNeoXForCausalLM(
              (gpt_neox): GPTNeoXModel(
                (embed_in): Embedding(512, 48)
                (emb_dropout): Dropout(p=0.0, inplace=False)
                (layers): ModuleList(
                  (0-1): 2 x GPTNeoXLayer(
                    (input_layernorm): LayerNorm((48,), eps=1e-05, elementwise_affine=True, bias=True)
                    (post_attention_layernorm): LayerNorm((48,), eps=1e-05, elementwise_affine=True, bias=True)
                    (post_attention_dropout): Dropout(p=0.0, inplace=False)
                    (post_mlp_dropout): Dropout(p=0.0, inplace=False)
                    (attention): GPTNeoXAttention(
                      (query_key_value): Linear(in_features=48, out_features=144, bias=True)
                      (dense): Linear(in_features=48, out_features=48, bias=True)
                    )
                    (mlp): GPTNeoXMLP(
                      (dense_h_to_4h): Linear(in_features=48, out_features=128, bias=True)
                      (dense_4h_to_h): Linear(in_features=128, out_features=48, bias=True)
                      (act): GELUActivation()
                    )
                  )
                )
                (final_layer_norm): LayerNorm((48,), eps=1e-05, elementwise_affine=True, bias=True)
                (rotary_emb): GPTNeoXRotaryEmbedding()
              )
              (lm_head): Linear(in_features=48, out_features=512, bias=False)
            )
            """)
        XCTAssertEqual(try load("pythia-tiny-sequential").moduleTree.rendered(), """
            GPTNeoXForCausalLM(
              (gpt_neox): GPTNeoXModel(
                (embed_in): Embedding(512, 32)
                (emb_dropout): Dropout(p=0.0, inplace=False)
                (layers): ModuleList(
                  (0-1): 2 x GPTNeoXLayer(
                    (input_layernorm): LayerNorm((32,), eps=1e-05, elementwise_affine=True, bias=True)
                    (post_attention_layernorm): LayerNorm((32,), eps=1e-05, elementwise_affine=True, bias=True)
                    (post_attention_dropout): Dropout(p=0.0, inplace=False)
                    (post_mlp_dropout): Dropout(p=0.0, inplace=False)
                    (attention): GPTNeoXAttention(
                      (query_key_value): Linear(in_features=32, out_features=96, bias=False)
                      (dense): Linear(in_features=32, out_features=32, bias=False)
                    )
                    (mlp): GPTNeoXMLP(
                      (dense_h_to_4h): Linear(in_features=32, out_features=64, bias=True)
                      (dense_4h_to_h): Linear(in_features=64, out_features=32, bias=True)
                      (act): GELUActivation()
                    )
                  )
                )
                (final_layer_norm): LayerNorm((32,), eps=1e-05, elementwise_affine=True, bias=True)
                (rotary_emb): GPTNeoXRotaryEmbedding()
              )
              (lm_head): Linear(in_features=32, out_features=512, bias=False)
            )
            """)
    }

    /// query_key_value's output holds each head's q, k and v side by side
    /// ((head, {q, k, v}, head_dim)); attn.v is the v part of every head, in head order.
    func testQueryKeyValueIsSplitPerHead() throws {
        let model = try load("pythia-tiny")
        let (heads, headDim) = (model.dimensions.heads, model.dimensions.headDim)
        let qkvSite = Site("gpt_neox.layers.1.attention.query_key_value", .output)
        let recorder = ActivationRecorder([qkvSite, CanonicalSite.v(1).site])
        _ = try model.forward(TokenBatch([[3, 14, 15, 92, 65]]), hooks: recorder)
        let qkv = try XCTUnwrap(recorder.values[qkvSite]), v = try XCTUnwrap(recorder.values[CanonicalSite.v(1).site])
        XCTAssertEqual(qkv.shape, [1, 5, 3 * heads * headDim])
        XCTAssertEqual(v.shape, [1, 5, heads, headDim])
        let expected = qkv.reshaped([1, 5, heads, 3, headDim]).select(axis: 3, 2).contiguous()
        XCTAssertEqual(v.toArray(), expected.toArray())
    }

    /// resid_mid is resid_pre + attn_out and resid_post is resid_mid + mlp_out, in both forms.
    /// In the parallel block the MLP reads resid_pre: an edit of resid_mid reaches the
    /// layer's output as it is and leaves the MLP alone; in the sequential one the MLP reads it.
    func testResidMidInParallelAndSequentialBlocks() throws {
        for (fixture, parallel) in [("pythia-tiny", true), ("pythia-tiny-sequential", false)] {
            let model = try load(fixture)
            let tokens = TokenBatch([[7, 1, 300, 44, 12, 90]])
            let kinds: [CanonicalSite.Kind] = [.residPre, .attnOut, .residMid, .mlpOut, .residPost]
            let sites = kinds.map { CanonicalSite($0, layer: 0).site }
            let plain = ActivationRecorder(sites)
            _ = try model.forward(tokens, hooks: plain)
            func value(_ r: some Recording, _ kind: CanonicalSite.Kind) throws -> Tensor {
                try XCTUnwrap(r.values[CanonicalSite(kind, layer: 0).site], "\(fixture) \(kind)")
            }
            let sum = TensorMath.binary(try value(plain, .residPre), try value(plain, .attnOut), .add)
            assertClose(try value(plain, .residMid), sum, tolerance: 1e-5, "\(fixture): resid_mid = resid_pre + attn_out")
            let post = TensorMath.binary(try value(plain, .residMid), try value(plain, .mlpOut), .add)
            assertClose(try value(plain, .residPost), post, tolerance: 1e-5, "\(fixture): resid_post = resid_mid + mlp_out")

            // Add a vector to resid_mid at every position (not a constant, which LayerNorm would remove).
            let hidden = model.dimensions.hidden
            let delta = Tensor(shape: [hidden], values: (0..<hidden).map { Float($0 % 5) - 2 })
            let edited = EditThenRecord(edit: CanonicalSite.residMid(0).site, adding: delta, sites)
            _ = try model.forward(tokens, hooks: edited)
            let mlpChange = maxDifference(try value(edited, .mlpOut), try value(plain, .mlpOut))
            if parallel {
                XCTAssertEqual(mlpChange, 0, "\(fixture): the parallel MLP does not read resid_mid")
                let shifted = TensorMath.binary(try value(plain, .residPost), delta, .add)
                assertClose(try value(edited, .residPost), shifted, tolerance: 1e-5, "\(fixture): resid_post moves by the edit")
            } else {
                XCTAssertGreaterThan(mlpChange, 1e-3, "\(fixture): the sequential MLP reads resid_mid")
            }
        }
    }

    /// The hub's Pythia config (rotary_pct, rotary_emb_base) and transformers 5's
    /// (rope_parameters) are one model; rope_parameters wins over rotary_pct as in
    /// GPTNeoXConfig, and rotary_pct is read when it is alone.
    func testRotaryParametersAreReadAsTransformers5ReadsThem() throws {
        let hubForm = try logits(fixturesDirectory + "/models/pythia-tiny")
        let transformers5 = try checkpoint("pythia-tiny") { config in
            config["rope_parameters"] = ["rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25]
            config["rotary_pct"] = nil
            config["rotary_emb_base"] = nil
        }
        XCTAssertEqual(try logits(transformers5).toArray(), hubForm.toArray())
        let both = try checkpoint("pythia-tiny") { config in
            config["rope_parameters"] = ["rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25]
            config["rotary_pct"] = 1.0
        }
        XCTAssertEqual(try logits(both).toArray(), hubForm.toArray(), "rope_parameters comes before rotary_pct")
        let defaults = try checkpoint("pythia-tiny") { config in  // GPTNeoXConfig's defaults: 0.25 and 10000
            config["rotary_pct"] = nil
            config["rotary_emb_base"] = nil
        }
        XCTAssertEqual(try logits(defaults).toArray(), hubForm.toArray())
        for (key, value) in [("rotary_pct", 1.0), ("rotary_emb_base", 500.0)] {
            let changed = try checkpoint("pythia-tiny") { $0[key] = value }
            XCTAssertGreaterThan(maxDifference(try logits(changed), hubForm), 1e-3, "\(key) \(value) changes the model")
        }
        // No rotary dims at all: positions then reach the model through nothing but the causal mask.
        XCTAssertNoThrow(try logits(try checkpoint("pythia-tiny") { $0["rotary_pct"] = 0.0 }))
    }

    /// The unembedding loads from embed_out.weight (hub checkpoints, and transformers 5's
    /// save) as lm_head; untied without it is a missing tensor naming it.
    func testUnembeddingNames() throws {
        let tied = try checkpoint("pythia-tiny") { $0["tie_word_embeddings"] = true }
        XCTAssertGreaterThan(maxDifference(try logits(tied), try logits(fixturesDirectory + "/models/pythia-tiny")), 1e-3,
                             "tied, lm_head is embed_in, not embed_out")
        let untied = try checkpoint("pythia-tiny-sequential") { $0["tie_word_embeddings"] = false }
        XCTAssertThrowsError(try LoadedModel.load(untied, registry: testRegistry)) { error in
            guard case ModelError.format(let format) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(format.kind, .missingTensor)
            XCTAssertEqual(format.item, "embed_out.weight")
        }
    }

    /// What GPT-NeoX does not compute is refused at load, naming the key and the value.
    func testUnsupportedConfigIsRefused() throws {
        for activation in ["gelu_new", "relu", "gelu_pytorch_tanh"] {
            assertBadConfig(try checkpoint("pythia-tiny") { $0["hidden_act"] = activation }, key: "hidden_act", mentioning: activation)
        }
        assertBadConfig(try checkpoint("pythia-tiny") { $0["rope_scaling"] = ["type": "linear", "factor": 2.0] },
                        key: "rope_scaling.rope_type", mentioning: "linear")
        assertBadConfig(try checkpoint("pythia-tiny-sequential") { $0["rope_parameters"] = ["rope_type": "dynamic", "rope_theta": 500.0, "factor": 2.0] },
                        key: "rope_parameters.rope_type", mentioning: "dynamic")
        assertBadConfig(try checkpoint("pythia-tiny") { $0["rotary_pct"] = 1.5 }, key: "rotary_pct", mentioning: "1.5")
        assertBadConfig(try checkpoint("pythia-tiny") { $0["rotary_emb_base"] = 0 }, key: "rotary_emb_base", mentioning: "0")
        // transformers 5's GPTNeoXConfig ignores these: one that disagrees is not silently dropped.
        assertBadConfig(try checkpoint("pythia-tiny") { $0["rope_theta"] = 500.0 }, key: "rope_theta", mentioning: "500")
        assertBadConfig(try checkpoint("pythia-tiny") { $0["partial_rotary_factor"] = 0.5 }, key: "partial_rotary_factor", mentioning: "0.5")
        XCTAssertNoThrow(try logits(try checkpoint("pythia-tiny") { $0["rope_theta"] = 10000.0 }), "a rope_theta that agrees")
        assertBadConfig(try checkpoint("pythia-tiny") { $0["head_dim"] = 8 }, key: "head_dim", mentioning: "8")
        assertBadConfig(try checkpoint("pythia-tiny") { $0["num_attention_heads"] = 5 }, key: "num_attention_heads", mentioning: "5")
    }
}

/// Hooks that keep the values they saw.
private protocol Recording {
    var values: [Site: Tensor] { get }
}

extension ActivationRecorder: Recording {}

/// Adds `delta` (broadcast over the last dim) at `edit`, then records `sites` (the edited one as edited).
private final class EditThenRecord: ForwardHooks, Recording {
    let edit: Site
    let delta: Tensor
    let recorder: ActivationRecorder

    init(edit: Site, adding delta: Tensor, _ sites: [Site]) {
        self.edit = edit
        self.delta = delta
        recorder = ActivationRecorder(sites)
    }

    var values: [Site: Tensor] { recorder.values }

    func wants(_ site: Site) -> Bool { site == edit || recorder.wants(site) }

    func visit(_ site: Site, _ value: inout Tensor) throws {
        if site == edit { value = TensorMath.binary(value, delta, .add) }
        if recorder.wants(site) { try recorder.visit(site, &value) }
    }
}
