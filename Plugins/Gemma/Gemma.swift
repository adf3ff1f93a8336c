import Foundation
import LoupeFormats
import LoupeModels
import LoupeTensor

/// Gemma 3 (Gemma Team, 2025) as HF's `Gemma3ForCausalLM` computes it, and Gemma 2 as
/// `Gemma2ForCausalLM` does (Gemma2.swift). Each decoder layer norms both before and after
/// its attention and its MLP, and adds the post-normed output to the residual stream:
///
///     x = x + post_attention_norm(attn(input_norm(x)))
///     x = x + post_feedforward_norm(mlp(pre_feedforward_norm(x)))
///
/// RMSNorm scales by (1 + weight); the token embedding is multiplied by √hidden; the MLP is
/// GELU(tanh)-gated; attention scores are scaled by query_pre_attn_scalar^-½. Local layers
/// attend within a sliding window and rotate by their own RoPE base; global layers attend to
/// everything before them. Gemma 3 RMS-normalizes each query and key head (q_norm, k_norm);
/// Gemma 2 soft-caps attention scores and the final logits instead.
///
/// Canonical sites: `resid_pre` is a decoder layer's input, `resid_mid` after the attention's
/// residual add, `resid_post` the layer's output. `attn_out` and `mlp_out` are what each adds
/// to the residual stream: post_attention_layernorm's and post_feedforward_layernorm's
/// outputs, not o_proj's and down_proj's. `attn.q`/`attn.k` are after q_norm/k_norm and
/// RoPE, `attn.v` as projected, `attn.z` o_proj's input per head, `attn.pattern` the softmax
/// probabilities (zero outside a local layer's window); `logits` are after the final
/// soft-cap, where lm_head's own output site is before it.
public enum Gemma3Architecture: ArchitectureAdapter {
    public static let name = "gemma3"
    /// `gemma3_text`: HF's text-only checkpoints; `gemma3`: GGUF's `general.architecture`.
    public static let modelTypes = ["gemma3_text", "gemma3"]

    public static func load(_ checkpoint: Checkpoint) throws -> any LanguageModel {
        switch checkpoint {
        case .huggingFace(let config, let weights):
            if config.string("model_type") == "gemma3" {
                throw ModelError.badConfig(file: config.path, key: "model_type",
                                           "gemma3 is the multimodal Gemma3ForConditionalGeneration: load a text-only (gemma3_text) checkpoint")
            }
            return try GemmaModel(GemmaModel.Settings(config, .gemma3), weights: WeightReader(weights, optionalPrefix: "model."))
        case .gguf(let file):
            let settings = try GemmaModel.Settings(gguf: file, .gemma3)
            return try GemmaModel(settings, weights: WeightReader(GemmaGGUF.weights(file, layers: settings.layers), optionalPrefix: "model."))
        }
    }
}

final class GemmaModel: LanguageModel, @unchecked Sendable {
    /// The hyper-parameters, read from config.json or GGUF metadata.
    struct Settings {
        var source: String
        var variant: Variant
        var layers, hidden, heads, keyValueHeads, headDim, intermediate, vocabulary, context: Int
        var epsilon: Double
        var queryPreAttentionScalar: Double
        /// Per layer: whether it is local (sliding-window) or global.
        var local: [Bool]
        var slidingWindow: Int
        var globalRope, localRope: Rope
        var attentionBias: Bool
        var attentionSoftcap, finalSoftcap: Double?
        var tied: Bool
    }

    /// A RoPE base and HF's `linear` scaling factor (1 for plain RoPE).
    struct Rope {
        var theta: Double
        var factor: Double = 1

        func table(dim: Int, positions: Int) -> RotaryTable {
            let frequencies = RotaryTable.inverseFrequencies(dim: dim, theta: theta).map { $0 / Float(factor) }
            return RotaryTable(dim: dim, inverseFrequency: frequencies, positions: positions)
        }
    }

    /// What Gemma 2 and Gemma 3 do differently.
    struct Variant {
        var architecture: String
        /// HF's class-name prefix: `Gemma3` for Gemma3ForCausalLM, Gemma3RMSNorm, ...
        var classPrefix: String
        /// The base model's class: Gemma3TextModel, Gemma2Model.
        var baseClass: String
        /// q_norm and k_norm (RMSNorm over head_dim, weights shared across heads).
        var queryKeyNorm: Bool
        /// Local layers when the config lists no layer_types: every layer but each `period`-th.
        var localPeriod: Int
        /// The config class's defaults, for keys a config.json leaves out.
        var defaultContext: Int
        var defaultRopeTheta: Double
        /// Gemma 3's local layers rotate by a base of their own (`rope_local_base_freq`).
        var defaultLocalRopeTheta: Double?
        /// Gemma 2 caps attention scores; Gemma 3's attention ignores attn_logit_softcapping
        /// (HF passes it to no kernel).
        var capsAttention: Bool
        var defaultAttentionSoftcap, defaultFinalSoftcap: Double?

        static let gemma3 = Variant(architecture: Gemma3Architecture.name, classPrefix: "Gemma3", baseClass: "Gemma3TextModel",
                                    queryKeyNorm: true, localPeriod: 6, defaultContext: 131_072, defaultRopeTheta: 1_000_000,
                                    defaultLocalRopeTheta: 10_000, capsAttention: false, defaultAttentionSoftcap: nil, defaultFinalSoftcap: nil)
    }

    let architecture: String
    let canonicalSites = Set(CanonicalSite.Kind.allCases)
    let dimensions: ModelDimensions
    let moduleTree: ModuleNode
    let modules: ModuleTable
    let weightBytes: Int
    let head: LinearModule
    let logitSoftcap: Float?

    private let queryScale: Float
    private let attentionSoftcap: Float?
    private let slidingWindow: Int
    private let embedTokens: EmbeddingModule
    private let blocks: [Block]
    private let norm: NormModule
    private let model: ModulePath
    private let globalRotary, localRotary: RotaryTable

    /// One decoder layer.
    struct Block {
        let module: ModulePath
        let local: Bool
        let selfAttention: ModulePath
        /// q_proj, k_proj and v_proj as one product.
        let qkv: FusedLinear
        let o: LinearModule
        /// Gemma 3's q_norm and k_norm, over each head.
        let qNorm, kNorm: NormModule?
        let mlp: GatedMLP
        let inputNorm, postAttentionNorm, preFeedforwardNorm, postFeedforwardNorm: NormModule
    }

    init(_ s: Settings, weights: WeightReader) throws {
        dimensions = ModelDimensions(layers: s.layers, hidden: s.hidden, heads: s.heads, keyValueHeads: s.keyValueHeads,
                                     headDim: s.headDim, intermediate: s.intermediate, vocabulary: s.vocabulary, context: s.context)
        architecture = s.variant.architecture
        queryScale = Float(pow(s.queryPreAttentionScalar, -0.5))
        attentionSoftcap = s.attentionSoftcap.map(Float.init)
        logitSoftcap = s.finalSoftcap.map(Float.init)
        slidingWindow = s.slidingWindow
        let (qWidth, kvWidth) = (s.heads * s.headDim, s.keyValueHeads * s.headDim)
        let prefix = s.variant.classPrefix
        // Every norm scales by 1 + weight.
        func rmsNorm(_ scope: ModuleScope, _ name: String, width: Int) throws -> NormModule {
            try scope.norm(name, "\(prefix)RMSNorm", .rmsPlusOne, width: width, epsilon: Float(s.epsilon), extra: "(\(width),), eps=\(s.epsilon)")
        }

        // The modules in the order Gemma*ForCausalLM registers them.
        let root = ModuleScope(root: "\(prefix)ForCausalLM", weights: weights)
        let base = root.child("model", s.variant.baseClass)
        model = base.module
        // Scaled by √hidden, rounded to float32 as HF's embed_scale buffer.
        embedTokens = try base.embedding("embed_tokens", count: s.vocabulary, width: s.hidden,
                                         type: "\(prefix)TextScaledWordEmbedding", paddingIndex: 0, scale: Float(Double(s.hidden).squareRoot()))
        let list = base.child("layers", "ModuleList")
        blocks = try (0..<s.layers).map { l in
            let layer = list.decoderLayer(l, "\(prefix)DecoderLayer", width: s.hidden)
            let attention = layer.child("self_attn", "\(prefix)Attention")
            let qkv = FusedLinear([
                try attention.linear("q_proj", in: s.hidden, out: qWidth, bias: s.attentionBias),
                try attention.linear("k_proj", in: s.hidden, out: kvWidth, bias: s.attentionBias),
                try attention.linear("v_proj", in: s.hidden, out: kvWidth, bias: s.attentionBias),
            ])
            let o = try attention.linear("o_proj", in: qWidth, out: s.hidden, bias: s.attentionBias, inputMajor: true)
            let qNorm = s.variant.queryKeyNorm ? try rmsNorm(attention, "q_norm", width: s.headDim) : nil
            let kNorm = s.variant.queryKeyNorm ? try rmsNorm(attention, "k_norm", width: s.headDim) : nil
            let mlp = layer.child("mlp", "\(prefix)MLP")
            let gateUp = FusedLinear([
                try mlp.linear("gate_proj", in: s.hidden, out: s.intermediate, bias: false),
                try mlp.linear("up_proj", in: s.hidden, out: s.intermediate, bias: false),
            ])
            let down = try mlp.linear("down_proj", in: s.intermediate, out: s.hidden, bias: false, inputMajor: true)
            return Block(
                module: layer.module, local: s.local[l], selfAttention: attention.module, qkv: qkv, o: o, qNorm: qNorm, kNorm: kNorm,
                mlp: mlp.callable(GatedMLP(mlp.module, layer: l, gateUp: gateUp, activation: mlp.activation("act_fn", "GELUTanh", .geluTanh),
                                           down: down)),
                inputNorm: try rmsNorm(layer, "input_layernorm", width: s.hidden),
                postAttentionNorm: try rmsNorm(layer, "post_attention_layernorm", width: s.hidden),
                preFeedforwardNorm: try rmsNorm(layer, "pre_feedforward_layernorm", width: s.hidden),
                postFeedforwardNorm: try rmsNorm(layer, "post_feedforward_layernorm", width: s.hidden))
        }
        norm = try rmsNorm(base, "norm", width: s.hidden)
        // Its (cos, sin) outputs are tables made once per model here, not per pass.
        base.leaf("rotary_emb", "\(prefix)RotaryEmbedding", sites: false)
        if s.tied {
            head = root.tiedLinear("lm_head", to: embedTokens)
        } else {
            head = try root.linear("lm_head", in: s.hidden, out: s.vocabulary, bias: false, inputMajor: true)
        }
        globalRotary = s.globalRope.table(dim: s.headDim, positions: s.context)
        localRotary = s.localRope.table(dim: s.headDim, positions: s.context)
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

    /// One decoder layer: x + post_norm(attn(norm(x))), then + post_norm(mlp(norm(·))).
    func layer(_ l: Int, _ input: Tensor, _ pass: ForwardPass) throws -> Tensor {
        let b = blocks[l]
        let (heads, kvHeads, headDim) = (dimensions.heads, dimensions.keyValueHeads, dimensions.headDim)
        var x = try pass.hook(b.module.input, input)
        x = try pass.hook(.residPre(l), x)

        // Attention: o(softmax(q kᵀ · s) v) over the window of a local layer, q and k rotated by position.
        var attention = try pass.call(b.selfAttention, try pass.call(b.inputNorm, x), tuple: true) { h in
            let projected = try pass.call(b.qkv, h)
            var (q, k, v) = (projected[0], projected[1], projected[2])
            if let qNorm = b.qNorm, let kNorm = b.kNorm {
                q = try headNorm(qNorm, q, heads: heads, pass)
                k = try headNorm(kNorm, k, heads: kvHeads, pass)
            }
            let rotary = b.local ? localRotary : globalRotary
            rotary.apply(q, heads: heads, positions: pass.positionIDs)
            rotary.apply(k, heads: kvHeads, positions: pass.positionIDs)
            return try pass.attend(layer: l, q: q, k: k, v: v, heads: heads, keyValueHeads: kvHeads, headDim: headDim, scale: queryScale,
                                   window: b.local ? slidingWindow : nil, softcap: attentionSoftcap, output: b.o)
        }
        attention = try pass.hook(.attnOut(l), try pass.call(b.postAttentionNorm, attention))
        addInPlace(x, attention)
        x = try pass.hook(.residMid(l), x)

        // MLP: down(gelu(gate(x)) * up(x)).
        let mlp = try pass.hook(.mlpOut(l), try pass.call(b.postFeedforwardNorm, try b.mlp(try pass.call(b.preFeedforwardNorm, x), pass)))
        addInPlace(x, mlp)

        x = try pass.hook(b.module.output, x)
        return try pass.hook(.residPost(l), x)
    }

    /// RMSNorm over each head of x [rows, heads * headDim], as HF applies q_norm and k_norm
    /// to [batch, head, pos, head_dim]; its sites see [batch, pos, head, head_dim].
    private func headNorm(_ norm: NormModule, _ x: Tensor, heads: Int, _ pass: ForwardPass) throws -> Tensor {
        let headDim = dimensions.headDim
        return try pass.call(norm.module, x, shape: [pass.rows, pass.length, heads, headDim]) {
            norm($0.reshaped([-1, headDim])).reshaped([-1, heads * headDim])
        }
    }
}

extension GemmaModel.Settings {
    /// From an HF config.json (transformers 4 or 5).
    init(_ c: HFConfig, _ variant: GemmaModel.Variant) throws {
        self.variant = variant
        source = c.path
        hidden = try c.requireInt("hidden_size")
        layers = try c.requireInt("num_hidden_layers")
        heads = try c.requireInt("num_attention_heads")
        keyValueHeads = try c.int("num_key_value_heads") ?? heads
        headDim = try c.int("head_dim") ?? 256  // the Gemma configs' default
        intermediate = try c.requireInt("intermediate_size")
        vocabulary = try c.requireInt("vocab_size")
        context = try c.int("max_position_embeddings") ?? variant.defaultContext
        epsilon = try c.double("rms_norm_eps") ?? 1e-6
        queryPreAttentionScalar = try c.double("query_pre_attn_scalar") ?? 256
        slidingWindow = try c.int("sliding_window") ?? 4096
        attentionBias = try c.bool("attention_bias") ?? false
        tied = try c.bool("tie_word_embeddings") ?? true
        // A soft-cap left out takes the config class's default; one written as null is none.
        func softcap(_ key: String, _ fallback: Double?) throws -> Double? { c.values[key] == nil ? fallback : try c.double(key) }
        finalSoftcap = try softcap("final_logit_softcapping", variant.defaultFinalSoftcap)
        attentionSoftcap = variant.capsAttention ? try softcap("attn_logit_softcapping", variant.defaultAttentionSoftcap) : nil
        try ConfigCheck.activation(c, key: c.values["hidden_activation"] != nil ? "hidden_activation" : "hidden_act",
                                   allowed: ["gelu_pytorch_tanh"])
        try ConfigCheck.denseMLP(c)
        if try c.bool("use_bidirectional_attention") == true {
            throw ModelError.badConfig(file: c.path, key: "use_bidirectional_attention", "true: only causal attention is supported")
        }
        if let types = c.values["layer_types"]?.arrayValue {
            local = try types.enumerated().map { layer, type in
                switch type.stringValue {
                case "sliding_attention": return true
                case "full_attention": return false
                default: throw ModelError.badConfig(file: c.path, key: "layer_types", "layer \(layer) is \(type): not sliding_attention or full_attention")
                }
            }
        } else {
            let period = try c.int("sliding_window_pattern") ?? variant.localPeriod
            local = (0..<layers).map { ($0 + 1) % max(period, 1) != 0 }
        }
        (globalRope, localRope) = try Self.ropes(c, variant)
        try check()
    }

    /// The global and local layers' RoPE, as transformers 5 settles them. Gemma 3: per layer
    /// type (`rope_parameters.full_attention` / `.sliding_attention`), a `rope_scaling`
    /// merged into the global layers', bases defaulting to `rope_theta` and
    /// `rope_local_base_freq` (transformers 4's keys). Gemma 2: one for all layers, a
    /// non-empty `rope_scaling` replacing `rope_parameters` (`HFConfig.ropeParameters`).
    private static func ropes(_ c: HFConfig, _ variant: GemmaModel.Variant) throws -> (global: GemmaModel.Rope, local: GemmaModel.Rope) {
        func rope(_ members: [String: JSONValue], key: String, theta: Double) throws -> GemmaModel.Rope {
            var rope = GemmaModel.Rope(theta: members["rope_theta"]?.doubleValue ?? theta)
            let type = members["rope_type"]?.stringValue ?? members["type"]?.stringValue ?? "default"
            switch type {
            case "default": break
            case "linear":
                guard let factor = members["factor"]?.doubleValue, factor.isFinite, factor > 0 else {
                    throw ModelError.badConfig(file: c.path, key: "\(key).factor", "a positive number is required for linear rotary scaling")
                }
                rope.factor = factor
            default:
                throw ModelError.badConfig(file: c.path, key: "\(key).rope_type", "\(type): only default and linear rotary scaling are supported")
            }
            return rope
        }
        let globalTheta = try c.double("rope_theta") ?? variant.defaultRopeTheta
        guard let localDefault = variant.defaultLocalRopeTheta else {
            let parameters = c.ropeParameters
            let shared = try rope(parameters?.members ?? [:], key: parameters?.key ?? "rope_parameters", theta: globalTheta)
            return (shared, shared)
        }
        let parameters = c.values["rope_parameters"]?.objectValue
        if let parameters, !parameters.isEmpty, parameters["full_attention"] == nil, parameters["sliding_attention"] == nil {
            throw ModelError.badConfig(file: c.path, key: "rope_parameters",
                                       "one set for all layers: Gemma 3 takes one per layer type (full_attention, sliding_attention)")
        }
        var global = parameters?["full_attention"]?.objectValue ?? [:]
        let scaling = c.values["rope_scaling"]?.objectValue ?? [:]
        global.merge(scaling) { $1 }
        let key = scaling.isEmpty ? "rope_parameters.full_attention" : "rope_scaling"
        return (try rope(global, key: key, theta: globalTheta),
                try rope(parameters?["sliding_attention"]?.objectValue ?? [:], key: "rope_parameters.sliding_attention",
                         theta: try c.double("rope_local_base_freq") ?? localDefault))
    }

    /// From GGUF metadata (llama.cpp's `gemma3.*` keys), with HF's defaults for what GGUF
    /// does not store: local RoPE base 10,000, every sixth layer global, and
    /// query_pre_attn_scalar = head_dim.
    init(gguf f: GGUFFile, _ variant: GemmaModel.Variant) throws {
        let prefix = variant.architecture + "."
        func int(_ key: String) throws -> Int {
            guard let value = f.metadata[prefix + key]?.intValue else {
                throw ModelError.format(FormatError(.missingKey, file: f.path, item: prefix + key, "required metadata key is missing"))
            }
            return value
        }
        self.variant = variant
        source = f.path
        hidden = try int("embedding_length")
        layers = try int("block_count")
        heads = try int("attention.head_count")
        keyValueHeads = (try? int("attention.head_count_kv")) ?? heads
        headDim = try int("attention.key_length")
        intermediate = try int("feed_forward_length")
        vocabulary = f.shape(of: "token_embd.weight")?.first ?? 0
        context = try int("context_length")
        // GGUF stores it as float32; keep the decimal value it was written from (1e-06).
        let storedEpsilon = Float(f.metadata[prefix + "attention.layer_norm_rms_epsilon"]?.doubleValue ?? 1e-6)
        epsilon = Double("\(storedEpsilon)") ?? Double(storedEpsilon)
        queryPreAttentionScalar = Double(headDim)
        slidingWindow = try int("attention.sliding_window")
        local = (0..<layers).map { ($0 + 1) % variant.localPeriod != 0 }
        globalRope = GemmaModel.Rope(theta: f.metadata[prefix + "rope.freq_base"]?.doubleValue ?? variant.defaultRopeTheta)
        localRope = GemmaModel.Rope(theta: variant.defaultLocalRopeTheta ?? globalRope.theta)
        if let type = f.metadata[prefix + "rope.scaling.type"]?.stringValue, type != "none" {
            throw ModelError.badConfig(file: f.path, key: prefix + "rope.scaling.type", "\(type): scaled RoPE from GGUF is not supported yet")
        }
        attentionBias = f.shape(of: "blk.0.attn_q.bias") != nil
        attentionSoftcap = nil
        finalSoftcap = f.metadata[prefix + "final_logit_softcapping"]?.doubleValue
        tied = f.shape(of: "output.weight") == nil
        try check()
    }

    /// Every size in range and the heads consistent, before anything is allocated.
    private func check() throws {
        func size(_ value: Int, _ range: ClosedRange<Int>, _ key: String) throws {
            try ConfigCheck.size(value, range, key: key, file: source)
        }
        try size(layers, ConfigCheck.layers, "num_hidden_layers")
        try size(hidden, ConfigCheck.width, "hidden_size")
        try size(heads, ConfigCheck.heads, "num_attention_heads")
        try size(keyValueHeads, ConfigCheck.heads, "num_key_value_heads")
        try size(headDim, ConfigCheck.headDim, "head_dim")
        try size(intermediate, ConfigCheck.width, "intermediate_size")
        try size(vocabulary, ConfigCheck.vocabulary, "vocab_size")
        try size(context, ConfigCheck.context, "max_position_embeddings")
        try size(slidingWindow, 1...Int(Int32.max), "sliding_window")
        try ConfigCheck.positive(epsilon, key: "rms_norm_eps", file: source)
        try ConfigCheck.positive(queryPreAttentionScalar, key: "query_pre_attn_scalar", file: source)
        try ConfigCheck.positive(globalRope.theta, key: "rope_theta", file: source)
        try ConfigCheck.positive(localRope.theta, key: "rope_local_base_freq", file: source)
        for (key, cap) in [("attn_logit_softcapping", attentionSoftcap), ("final_logit_softcapping", finalSoftcap)] {
            if let cap { try ConfigCheck.positive(cap, key: key, file: source) }
        }
        guard local.count == layers else {
            throw ModelError.badConfig(file: source, key: "layer_types", "\(local.count) layer types for \(layers) layers")
        }
        guard heads % keyValueHeads == 0, headDim % 2 == 0 else {
            throw ModelError.badConfig(file: source, key: "num_key_value_heads",
                                       "\(heads) attention heads cannot share \(keyValueHeads) key/value heads of dimension \(headDim)")
        }
    }
}

/// A GGUF file's Gemma tensors under HF's names. llama.cpp's converter stores each RMSNorm
/// weight plus one (its kernel scales by the weight alone); HF's GGUF loader subtracts the
/// one again in float32, and so does this.
enum GemmaGGUF {
    static func weights(_ file: GGUFFile, layers: Int) -> GGUFWeights {
        GGUFWeights(file, layers: layers,
                    model: ["model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"],
                    perLayer: ["self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                               "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
                               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
                               "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
                               "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"]) { name, t in
            if name.hasSuffix("norm.weight") {
                for i in 0..<t.count { t.data[i] -= 1 }
            }
            return t
        }
    }
}
