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
    let canonicalSites = Set(CanonicalSite.Kind.allCases)
    let dimensions: ModelDimensions
    let moduleTree: ModuleNode
    let modules: ModuleTable
    let weightBytes: Int
    let head: LinearModule

    private let base: ModulePath
    private let wte: EmbeddingModule      // also the unembedding
    private let wpe: EmbeddingModule
    private let drop: ModulePath
    private let blocks: [Block]
    private let lnF: NormModule

    /// One `GPT2Block`.
    struct Block {
        let module: ModulePath
        let ln1: NormModule
        let attention: ModulePath
        let cAttn: LinearModule     // the three projections side by side
        let cProj: LinearModule
        let attentionDropout: ModulePath
        let residualDropout: ModulePath
        let ln2: NormModule
        let mlp: PlainMLP
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
        try ConfigCheck.activation(config, key: "activation_function", allowed: ["gelu_new", "gelu_pytorch_tanh"])
        let configEpsilon = try ConfigCheck.positive(config.double("layer_norm_epsilon") ?? 1e-5, key: "layer_norm_epsilon", file: file)
        let epsilon = Float(configEpsilon)
        let headDim = hidden / heads
        dimensions = ModelDimensions(layers: layers, hidden: hidden, heads: heads, keyValueHeads: heads,
                                     headDim: headDim, intermediate: inner, vocabulary: vocabulary, context: context)
        let scaleByHeadDim = try config.bool("scale_attn_weights") ?? true
        let scaleByLayer = try config.bool("scale_attn_by_inverse_layer_idx") ?? false
        let normExtra = "(\(hidden),), eps=\(configEpsilon), elementwise_affine=True"
        let dropout = "p=0.1, inplace=False"

        // The modules in the order GPT2LMHeadModel registers them.
        let weights = WeightReader(source, optionalPrefix: "transformer.")
        let root = ModuleScope(root: "GPT2LMHeadModel", weights: weights)
        let transformer = root.child("transformer", "GPT2Model")
        base = transformer.module
        wte = try transformer.embedding("wte", count: vocabulary, width: hidden)
        wpe = try transformer.embedding("wpe", count: context, width: hidden)
        drop = transformer.leaf("drop", "Dropout", extra: dropout)
        let list = transformer.child("h", "ModuleList")
        blocks = try (0..<layers).map { l in
            let block = list.decoderLayer(l, "GPT2Block", width: hidden)
            let ln1 = try block.norm("ln_1", "LayerNorm", .layer, width: hidden, epsilon: epsilon, bias: true, extra: normExtra)
            let attention = block.child("attn", "GPT2Attention")
            let cAttn = try attention.conv1D("c_attn", in: hidden, out: 3 * hidden)
            let cProj = try attention.conv1D("c_proj", in: hidden, out: hidden)
            let attentionDropout = attention.leaf("attn_dropout", "Dropout", extra: dropout)
            let residualDropout = attention.leaf("resid_dropout", "Dropout", extra: dropout)
            let ln2 = try block.norm("ln_2", "LayerNorm", .layer, width: hidden, epsilon: epsilon, bias: true, extra: normExtra)
            let mlp = block.child("mlp", "GPT2MLP")
            var scale: Float = scaleByHeadDim ? 1 / Float(headDim).squareRoot() : 1
            if scaleByLayer { scale /= Float(l + 1) }
            let up = try mlp.conv1D("c_fc", in: hidden, out: inner), down = try mlp.conv1D("c_proj", in: inner, out: hidden)
            let perceptron = PlainMLP(mlp.module, layer: l, up: up, activation: mlp.activation("act", "NewGELUActivation", .geluTanh),
                                      down: down, dropout: mlp.leaf("dropout", "Dropout", extra: dropout))
            return Block(module: block.module, ln1: ln1, attention: attention.module, cAttn: cAttn, cProj: cProj,
                         attentionDropout: attentionDropout, residualDropout: residualDropout, ln2: ln2, mlp: mlp.callable(perceptron),
                         attentionScale: scale)
        }
        lnF = try transformer.norm("ln_f", "LayerNorm", .layer, width: hidden, epsilon: epsilon, bias: true, extra: normExtra)
        // HF ties lm_head to wte unless the config says otherwise and the checkpoint has its own.
        if try !(config.bool("tie_word_embeddings") ?? true), weights.has("lm_head.weight") {  // GPT2Config's default: tied
            head = try root.linear("lm_head", in: hidden, out: vocabulary, bias: false, inputMajor: true)
        } else {
            head = root.tiedLinear("lm_head", to: wte)
        }
        moduleTree = root.tree
        modules = root.modules
        weightBytes = root.weightBytes
    }

    /// Token embeddings plus learned position embeddings.
    func embed(_ pass: ForwardPass) throws -> Tensor {
        let tokens = try pass.call(wte, pass.tokenIDs ?? [])
        let positions = try pass.call(wpe, pass.positionIDs)
        let x = tokens.copy()
        addInPlace(x, positions)
        return try pass.identity(drop, x)
    }

    func finalNorm(_ x: Tensor, _ pass: ForwardPass) throws -> Tensor {
        try pass.hook(base.output, try pass.call(lnF, x), tuple: true)
    }

    /// One block: x + attn(ln_1(x)), then + mlp(ln_2(·)).
    func layer(_ l: Int, _ input: Tensor, _ pass: ForwardPass) throws -> Tensor {
        let b = blocks[l]
        let (heads, headDim, hidden) = (dimensions.heads, dimensions.headDim, dimensions.hidden)
        var x = try pass.hook(b.module.input, input)
        x = try pass.hook(.residPre(l), x)

        // Attention: c_proj(softmax(q kᵀ · scale) v).
        var attention = try pass.call(b.attention, try pass.call(b.ln1, x), tuple: true) { h in
            let qkv = try pass.call(b.cAttn, h)
            let attended = try pass.attend(layer: l, q: qkv.slice(axis: 1, 0..<hidden), k: qkv.slice(axis: 1, hidden..<(2 * hidden)),
                                           v: qkv.slice(axis: 1, (2 * hidden)..<(3 * hidden)), heads: heads, keyValueHeads: heads,
                                           headDim: headDim, scale: b.attentionScale, dropout: b.attentionDropout, output: b.cProj)
            return try pass.identity(b.residualDropout, attended)
        }
        attention = try pass.hook(.attnOut(l), attention)
        addInPlace(x, attention)
        x = try pass.hook(.residMid(l), x)

        // MLP: c_proj(gelu(c_fc(x))).
        let mlp = try pass.hook(.mlpOut(l), try b.mlp(try pass.call(b.ln2, x), pass))
        addInPlace(x, mlp)

        x = try pass.hook(b.module.output, x, tuple: true)
        return try pass.hook(.residPost(l), x)
    }
}
