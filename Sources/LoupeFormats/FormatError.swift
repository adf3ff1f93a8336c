/// A file Loupe could not read, with the file and the tensor or key at fault.
public struct FormatError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case io                    // the file could not be opened or mapped
        case truncated             // the file ends before a declared length
        case badMagic              // not the format it claims to be
        case unsupportedVersion
        case unknownDType          // a dtype or quantization Loupe does not read
        case missingTensor
        case shapeMismatch
        case missingKey            // a required config or metadata key is absent
        case badValue              // a key or header field holds a value of the wrong kind
        case notFound              // a model name that resolves to nothing on disk
    }

    public let kind: Kind
    /// The file (or directory) being read.
    public let file: String
    /// The tensor name or key at fault, when there is one.
    public let item: String?
    public let message: String

    public init(_ kind: Kind, file: String, item: String? = nil, _ message: String) {
        self.kind = kind
        self.file = file
        self.item = item
        self.message = message
    }

    public var description: String {
        let what = item.map { " (\($0))" } ?? ""
        return "\(file)\(what): \(message)"
    }
}
