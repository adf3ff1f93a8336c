import Foundation
import LoupeWire

/// A request that runs on a worker: a model load or a forward pass. Lives on the socket
/// thread; the worker sees only its `JobControl`.
final class Job {
    enum State: String {
        case queued, running, done, failed, cancelled

        var isFinished: Bool { self == .done || self == .failed || self == .cancelled }
    }

    let id: Int
    let op: String
    /// The model name the job is for (for a load: the name being loaded).
    let model: String
    let control = JobControl()
    let created = Date()
    var started: Date?
    var finished: Date?
    var state = State.queued
    /// Who gets the replies: the requester (unless detached) and `jobs.result` callers.
    var subscribers: [Subscriber] = []
    /// The final reply's fields (status included, id excluded) once finished.
    var outcome: [String: MessageValue]?
    /// Bytes of the outcome, for the retention bound.
    var outcomeBytes = 0
    /// What runs on the worker; nil once started.
    var work: (@Sendable (JobControl) throws -> [String: MessageValue])?
    /// Progress at the moment `jobs.cancel` arrived, reported with the `cancelled` error.
    var progressAtCancel: (done: Int, total: Int)?
    /// The connection that asked for it (its ROUTER identity), for the jobs-per-client limit.
    var owner: [UInt8] = []
    /// Stopped by the run-time limit (`maxJobSeconds`): it ends with `too_large`, not `cancelled`.
    var timedOut = false

    init(id: Int, op: String, model: String) {
        self.id = id
        self.op = op
        self.model = model
    }

    var progress: MessageValue { ["done": MessageValue(control.done), "total": MessageValue(control.total)] }

    /// `{queued_ms, run_ms}` for the ok reply.
    var timing: MessageValue {
        let now = Date()
        let start = started ?? now
        return ["queued_ms": MessageValue(start.timeIntervalSince(created) * 1000),
                "run_ms": MessageValue((finished ?? now).timeIntervalSince(start) * 1000)]
    }
}

/// One party waiting for a job's replies.
struct Subscriber {
    let requester: Requester
    /// Interim replies (`queued`, `running`, `progress`) too, not only the final one.
    let streams: Bool
}
