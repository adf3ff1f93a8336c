import LoupeFormats
import LoupeModels
import LoupeTensor

/// Llama (Touvron et al., 2023) as HF's `LlamaForCausalLM` computes it: pre-norm blocks
/// with RMSNorm, rotary position embeddings, grouped-query attention and a SiLU-gated MLP,
/// then a final RMSNorm and an unembedding that may be tied to the token embedding. Llama 3.1
/// and 3.2 checkpoints rescale the rotary frequencies (`rope_scaling` type `llama3`).
///
/// Canonical sites: `resid_pre` is a decoder layer's input, `resid_mid` after the attention's
/// residual add, `resid_post` the layer's output; `attn_out` is o_proj's output and `mlp_out`
/// down_proj's; `attn.q`/`attn.k` after RoPE, `attn.v` as projected, `attn.z` o_proj's input
/// per head; `attn.pattern` the softmax probabilities; `logits` lm_head's output.
/// Qwen2, Qwen3 and Mistral (Qwen2.swift, Qwen3.swift, Mistral.swift) are this model with a
/// `Variant`; Mistral's attention keeps to a sliding window (`Settings.slidingWindow`).
public enum LlamaArchitecture: ArchitectureAdapter {
    public static let name = "llama"
    public static let modelTypes = ["llama"]

    public static func load(_ checkpoint: Checkpoint) throws -> any LanguageModel {
        switch checkpoint {
        case .huggingFace(let config, let weights):
            return try LlamaModel(LlamaModel.Settings(config, .llama), weights: WeightReader(weights, optionalPrefix: "model."))
        case .gguf(let file):
            let settings = try LlamaModel.Settings(gguf: file)
            return try LlamaModel(settings, weights: WeightReader(LlamaGGUF.weights(file, settings), optionalPrefix: "model."))
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
        /// Llama 3's rescaled rotary frequencies, if the config asks for them.
        var ropeScaling: Llama3RopeScaling?
        var tied: Bool
        /// Biases on q_proj, k_proj and v_proj, and on o_proj (Qwen2 has the first only).
        var qkvBias: Bool
        var outputBias: Bool
        var mlpBias: Bool
        /// Sliding-window attention on every layer (Mistral): a query sees itself and the
        /// `slidingWindow - 1` positions before it. nil: the whole prefix.
        var slidingWindow: Int?
        var variant: Variant
    }

    /// What a family built on Llama's layer changes: its HF class names, for Qwen3 an
    /// RMSNorm of each query and key head before RoPE, and its config class's defaults.
    struct Variant {
        /// The adapter's name (`llama`, `qwen2`, `qwen3`, `mistral`).
        var architecture: String
        /// HF's class-name prefix: `Llama` for LlamaForCausalLM, LlamaRMSNorm, ...
        var classPrefix: String
        /// q_norm and k_norm (RMSNorm over head_dim, weights shared across heads).
        var queryKeyNorm: Bool
        /// `num_key_value_heads` when config.json leaves it out (null is one per query head,
        /// as is nil here: LlamaConfig's default).
        var defaultKeyValueHeads: Int? = nil
        /// `max_position_embeddings` when config.json leaves it out.
        var defaultContext = 2048

        static let llama = Variant(architecture: LlamaArchitecture.name, classPrefix: "Llama", queryKeyNorm: false)
    }

    let architecture: String
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
    private let slidingWindow: Int?

    /// One `LlamaDecoderLayer`.
    struct Block {
        let module: ModulePath
        let selfAttention: ModulePath
        /// q_proj, k_proj and v_proj as one product.
        let qkv: FusedLinear
        let o: LinearModule
        let mlp: GatedMLP
        let inputNorm: NormModule
        let postAttentionNorm: NormModule
        /// Qwen3's q_norm and k_norm, over each head.
        let qNorm, kNorm: NormModule?
    }

    init(_ s: Settings, weights: WeightReader) throws {
        dimensions = ModelDimensions(layers: s.layers, hidden: s.hidden, heads: s.heads, keyValueHeads: s.keyValueHeads,
                                     headDim: s.headDim, intermediate: s.intermediate, vocabulary: s.vocabulary, context: s.context)
        let epsilon = Float(s.epsilon)
        architecture = s.variant.architecture
        slidingWindow = s.slidingWindow
        let (qWidth, kvWidth) = (s.heads * s.headDim, s.keyValueHeads * s.headDim)
        let normExtra = "(\(s.hidden),), eps=\(s.epsilon)"
        let prefix = s.variant.classPrefix

        // The modules in the order LlamaForCausalLM registers them.
        let root = ModuleScope(root: "\(prefix)ForCausalLM", weights: weights)
        let base = root.child("model", "\(prefix)Model")
        model = base.module
        embedTokens = try base.embedding("embed_tokens", count: s.vocabulary, width: s.hidden)
        let list = base.child("layers", "ModuleList")
        blocks = try (0..<s.layers).map { l in
            let layer = list.decoderLayer(l, "\(prefix)DecoderLayer", width: s.hidden)
            let attention = layer.child("self_attn", "\(prefix)Attention")
            let qkv = FusedLinear([
                try attention.linear("q_proj", in: s.hidden, out: qWidth, bias: s.qkvBias),
                try attention.linear("k_proj", in: s.hidden, out: kvWidth, bias: s.qkvBias),
                try attention.linear("v_proj", in: s.hidden, out: kvWidth, bias: s.qkvBias),
            ])
            let o = try attention.linear("o_proj", in: qWidth, out: s.hidden, bias: s.outputBias, inputMajor: true)
            let headNormExtra = "(\(s.headDim),), eps=\(s.epsilon)"
            let qNorm = s.variant.queryKeyNorm
                ? try attention.norm("q_norm", "\(prefix)RMSNorm", .rms, width: s.headDim, epsilon: epsilon, extra: headNormExtra) : nil
            let kNorm = s.variant.queryKeyNorm
                ? try attention.norm("k_norm", "\(prefix)RMSNorm", .rms, width: s.headDim, epsilon: epsilon, extra: headNormExtra) : nil
            let mlp = layer.child("mlp", "\(prefix)MLP")
            let gateUp = FusedLinear([
                try mlp.linear("gate_proj", in: s.hidden, out: s.intermediate, bias: s.mlpBias),
                try mlp.linear("up_proj", in: s.hidden, out: s.intermediate, bias: s.mlpBias),
            ])
            let down = try mlp.linear("down_proj", in: s.intermediate, out: s.hidden, bias: s.mlpBias, inputMajor: true)
            return Block(
                module: layer.module, selfAttention: attention.module, qkv: qkv, o: o,
                mlp: mlp.callable(GatedMLP(mlp.module, layer: l, gateUp: gateUp, activation: mlp.activation("act_fn", "SiLUActivation", .silu),
                                           down: down)),
                inputNorm: try layer.norm("input_layernorm", "\(prefix)RMSNorm", .rms, width: s.hidden, epsilon: epsilon, extra: normExtra),
                postAttentionNorm: try layer.norm("post_attention_layernorm", "\(prefix)RMSNorm", .rms, width: s.hidden, epsilon: epsilon,
                                                  extra: normExtra),
                qNorm: qNorm, kNorm: kNorm)
        }
        norm = try base.norm("norm", "\(prefix)RMSNorm", .rms, width: s.hidden, epsilon: epsilon, extra: normExtra)
        // Its (cos, sin) output is a table made once per model here (`rotary`), not per pass.
        base.leaf("rotary_emb", "\(prefix)RotaryEmbedding", sites: false)
        if !s.tied, weights.has("lm_head.weight") {
            head = try root.linear("lm_head", in: s.hidden, out: s.vocabulary, bias: false, inputMajor: true)
        } else if !s.tied {
            throw ModelError.format(FormatError(.missingTensor, file: s.source, item: "lm_head.weight",
                                                "tie_word_embeddings is false but the checkpoint has no lm_head.weight"))
        } else {
            head = root.tiedLinear("lm_head", to: embedTokens)
        }
        var frequencies = RotaryTable.inverseFrequencies(dim: s.headDim, theta: s.ropeTheta)
        if let scaling = s.ropeScaling { frequencies = scaling.apply(frequencies) }
        rotary = RotaryTable(dim: s.headDim, inverseFrequency: frequencies, positions: s.context)
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

        // Attention: o(softmax(q kᵀ / √d) v) over the window, if any, q and k rotated by position.
        var attention = try pass.call(b.selfAttention, try pass.call(b.inputNorm, x), tuple: true) { h in
            let projected = try pass.call(b.qkv, h)
            var (q, k, v) = (projected[0], projected[1], projected[2])
            if let qNorm = b.qNorm, let kNorm = b.kNorm {  // Qwen3: each head RMS-normalized
                q = try headNorm(qNorm, q, heads: heads, pass)
                k = try headNorm(kNorm, k, heads: kvHeads, pass)
            }
            rotary.apply(q, heads: heads, positions: pass.positionIDs)
            rotary.apply(k, heads: kvHeads, positions: pass.positionIDs)
            return try pass.attend(layer: l, q: q, k: k, v: v, heads: heads, keyValueHeads: kvHeads, headDim: headDim,
                                   scale: 1 / Float(headDim).squareRoot(), window: slidingWindow, output: b.o)
        }
        attention = try pass.hook(.attnOut(l), attention)
        addInPlace(x, attention)
        x = try pass.hook(.residMid(l), x)

        // MLP: down(silu(gate(x)) * up(x)).
        let mlp = try pass.hook(.mlpOut(l), try b.mlp(try pass.call(b.postAttentionNorm, x), pass))
        addInPlace(x, mlp)

        x = try pass.hook(b.module.output, x)
        return try pass.hook(.residPost(l), x)
    }

    /// RMSNorm over each head of x [rows, heads * headDim], as HF applies q_norm and k_norm
    /// to [batch, pos, head, head_dim]; its sites see that shape.
    private func headNorm(_ norm: NormModule, _ x: Tensor, heads: Int, _ pass: ForwardPass) throws -> Tensor {
        let headDim = dimensions.headDim
        return try pass.call(norm.module, x, shape: [pass.rows, pass.length, heads, headDim]) {
            norm($0.reshaped([-1, headDim])).reshaped([-1, heads * headDim])
        }
    }
}

/// Llama 3's rotary frequency rescaling (`rope_type` `llama3`), as transformers'
/// `_compute_llama3_parameters` computes it in float32: wavelengths longer than
/// original_max_position_embeddings / low_freq_factor are slowed by `factor`, shorter than
/// original_max_position_embeddings / high_freq_factor kept, and those between interpolated.
struct Llama3RopeScaling {
    var factor, lowFrequencyFactor, highFrequencyFactor, originalContext: Double

    func apply(_ inverseFrequency: [Float]) -> [Float] {
        let oldContext = Float(originalContext), factor = Float(factor)
        let (low, span) = (Float(lowFrequencyFactor), Float(highFrequencyFactor - lowFrequencyFactor))
        // Python floats against float32 tensors: the scalar is cast to float32 (2π / f is
        // torch's reciprocal(f) * 2π).
        let lowWavelength = Float(originalContext / lowFrequencyFactor)
        let highWavelength = Float(originalContext / highFrequencyFactor)
        return inverseFrequency.map { f in
            let wavelength = (1 / f) * Float(2 * Double.pi)
            let scaled = wavelength > lowWavelength ? f / factor : f
            guard !(wavelength < highWavelength), !(wavelength > lowWavelength) else { return scaled }
            let smooth = ((1 / wavelength) * oldContext - low) / span
            return (1 - smooth) * scaled / factor + smooth * scaled
        }
    }

    /// The scaling a config asks for: transformers 4's `rope_scaling` or transformers 5's
    /// `rope_parameters` (`rope_type`, or `type` in older files), whichever transformers 5
    /// applies (`HFConfig.ropeParameters`). nil for plain RoPE; any type other than `default`
    /// and `llama3` is refused naming the key and the value.
    static func read(_ c: HFConfig) throws -> Llama3RopeScaling? {
        for key in ["rope_scaling", "rope_parameters"] {
            if let value = c.values[key], value != .null, value.objectValue == nil {
                throw ModelError.badConfig(file: c.path, key: key, "expected an object, got \(value)")
            }
        }
        guard let (key, members) = c.ropeParameters else { return nil }
        if members["rope_type"] == nil, members["type"] == nil, let nested = members.first(where: { $0.value.objectValue != nil }) {
            throw ModelError.badConfig(file: c.path, key: "\(key).\(nested.key)", "rotary parameters per layer type are not supported")
        }
        let typeValue = members["rope_type"] ?? members["type"]
        let type = typeValue?.stringValue ?? (typeValue == nil ? "default" : "\(typeValue!)")
        switch type {
        case "default":
            return nil
        case "llama3":
            func number(_ name: String) throws -> Double {
                guard let value = members[name]?.doubleValue, value.isFinite, value > 0 else {
                    throw ModelError.badConfig(file: c.path, key: "\(key).\(name)",
                                               members[name] == nil ? "required for rope_type llama3" : "must be a positive number")
                }
                return value
            }
            let scaling = Llama3RopeScaling(factor: try number("factor"), lowFrequencyFactor: try number("low_freq_factor"),
                                            highFrequencyFactor: try number("high_freq_factor"),
                                            originalContext: try number("original_max_position_embeddings"))
            guard scaling.highFrequencyFactor != scaling.lowFrequencyFactor else {
                throw ModelError.badConfig(file: c.path, key: "\(key).high_freq_factor", "must differ from low_freq_factor")
            }
            return scaling
        default:
            throw ModelError.badConfig(file: c.path, key: "\(key).rope_type",
                                       "\(type): only llama3 rotary scaling (and none) is supported")
        }
    }
}

extension LlamaModel.Settings {
    /// From an HF config.json (transformers 4 or 5).
    init(_ c: HFConfig, _ variant: LlamaModel.Variant) throws {
        self.variant = variant
        source = c.path
        hidden = try c.requireInt("hidden_size")
        layers = try c.requireInt("num_hidden_layers")
        heads = try c.requireInt("num_attention_heads")
        // Left out, the config class's default; null, one per query head.
        keyValueHeads = c.values["num_key_value_heads"] == nil
            ? variant.defaultKeyValueHeads ?? heads : try c.int("num_key_value_heads") ?? heads
        headDim = try c.int("head_dim") ?? Self.headDim(hidden: hidden, heads: heads, file: c.path, key: "num_attention_heads")
        intermediate = try c.requireInt("intermediate_size")
        vocabulary = try c.requireInt("vocab_size")
        context = try c.int("max_position_embeddings") ?? variant.defaultContext
        epsilon = try c.double("rms_norm_eps") ?? 1e-6
        ropeTheta = try c.ropeTheta ?? 10_000
        tied = try c.bool("tie_word_embeddings") ?? false  // LlamaConfig's default
        qkvBias = try c.bool("attention_bias") ?? false
        outputBias = qkvBias
        mlpBias = try c.bool("mlp_bias") ?? false
        ropeScaling = try Llama3RopeScaling.read(c)
        try ConfigCheck.activation(c, key: "hidden_act", allowed: ["silu"])
        try ConfigCheck.denseMLP(c)
        slidingWindow = nil
        try check(keys: ["layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
                         "keyValueHeads": "num_key_value_heads", "headDim": try c.int("head_dim") == nil ? "num_attention_heads" : "head_dim",
                         "intermediate": "intermediate_size", "vocabulary": "vocab_size", "context": "max_position_embeddings",
                         "epsilon": "rms_norm_eps", "ropeTheta": "rope_theta"])
    }

    /// From GGUF metadata (llama.cpp's `llama.*` keys).
    init(gguf f: GGUFFile) throws {
        variant = .llama
        ropeScaling = nil
        slidingWindow = nil
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
        // llama.cpp stores Llama 3.1's rescaled frequencies as a tensor, and other scalings as metadata: not read yet.
        if f.shape(of: "rope_freqs.weight") != nil {
            throw ModelError.badConfig(file: f.path, key: "rope_freqs.weight",
                                       "scaled RoPE (Llama 3.1's rope_freqs) from GGUF is not supported yet: load the HF checkpoint")
        }
        if let type = f.metadata["llama.rope.scaling.type"]?.stringValue, type != "none" {
            throw ModelError.badConfig(file: f.path, key: "llama.rope.scaling.type", "\(type): scaled RoPE from GGUF is not supported yet")
        }
        tied = f.shape(of: "output.weight") == nil
        qkvBias = f.shape(of: "blk.0.attn_q.bias") != nil
        outputBias = f.shape(of: "blk.0.attn_output.bias") != nil
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

/// A GGUF file's Llama tensors under HF's names, with llama.cpp's rotary row permutation of
/// the query and key projections undone (its conversion script interleaves each head's halves).
enum LlamaGGUF {
    static func weights(_ file: GGUFFile, _ settings: LlamaModel.Settings) -> GGUFWeights {
        GGUFWeights(file, layers: settings.layers,
                    model: ["model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"],
                    perLayer: ["self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"]) { name, t in
            if name.hasSuffix("attn_q.weight") || name.hasSuffix("attn_q.bias") { return unpermute(t, heads: settings.heads) }
            if name.hasSuffix("attn_k.weight") || name.hasSuffix("attn_k.bias") { return unpermute(t, heads: settings.keyValueHeads) }
            return t
        }
    }

    /// Row i·2 + j of each head's block (i < half, j < 2) goes back to row j·half + i.
    private static func unpermute(_ t: Tensor, heads: Int) -> Tensor {
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
