import LoupeFormats
import LoupeModels

/// Qwen2 and Qwen2.5 (Qwen Team, 2024) as HF's `Qwen2ForCausalLM` computes them: Llama's
/// decoder (pre-norm RMSNorm blocks, RoPE, grouped-query attention, SiLU-gated MLP) with a
/// bias on the query, key and value projections and none on the output projection. It runs
/// on `LlamaModel` with its own class names: the math is Llama's but for those biases.
///
/// Canonical sites as Llama's: `attn_out` is o_proj's output, `mlp_out` down_proj's,
/// `attn.q`/`attn.k` after the biased projection and RoPE, `attn.v` the biased projection,
/// `attn.z` o_proj's input per head.
///
/// Sliding-window attention (`use_sliding_window`, or a `sliding_attention` layer type) is
/// refused at load: Loupe attends over the whole prefix.
public enum Qwen2Architecture: ArchitectureAdapter {
    public static let name = "qwen2"
    public static let modelTypes = ["qwen2"]

    public static func load(_ checkpoint: Checkpoint) throws -> any LanguageModel {
        let (config, weights): (HFConfig, any WeightSource)
        switch checkpoint {
        case .huggingFace(let c, let w): (config, weights) = (c, w)
        case .gguf(let file):
            throw ModelError.badConfig(file: file.path, key: "general.architecture", "qwen2 GGUF files are not supported yet: load the HF checkpoint")
        }
        var settings = try LlamaModel.Settings(config, .qwen2)
        settings.qkvBias = true  // Qwen2Attention: q, k and v with bias, o_proj without
        settings.outputBias = false
        settings.tied = try config.bool("tie_word_embeddings") ?? false  // Qwen2Config's default
        try refuseSlidingWindow(config)
        return try LlamaModel(settings, weights: WeightReader(weights, optionalPrefix: "model."))
    }

    /// transformers attends within a window on the layers `use_sliding_window` (or
    /// `layer_types`) selects; Loupe implements full causal attention only.
    static func refuseSlidingWindow(_ c: HFConfig) throws {
        if try c.bool("use_sliding_window") == true {
            throw ModelError.badConfig(file: c.path, key: "use_sliding_window", "true: sliding-window attention is not supported")
        }
        for (layer, type) in (c.values["layer_types"]?.arrayValue ?? []).enumerated() where type.stringValue != "full_attention" {
            throw ModelError.badConfig(file: c.path, key: "layer_types",
                                       "layer \(layer) is \(type.stringValue ?? "\(type)"): only full_attention is supported")
        }
    }
}

extension LlamaModel.Variant {
    static let qwen2 = Self(architecture: Qwen2Architecture.name, classPrefix: "Qwen2", queryKeyNorm: false)
}
