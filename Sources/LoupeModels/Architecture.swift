import Foundation
import LoupeFormats
import Synchronization

/// A checkpoint as read from disk, before an architecture turns it into a model.
public enum Checkpoint: Sendable {
    /// An HF directory: config.json and safetensors weights.
    case huggingFace(config: HFConfig, weights: any WeightSource)
    /// A GGUF file: config and weights both come from it.
    case gguf(GGUFFile)

    /// The model type that picks the architecture: HF's `model_type`, GGUF's `general.architecture`.
    public var modelType: String? {
        switch self {
        case .huggingFace(let config, _): return config.string("model_type")
        case .gguf(let file): return file.metadata["general.architecture"]?.stringValue
        }
    }
}

/// An architecture plugin: turns a checkpoint of its model type into a runnable model.
public protocol ArchitectureAdapter: Sendable {
    /// A short name ("gpt2", "llama").
    static var name: String { get }
    /// The HF `model_type` and GGUF `general.architecture` values this adapter runs.
    static var modelTypes: [String] { get }
    static func load(_ checkpoint: Checkpoint) throws -> any LanguageModel
}

/// The architectures known to this process. Plugins add themselves at start-up with one
/// `register` call; nothing else in Loupe names an architecture.
public final class ArchitectureRegistry: Sendable {
    private let adapters = Mutex<[any ArchitectureAdapter.Type]>([])

    public init() {}

    public func register(_ adapter: any ArchitectureAdapter.Type) {
        adapters.withLock { $0.append(adapter) }
    }

    public var names: [String] { adapters.withLock { $0.map { $0.name } } }

    public func adapter(forModelType type: String) throws -> any ArchitectureAdapter.Type {
        try adapters.withLock { list in
            guard let found = list.first(where: { $0.modelTypes.contains(type) }) else {
                throw ModelError.unknownArchitecture(type, known: list.flatMap { $0.modelTypes })
            }
            return found
        }
    }
}
