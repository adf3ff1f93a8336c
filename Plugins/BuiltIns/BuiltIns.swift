import Gemma
import GPT2
import GPTNeoX
import Interventions
import Llama
import LoupeModels
import LoupeTrace

/// Every plugin built into Loupe, listed once. The command line, the benchmark, the fuzz
/// target and the tests register from here; nothing else names a plugin. Adding a built-in
/// architecture is its folder under Plugins/, its fixture and one line below
/// (Plugins/README.md).
public enum BuiltInPlugins {
    public static let architectures: [any ArchitectureAdapter.Type] = [
        GPT2Architecture.self,
        LlamaArchitecture.self,
        Qwen2Architecture.self,
        Qwen3Architecture.self,
        GPTNeoXArchitecture.self,
        Gemma3Architecture.self,
        Gemma2Architecture.self,
        MistralArchitecture.self,
    ]

    public static let interventions: [any Intervention.Type] = [
        ResidualPatch.self,
        HeadPatch.self,
        Ablate.self,
        Steer.self,
    ]

    /// A registry holding every built-in architecture.
    public static func architectureRegistry() -> ArchitectureRegistry {
        let registry = ArchitectureRegistry()
        for adapter in architectures { registry.register(adapter) }
        return registry
    }

    /// A registry holding every built-in intervention.
    public static func interventionRegistry() -> InterventionRegistry {
        let registry = InterventionRegistry()
        for intervention in interventions { registry.register(intervention) }
        return registry
    }
}
