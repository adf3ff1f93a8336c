import LoupeTensor

/// A source of named float32 tensors. Names are as stored in the checkpoint.
public protocol WeightSource: Sendable {
    /// The file or directory, for messages.
    var description: String { get }
    var tensorNames: [String] { get }
    /// The row-major shape, nil if absent.
    func shape(of name: String) -> [Int]?
    /// Float32, contiguous; throws FormatError(.missingTensor) if absent.
    func tensor(_ name: String) throws -> Tensor
    /// The quantized blocks of matrix `name`, when it is stored in a block format the fused
    /// product reads (its rows the rows of `tensor(name)`); nil otherwise.
    func blocks(_ name: String) -> QuantizedMatrix?
}

extension WeightSource {
    public func blocks(_ name: String) -> QuantizedMatrix? { nil }
}

extension WeightSource {
    /// Looks a tensor up and checks its shape: FormatError(.shapeMismatch) naming the tensor,
    /// expected and actual shape. The shape is checked before any data is converted.
    public func tensor(_ name: String, shape expected: [Int]) throws -> Tensor {
        guard let actual = shape(of: name) else { throw missingTensor(name) }
        guard actual == expected else {
            throw FormatError(.shapeMismatch, file: description, item: name,
                              "expected shape \(expected), found \(actual)")
        }
        return try tensor(name)
    }

    /// The error for a tensor this source does not have.
    func missingTensor(_ name: String) -> FormatError {
        FormatError(.missingTensor, file: description, item: name, "no tensor of this name (the file has \(tensorNames.count))")
    }
}

extension WeightSource {
    /// The bytes of every tensor the source declares, as float32 (after dequantizing), from
    /// its headers alone; nil when the sum overflows, which no real model does.
    public var declaredFloat32Bytes: Int? {
        var total = 0
        for name in tensorNames {
            guard let shape = shape(of: name), let elements = checkedProduct(shape) else { return nil }
            let (bytes, overflow) = elements.multipliedReportingOverflow(by: 4)
            guard !overflow else { return nil }
            let (sum, overflowed) = total.addingReportingOverflow(bytes)
            guard !overflowed else { return nil }
            total = sum
        }
        return total
    }
}
