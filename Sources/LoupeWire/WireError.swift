/// Why bytes from the wire could not become a message. Hostile or broken input always ends
/// here, never in a crash or an allocation sized by the input's claims.
public struct WireError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        /// Not MessagePack: a reserved byte, or a header that makes no sense.
        case malformed
        /// The bytes end inside a value.
        case truncated
        /// More bytes after the one top-level value.
        case trailingBytes
        /// Over a `DecodeLimits` bound: size, nesting depth or element count.
        case tooLarge
        /// A map key that is not a string, or a key given twice.
        case badKey
        /// A string that is not UTF-8.
        case badUTF8
        /// A tensor whose dtype, shape or data do not agree.
        case badTensor
        /// A tensor whose data length does not match its shape.
        case shapeMismatch
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}
