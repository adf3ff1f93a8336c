import Foundation
import LoupeFormats
import LoupeModels
import LoupeTensor

/// GPT-NeoX (Black et al., 2022) and Pythia (Biderman et al., 2023) as HF's
/// `GPTNeoXForCausalLM` computes them: pre-norm blocks whose attention and MLP read the same
/// input and add to the residual stream side by side (`use_parallel_residual`, as Pythia
/// is trained), or one after the other; rotary position embeddings over the first
/// `rotary_pct` of each head's dimensions; a query/key/value projection fused per head; an
/// exact-erf GELU MLP; LayerNorms and linears with biases; and an unembedding, untied unless
/// `tie_word_embeddings`: the module transformers 5 names `lm_head`, stored in checkpoints as
/// `embed_out.weight` (`lm_head.weight` is read too).
///
/// Canonical sites: `resid_pre` is a layer's input and `resid_post` its output; `attn_out`
/// is attention.dense's output and `mlp_out` dense_4h_to_h's (dropout is the identity at
/// inference); `attn.q`/`attn.k` after the partial RoPE (its first rotary dims of each head
/// rotated, the rest as projected), `attn.v` as projected, `attn.z` dense's input per head;
/// `attn.pattern` the softmax probabilities; `logits` lm_head's output. `resid_mid` is
/// `resid_pre + attn_out` in both forms, and `resid_post` is `resid_mid + mlp_out`:
///
/// - sequential (`use_parallel_residual` false): the stream the MLP reads, as in GPT-2.
/// - parallel (Pythia): the MLP reads `resid_pre` (through post_attention_layernorm), not
///   `resid_mid`, so a hook that edits `resid_mid` changes the layer's output by its edit and
///   leaves the MLP as it was; editing `resid_pre` moves both branches. `resid_mid` is then a
///   sum HF never forms (it adds mlp + attn + x), well defined all the same, and it fires
///   after `attn_out` and before the MLP's sites.
///
/// Refused at load, naming the key: any `hidden_act` but `gelu`, a rotary type other than
/// `default` (`rope_scaling` / `rope_parameters`), and a top-level `rope_theta`,
/// `partial_rotary_factor` or `head_dim` that disagrees with what transformers 5 computes
/// with (it ignores the first two).
public enum GPTNeoXArchitecture: ArchitectureAdapter {
    public static let name = "gpt_neox"
    public static let modelTypes = ["gpt_neox"]

    public static func load(_ checkpoint: Checkpoint) throws -> any LanguageModel {
        switch checkpoint {
        case .huggingFace(let config, let weights):
            return try GPTNeoXModel(GPTNeoXModel.Settings(config), weights: WeightReader(EmbedOutAlias(weights), optionalPrefix: "gpt_neox."))
        case .gguf(let file):
            throw ModelError.badConfig(file: file.path, key: "general.architecture",
                                       "gpt_neox GGUF files are not supported yet: load the HF checkpoint")
        }
    }
}

final class GPTNeoXModel: LanguageModel, @unchecked Sendable {
    /// The hyper-parameters, read from config.json (transformers 4 or 5).
    struct Settings {
        var layers, hidden, heads, headDim, intermediate, vocabulary, context: Int
        /// HF's `rotary_ndims`, int(head_dim · partial_rotary_factor): the frequencies are
        /// θ^(-2i / rotaryDims) for even 2i < rotaryDims, and each head's first two dims per
        /// frequency rotate (one more than rotaryDims when it is odd, as in transformers); the
        /// rest pass through.
        var rotaryDims: Int
        var ropeTheta: Double
        var epsilon: Double
        var parallelResidual: Bool
        /// Biases on query_key_value and dense.
        var attentionBias: Bool
        var tied: Bool
        /// HF's dropout probability, which only its printed tree shows.
        var hiddenDropout: Double
    }

    let architecture = GPTNeoXArchitecture.name
    let canonicalSites = Set(CanonicalSite.Kind.allCases)
    let dimensions: ModelDimensions
    let moduleTree: ModuleNode
    let modules: ModuleTable
    let weightBytes: Int
    let head: LinearModule

    private let parallelResidual: Bool
    private let base: ModulePath
    private let embedIn: EmbeddingModule
    private let embeddingDropout: ModulePath
    private let blocks: [Block]
    private let finalLayerNorm: NormModule
    /// cos and sin over the rotary dims; nil when no dim rotates.
    private let rotary: RotaryTable?

    /// One `GPTNeoXLayer`.
    struct Block {
        let module: ModulePath
        let inputLayerNorm: NormModule
        let postAttentionLayerNorm: NormModule
        let postAttentionDropout: ModulePath
        let postMLPDropout: ModulePath
        let attention: ModulePath
        /// q, k and v of every head, laid out per head: (head, {q, k, v}, head_dim).
        let queryKeyValue: LinearModule
        let dense: LinearModule
        let mlp: PlainMLP
    }

    init(_ s: Settings, weights: WeightReader) throws {
        dimensions = ModelDimensions(layers: s.layers, hidden: s.hidden, heads: s.heads, keyValueHeads: s.heads,
                                     headDim: s.headDim, intermediate: s.intermediate, vocabulary: s.vocabulary, context: s.context)
        let epsilon = Float(s.epsilon)
        parallelResidual = s.parallelResidual
        let normExtra = "(\(s.hidden),), eps=\(s.epsilon), elementwise_affine=True, bias=True"
        let dropout = "p=\(s.hiddenDropout), inplace=False"

        // The modules in the order GPTNeoXForCausalLM registers them.
        let root = ModuleScope(root: "GPTNeoXForCausalLM", weights: weights)
        let model = root.child("gpt_neox", "GPTNeoXModel")
        base = model.module
        embedIn = try model.embedding("embed_in", count: s.vocabulary, width: s.hidden)
        embeddingDropout = model.leaf("emb_dropout", "Dropout", extra: dropout)
        let list = model.child("layers", "ModuleList")
        blocks = try (0..<s.layers).map { l in
            let layer = list.decoderLayer(l, "GPTNeoXLayer", width: s.hidden)
            let inputLayerNorm = try layer.norm("input_layernorm", "LayerNorm", .layer, width: s.hidden, epsilon: epsilon, bias: true,
                                                extra: normExtra)
            let postAttentionLayerNorm = try layer.norm("post_attention_layernorm", "LayerNorm", .layer, width: s.hidden, epsilon: epsilon,
                                                        bias: true, extra: normExtra)
            let postAttentionDropout = layer.leaf("post_attention_dropout", "Dropout", extra: dropout)
            let postMLPDropout = layer.leaf("post_mlp_dropout", "Dropout", extra: dropout)
            let attention = layer.child("attention", "GPTNeoXAttention")
            let queryKeyValue = try attention.linear("query_key_value", in: s.hidden, out: 3 * s.hidden, bias: s.attentionBias)
            let dense = try attention.linear("dense", in: s.hidden, out: s.hidden, bias: s.attentionBias, inputMajor: true)
            let mlp = layer.child("mlp", "GPTNeoXMLP")
            let up = try mlp.linear("dense_h_to_4h", in: s.hidden, out: s.intermediate, bias: true)
            let down = try mlp.linear("dense_4h_to_h", in: s.intermediate, out: s.hidden, bias: true, inputMajor: true)
            let perceptron = PlainMLP(mlp.module, layer: l, up: up, activation: mlp.activation("act", "GELUActivation", .geluErf), down: down)
            return Block(
                module: layer.module, inputLayerNorm: inputLayerNorm, postAttentionLayerNorm: postAttentionLayerNorm,
                postAttentionDropout: postAttentionDropout, postMLPDropout: postMLPDropout,
                attention: attention.module, queryKeyValue: queryKeyValue, dense: dense, mlp: mlp.callable(perceptron))
        }
        finalLayerNorm = try model.norm("final_layer_norm", "LayerNorm", .layer, width: s.hidden, epsilon: epsilon, bias: true,
                                        extra: normExtra)
        // Its (cos, sin) output is a table made once per model here (`rotary`), not per pass.
        model.leaf("rotary_emb", "GPTNeoXRotaryEmbedding", sites: false)
        // transformers 5 names the unembedding lm_head; checkpoints store it as embed_out (EmbedOutAlias).
        if !s.tied, weights.has("lm_head.weight") {
            head = try root.linear("lm_head", in: s.hidden, out: s.vocabulary, bias: false, inputMajor: true)
        } else if !s.tied {
            throw ModelError.format(FormatError(.missingTensor, file: weights.source.description, item: "embed_out.weight",
                                                "tie_word_embeddings is false but the checkpoint has no embed_out.weight (or lm_head.weight)"))
        } else {
            head = root.tiedLinear("lm_head", to: embedIn)
        }
        let frequencies = (0..<(s.rotaryDims + 1) / 2).map { i in
            Float(1) / Float(pow(s.ropeTheta, Double(2 * i) / Double(s.rotaryDims)))  // as RotaryTable.inverseFrequencies
        }
        rotary = frequencies.isEmpty ? nil
            : RotaryTable(dim: 2 * frequencies.count, inverseFrequency: frequencies, positions: s.context)
        moduleTree = root.tree
        modules = root.modules
        weightBytes = root.weightBytes
    }

    func embed(_ pass: ForwardPass) throws -> Tensor {
        try pass.identity(embeddingDropout, pass.call(embedIn, pass.tokenIDs ?? []))
    }

    func finalNorm(_ x: Tensor, _ pass: ForwardPass) throws -> Tensor {
        try pass.hook(base.output, try pass.call(finalLayerNorm, x), tuple: true)
    }

    /// One layer. Parallel: x + attn(ln1(x)) + mlp(ln2(x)). Sequential: x + attn(ln1(x)),
    /// then + mlp(ln2(·)).
    func layer(_ l: Int, _ input: Tensor, _ pass: ForwardPass) throws -> Tensor {
        let b = blocks[l]
        var x = try pass.hook(b.module.input, input)
        x = try pass.hook(.residPre(l), x)

        var attention = try pass.call(b.attention, try pass.call(b.inputLayerNorm, x), tuple: true) { try attend(l, $0, pass) }
        attention = try pass.identity(b.postAttentionDropout, attention)
        attention = try pass.hook(.attnOut(l), attention)

        // The MLP reads the layer's input when parallel, the stream after attention when not.
        let mlpReads = x
        var stream = parallelResidual ? x.copy() : x
        addInPlace(stream, attention)
        stream = try pass.hook(.residMid(l), stream)

        // MLP: dense_4h_to_h(gelu(dense_h_to_4h(x))).
        var mlp = try b.mlp(try pass.call(b.postAttentionLayerNorm, parallelResidual ? mlpReads : stream), pass)
        mlp = try pass.identity(b.postMLPDropout, mlp)
        mlp = try pass.hook(.mlpOut(l), mlp)
        addInPlace(stream, mlp)

        stream = try pass.hook(b.module.output, stream)
        return try pass.hook(.residPost(l), stream)
    }

    /// Attention: dense(softmax(q kᵀ / √d) v), with q and k partially rotated by position.
    private func attend(_ l: Int, _ h: Tensor, _ pass: ForwardPass) throws -> Tensor {
        let b = blocks[l]
        let (heads, headDim) = (dimensions.heads, dimensions.headDim)
        let qkv = try pass.call(b.queryKeyValue, h)
        let (q, k, v) = (part(qkv, 0), part(qkv, 1), part(qkv, 2))
        if let rotary {
            // The first rotary dims of every head, as rows [positions · heads, rotary dims].
            let positions = pass.positionIDs.flatMap { repeatElement($0, count: heads) }
            for t in [q, k] {
                rotary.apply(t.reshaped([-1, headDim]).slice(axis: 1, 0..<rotary.dim), heads: 1, positions: positions)
            }
        }
        return try pass.attend(layer: l, q: q, k: k, v: v, heads: heads, keyValueHeads: heads, headDim: headDim,
                               scale: 1 / Float(headDim).squareRoot(), output: b.dense)
    }

    /// Part `index` (0 q, 1 k, 2 v) of every head of query_key_value's output, as HF's
    /// `view(..., heads, 3 * head_dim).chunk(3)` takes it: [rows, heads · head_dim], contiguous.
    private func part(_ qkv: Tensor, _ index: Int) -> Tensor {
        let (heads, headDim) = (dimensions.heads, dimensions.headDim)
        return qkv.reshaped([-1, heads, 3, headDim]).select(axis: 2, index).copy().reshaped([-1, heads * headDim])
    }
}

/// The checkpoint's tensors, with the unembedding also under the name transformers 5 gives
/// its module (`lm_head.weight`) when it is stored as GPT-NeoX checkpoints store it
/// (`embed_out.weight`, which transformers renames at load and back at save).
struct EmbedOutAlias: WeightSource {
    let source: any WeightSource
    private static let stored = "embed_out.weight"
    private static let alias = "lm_head.weight"

    init(_ source: any WeightSource) { self.source = source }

    var description: String { source.description }
    var tensorNames: [String] { source.tensorNames }

    /// The stored name `name` is read from.
    private func resolve(_ name: String) -> String {
        name == Self.alias && source.shape(of: Self.alias) == nil ? Self.stored : name
    }

    func shape(of name: String) -> [Int]? { source.shape(of: resolve(name)) }
    func tensor(_ name: String) throws -> Tensor { try source.tensor(resolve(name)) }
}

extension GPTNeoXModel.Settings {
    /// From an HF config.json, read as transformers 5's GPTNeoXConfig reads it.
    init(_ c: HFConfig) throws {
        let file = c.path
        func size(_ key: String, _ range: ClosedRange<Int>, default fallback: Int? = nil) throws -> Int {
            let value = try fallback.map { try c.int(key) ?? $0 } ?? c.requireInt(key)
            return try ConfigCheck.size(value, range, key: key, file: file)
        }
        layers = try size("num_hidden_layers", ConfigCheck.layers)
        hidden = try size("hidden_size", ConfigCheck.width)
        heads = try size("num_attention_heads", ConfigCheck.heads)
        intermediate = try size("intermediate_size", ConfigCheck.width)
        vocabulary = try size("vocab_size", ConfigCheck.vocabulary)
        context = try size("max_position_embeddings", ConfigCheck.context, default: 2048)
        guard hidden % heads == 0 else {
            throw ModelError.badConfig(file: file, key: "num_attention_heads", "hidden_size \(hidden) is not divisible by \(heads) heads")
        }
        headDim = try ConfigCheck.size(hidden / heads, ConfigCheck.headDim, key: "num_attention_heads", file: file)
        // The attention splits heads as hidden / heads, the rotary table a `head_dim` if the config has one.
        if let declared = try c.int("head_dim"), declared != headDim {
            throw ModelError.badConfig(file: file, key: "head_dim", "\(declared) differs from hidden_size / num_attention_heads = \(headDim)")
        }
        epsilon = try ConfigCheck.positive(c.double("layer_norm_eps") ?? 1e-5, key: "layer_norm_eps", file: file)
        try ConfigCheck.activation(c, key: "hidden_act", allowed: ["gelu"])  // the exact-erf GELU
        try ConfigCheck.denseMLP(c)
        parallelResidual = try c.bool("use_parallel_residual") ?? true
        attentionBias = try c.bool("attention_bias") ?? true
        tied = try c.bool("tie_word_embeddings") ?? false  // GPTNeoXConfig's default
        hiddenDropout = try c.double("hidden_dropout") ?? 0

        let rope = try GPTNeoXRope(c)
        ropeTheta = try ConfigCheck.positive(rope.theta, key: rope.thetaKey, file: file)
        guard rope.fraction >= 0, rope.fraction <= 1 else {
            throw ModelError.badConfig(file: file, key: rope.fractionKey, "\(rope.fraction) is outside 0...1: the share of each head's dims that rotate")
        }
        rotaryDims = Int(Double(headDim) * rope.fraction)  // Python's int(): toward zero
        // An odd count rotates one dim more; past an odd head_dim, transformers fails.
        guard rotaryDims + rotaryDims % 2 <= headDim else {
            throw ModelError.badConfig(file: file, key: rope.fractionKey,
                                       "\(rope.fraction) of head_dim \(headDim) rotates \(rotaryDims + 1) dims, more than a head has")
        }
    }
}

/// The rotary parameters as transformers 5's GPTNeoXConfig settles them: a non-empty
/// `rope_scaling` replaces `rope_parameters`; its `rope_theta` and `partial_rotary_factor`
/// come first, then transformers 4's `rotary_emb_base` and `rotary_pct`, then 10000 and 0.25.
/// A top-level `rope_theta` or `partial_rotary_factor` is not read by GPTNeoXConfig: one that
/// disagrees is refused, as other transformers versions may read it.
struct GPTNeoXRope {
    var theta: Double
    var thetaKey: String
    var fraction: Double
    var fractionKey: String

    init(_ c: HFConfig) throws {
        let file = c.path
        var parameters: (key: String, members: [String: JSONValue])?
        for key in ["rope_parameters", "rope_scaling"] {
            guard let value = c.values[key], value != .null else { continue }
            guard let members = value.objectValue else {
                throw ModelError.badConfig(file: file, key: key, "expected an object, got \(value)")
            }
            if key == "rope_parameters" || !members.isEmpty { parameters = (key, members) }
        }
        let members = parameters?.members ?? [:]
        let key = parameters?.key ?? "rope_parameters"
        let typeValue = members["rope_type"] ?? members["type"]
        let type = typeValue.map { $0.stringValue ?? "\($0)" } ?? "default"
        guard type == "default" else {
            throw ModelError.badConfig(file: file, key: "\(key).rope_type", "\(type): only the default (unscaled) rotary embedding is supported")
        }
        func number(_ name: String, orTopLevel fallback: String, default value: Double) throws -> (Double, String) {
            if let member = members[name] {
                guard let number = member.doubleValue else {
                    throw ModelError.badConfig(file: file, key: "\(key).\(name)", "expected a number, got \(member)")
                }
                return (number, "\(key).\(name)")
            }
            return (try c.double(fallback) ?? value, fallback)
        }
        (theta, thetaKey) = try number("rope_theta", orTopLevel: "rotary_emb_base", default: 10_000)
        (fraction, fractionKey) = try number("partial_rotary_factor", orTopLevel: "rotary_pct", default: 0.25)
        for (ignored, used) in [("rope_theta", theta), ("partial_rotary_factor", fraction)] {
            if let stated = try c.double(ignored), stated != used {
                throw ModelError.badConfig(file: file, key: ignored,
                                           "\(stated) disagrees with the \(used) transformers 5 computes with (from \(ignored == "rope_theta" ? thetaKey : fractionKey)), which ignores this key")
            }
        }
    }
}
