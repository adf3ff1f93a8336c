import LoupeFormats
import LoupeModels

/// Mistral (Jiang et al., 2023) as HF's `MistralForCausalLM` computes it: Llama's decoder
/// (pre-norm RMSNorm blocks, RoPE, grouped-query attention, SiLU-gated MLP, no biases) whose
/// attention keeps, on every layer, to a sliding window of `sliding_window` positions: a
/// query sees itself and the `sliding_window - 1` positions before it (HF's
/// `sliding_window_overlay`, `kv_idx > q_idx - sliding_window`). It runs on `LlamaModel`
/// with its own class names and `Settings.slidingWindow`.
///
/// Canonical sites as Llama's: `resid_pre` is a decoder layer's input, `resid_mid` after the
/// attention's residual add, `resid_post` the layer's output; `attn_out` is o_proj's output
/// and `mlp_out` down_proj's; `attn.q`/`attn.k` after RoPE, `attn.v` as projected, `attn.z`
/// o_proj's input per head; `attn.pattern` the softmax probabilities, zero outside the window
/// (and after the query); `logits` lm_head's output.
///
/// Read as `MistralConfig` reads it: `sliding_window` left out is 4096, null is no window
/// (the whole prefix); `num_key_value_heads` left out is 8, null one per query head;
/// `max_position_embeddings` left out is 131072; `head_dim` from the config, else hidden /
/// heads; `tie_word_embeddings` false unless set. `attention_bias`, `mlp_bias` and
/// `layer_types` are ignored, as MistralForCausalLM ignores them (its linears have no bias,
/// and it gives every layer the window). Refused at load, naming the key and the value: a
/// `hidden_act` other than `silu`, a rotary type other than `default` in `rope_scaling` or
/// `rope_parameters` (`rope_type`, or `type`), and a `sliding_window` below 1.
///
/// GGUF files of `general.architecture` `mistral` are refused. llama.cpp writes Mistral 7B
/// as the `llama` architecture and stores no window: such a file loads as Llama, attending
/// over the whole prefix as llama.cpp does.
public enum MistralArchitecture: ArchitectureAdapter {
    public static let name = "mistral"
    public static let modelTypes = ["mistral"]

    public static func load(_ checkpoint: Checkpoint) throws -> any LanguageModel {
        let (config, weights): (HFConfig, any WeightSource)
        switch checkpoint {
        case .huggingFace(let c, let w): (config, weights) = (c, w)
        case .gguf(let file):
            throw ModelError.badConfig(file: file.path, key: "general.architecture", "mistral GGUF files are not supported yet: load the HF checkpoint")
        }
        try refuseUnsupported(config)
        var settings = try LlamaModel.Settings(config, .mistral)
        // MistralAttention and MistralMLP have no biases, whatever attention_bias or mlp_bias say.
        (settings.qkvBias, settings.outputBias, settings.mlpBias) = (false, false, false)
        settings.slidingWindow = try slidingWindow(config)
        return try LlamaModel(settings, weights: WeightReader(weights, optionalPrefix: "model."))
    }

    /// MistralConfig's `sliding_window`: 4096 when left out, none when null, else at least 1.
    static func slidingWindow(_ c: HFConfig) throws -> Int? {
        guard let value = c.values["sliding_window"] else { return 4096 }
        if value.isNull { return nil }
        guard let window = try c.int("sliding_window") else { return nil }
        return try ConfigCheck.size(window, 1...Int(Int32.max), key: "sliding_window", file: c.path)
    }

    /// What MistralForCausalLM would compute and Loupe does not: another activation, a scaled
    /// or otherwise non-default rotary embedding.
    static func refuseUnsupported(_ c: HFConfig) throws {
        if let activation = c.values["hidden_act"], activation.stringValue != "silu" {
            throw ModelError.badConfig(file: c.path, key: "hidden_act",
                                       "\(activation.stringValue ?? "\(activation)"): only silu is supported")
        }
        // Either key: transformers 5 takes rope_scaling over rope_parameters when both are set.
        for key in ["rope_scaling", "rope_parameters"] {
            guard let members = c.values[key]?.objectValue, let type = members["rope_type"] ?? members["type"] else { continue }
            if type.stringValue != "default" {
                throw ModelError.badConfig(file: c.path, key: "\(key).rope_type",
                                           "\(type.stringValue ?? "\(type)"): only the default rotary embedding is supported")
            }
        }
    }
}

extension LlamaModel.Variant {
    static let mistral = Self(architecture: MistralArchitecture.name, classPrefix: "Mistral", queryKeyNorm: false,
                              defaultKeyValueHeads: 8, defaultContext: 131_072)
}
