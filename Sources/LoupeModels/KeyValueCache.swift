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

/// The keys and values of sequences that a generation extends one token at a time: room for
/// every slot they will reach is taken once, so a step writes only its new slots, and
/// attention reads each row's keys in place (`AttentionGeometry.keyStride`).
public final class DecodeCache: @unchecked Sendable {
    public let rows: Int
    /// Slots per row: the padded prompt plus every token the generation may add.
    public let capacity: Int
    /// Slots filled in every row.
    public private(set) var filled = 0
    /// Per layer: [rows · capacity, keyValueHeads · headDim], made at the layer's first pass.
    private var keys: [Tensor?]
    private var values: [Tensor?]

    public init(layers: Int, rows: Int, capacity: Int) {
        self.rows = rows
        self.capacity = capacity
        keys = Array(repeating: nil, count: layers)
        values = Array(repeating: nil, count: layers)
    }

    /// Bytes the keys and values take.
    public var bytes: Int { (keys + values).reduce(0) { $0 + 4 * ($1?.count ?? 0) } }

    /// Writes layer `layer`'s keys and values of `count` new slots per row ([rows · count,
    /// width], row after row) after the filled ones, and returns the whole matrices.
    func append(layer: Int, keys k: Tensor, values v: Tensor, count: Int) -> (keys: Tensor, values: Tensor) {
        precondition(filled + count <= capacity && k.rowCount == rows * count, "the cache holds \(capacity) slots per row")
        func write(_ store: inout [Tensor?], _ new: Tensor) -> Tensor {
            let matrix = store[layer] ?? Tensor(zeros: [rows * capacity, new.columnCount])
            store[layer] = matrix
            for row in 0..<rows {
                let at = row * capacity + filled
                matrix.slice(axis: 0, at..<(at + count)).assign(from: new.slice(axis: 0, (row * count)..<((row + 1) * count)))
            }
            return matrix
        }
        return (write(&keys, k), write(&values, v))
    }

    /// Counts the slots a finished pass appended.
    func commit(_ count: Int) { filled += count }
}
