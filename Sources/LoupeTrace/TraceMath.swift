import LoupeTensor

/// The element-wise helpers interventions need, for plugins outside this module.
public enum TraceMath {
    /// a + scale·b, with numpy broadcasting, as a new tensor.
    public static func add(_ a: Tensor, _ b: Tensor, scale: Float = 1) -> Tensor {
        TensorMath.binary(a, scale == 1 ? b : TensorMath.binary(b, TensorMath.scalar(scale), .mul), .add)
    }

    /// The element-wise mean of tensors of one shape.
    public static func mean(_ tensors: [Tensor]) -> Tensor {
        precondition(!tensors.isEmpty, "mean of no tensors")
        var total = tensors[0].copy()
        for t in tensors.dropFirst() { total = TensorMath.binary(total, t, .add) }
        return TensorMath.binary(total, TensorMath.scalar(Float(tensors.count)), .div)
    }

    /// True when `from` broadcasts to `to` without growing it.
    public static func broadcasts(_ from: [Int], to: [Int]) -> Bool { TensorMath.broadcasts(from, to: to) }
}
