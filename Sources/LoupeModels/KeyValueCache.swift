import LoupeTensor

/// Every layer's attention keys and values of a pass, kept so that later passes can
/// continue the same sequences without recomputing their earlier positions.
public final class KeyValueCache: @unchecked Sendable {
    /// Per layer: [rows · positions, keyValueHeads · headDim].
    public private(set) var keys: [Tensor?]
    public private(set) var values: [Tensor?]
    public private(set) var rows = 0
    /// Positions per row held.
    public private(set) var positions = 0

    public init(layers: Int) {
        keys = Array(repeating: nil, count: layers)
        values = Array(repeating: nil, count: layers)
    }

    func store(layer: Int, keys k: Tensor, values v: Tensor, rows: Int) {
        self.rows = rows
        positions = k.rowCount / rows
        keys[layer] = k.copy()
        values[layer] = v.copy()
    }
}
