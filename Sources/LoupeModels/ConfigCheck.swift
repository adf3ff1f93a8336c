import LoupeFormats

/// The values a config may declare, checked before anything is allocated: a hostile or broken
/// config must not drive allocations or loops of its own choosing, nor load a model whose
/// every result is NaN. No released model comes near these bounds.
public enum ConfigCheck {
    public static let layers = 1...1024
    /// hidden and MLP widths.
    public static let width = 1...(1 << 17)
    public static let heads = 1...1024
    public static let headDim = 1...4096
    public static let vocabulary = 1...(1 << 23)
    /// Positions: a RoPE table holds 2 x context x head_dim floats.
    public static let context = 1...(1 << 20)

    /// `value` of `key` when it lies in `range`; else `ModelError.badConfig` naming the key and value.
    @discardableResult
    public static func size(_ value: Int, _ range: ClosedRange<Int>, key: String, file: String) throws -> Int {
        guard range.contains(value) else {
            throw ModelError.badConfig(file: file, key: key, "\(value) is outside \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    /// `value` of `key` when finite and above zero (an epsilon, a RoPE base): anything else
    /// makes every result NaN or meaningless.
    @discardableResult
    public static func positive(_ value: Double, key: String, file: String) throws -> Double {
        guard value.isFinite, value > 0 else {
            throw ModelError.badConfig(file: file, key: key, "\(value) must be a finite number above 0")
        }
        return value
    }

    /// The MLP activation a config names under `key` (`hidden_act`, `hidden_activation`),
    /// when it is one the architecture computes; absent means the architecture's default.
    public static func activation(_ config: HFConfig, key: String, allowed: [String]) throws {
        if let value = config.values[key], value.stringValue.map(allowed.contains) != true {
            throw ModelError.badConfig(file: config.path, key: key,
                                       "\(value.stringValue ?? "\(value)"): only \(allowed.joined(separator: " and ")) is supported")
        }
    }

    /// Mixture-of-experts MLPs: keys that ask for experts in place of the one MLP a dense
    /// layer computes are refused, whichever model type names them.
    public static func denseMLP(_ config: HFConfig) throws {
        for key in ["num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size"] {
            if let count = config.values[key], count != .null, count.intValue != 0 {
                throw ModelError.badConfig(file: config.path, key: key, "\(count): mixture-of-experts layers are not supported")
            }
        }
    }
}
