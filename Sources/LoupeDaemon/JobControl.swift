import Foundation
import Synchronization

/// What a running job and the socket thread share: the cancel flag and the progress
/// counter, both atomics, so neither side waits for the other.
final class JobControl: Sendable {
    private let cancelFlag = Atomic<Bool>(false)
    private let doneCount = Atomic<Int>(0)
    private let totalCount = Atomic<Int>(0)

    var isCancelled: Bool { cancelFlag.load(ordering: .acquiring) }
    func cancel() { cancelFlag.store(true, ordering: .releasing) }

    var done: Int { doneCount.load(ordering: .relaxed) }
    var total: Int { totalCount.load(ordering: .relaxed) }
    func setTotal(_ total: Int) { totalCount.store(total, ordering: .relaxed) }
    /// One more unit (a layer) computed; returns the new count.
    func advance() -> Int { doneCount.wrappingAdd(1, ordering: .relaxed).newValue }
    /// Sets the count of units computed (for work that reports its own count).
    func setDone(_ done: Int) { doneCount.store(done, ordering: .relaxed) }

    private let lastReport = Atomic<UInt64>(0)

    /// True at most once per `interval` seconds: when to tell streaming clients of progress.
    func shouldReport(every interval: Double) -> Bool {
        let now = DispatchTime.now().uptimeNanoseconds
        let last = lastReport.load(ordering: .relaxed)
        guard now - last >= UInt64(interval * 1e9) else { return false }
        return lastReport.compareExchange(expected: last, desired: now, ordering: .relaxed).exchanged
    }
}
