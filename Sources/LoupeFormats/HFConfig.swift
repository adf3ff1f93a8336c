import Foundation

/// An HF config.json.
public struct HFConfig: Sendable {
    public let path: String
    public let values: [String: JSONValue]

    /// Reads and parses the file: `.io` if it cannot be read or is no regular file, `.badValue` if
    /// it is not a JSON object.
    public init(path: String) throws {
        try self.init(value: JSONValue.parse(contentsOf: path), path: path)
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

    /// nil if absent or null; a value of another kind (a string, 1.5) is `.badValue`, not a default.
    public func int(_ key: String) throws -> Int? { try optional(key, "an integer") { $0.intValue } }

    public func double(_ key: String) throws -> Double? { try optional(key, "a number") { $0.doubleValue } }

    public func bool(_ key: String) throws -> Bool? { try optional(key, "true or false") { $0.boolValue } }

    private func optional<T>(_ key: String, _ expected: String, _ convert: (JSONValue) -> T?) throws -> T? {
        guard let value = values[key], !value.isNull else { return nil }
        guard let converted = convert(value) else {
            throw FormatError(.badValue, file: path, item: key, "expected \(expected), found \(value)")
        }
        return converted
    }

    public func requireInt(_ key: String) throws -> Int { try require(key, int) }

    public func requireDouble(_ key: String) throws -> Double { try require(key, double) }

    /// A key that must be present and not null.
    private func require<T>(_ key: String, _ read: (String) throws -> T?) throws -> T {
        guard let value = try read(key) else {
            throw FormatError(.missingKey, file: path, item: key, "required key is missing")
        }
        return value
    }

    /// The RoPE parameters that apply, as transformers 5 picks them: a non-empty
    /// `rope_scaling` (transformers 4's key) replaces `rope_parameters` whole. Nil if neither.
    public var ropeParameters: (key: String, members: [String: JSONValue])? {
        if let scaling = values["rope_scaling"]?.objectValue, !scaling.isEmpty { return ("rope_scaling", scaling) }
        return values["rope_parameters"]?.objectValue.map { ("rope_parameters", $0) }
    }

    /// RoPE theta, as transformers 5 settles it: the applying parameters' own (`ropeParameters`;
    /// one entry per layer type takes full attention's, else the first layer type's in name
    /// order), else the top-level `rope_theta` transformers 4 writes; nil if neither.
    public var ropeTheta: Double? {
        get throws {
            if let parameters = ropeParameters?.members {
                if let theta = parameters["rope_theta"]?.doubleValue { return theta }
                if let theta = parameters["full_attention"]?["rope_theta"]?.doubleValue { return theta }
                if let theta = parameters.keys.sorted().lazy.compactMap({ parameters[$0]?["rope_theta"]?.doubleValue }).first { return theta }
            }
            return try double("rope_theta")
        }
    }

}
