/// Bounds a decoder enforces before it allocates anything.
public struct DecodeLimits: Sendable, Equatable {
    /// The whole message.
    public var maxBytes: Int
    /// Containers inside containers.
    public var maxDepth: Int
    /// Values in the message, containers and their elements together. msgpack-c allocates
    /// a slot per declared element up front, so this bounds its memory.
    public var maxValues: Int
    public var maxStringBytes: Int
    public var maxBinaryBytes: Int

    public init(maxBytes: Int = 256 << 20, maxDepth: Int = 64, maxValues: Int = 4 << 20,
                maxStringBytes: Int = 16 << 20, maxBinaryBytes: Int = 256 << 20) {
        self.maxBytes = maxBytes
        self.maxDepth = maxDepth
        self.maxValues = maxValues
        self.maxStringBytes = maxStringBytes
        self.maxBinaryBytes = maxBinaryBytes
    }

    public static let standard = DecodeLimits()
}
