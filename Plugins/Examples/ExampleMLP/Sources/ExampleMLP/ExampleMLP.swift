import LoupeFormats
import LoupeModels
import LoupeTensor

/// Llama with a plain MLP: pre-norm blocks with RMSNorm, rotary position embeddings and
/// grouped-query attention as Llama computes them, but down(gelu(up(x))) in place of Llama's
/// gated SiLU MLP. HF checkpoints of model_type "loupe_example_mlp"
/// (scripts/make_example_plugin_fixture.py writes a tiny one, with its math in numpy).
public enum ExampleMLPArchitecture: ArchitectureAdapter {
    public static let name = "example_mlp"
    public static let modelTypes = ["loupe_example_mlp"]

    public static func load(_ checkpoint: Checkpoint) throws -> any LanguageModel {
        guard case .huggingFace(let config, let weights) = checkpoint else {
            throw ModelError.badConfig(file: "", key: "general.architecture", "example_mlp reads HF checkpoints only")
        }
        return try ExampleMLPModel(ExampleMLPModel.Settings(config), weights: WeightReader(weights, optionalPrefix: "model."))
    }
}

final class ExampleMLPModel: LanguageModel, @unchecked Sendable {
    /// The hyper-parameters, read from config.json.
    struct Settings {
        var layers, hidden, heads, keyValueHeads, headDim, intermediate, vocabulary, context: Int
        var epsilon, ropeTheta: Double
        var tied: Bool
    }

    let architecture = ExampleMLPArchitecture.name
    let canonicalSites = Set(CanonicalSite.Kind.allCases)
    let dimensions: ModelDimensions
    let moduleTree: ModuleNode
    let modules: ModuleTable
    let weightBytes: Int
    let head: LinearModule

    private let embedTokens: EmbeddingModule
    private let blocks: [Block]
    private let norm: NormModule
    private let model: ModulePath
    private let rotary: RotaryTable

    /// One decoder layer.
    struct Block {
        let module: ModulePath
        let selfAttention: ModulePath
        /// q_proj, k_proj and v_proj as one product.
        let qkv: FusedLinear
        let o: LinearModule
        let mlp: PlainMLP
        let inputNorm: NormModule
        let postAttentionNorm: NormModule
    }

    init(_ s: Settings, weights: WeightReader) throws {
        dimensions = ModelDimensions(layers: s.layers, hidden: s.hidden, heads: s.heads, keyValueHeads: s.keyValueHeads,
                                     headDim: s.headDim, intermediate: s.intermediate, vocabulary: s.vocabulary, context: s.context)
        let epsilon = Float(s.epsilon)
        let (qWidth, kvWidth) = (s.heads * s.headDim, s.keyValueHeads * s.headDim)
        let normExtra = "(\(s.hidden),), eps=\(s.epsilon)"

        // The modules, each declared once: its weights, its place in the tree, its sites.
        let root = ModuleScope(root: "LoupeExampleMLPForCausalLM", weights: weights)
        let base = root.child("model", "LlamaModel")
        model = base.module
        embedTokens = try base.embedding("embed_tokens", count: s.vocabulary, width: s.hidden)
        let list = base.child("layers", "ModuleList")
        blocks = try (0..<s.layers).map { l in
            let layer = list.decoderLayer(l, "LlamaDecoderLayer", width: s.hidden)
            let attention = layer.child("self_attn", "LlamaAttention")
            let qkv = FusedLinear([
                try attention.linear("q_proj", in: s.hidden, out: qWidth, bias: false),
                try attention.linear("k_proj", in: s.hidden, out: kvWidth, bias: false),
                try attention.linear("v_proj", in: s.hidden, out: kvWidth, bias: false),
            ])
            let o = try attention.linear("o_proj", in: qWidth, out: s.hidden, bias: false, inputMajor: true)
            // The MLP, declared callable: the trace op `call` runs it as the layer does.
            let mlp = layer.child("mlp", "ExampleMLP")
            let up = try mlp.linear("up_proj", in: s.hidden, out: s.intermediate, bias: false)
            let down = try mlp.linear("down_proj", in: s.intermediate, out: s.hidden, bias: false, inputMajor: true)
            let perceptron = PlainMLP(mlp.module, layer: l, up: up, activation: mlp.activation("act_fn", "GELUTanh", .geluTanh), down: down)
            return Block(
                module: layer.module, selfAttention: attention.module, qkv: qkv, o: o, mlp: mlp.callable(perceptron),
                inputNorm: try layer.norm("input_layernorm", "LlamaRMSNorm", .rms, width: s.hidden, epsilon: epsilon, extra: normExtra),
                postAttentionNorm: try layer.norm("post_attention_layernorm", "LlamaRMSNorm", .rms, width: s.hidden, epsilon: epsilon,
                                                  extra: normExtra))
        }
        norm = try base.norm("norm", "LlamaRMSNorm", .rms, width: s.hidden, epsilon: epsilon, extra: normExtra)
        // Its (cos, sin) output is a table made once per model (`rotary`), not per pass: no sites.
        base.leaf("rotary_emb", "LlamaRotaryEmbedding", sites: false)
        head = s.tied ? root.tiedLinear("lm_head", to: embedTokens)
                      : try root.linear("lm_head", in: s.hidden, out: s.vocabulary, bias: false, inputMajor: true)
        rotary = RotaryTable(dim: s.headDim, theta: s.ropeTheta, positions: s.context)
        moduleTree = root.tree
        modules = root.modules
        weightBytes = root.weightBytes
    }

    func embed(_ pass: ForwardPass) throws -> Tensor {
        try pass.call(embedTokens, pass.tokenIDs ?? [])
    }

    func finalNorm(_ x: Tensor, _ pass: ForwardPass) throws -> Tensor {
        try pass.hook(model.output, try pass.call(norm, x), tuple: true)
    }

    /// One decoder layer: x + attn(norm(x)), then + mlp(norm(·)).
    func layer(_ l: Int, _ input: Tensor, _ pass: ForwardPass) throws -> Tensor {
        let b = blocks[l]
        let (heads, kvHeads, headDim) = (dimensions.heads, dimensions.keyValueHeads, dimensions.headDim)
        var x = try pass.hook(b.module.input, input)
        x = try pass.hook(.residPre(l), x)

        // Attention: o(softmax(q kᵀ / √d) v), q and k rotated by position.
        var attention = try pass.call(b.selfAttention, try pass.call(b.inputNorm, x), tuple: true) { h in
            let projected = try pass.call(b.qkv, h)
            let (q, k, v) = (projected[0], projected[1], projected[2])
            rotary.apply(q, heads: heads, positions: pass.positionIDs)
            rotary.apply(k, heads: kvHeads, positions: pass.positionIDs)
            return try pass.attend(layer: l, q: q, k: k, v: v, heads: heads, keyValueHeads: kvHeads, headDim: headDim,
                                   scale: 1 / Float(headDim).squareRoot(), output: b.o)
        }
        attention = try pass.hook(.attnOut(l), attention)
        addInPlace(x, attention)
        x = try pass.hook(.residMid(l), x)

        // MLP: down(gelu(up(x))), where Llama has down(silu(gate(x)) * up(x)).
        let mlp = try pass.hook(.mlpOut(l), try b.mlp(try pass.call(b.postAttentionNorm, x), pass))
        addInPlace(x, mlp)

        x = try pass.hook(b.module.output, x)
        return try pass.hook(.residPost(l), x)
    }
}

extension ExampleMLPModel.Settings {
    /// From an HF config.json, every size checked before anything is allocated.
    init(_ c: HFConfig) throws {
        func size(_ key: String, _ range: ClosedRange<Int>, default value: Int? = nil) throws -> Int {
            try ConfigCheck.size(try c.int(key) ?? value ?? c.requireInt(key), range, key: key, file: c.path)
        }
        layers = try size("num_hidden_layers", ConfigCheck.layers)
        hidden = try size("hidden_size", ConfigCheck.width)
        heads = try size("num_attention_heads", ConfigCheck.heads)
        keyValueHeads = try size("num_key_value_heads", ConfigCheck.heads, default: heads)
        headDim = try size("head_dim", ConfigCheck.headDim, default: hidden / heads)
        intermediate = try size("intermediate_size", ConfigCheck.width)
        vocabulary = try size("vocab_size", ConfigCheck.vocabulary)
        context = try size("max_position_embeddings", ConfigCheck.context, default: 2048)
        epsilon = try ConfigCheck.positive(try c.double("rms_norm_eps") ?? 1e-6, key: "rms_norm_eps", file: c.path)
        ropeTheta = try ConfigCheck.positive(try c.ropeTheta ?? 10_000, key: "rope_theta", file: c.path)
        tied = try c.bool("tie_word_embeddings") ?? false
        guard heads % keyValueHeads == 0, headDim % 2 == 0 else {
            throw ModelError.badConfig(file: c.path, key: "num_key_value_heads",
                                       "\(heads) attention heads cannot share \(keyValueHeads) key/value heads of dimension \(headDim)")
        }
    }
}
