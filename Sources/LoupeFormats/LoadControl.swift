import Synchronization

/// What a load and whoever may stop it share: the readers check it before each tensor they
/// convert, so a cancelled load stops within one tensor and frees what it had read.
public final class LoadControl: Sendable {
    private let cancelFlag = Atomic<Bool>(false)

    public init() {}

    public var isCancelled: Bool { cancelFlag.load(ordering: .acquiring) }
    public func cancel() { cancelFlag.store(true, ordering: .releasing) }

    /// Throws `LoadCancelled` once the load has been cancelled.
    public func check() throws {
        if isCancelled { throw LoadCancelled() }
    }
}

/// Thrown by a reader whose load was cancelled.
public struct LoadCancelled: Error, Sendable, CustomStringConvertible {
    public var description: String { "the load was cancelled" }
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
