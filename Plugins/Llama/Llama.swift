import LoupeFormats
import LoupeModels
import LoupeTensor

/// Llama (Touvron et al., 2023) as HF's `LlamaForCausalLM` computes it: pre-norm blocks
/// with RMSNorm, rotary position embeddings, grouped-query attention and a SiLU-gated MLP,
/// then a final RMSNorm and an unembedding that may be tied to the token embedding.
public enum LlamaArchitecture: ArchitectureAdapter {
    public static let name = "llama"
    public static let modelTypes = ["llama"]

    public static func load(_ checkpoint: Checkpoint) throws -> any LanguageModel {
        switch checkpoint {
        case .huggingFace(let config, let weights):
            return try LlamaModel(LlamaModel.Settings(config), weights: WeightReader(weights, optionalPrefix: "model."))
        case .gguf(let file):
            let settings = try LlamaModel.Settings(gguf: file)
            return try LlamaModel(settings, weights: WeightReader(LlamaGGUFWeights(file, settings), optionalPrefix: "model."))
        }
    }
}

final class LlamaModel: LanguageModel, @unchecked Sendable {
    /// The hyper-parameters, read from config.json or GGUF metadata.
    struct Settings {
        var source: String
        var layers, hidden, heads, keyValueHeads, headDim, intermediate, vocabulary, context: Int
        var epsilon: Double
        var ropeTheta: Double
        var tied: Bool
        var attentionBias: Bool
        var mlpBias: Bool
    }

    let architecture = LlamaArchitecture.name
    let dimensions: ModelDimensions
    let moduleTree: ModuleNode
    let weightBytes: Int

    private let settings: Settings
    private let tokenEmbedding: Tensor
    private let blocks: [Block]
    private let finalNormWeight: Tensor
    let unembedding: Linear
    private let rotary: RotaryTable

    struct Block {
        let inputNorm: Tensor
        /// q_proj, k_proj and v_proj side by side: one matrix product for all three.
        let qkv: Linear
        let o: Linear
        let postAttentionNorm: Tensor
        /// gate_proj and up_proj side by side.
        let gateUp: Linear
        let down: Linear
    }

    init(_ s: Settings, weights w: WeightReader) throws {
        settings = s
        dimensions = ModelDimensions(layers: s.layers, hidden: s.hidden, heads: s.heads, keyValueHeads: s.keyValueHeads,
                                     headDim: s.headDim, intermediate: s.intermediate, vocabulary: s.vocabulary, context: s.context)
        func linear(_ name: String, out: Int, in inputs: Int, bias: Bool) throws -> Linear {
            Linear(weight: try w(name + ".weight", [out, inputs]),
                   bias: bias ? try w(name + ".bias", [out]) : nil, layout: .outputMajor)
        }
        let (qWidth, kvWidth) = (s.heads * s.headDim, s.keyValueHeads * s.headDim)
        tokenEmbedding = try w("model.embed_tokens.weight", [s.vocabulary, s.hidden])
        blocks = try (0..<s.layers).map { l in
            let p = "model.layers.\(l)."
            return Block(
                inputNorm: try w(p + "input_layernorm.weight", [s.hidden]),
                qkv: Linear.fused([
                    try linear(p + "self_attn.q_proj", out: qWidth, in: s.hidden, bias: s.attentionBias),
                    try linear(p + "self_attn.k_proj", out: kvWidth, in: s.hidden, bias: s.attentionBias),
                    try linear(p + "self_attn.v_proj", out: kvWidth, in: s.hidden, bias: s.attentionBias),
                ]),
                o: try linear(p + "self_attn.o_proj", out: s.hidden, in: qWidth, bias: s.attentionBias).inputMajor(),
                postAttentionNorm: try w(p + "post_attention_layernorm.weight", [s.hidden]),
                gateUp: Linear.fused([
                    try linear(p + "mlp.gate_proj", out: s.intermediate, in: s.hidden, bias: s.mlpBias),
                    try linear(p + "mlp.up_proj", out: s.intermediate, in: s.hidden, bias: s.mlpBias),
                ]),
                down: try linear(p + "mlp.down_proj", out: s.hidden, in: s.intermediate, bias: s.mlpBias).inputMajor())
        }
        finalNormWeight = try w("model.norm.weight", [s.hidden])
        if !s.tied, w.has("lm_head.weight") {
            unembedding = Linear(weight: try w("lm_head.weight", [s.vocabulary, s.hidden]), layout: .outputMajor).inputMajor()
        } else if !s.tied {
            throw ModelError.format(FormatError(.missingTensor, file: s.source, item: "lm_head.weight",
                                                "tie_word_embeddings is false but the checkpoint has no lm_head.weight"))
        } else {
            unembedding = Linear(weight: tokenEmbedding, layout: .outputMajor)
        }
        rotary = RotaryTable(dim: s.headDim, theta: s.ropeTheta, positions: s.context)
        let attention = s.hidden * (2 * qWidth + 2 * kvWidth) + (s.attentionBias ? 2 * qWidth + 2 * kvWidth : 0)
        let mlp = 3 * s.hidden * s.intermediate
        weightBytes = 4 * (s.vocabulary * s.hidden * (s.tied ? 1 : 2) + s.layers * (attention + mlp + 2 * s.hidden) + s.hidden)
        moduleTree = LlamaModel.tree(s)
    }

    func embed(_ pass: ForwardPass) throws -> Tensor {
        var x = embeddingLookup(tokenEmbedding, pass.tokenIDs ?? [])
        try pass.fire(["model.embed_tokens"], .output, &x)
        return x
    }

    func finalNorm(_ x: Tensor, _ pass: ForwardPass) throws -> Tensor {
        var normIn = x
        try pass.fire(["model.norm"], .input, &normIn)
        var final = rmsNorm(normIn, weight: finalNormWeight, eps: Float(settings.epsilon))
        try pass.fire(["model.norm"], .output, &final)
        try pass.fire(["model"], .output, &final, tuple: true)
        return final
    }

    /// One decoder layer: x + attn(norm(x)), then + mlp(norm(·)).
    func layer(_ layer: Int, _ input: Tensor, _ pass: ForwardPass) throws -> Tensor {
        let b = blocks[layer], p = "model.layers.\(layer)"
        let (rows, length) = (pass.rows, pass.length)
        let (heads, kvHeads, headDim) = (dimensions.heads, dimensions.keyValueHeads, dimensions.headDim)
        var x = input
        try pass.fire([p], .input, &x)
        try pass.fire(["blocks.\(layer).resid_pre"], .output, &x)

        // Attention.
        var normIn = x
        try pass.fire(["\(p).input_layernorm"], .input, &normIn)
        var normed = rmsNorm(normIn, weight: b.inputNorm, eps: Float(settings.epsilon))
        try pass.fire(["\(p).input_layernorm"], .output, &normed)
        try pass.fire(["\(p).self_attn", "\(p).self_attn.q_proj", "\(p).self_attn.k_proj", "\(p).self_attn.v_proj"], .input, &normed)
        let qkv = b.qkv(normed)
        let (qWidth, kvWidth) = (heads * headDim, kvHeads * headDim)
        var q = qkv.slice(axis: 1, 0..<qWidth)
        var k = qkv.slice(axis: 1, qWidth..<(qWidth + kvWidth))
        var v = qkv.slice(axis: 1, (qWidth + kvWidth)..<(qWidth + 2 * kvWidth))
        try pass.fire(["\(p).self_attn.q_proj"], .output, &q)
        try pass.fire(["\(p).self_attn.k_proj"], .output, &k)
        try pass.fire(["\(p).self_attn.v_proj"], .output, &v)
        rotary.apply(q, heads: heads, positions: pass.positionIDs)
        rotary.apply(k, heads: kvHeads, positions: pass.positionIDs)
        try pass.fire(["blocks.\(layer).attn.q"], .output, &q, shape: [rows, length, heads, headDim])
        try pass.fire(["blocks.\(layer).attn.k"], .output, &k, shape: [rows, length, kvHeads, headDim])
        try pass.fire(["blocks.\(layer).attn.v"], .output, &v, shape: [rows, length, kvHeads, headDim])
        let geometry = pass.attentionGeometry(heads: heads, keyValueHeads: kvHeads, headDim: headDim)
        let (keys, values) = pass.attentionInputs(layer: layer, keys: k, values: v)
        var pattern = attentionPattern(q: q, k: keys, geometry: geometry, scale: 1 / Float(headDim).squareRoot())
        try pass.fire(["blocks.\(layer).attn.pattern"], .output, &pattern, shape: pattern.shape)
        var z = attendValues(pattern: pattern, v: values, geometry: geometry)
        try pass.fire(["\(p).self_attn.o_proj"], .input, &z)
        try pass.fire(["blocks.\(layer).attn.z"], .output, &z, shape: [rows, length, heads, headDim])
        var attention = b.o(z)
        try pass.fire(["\(p).self_attn.o_proj"], .output, &attention)
        try pass.fire(["\(p).self_attn"], .output, &attention, tuple: true)
        try pass.fire(["blocks.\(layer).attn_out"], .output, &attention)
        addInPlace(x, attention)
        try pass.fire(["blocks.\(layer).resid_mid"], .output, &x)

        // MLP: down(silu(gate(x)) * up(x)).
        var norm2In = x
        try pass.fire(["\(p).post_attention_layernorm"], .input, &norm2In)
        var normed2 = rmsNorm(norm2In, weight: b.postAttentionNorm, eps: Float(settings.epsilon))
        try pass.fire(["\(p).post_attention_layernorm"], .output, &normed2)
        try pass.fire(["\(p).mlp", "\(p).mlp.gate_proj", "\(p).mlp.up_proj"], .input, &normed2)
        let gateUp = b.gateUp(normed2)
        let intermediate = gateUp.columnCount / 2
        var gate = gateUp.slice(axis: 1, 0..<intermediate)
        var up = gateUp.slice(axis: 1, intermediate..<(2 * intermediate))
        try pass.fire(["\(p).mlp.gate_proj"], .output, &gate)
        try pass.fire(["\(p).mlp.up_proj"], .output, &up)
        try pass.fire(["\(p).mlp.act_fn"], .input, &gate)
        var activated: Tensor
        if pass.hasHooks {
            // act_fn's output is its own site, so compute it apart from the product with up.
            activated = siluGated(gate, nil)
            try pass.fire(["\(p).mlp.act_fn"], .output, &activated)
            multiplyInPlace(activated, up)
        } else {
            activated = siluGated(gate, up)
        }
        try pass.fire(["\(p).mlp.down_proj"], .input, &activated)
        var mlp = b.down(activated)
        try pass.fire(["\(p).mlp.down_proj"], .output, &mlp)
        try pass.fire(["\(p).mlp"], .output, &mlp)
        try pass.fire(["blocks.\(layer).mlp_out"], .output, &mlp)
        addInPlace(x, mlp)

        try pass.fire([p], .output, &x)
        try pass.fire(["blocks.\(layer).resid_post"], .output, &x)
        return x
    }

    /// The module tree as `print(model)` shows it for LlamaForCausalLM.
    private static func tree(_ s: Settings) -> ModuleNode {
        func node(_ path: String, _ type: String, _ extra: String = "", _ children: [ModuleNode] = []) -> ModuleNode {
            ModuleNode(name: String(path.split(separator: ".").last ?? ""), path: path, type: type, extra: extra, children: children)
        }
        func linear(_ path: String, _ inputs: Int, _ outputs: Int, _ bias: Bool) -> ModuleNode {
            node(path, "Linear", "in_features=\(inputs), out_features=\(outputs), bias=\(bias ? "True" : "False")")
        }
        let norm = "(\(s.hidden),), eps=\(s.epsilon)"
        let (qWidth, kvWidth) = (s.heads * s.headDim, s.keyValueHeads * s.headDim)
        let layers = (0..<s.layers).map { l -> ModuleNode in
            let p = "model.layers.\(l)"
            return node(p, "LlamaDecoderLayer", "", [
                node("\(p).self_attn", "LlamaAttention", "", [
                    linear("\(p).self_attn.q_proj", s.hidden, qWidth, s.attentionBias),
                    linear("\(p).self_attn.k_proj", s.hidden, kvWidth, s.attentionBias),
                    linear("\(p).self_attn.v_proj", s.hidden, kvWidth, s.attentionBias),
                    linear("\(p).self_attn.o_proj", qWidth, s.hidden, s.attentionBias),
                ]),
                node("\(p).mlp", "LlamaMLP", "", [
                    linear("\(p).mlp.gate_proj", s.hidden, s.intermediate, s.mlpBias),
                    linear("\(p).mlp.up_proj", s.hidden, s.intermediate, s.mlpBias),
                    linear("\(p).mlp.down_proj", s.intermediate, s.hidden, s.mlpBias),
                    node("\(p).mlp.act_fn", "SiLU"),
                ]),
                node("\(p).input_layernorm", "LlamaRMSNorm", norm),
                node("\(p).post_attention_layernorm", "LlamaRMSNorm", norm),
            ])
        }
        return ModuleNode(name: "", path: "", type: "LlamaForCausalLM", children: [
            node("model", "LlamaModel", "", [
                node("model.embed_tokens", "Embedding", "\(s.vocabulary), \(s.hidden)"),
                node("model.layers", "ModuleList", "", layers),
                node("model.norm", "LlamaRMSNorm", norm),
                node("model.rotary_emb", "LlamaRotaryEmbedding"),
            ]),
            linear("lm_head", s.hidden, s.vocabulary, false),
        ])
    }
}

extension LlamaModel.Settings {
    /// From an HF config.json (transformers 4 or 5).
    init(_ c: HFConfig) throws {
        source = c.path
        hidden = try c.requireInt("hidden_size")
        layers = try c.requireInt("num_hidden_layers")
        heads = try c.requireInt("num_attention_heads")
        keyValueHeads = try c.int("num_key_value_heads") ?? heads
        headDim = try c.int("head_dim") ?? Self.headDim(hidden: hidden, heads: heads, file: c.path, key: "num_attention_heads")
        intermediate = try c.requireInt("intermediate_size")
        vocabulary = try c.requireInt("vocab_size")
        context = try c.int("max_position_embeddings") ?? 2048
        epsilon = try c.double("rms_norm_eps") ?? 1e-6
        ropeTheta = try c.ropeTheta ?? 10_000
        tied = try c.tieWordEmbeddings
        attentionBias = try c.bool("attention_bias") ?? false
        mlpBias = try c.bool("mlp_bias") ?? false
        if c.values["rope_scaling"].map({ $0 != .null }) ?? false {
            throw ModelError.badConfig(file: c.path, key: "rope_scaling", "scaled RoPE (Llama 3.1's long-context form) is not supported yet")
        }
        try check(keys: ["layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
                         "keyValueHeads": "num_key_value_heads", "headDim": try c.int("head_dim") == nil ? "num_attention_heads" : "head_dim",
                         "intermediate": "intermediate_size", "vocabulary": "vocab_size", "context": "max_position_embeddings",
                         "epsilon": "rms_norm_eps", "ropeTheta": "rope_theta"])
    }

    /// From GGUF metadata (llama.cpp's `llama.*` keys).
    init(gguf f: GGUFFile) throws {
        func int(_ key: String) throws -> Int {
            guard let value = f.metadata["llama." + key]?.intValue else {
                throw ModelError.format(FormatError(.missingKey, file: f.path, item: "llama." + key, "required metadata key is missing"))
            }
            return value
        }
        source = f.path
        hidden = try int("embedding_length")
        layers = try int("block_count")
        heads = try int("attention.head_count")
        keyValueHeads = (try? int("attention.head_count_kv")) ?? heads
        headDim = try f.metadata["llama.attention.key_length"]?.intValue
            ?? Self.headDim(hidden: hidden, heads: heads, file: f.path, key: "llama.attention.head_count")
        intermediate = try int("feed_forward_length")
        vocabulary = f.shape(of: "token_embd.weight")?.first ?? f.metadata["tokenizer.ggml.tokens"]?.arrayValue?.count ?? 0
        context = try int("context_length")
        // GGUF stores it as float32; keep the decimal value it was written from (1e-05, not 9.99999974e-06).
        let storedEpsilon = Float(f.metadata["llama.attention.layer_norm_rms_epsilon"]?.doubleValue ?? 1e-5)
        epsilon = Double("\(storedEpsilon)") ?? Double(storedEpsilon)
        ropeTheta = f.metadata["llama.rope.freq_base"]?.doubleValue ?? 10_000
        tied = f.shape(of: "output.weight") == nil
        attentionBias = f.shape(of: "blk.0.attn_q.bias") != nil
        mlpBias = false
        try check(keys: ["layers": "llama.block_count", "hidden": "llama.embedding_length", "heads": "llama.attention.head_count",
                         "keyValueHeads": "llama.attention.head_count_kv", "headDim": "llama.attention.key_length",
                         "intermediate": "llama.feed_forward_length", "vocabulary": "token_embd.weight",
                         "context": "llama.context_length", "epsilon": "llama.attention.layer_norm_rms_epsilon",
                         "ropeTheta": "llama.rope.freq_base"])
    }

    /// hidden / heads, when no head dimension is given: then the heads must divide the hidden size.
    private static func headDim(hidden: Int, heads: Int, file: String, key: String) throws -> Int {
        guard heads > 0, hidden % heads == 0 else {
            throw ModelError.badConfig(file: file, key: key, "\(heads) heads do not divide the hidden size \(hidden)")
        }
        return hidden / heads
    }

    /// Every size in range and the heads consistent, before anything is allocated; `keys`
    /// names the config key each setting came from, for the error.
    private func check(keys: [String: String]) throws {
        func size(_ value: Int, _ range: ClosedRange<Int>, _ field: String) throws {
            try ConfigCheck.size(value, range, key: keys[field] ?? field, file: source)
        }
        try size(layers, ConfigCheck.layers, "layers")
        try size(hidden, ConfigCheck.width, "hidden")
        try size(heads, ConfigCheck.heads, "heads")
        try size(keyValueHeads, ConfigCheck.heads, "keyValueHeads")
        try size(headDim, ConfigCheck.headDim, "headDim")
        try size(intermediate, ConfigCheck.width, "intermediate")
        try size(vocabulary, ConfigCheck.vocabulary, "vocabulary")
        try size(context, ConfigCheck.context, "context")
        try ConfigCheck.positive(epsilon, key: keys["epsilon"] ?? "epsilon", file: source)
        try ConfigCheck.positive(ropeTheta, key: keys["ropeTheta"] ?? "ropeTheta", file: source)
        guard heads % keyValueHeads == 0, headDim % 2 == 0 else {
            throw ModelError.badConfig(file: source, key: keys["keyValueHeads"] ?? "keyValueHeads",
                                       "\(heads) attention heads cannot share \(keyValueHeads) key/value heads of dimension \(headDim)")
        }
    }
}

/// A GGUF file's tensors under HF's names, with llama.cpp's rotary row permutation of the
/// query and key projections undone (its conversion script interleaves each head's halves).
struct LlamaGGUFWeights: WeightSource, @unchecked Sendable {
    let file: GGUFFile
    let settings: LlamaModel.Settings
    private let names: [String: String]  // HF name → GGUF name

    init(_ file: GGUFFile, _ settings: LlamaModel.Settings) {
        self.file = file
        self.settings = settings
        var names = ["model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"]
        let perLayer = ["self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"]
        for layer in 0..<settings.layers {
            for (hf, gguf) in perLayer {
                for kind in ["weight", "bias"] {
                    names["model.layers.\(layer).\(hf).\(kind)"] = "blk.\(layer).\(gguf).\(kind)"
                }
            }
        }
        self.names = names.filter { file.shape(of: $0.value) != nil }
    }

    var description: String { file.path }
    var tensorNames: [String] { Array(names.keys) }
    func shape(of name: String) -> [Int]? { names[name].flatMap(file.shape(of:)) }

    func tensor(_ name: String) throws -> Tensor {
        guard let ggufName = names[name] else {
            throw FormatError(.missingTensor, file: file.path, item: name, "no tensor for it in the GGUF file")
        }
        let t = try file.tensor(ggufName)
        if ggufName.hasSuffix("attn_q.weight") || ggufName.hasSuffix("attn_q.bias") { return unpermute(t, heads: settings.heads) }
        if ggufName.hasSuffix("attn_k.weight") || ggufName.hasSuffix("attn_k.bias") { return unpermute(t, heads: settings.keyValueHeads) }
        return t
    }

    /// Row i·2 + j of each head's block (i < half, j < 2) goes back to row j·half + i.
    private func unpermute(_ t: Tensor, heads: Int) -> Tensor {
        let rows = t.shape[0], width = t.count / rows
        let half = rows / heads / 2
        let out = Tensor(zeros: t.shape)
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 {
                    let from = h * 2 * half + i * 2 + j, to = h * 2 * half + j * half + i
                    (out.data + to * width).update(from: t.data + from * width, count: width)
                }
            }
        }
        return out
    }
}
