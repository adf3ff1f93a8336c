import CBLAS
import Dispatch
import Foundation

/// How Loupe spreads work over the cores.
public enum Parallel {
    /// Cores available to compute.
    public static let cores = max(ProcessInfo.processInfo.activeProcessorCount, 1)

    /// Sets OpenBLAS's thread count once; Loupe's own loops use `forEachChunk`.
    public static func configureBLAS(threads: Int = cores) {
        openblas_set_num_threads(Int32(max(threads, 1)))
    }

    /// Runs `body` over `0..<count` split into one contiguous chunk per core, or inline
    /// when the work is too small to be worth a thread hand-off (`count * costPerItem`
    /// under about 32k element-operations).
    @inline(__always)
    public static func forEachChunk(_ count: Int, costPerItem: Int = 1, _ body: (Range<Int>) -> Void) {
        let chunks = min(cores, count)
        if chunks <= 1 || count * costPerItem < 32_768 {
            body(0..<count)
            return
        }
        let size = (count + chunks - 1) / chunks
        // Chunks touch disjoint ranges and the call returns only when all are done, so the
        // non-Sendable body is safe to share for the duration of the call.
        withoutActuallyEscaping(body) { body in
            let shared = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: chunks) { chunk in
                let start = chunk * size
                let end = min(start + size, count)
                if start < end { shared.value(start..<end) }
            }
        }
    }
}

/// Hands a value to concurrent code that Swift cannot prove safe; each use says why it is.
public struct UncheckedSendable<Value>: @unchecked Sendable {
    public let value: Value
    public init(_ value: Value) { self.value = value }
}
