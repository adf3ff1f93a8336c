import LoupeFormats
import LoupeModels
import LoupeTensor

/// GPT-2 (Radford et al., 2019) as HF's `GPT2LMHeadModel` computes it: learned token and
/// position embeddings, pre-norm blocks of masked multi-head attention and a GELU MLP,
/// a final LayerNorm and an unembedding tied to the token embedding.
public enum GPT2Architecture: ArchitectureAdapter {
    public static let name = "gpt2"
    public static let modelTypes = ["gpt2"]

    public static func load(_ checkpoint: Checkpoint) throws -> any LanguageModel {
        switch checkpoint {
        case .huggingFace(let config, let weights):
            return try GPT2Model(config: config, weights: weights)
        case .gguf(let file):
            throw ModelError.badConfig(file: file.path, key: "general.architecture",
                                       "GPT-2 loads from an HF directory (config.json and safetensors), not GGUF")
        }
    }
}

final class GPT2Model: LanguageModel, @unchecked Sendable {
    let architecture = GPT2Architecture.name
    let dimensions: ModelDimensions
    let moduleTree: ModuleNode
    let weightBytes: Int

    private let epsilon: Float
    private let tokenEmbedding: Tensor      // wte [vocab, hidden]; also the unembedding
    private let positionEmbedding: Tensor   // wpe [context, hidden]
    private let blocks: [Block]
    private let finalNormWeights: (weight: Tensor, bias: Tensor)
    let unembedding: Linear

    struct Block {
        let norm1: (weight: Tensor, bias: Tensor)
        let qkv: Linear          // c_attn: the three projections side by side
        let attentionOut: Linear // attn.c_proj
        let norm2: (weight: Tensor, bias: Tensor)
        let up: Linear           // mlp.c_fc
        let down: Linear         // mlp.c_proj
        let attentionScale: Float
    }

    init(config: HFConfig, weights source: any WeightSource) throws {
        let file = config.path
        func size(_ key: String, _ range: ClosedRange<Int>, default fallback: Int? = nil) throws -> Int {
            let value = try fallback.map { try config.int(key) ?? $0 } ?? config.requireInt(key)
            return try ConfigCheck.size(value, range, key: key, file: file)
        }
        let layers = try size("n_layer", ConfigCheck.layers)
        let hidden = try size("n_embd", ConfigCheck.width)
        let heads = try size("n_head", ConfigCheck.heads)
        let vocabulary = try size("vocab_size", ConfigCheck.vocabulary)
        let context = try size("n_positions", ConfigCheck.context)
        let inner = try size("n_inner", ConfigCheck.width, default: 4 * hidden)
        guard hidden % heads == 0 else {
            throw ModelError.badConfig(file: file, key: "n_head", "n_embd \(hidden) is not divisible by n_head \(heads)")
        }
        let activation = config.string("activation_function") ?? "gelu_new"
        guard ["gelu_new", "gelu_pytorch_tanh"].contains(activation) else {
            throw ModelError.badConfig(file: file, key: "activation_function", "'\(activation)' is not supported (GPT-2 uses gelu_new)")
        }
        let configEpsilon = try ConfigCheck.positive(config.double("layer_norm_epsilon") ?? 1e-5, key: "layer_norm_epsilon", file: file)
        epsilon = Float(configEpsilon)
        let headDim = hidden / heads
        dimensions = ModelDimensions(layers: layers, hidden: hidden, heads: heads, keyValueHeads: heads,
                                     headDim: headDim, intermediate: inner, vocabulary: vocabulary, context: context)

        let w = WeightReader(source, optionalPrefix: "transformer.")
        tokenEmbedding = try w("transformer.wte.weight", [vocabulary, hidden])
        positionEmbedding = try w("transformer.wpe.weight", [context, hidden])
        let scaleByHeadDim = try config.bool("scale_attn_weights") ?? true
        let scaleByLayer = try config.bool("scale_attn_by_inverse_layer_idx") ?? false
        blocks = try (0..<layers).map { l in
            let p = "transformer.h.\(l)."
            var scale: Float = scaleByHeadDim ? 1 / Float(headDim).squareRoot() : 1
            if scaleByLayer { scale /= Float(l + 1) }
            return Block(
                norm1: (try w(p + "ln_1.weight", [hidden]), try w(p + "ln_1.bias", [hidden])),
                qkv: Linear(weight: try w(p + "attn.c_attn.weight", [hidden, 3 * hidden]),
                            bias: try w(p + "attn.c_attn.bias", [3 * hidden]), layout: .inputMajor),
                attentionOut: Linear(weight: try w(p + "attn.c_proj.weight", [hidden, hidden]),
                                     bias: try w(p + "attn.c_proj.bias", [hidden]), layout: .inputMajor),
                norm2: (try w(p + "ln_2.weight", [hidden]), try w(p + "ln_2.bias", [hidden])),
                up: Linear(weight: try w(p + "mlp.c_fc.weight", [hidden, inner]),
                           bias: try w(p + "mlp.c_fc.bias", [inner]), layout: .inputMajor),
                down: Linear(weight: try w(p + "mlp.c_proj.weight", [inner, hidden]),
                             bias: try w(p + "mlp.c_proj.bias", [hidden]), layout: .inputMajor),
                attentionScale: scale)
        }
        finalNormWeights = (try w("transformer.ln_f.weight", [hidden]), try w("transformer.ln_f.bias", [hidden]))
        // HF ties lm_head to wte unless the config says otherwise and the checkpoint has its own.
        if try !config.tieWordEmbeddings, w.has("lm_head.weight") {
            unembedding = Linear(weight: try w("lm_head.weight", [vocabulary, hidden]), layout: .outputMajor).inputMajor()
        } else {
            unembedding = Linear(weight: tokenEmbedding, layout: .outputMajor)
        }
        let perBlock = 4 * hidden + 3 * hidden * (hidden + 1) + hidden * (hidden + 1) + 2 * hidden * inner + inner + hidden
        let unembeddingFloats = unembedding.weight.storage === tokenEmbedding.storage ? 0 : vocabulary * hidden
        weightBytes = 4 * (vocabulary * hidden + context * hidden + layers * perBlock + 2 * hidden + unembeddingFloats)
        moduleTree = GPT2Model.tree(dimensions, inner: inner, epsilon: configEpsilon)
    }

    /// Token embeddings plus learned position embeddings.
    func embed(_ pass: ForwardPass) throws -> Tensor {
        var tokens = embeddingLookup(tokenEmbedding, pass.tokenIDs ?? [])
        try pass.fire(["transformer.wte"], .output, &tokens)
        var positions = embeddingLookup(positionEmbedding, pass.positionIDs)
        try pass.fire(["transformer.wpe"], .output, &positions)
        var x = tokens.copy()
        addInPlace(x, positions)
        try pass.fireIdentity("transformer.drop", &x)
        return x
    }

    func finalNorm(_ x: Tensor, _ pass: ForwardPass) throws -> Tensor {
        var normIn = x
        try pass.fire(["transformer.ln_f"], .input, &normIn)
        var final = layerNorm(normIn, weight: finalNormWeights.weight, bias: finalNormWeights.bias, eps: epsilon)
        try pass.fire(["transformer.ln_f"], .output, &final)
        try pass.fire(["transformer"], .output, &final, tuple: true)
        return final
    }

    /// One block: x + attn(ln_1(x)), then + mlp(ln_2(·)).
    func layer(_ layer: Int, _ input: Tensor, _ pass: ForwardPass) throws -> Tensor {
        let b = blocks[layer], p = "transformer.h.\(layer)"
        let (rows, length) = (pass.rows, pass.length)
        let (heads, headDim, hidden) = (dimensions.heads, dimensions.headDim, dimensions.hidden)
        var x = input
        try pass.fire([p], .input, &x)
        try pass.fire(["blocks.\(layer).resid_pre"], .output, &x)

        // Attention.
        var normIn = x
        try pass.fire(["\(p).ln_1"], .input, &normIn)
        var normed = layerNorm(normIn, weight: b.norm1.weight, bias: b.norm1.bias, eps: epsilon)
        try pass.fire(["\(p).ln_1"], .output, &normed)
        try pass.fire(["\(p).attn", "\(p).attn.c_attn"], .input, &normed)
        var qkv = b.qkv(normed)
        try pass.fire(["\(p).attn.c_attn"], .output, &qkv)
        let headShape = [rows, length, heads, headDim]
        var q = qkv.slice(axis: 1, 0..<hidden)
        var k = qkv.slice(axis: 1, hidden..<(2 * hidden))
        var v = qkv.slice(axis: 1, (2 * hidden)..<(3 * hidden))
        try pass.fire(["blocks.\(layer).attn.q"], .output, &q, shape: headShape)
        try pass.fire(["blocks.\(layer).attn.k"], .output, &k, shape: headShape)
        try pass.fire(["blocks.\(layer).attn.v"], .output, &v, shape: headShape)
        let geometry = pass.attentionGeometry(heads: heads, keyValueHeads: heads, headDim: headDim)
        let (keys, values) = pass.attentionInputs(layer: layer, keys: k, values: v)
        var pattern = attentionPattern(q: q, k: keys, geometry: geometry, scale: b.attentionScale)
        try pass.fire(["blocks.\(layer).attn.pattern"], .output, &pattern, shape: pattern.shape)
        try pass.fireIdentity("\(p).attn.attn_dropout", &pattern, shape: pattern.shape)
        var z = attendValues(pattern: pattern, v: values, geometry: geometry)
        try pass.fire(["\(p).attn.c_proj"], .input, &z)
        try pass.fire(["blocks.\(layer).attn.z"], .output, &z, shape: headShape)
        var attention = b.attentionOut(z)
        try pass.fire(["\(p).attn.c_proj"], .output, &attention)
        try pass.fireIdentity("\(p).attn.resid_dropout", &attention)
        try pass.fire(["\(p).attn"], .output, &attention, tuple: true)
        try pass.fire(["blocks.\(layer).attn_out"], .output, &attention)
        addInPlace(x, attention)
        try pass.fire(["blocks.\(layer).resid_mid"], .output, &x)

        // MLP.
        var norm2In = x
        try pass.fire(["\(p).ln_2"], .input, &norm2In)
        var normed2 = layerNorm(norm2In, weight: b.norm2.weight, bias: b.norm2.bias, eps: epsilon)
        try pass.fire(["\(p).ln_2"], .output, &normed2)
        try pass.fire(["\(p).mlp", "\(p).mlp.c_fc"], .input, &normed2)
        var up = b.up(normed2)
        try pass.fire(["\(p).mlp.c_fc"], .output, &up)
        try pass.fire(["\(p).mlp.act"], .input, &up)
        geluTanhInPlace(up)
        try pass.fire(["\(p).mlp.act"], .output, &up)
        try pass.fire(["\(p).mlp.c_proj"], .input, &up)
        var mlp = b.down(up)
        try pass.fire(["\(p).mlp.c_proj"], .output, &mlp)
        try pass.fireIdentity("\(p).mlp.dropout", &mlp)
        try pass.fire(["\(p).mlp"], .output, &mlp)
        try pass.fire(["blocks.\(layer).mlp_out"], .output, &mlp)
        addInPlace(x, mlp)

        try pass.fire([p], .output, &x, tuple: true)
        try pass.fire(["blocks.\(layer).resid_post"], .output, &x)
        return x
    }

    /// The module tree as `print(model)` shows it for GPT2LMHeadModel.
    private static func tree(_ d: ModelDimensions, inner: Int, epsilon: Double) -> ModuleNode {
        func node(_ path: String, _ type: String, _ extra: String = "", _ children: [ModuleNode] = []) -> ModuleNode {
            ModuleNode(name: String(path.split(separator: ".").last ?? ""), path: path, type: type, extra: extra, children: children)
        }
        let norm = "(\(d.hidden),), eps=\(epsilon), elementwise_affine=True"
        let dropout = "p=0.1, inplace=False"
        let blocks = (0..<d.layers).map { l -> ModuleNode in
            let p = "transformer.h.\(l)"
            return node(p, "GPT2Block", "", [
                node("\(p).ln_1", "LayerNorm", norm),
                node("\(p).attn", "GPT2Attention", "", [
                    node("\(p).attn.c_attn", "Conv1D"), node("\(p).attn.c_proj", "Conv1D"),
                    node("\(p).attn.attn_dropout", "Dropout", dropout), node("\(p).attn.resid_dropout", "Dropout", dropout),
                ]),
                node("\(p).ln_2", "LayerNorm", norm),
                node("\(p).mlp", "GPT2MLP", "", [
                    node("\(p).mlp.c_fc", "Conv1D"), node("\(p).mlp.c_proj", "Conv1D"),
                    node("\(p).mlp.act", "NewGELUActivation"), node("\(p).mlp.dropout", "Dropout", dropout),
                ]),
            ])
        }
        return ModuleNode(name: "", path: "", type: "GPT2LMHeadModel", children: [
            node("transformer", "GPT2Model", "", [
                node("transformer.wte", "Embedding", "\(d.vocabulary), \(d.hidden)"),
                node("transformer.wpe", "Embedding", "\(d.context), \(d.hidden)"),
                node("transformer.drop", "Dropout", dropout),
                node("transformer.h", "ModuleList", "", blocks),
                node("transformer.ln_f", "LayerNorm", norm),
            ]),
            node("lm_head", "Linear", "in_features=\(d.hidden), out_features=\(d.vocabulary), bias=False"),
        ])
    }
}
