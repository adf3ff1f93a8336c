import GPT2
import Llama
import LoupeModels

/// Every plugin this build carries, each registered by its one call. Adding an
/// architecture is a folder under Plugins/ and a line here.
func makeRegistry() -> ArchitectureRegistry {
    let registry = ArchitectureRegistry()
    registry.register(GPT2Architecture.self)
    registry.register(LlamaArchitecture.self)
    return registry
}
