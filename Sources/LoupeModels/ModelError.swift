import LoupeFormats

/// Why a model could not be loaded or run.
public enum ModelError: Error, Sendable, CustomStringConvertible, Equatable {
    /// A file was unreadable or inconsistent (wraps the format layer's error).
    case format(FormatError)
    /// No registered architecture handles this model type.
    case unknownArchitecture(String, known: [String])
    /// A config value the architecture cannot run with (file, key, what is wrong).
    case badConfig(file: String, key: String, String)
    /// A model whose weights, as float32, would take more than the limit (nil: more than
    /// an integer counts).
    case modelTooLarge(file: String, bytes: Int?, limit: Int)
    /// A token id outside the vocabulary.
    case tokenOutOfRange(Int, vocabulary: Int)
    /// A sequence longer than the model's context.
    case tooLong(Int, limit: Int)
    /// An empty batch or an empty sequence.
    case emptyInput
    /// A hook replaced a value with one of another shape.
    case hookShapeMismatch(site: String, expected: [Int], got: [Int])
    case cancelled
    /// A canonical site the architecture does not provide (`LanguageModel.canonicalSites`).
    case siteNotProvided(site: String, architecture: String)

    public var description: String {
        switch self {
        case .format(let error): return error.description
        case .unknownArchitecture(let name, let known):
            return "no architecture registered for model type '\(name)' (registered: \(known.joined(separator: ", ")))"
        case .badConfig(let file, let key, let message): return "\(file) (\(key)): \(message)"
        case .modelTooLarge(let file, let bytes, let limit):
            let size = bytes.map { "\($0 >> 20) MiB" } ?? "more than an integer counts"
            return "\(file): its weights would take \(size) as float32, over the limit of \(limit >> 20) MiB (loupe serve --max-model-mb)"
        case .tokenOutOfRange(let id, let vocabulary): return "token id \(id) is outside the vocabulary of \(vocabulary)"
        case .tooLong(let length, let limit): return "sequence of \(length) tokens exceeds the model's context of \(limit)"
        case .emptyInput: return "empty input: a batch needs at least one non-empty sequence"
        case .hookShapeMismatch(let site, let expected, let got):
            return "hook at \(site) returned shape \(got), expected \(expected)"
        case .cancelled: return "cancelled"
        case .siteNotProvided(let site, let architecture):
            return "the \(architecture) architecture does not provide the canonical site \(site)"
        }
    }
}
