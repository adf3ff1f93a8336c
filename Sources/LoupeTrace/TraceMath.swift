import LoupeTensor

/// The element-wise helpers interventions need, for plugins outside this module.
public enum TraceMath {
    /// a + scale·b, with numpy broadcasting, as a new tensor.
    public static func add(_ a: Tensor, _ b: Tensor, scale: Float = 1) -> Tensor {
        TensorMath.binary(a, b) { $0 + scale * $1 }
    }

    /// The element-wise mean of tensors of one shape.
    public static func mean(_ tensors: [Tensor]) -> Tensor {
        precondition(!tensors.isEmpty, "mean of no tensors")
        var total = tensors[0].copy()
        for t in tensors.dropFirst() { total = TensorMath.binary(total, t, +) }
        let n = Float(tensors.count)
        return TensorMath.unary(total) { $0 / n }
    }

    /// True when `from` broadcasts to `to` without growing it.
    public static func broadcasts(_ from: [Int], to: [Int]) -> Bool { TensorMath.broadcasts(from, to: to) }
}
