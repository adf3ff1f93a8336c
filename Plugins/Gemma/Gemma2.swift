import LoupeFormats
import LoupeModels

/// Gemma 2 (Gemma Team, 2024) as HF's `Gemma2ForCausalLM` computes it: Gemma 3's layer
/// (Gemma.swift) without q_norm and k_norm, with attention scores soft-capped at
/// `attn_logit_softcapping` and the final logits at `final_logit_softcapping`, every other
/// layer local, and one RoPE base for all layers.
///
/// Canonical sites as Gemma 3's; `logits` are after the final soft-cap, lm_head's own
/// output site before it, and `attn.pattern` is softmax of the capped scores.
public enum Gemma2Architecture: ArchitectureAdapter {
    public static let name = "gemma2"
    public static let modelTypes = ["gemma2"]

    public static func load(_ checkpoint: Checkpoint) throws -> any LanguageModel {
        switch checkpoint {
        case .huggingFace(let config, let weights):
            return try GemmaModel(GemmaModel.Settings(config, .gemma2), weights: WeightReader(weights, optionalPrefix: "model."))
        case .gguf(let file):
            throw ModelError.badConfig(file: file.path, key: "general.architecture", "gemma2 GGUF files are not supported yet: load the HF checkpoint")
        }
    }
}

extension GemmaModel.Variant {
    static let gemma2 = Self(architecture: Gemma2Architecture.name, classPrefix: "Gemma2", baseClass: "Gemma2Model",
                             queryKeyNorm: false, localPeriod: 2, defaultContext: 8192, defaultRopeTheta: 10_000,
                             defaultLocalRopeTheta: nil, capsAttention: true, defaultAttentionSoftcap: 50, defaultFinalSoftcap: 30)
}
