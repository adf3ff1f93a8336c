import GPT2
import Interventions
import Llama
import LoupeModels
import LoupeTrace

/// Every plugin this build carries, each registered by its one call. Adding an
/// architecture is a folder under Plugins/ and a line here.
func makeRegistry() -> ArchitectureRegistry {
    let registry = ArchitectureRegistry()
    registry.register(GPT2Architecture.self)
    registry.register(LlamaArchitecture.self)
    return registry
}

/// Every intervention a trace may name: the built-in ones, each registered by one line in
/// Plugins/Interventions.
func makeInterventions() -> InterventionRegistry {
    let registry = InterventionRegistry()
    registerBuiltInInterventions(registry)
    return registry
}
