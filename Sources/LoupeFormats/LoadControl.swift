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
