import LoupeFormats
import LoupeModels

/// Qwen3 (Qwen Team, 2025) dense models as HF's `Qwen3ForCausalLM` computes them: Llama's
/// decoder with an RMSNorm over each query and key head (`q_norm`, `k_norm`, over head_dim,
/// before RoPE), no biases unless `attention_bias`, and `head_dim` from the config (not
/// necessarily hidden / heads). It runs on `LlamaModel` with its own class names.
///
/// Canonical sites as Llama's: `attn.q`/`attn.k` after q_norm/k_norm and RoPE, `attn.v`
/// as projected, `attn.z` o_proj's input per head, `attn_out` o_proj's output, `mlp_out`
/// down_proj's. q_norm and k_norm's own sites are `[batch, pos, head, head_dim]`, as HF.
///
/// Sliding-window attention (`use_sliding_window`, or a `sliding_attention` layer type) is
/// refused at load.
public enum Qwen3Architecture: ArchitectureAdapter {
    public static let name = "qwen3"
    public static let modelTypes = ["qwen3"]

    public static func load(_ checkpoint: Checkpoint) throws -> any LanguageModel {
        let (config, weights): (HFConfig, any WeightSource)
        switch checkpoint {
        case .huggingFace(let c, let w): (config, weights) = (c, w)
        case .gguf(let file):
            throw ModelError.badConfig(file: file.path, key: "general.architecture", "qwen3 GGUF files are not supported yet: load the HF checkpoint")
        }
        var settings = try LlamaModel.Settings(config, .qwen3)
        settings.tied = try config.bool("tie_word_embeddings") ?? false  // Qwen3Config's default
        try Qwen2Architecture.refuseSlidingWindow(config)
        return try LlamaModel(settings, weights: WeightReader(weights, optionalPrefix: "model."))
    }
}

extension LlamaModel.Variant {
    static let qwen3 = Self(architecture: Qwen3Architecture.name, classPrefix: "Qwen3", queryKeyNorm: true)
}
