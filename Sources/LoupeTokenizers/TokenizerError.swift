import LoupeFormats

/// A tokenizer Loupe could not load, with the file and the key or entry at fault.
public struct TokenizerError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case io            // the file could not be read
        case badValue      // not valid JSON, or a key holds a value of the wrong kind
        case missingKey    // a required key or file is absent
        case unknownToken  // a merge, special token or setting names a token the vocabulary lacks
        case unsupported   // a valid setting Loupe does not implement (rejected rather than guessed)
    }

    public let kind: Kind
    /// The file (or directory) being read.
    public let file: String
    /// The key or entry at fault, e.g. `model.merges[17]` or `vocab.bpe line 4`.
    public let item: String?
    public let message: String

    public init(_ kind: Kind, file: String, item: String? = nil, _ message: String) {
        self.kind = kind
        self.file = file
        self.item = item
        self.message = message
    }

    /// The JSON and GGUF readers report `FormatError`; callers of this module see one error type.
    init(_ error: FormatError) {
        let kind: Kind = switch error.kind {
        case .io, .notFound: .io
        case .missingKey: .missingKey
        default: .badValue
        }
        self.init(kind, file: error.file, item: error.item, error.message)
    }

    public var description: String {
        let what = item.map { " (\($0))" } ?? ""
        return "\(file)\(what): \(message)"
    }
}

/// Runs `body`, turning a `FormatError` into a `TokenizerError`.
func translatingFormatErrors<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let error as FormatError { throw TokenizerError(error) }
}
