import Foundation
import LoupeModels
import LoupeTensor
import LoupeTestSupport
import XCTest

/// A hook that applies a closure at one site.
final class EditHook: ForwardHooks {
    let site: Site
    let edit: (inout Tensor) -> Void
    init(_ site: Site, _ edit: @escaping (inout Tensor) -> Void) {
        self.site = site
        self.edit = edit
    }
    func wants(_ s: Site) -> Bool { s == site }
    func visit(_ s: Site, _ value: inout Tensor) throws { edit(&value) }
}

/// Hooks see and change the forward pass as PyTorch forward hooks would.
final class HookTests: XCTestCase {
    func load(_ name: String) throws -> any LanguageModel {
        try LoadedModel.load(fixturesDirectory + "/models/" + name, registry: testRegistry).model
    }

    let clean = [5, 17, 300, 42, 8, 99]
    let corrupted = [5, 17, 300, 7, 8, 99]

    /// Patching the whole residual stream of one layer from the clean run into the corrupted
    /// run gives the clean run's logits: everything downstream depends only on it.
    func testPatchingWholeResidualStreamRestoresCleanRun() throws {
        for name in ["gpt2-tiny", "llama-tiny"] {
            let model = try load(name)
            let cleanLogits = try model.forward(TokenBatch([clean]))
            let corruptedLogits = try model.forward(TokenBatch([corrupted]))
            XCTAssertGreaterThan(maxDifference(cleanLogits, corruptedLogits), 1e-3, "the prompts must differ for the test to mean anything")
            for layer in 0..<model.dimensions.layers {
                let site = Site("blocks.\(layer).resid_post", .output)
                let recorder = ActivationRecorder([site])
                _ = try model.forward(TokenBatch([clean]), hooks: recorder)
                let cleanResidual = recorder.values[site]!
                let patched = try model.forward(TokenBatch([corrupted]), hooks: EditHook(site) { $0 = cleanResidual.copy() })
                XCTAssertLessThanOrEqual(maxDifference(patched, cleanLogits), 1e-5, "\(name) layer \(layer)")
            }
        }
    }

    /// A head zeroed through the canonical per-head site equals the same columns zeroed in
    /// the HF module's input: the two names are one value.
    func testCanonicalAndHFSitesAreTheSameValue() throws {
        for (name, oProj) in [("gpt2-tiny", "transformer.h.1.attn.c_proj"), ("llama-tiny", "model.layers.1.self_attn.o_proj")] {
            let model = try load(name)
            let d = model.dimensions
            let head = 2
            let viaHeads = try model.forward(TokenBatch([clean]), hooks: EditHook(Site("blocks.1.attn.z", .output)) { z in
                XCTAssertEqual(z.shape, [1, self.clean.count, d.heads, d.headDim])
                z.slice(axis: 2, head..<(head + 1)).fill(0)
            })
            let viaModule = try model.forward(TokenBatch([clean]), hooks: EditHook(Site(oProj, .input)) { x in
                XCTAssertEqual(x.shape, [1, self.clean.count, d.heads * d.headDim])
                x.slice(axis: 2, (head * d.headDim)..<((head + 1) * d.headDim)).fill(0)
            })
            let untouched = try model.forward(TokenBatch([clean]))
            XCTAssertEqual(viaHeads.toArray(), viaModule.toArray(), name)
            XCTAssertGreaterThan(maxDifference(viaHeads, untouched), 1e-4, "\(name): zeroing a head changes the output")
        }
    }

    /// Writing into a module's input in place changes the tensor its caller also holds (the
    /// residual stream), as in PyTorch; replacing it changes only that module's input.
    func testInPlaceWriteAndReplacementDifferAsInPyTorch() throws {
        let model = try load("gpt2-tiny")
        let site = Site("transformer.h.0.ln_1", .input)
        let inPlace = try model.forward(TokenBatch([clean]), hooks: EditHook(site) { $0.fill(0) })
        let replaced = try model.forward(TokenBatch([clean]), hooks: EditHook(site) { $0 = Tensor(zeros: $0.shape) })
        XCTAssertGreaterThan(maxDifference(inPlace, replaced), 1e-4)
        // In place, the residual stream itself became zero: same as zeroing block 0's input.
        let zeroedBlockInput = try model.forward(TokenBatch([clean]), hooks: EditHook(Site("transformer.h.0", .input)) { $0.fill(0) })
        XCTAssertEqual(inPlace.toArray(), zeroedBlockInput.toArray())
    }

    func testHookShapeMismatchIsATypedError() throws {
        let model = try load("llama-tiny")
        let hook = EditHook(Site("blocks.0.resid_post", .output)) { $0 = Tensor(zeros: [1, 2, 3]) }
        XCTAssertThrowsError(try model.forward(TokenBatch([clean]), hooks: hook)) { error in
            guard case ModelError.hookShapeMismatch(let site, let expected, let got) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(site, "blocks.0.resid_post.output")
            XCTAssertEqual(expected, [1, clean.count, 64])
            XCTAssertEqual(got, [1, 2, 3])
        }
    }

    func testCancellationStopsBetweenLayers() throws {
        let model = try load("llama-tiny")
        XCTAssertThrowsError(try model.forward(TokenBatch([clean]), hooks: nil, logits: .last, cancelled: { true })) {
            XCTAssertEqual($0 as? ModelError, .cancelled)
        }
    }

    func testBadBatchesAreTypedErrors() throws {
        let model = try load("gpt2-tiny")
        XCTAssertThrowsError(try model.forward(TokenBatch([[1, 512]]))) { XCTAssertEqual($0 as? ModelError, .tokenOutOfRange(512, vocabulary: 512)) }
        XCTAssertThrowsError(try model.forward(TokenBatch([[1, -1]]))) { XCTAssertEqual($0 as? ModelError, .tokenOutOfRange(-1, vocabulary: 512)) }
        XCTAssertThrowsError(try model.forward(TokenBatch([]))) { XCTAssertEqual($0 as? ModelError, .emptyInput) }
        XCTAssertThrowsError(try model.forward(TokenBatch([[1], []]))) { XCTAssertEqual($0 as? ModelError, .emptyInput) }
        XCTAssertThrowsError(try model.forward(TokenBatch([Array(repeating: 1, count: 65)]))) { XCTAssertEqual($0 as? ModelError, .tooLong(65, limit: 64)) }
    }

    /// The site list is what the forward pass really fires, in order, with symbolic shapes.
    func testSiteDiscovery() throws {
        let gpt2 = try load("gpt2-tiny")
        let sites = try gpt2.discoverSites()
        func info(_ path: String, _ io: SiteIO = .output) -> SiteInfo? { sites.first { $0.site == path && $0.io == io } }
        XCTAssertEqual(info("transformer.h.0")?.tuple, true, "a GPT-2 block returns a tuple")
        XCTAssertEqual(info("transformer.h.0")?.shape, [SiteInfo.batchDim, SiteInfo.sequenceDim, 64])
        XCTAssertEqual(info("blocks.1.attn.z")?.shape, [SiteInfo.batchDim, SiteInfo.sequenceDim, 4, 16])
        XCTAssertEqual(info("blocks.1.attn.pattern")?.shape, [SiteInfo.batchDim, 4, SiteInfo.sequenceDim, SiteInfo.sequenceDim])
        XCTAssertEqual(info("lm_head")?.shape, [SiteInfo.batchDim, SiteInfo.sequenceDim, 512])
        XCTAssertNotNil(info("transformer.h.1.attn.c_proj", .input))
        let order = sites.map { "\($0.site).\($0.io)" }
        XCTAssertLessThan(order.firstIndex(of: "transformer.h.0.output")!, order.firstIndex(of: "transformer.h.1.input")!)
        // Every module in the tree that runs has both sites (containers and embeddings' token-id inputs aside).
        let withSites = Set(sites.map(\.site))
        for path in gpt2.moduleTree.allPaths where !path.hasSuffix(".h") {
            XCTAssertTrue(withSites.contains(path), "no site for module \(path)")
        }

        let llama = try load("llama-tiny")
        let llamaSites = try llama.discoverSites()
        XCTAssertEqual(llamaSites.first { $0.site == "blocks.0.attn.k" }?.shape, [SiteInfo.batchDim, SiteInfo.sequenceDim, 2, 16],
                       "grouped-query key sites name the key/value heads")
        XCTAssertEqual(llamaSites.first { $0.site == "model.layers.0" && $0.io == .output }?.tuple, false)
    }

    func testModuleTreePrintsLikePyTorch() throws {
        let text = try load("gpt2-tiny").moduleTree.rendered()
        XCTAssertTrue(text.hasPrefix("GPT2LMHeadModel(\n  (transformer): GPT2Model(\n    (wte): Embedding(512, 64)\n"), text)
        XCTAssertTrue(text.contains("    (h): ModuleList(\n      (0-1): 2 x GPT2Block(\n        (ln_1): LayerNorm((64,), eps=1e-05, elementwise_affine=True)\n"), text)
        XCTAssertTrue(text.hasSuffix("  (lm_head): Linear(in_features=64, out_features=512, bias=False)\n)"), text)
        let llama = try load("llama-tiny").moduleTree.rendered()
        XCTAssertTrue(llama.contains("(k_proj): Linear(in_features=64, out_features=32, bias=False)"), llama)
        XCTAssertTrue(llama.contains("(input_layernorm): LlamaRMSNorm((64,), eps=1e-05)"), llama)
    }

    /// Llama, Qwen2 and Qwen3 print exactly as transformers 5.25 prints the fixtures (`print(model)`).
    func testModuleTreesPrintAsTransformers() throws {
        XCTAssertEqual(try load("llama-tiny-untied").moduleTree.rendered(), """
            LlamaForCausalLM(
              (model): LlamaModel(
                (embed_tokens): Embedding(512, 64)
                (layers): ModuleList(
                  (0-2): 3 x LlamaDecoderLayer(
                    (self_attn): LlamaAttention(
                      (q_proj): Linear(in_features=64, out_features=96, bias=True)
                      (k_proj): Linear(in_features=64, out_features=48, bias=True)
                      (v_proj): Linear(in_features=64, out_features=48, bias=True)
                      (o_proj): Linear(in_features=96, out_features=64, bias=True)
                    )
                    (mlp): LlamaMLP(
                      (gate_proj): Linear(in_features=64, out_features=80, bias=False)
                      (up_proj): Linear(in_features=64, out_features=80, bias=False)
                      (down_proj): Linear(in_features=80, out_features=64, bias=False)
                      (act_fn): SiLUActivation()
                    )
                    (input_layernorm): LlamaRMSNorm((64,), eps=1e-05)
                    (post_attention_layernorm): LlamaRMSNorm((64,), eps=1e-05)
                  )
                )
                (norm): LlamaRMSNorm((64,), eps=1e-05)
                (rotary_emb): LlamaRotaryEmbedding()
              )
              (lm_head): Linear(in_features=64, out_features=512, bias=False)
            )
            """)
        XCTAssertEqual(try load("qwen2-tiny").moduleTree.rendered(), """
            Qwen2ForCausalLM(
              (model): Qwen2Model(
                (embed_tokens): Embedding(512, 64)
                (layers): ModuleList(
                  (0-1): 2 x Qwen2DecoderLayer(
                    (self_attn): Qwen2Attention(
                      (q_proj): Linear(in_features=64, out_features=64, bias=True)
                      (k_proj): Linear(in_features=64, out_features=32, bias=True)
                      (v_proj): Linear(in_features=64, out_features=32, bias=True)
                      (o_proj): Linear(in_features=64, out_features=64, bias=False)
                    )
                    (mlp): Qwen2MLP(
                      (gate_proj): Linear(in_features=64, out_features=128, bias=False)
                      (up_proj): Linear(in_features=64, out_features=128, bias=False)
                      (down_proj): Linear(in_features=128, out_features=64, bias=False)
                      (act_fn): SiLUActivation()
                    )
                    (input_layernorm): Qwen2RMSNorm((64,), eps=1e-06)
                    (post_attention_layernorm): Qwen2RMSNorm((64,), eps=1e-06)
                  )
                )
                (norm): Qwen2RMSNorm((64,), eps=1e-06)
                (rotary_emb): Qwen2RotaryEmbedding()
              )
              (lm_head): Linear(in_features=64, out_features=512, bias=False)
            )
            """)
        XCTAssertEqual(try load("qwen3-tiny").moduleTree.rendered(), """
            Qwen3ForCausalLM(
              (model): Qwen3Model(
                (embed_tokens): Embedding(512, 64)
                (layers): ModuleList(
                  (0-1): 2 x Qwen3DecoderLayer(
                    (self_attn): Qwen3Attention(
                      (q_proj): Linear(in_features=64, out_features=96, bias=False)
                      (k_proj): Linear(in_features=64, out_features=48, bias=False)
                      (v_proj): Linear(in_features=64, out_features=48, bias=False)
                      (o_proj): Linear(in_features=96, out_features=64, bias=False)
                      (q_norm): Qwen3RMSNorm((24,), eps=1e-06)
                      (k_norm): Qwen3RMSNorm((24,), eps=1e-06)
                    )
                    (mlp): Qwen3MLP(
                      (gate_proj): Linear(in_features=64, out_features=128, bias=False)
                      (up_proj): Linear(in_features=64, out_features=128, bias=False)
                      (down_proj): Linear(in_features=128, out_features=64, bias=False)
                      (act_fn): SiLUActivation()
                    )
                    (input_layernorm): Qwen3RMSNorm((64,), eps=1e-06)
                    (post_attention_layernorm): Qwen3RMSNorm((64,), eps=1e-06)
                  )
                )
                (norm): Qwen3RMSNorm((64,), eps=1e-06)
                (rotary_emb): Qwen3RotaryEmbedding()
              )
              (lm_head): Linear(in_features=64, out_features=512, bias=False)
            )
            """)
    }
}
