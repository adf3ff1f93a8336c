import Foundation

/// An HF config.json.
public struct HFConfig: Sendable {
    public let path: String
    public let values: [String: JSONValue]

    /// Reads and parses the file: `.io` if it cannot be read, `.badValue` if it is not a JSON object.
    public init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FormatError(.io, file: path, "cannot read the config file")
        }
        try self.init(value: data.withUnsafeBytes { try JSONValue.parse($0, file: path) }, path: path)
    }

    public init(json: String, path: String) throws {
        try self.init(value: JSONValue.parse(json, file: path), path: path)
    }

    private init(value: JSONValue, path: String) throws {
        guard let object = value.objectValue else {
            throw FormatError(.badValue, file: path, "a config must be a JSON object")
        }
        self.path = path
        self.values = object
    }

    public func string(_ key: String) -> String? { values[key]?.stringValue }

    /// nil if absent or null (or not an integral number).
    public func int(_ key: String) -> Int? { values[key]?.intValue }

    public func double(_ key: String) -> Double? { values[key]?.doubleValue }

    public func bool(_ key: String) -> Bool? { values[key]?.boolValue }

    public func requireInt(_ key: String) throws -> Int {
        let value = try require(key)
        guard let int = value.intValue else {
            throw FormatError(.badValue, file: path, item: key, "expected an integer, found \(value)")
        }
        return int
    }

    public func requireDouble(_ key: String) throws -> Double {
        let value = try require(key)
        guard let double = value.doubleValue else {
            throw FormatError(.badValue, file: path, item: key, "expected a number, found \(value)")
        }
        return double
    }

    /// The value at `key`, treating null as absent (HF writes null for unset optional fields).
    private func require(_ key: String) throws -> JSONValue {
        guard let value = values[key], !value.isNull else {
            throw FormatError(.missingKey, file: path, item: key, "required key is missing")
        }
        return value
    }

    /// RoPE theta as transformers 4 writes it (`rope_theta`) or transformers 5
    /// (`rope_parameters: {rope_theta: ...}`, possibly one entry per layer type, in which case
    /// full attention's is taken, else the first layer type's in name order); nil if neither.
    public var ropeTheta: Double? {
        if let theta = double("rope_theta") { return theta }
        guard let parameters = values["rope_parameters"]?.objectValue else { return nil }
        if let theta = parameters["rope_theta"]?.doubleValue { return theta }
        if let theta = parameters["full_attention"]?["rope_theta"]?.doubleValue { return theta }
        return parameters.keys.sorted().lazy.compactMap { parameters[$0]?["rope_theta"]?.doubleValue }.first
    }

    /// `tie_word_embeddings`, defaulting as HF does (true) when absent.
    public var tieWordEmbeddings: Bool { bool("tie_word_embeddings") ?? true }
}
