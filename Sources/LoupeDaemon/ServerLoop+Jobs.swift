import Foundation
import LoupeModels
import LoupeWire

/// Jobs: creating them, queueing them per model, running them on the model's worker,
/// finishing them, and the `jobs.*` ops.
extension ServerLoop {
    /// A new job; the requester subscribes as its `mode` says and hears `accepted` unless waiting.
    func makeJob(op: String, model: String, for request: Request) throws(ProtocolError) -> Job {
        let mode = try request.mode()
        let owner = request.requester.identity
        let open = jobs.values.lazy.filter { !$0.state.isFinished && $0.owner == owner }.count
        guard open < configuration.maxClientJobs else {
            throw ProtocolError(.busy, "this client already has \(open) jobs queued or running, the most one client may (loupe serve --max-client-jobs); wait for one to finish")
        }
        let job = Job(id: nextJob, op: op, model: model)
        job.owner = owner
        nextJob += 1
        jobs[job.id] = job
        if mode != .detach { job.subscribers.append(Subscriber(requester: request.requester, streams: mode == .stream)) }
        // `instance` tells a client which daemon took the job, so it can tell a restart later.
        if mode != .wait { reply(to: request.requester, status: .accepted, ["job": MessageValue(job.id), "instance": .string(instance)]) }
        logger.info("job", metadata: ["seq": "\(request.requester.sequence)", "job": "\(job.id)", "op": "\(op)", "model": "\(model)"])
        return job
    }

    /// Refuses a new job when the model's queue is full; called before the job exists.
    func checkRoom(on instance: WarmModel, name: String) throws(ProtocolError) {
        guard instance.pending.count < configuration.maxQueue else {
            throw ProtocolError(.busy, "model '\(name)' already has \(instance.pending.count) jobs waiting; try again later")
        }
    }

    /// Queues `job` on the model (after `checkRoom`); it runs when the jobs before it have.
    func enqueue(_ job: Job, on instance: WarmModel,
                 work: @escaping @Sendable (JobControl) throws -> [String: MessageValue]) {
        job.work = work
        instance.pending.append(job)
        if instance.running != nil, let position = instance.position(of: job) {
            notify(job, .queued, ["position": MessageValue(position)])
        }
        pump(instance)
    }

    /// Starts the model's next job if none is running.
    func pump(_ instance: WarmModel) {
        guard instance.running == nil, !instance.pending.isEmpty else { return }
        let job = instance.pending.removeFirst()
        guard let work = job.work else { return }
        job.work = nil
        instance.running = job
        start(job)
        let (inbox, jobID, control, instanceID) = (self.inbox, job.id, job.control, instance.id)
        instance.worker.async {
            let result = Result { try work(control) }
            inbox.post { loop in loop.jobEnded(jobID, instanceID: instanceID, result) }
        }
    }

    func start(_ job: Job) {
        job.state = .running
        job.started = Date()
        notify(job, .running, [:])
    }

    private func jobEnded(_ jobID: Int, instanceID: Int, _ result: Result<[String: MessageValue], any Error>) {
        guard let instance = instances[instanceID] else { return }
        instance.running = nil
        instance.lastUsed = Date()
        if let job = jobs[jobID] {
            finish(job, result.mapError { error in
                let failure = ProtocolError.running(error)
                if stopping, !job.timedOut, failure.code == .cancelled {
                    return ProtocolError(.cancelled, "cancelled: the server is shutting down")
                }
                guard job.timedOut, failure.code == .cancelled else { return failure }
                return ProtocolError(.tooLarge, "the job ran longer than the \(configuration.maxJobSeconds) s one job may run (loupe serve --max-job-seconds) and was stopped after \(job.control.done) of \(job.control.total) layers; ask for less work per job")
            })
        }
        pump(instance)
        releaseIfUnused(instance)
        stopIfIdle()
    }

    /// Sends `progress` to streaming subscribers; called (throttled) from the worker.
    func reportProgress(_ jobID: Int) {
        guard let job = jobs[jobID], job.state == .running else { return }
        notify(job, .progress, ["done": MessageValue(job.control.done), "total": MessageValue(job.control.total)])
    }

    /// An interim reply to the job's streaming subscribers.
    func notify(_ job: Job, _ status: ReplyStatus, _ fields: [String: MessageValue]) {
        var fields = fields
        fields["job"] = MessageValue(job.id)
        for subscriber in job.subscribers where subscriber.streams {
            reply(to: subscriber.requester, status: status, fields)
        }
    }

    /// Records the outcome, replies to every subscriber, and keeps the outcome for `jobs.result`.
    func finish(_ job: Job, _ result: Result<[String: MessageValue], ProtocolError>) {
        guard !job.state.isFinished else { return }
        job.finished = Date()
        if job.started == nil { job.started = job.finished }
        var outcome: [String: MessageValue]
        switch result {
        case .success(let fields):
            job.state = .done
            outcome = fields
            outcome["status"] = .string(ReplyStatus.ok.rawValue)
            outcome["timing"] = job.timing
        case .failure(let error):
            job.state = error.code == .cancelled ? .cancelled : .failed
            outcome = ["status": .string(ReplyStatus.error.rawValue), "error": error.messageValue]
            if error.code == .cancelled {
                // Where it stopped, and where it was when asked to: at most one layer apart.
                var progress = job.progress.mapValue ?? [:]
                if let atCancel = job.progressAtCancel { progress["at_cancel"] = MessageValue(atCancel.done) }
                outcome["progress"] = .map(progress)
            }
            logger.info("job failed", metadata: ["job": "\(job.id)", "code": "\(error.code.rawValue)", "error": "\(error.message)"])
        }
        outcome["job"] = MessageValue(job.id)
        job.outcome = outcome
        job.outcomeBytes = MessageEncoder.encode(.map(outcome)).count
        retainedBytes += job.outcomeBytes
        for subscriber in job.subscribers { send(outcome, to: subscriber.requester) }
        job.subscribers.removeAll()
        finishedJobs.append(job.id)
        expireResults(now: Date())
        // What the job's passes allocated stays with the allocator only while the job runs.
        LoadedModel.releaseFreedMemory()
    }

    /// A stored outcome (which carries its own status) to one requester.
    private func send(_ outcome: [String: MessageValue], to requester: Requester) {
        let status = outcome["status"]?.stringValue.flatMap(ReplyStatus.init(rawValue:)) ?? .ok
        reply(to: requester, status: status, outcome)
    }

    /// Drops outcomes past their time, then the oldest beyond the count and byte limits.
    func expireResults(now: Date) {
        while let first = finishedJobs.first {
            let job = jobs[first]
            let expired = job.map { now.timeIntervalSince($0.finished ?? now) > configuration.resultTTL } ?? true
            guard expired || finishedJobs.count > configuration.maxRetainedResults
                    || retainedBytes > configuration.maxRetainedBytes else { return }
            finishedJobs.removeFirst()
            jobs[first] = nil
            retainedBytes -= job?.outcomeBytes ?? 0
        }
    }

    /// Stops running jobs past `maxJobSeconds`: they end with `too_large` within a layer, a
    /// load at once.
    func stopOverdueJobs(now: Date) {
        guard configuration.maxJobSeconds > 0 else { return }
        for job in jobs.values where job.state == .running && !job.timedOut {
            guard let started = job.started, now.timeIntervalSince(started) > configuration.maxJobSeconds else { continue }
            job.timedOut = true
            if job.op == "models.load" {
                stopLoad(job, ProtocolError(.tooLarge, "the load ran longer than the \(configuration.maxJobSeconds) s one job may run (loupe serve --max-job-seconds) and was stopped"))
            } else {
                cancelRunning(job)
            }
        }
    }

    func cancelRunning(_ job: Job) {
        job.progressAtCancel = (job.control.done, job.control.total)
        job.control.cancel()
    }

    // MARK: jobs.* ops

    private func job(for request: Request) throws(ProtocolError) -> Job {
        let id = try request.int("job")
        guard let job = jobs[id] else {
            throw ProtocolError(.notFound, "no job \(id): it never existed or its result has expired (results are kept \(Int(configuration.resultTTL)) s)", field: "job")
        }
        return job
    }

    func jobStatus(_ request: Request) throws(ProtocolError) -> [String: MessageValue] {
        let job = try job(for: request)
        var fields: [String: MessageValue] = [
            "job": MessageValue(job.id), "op": .string(job.op), "model": .string(job.model), "state": .string(job.state.rawValue),
            "progress": job.progress, "age_seconds": MessageValue(Date().timeIntervalSince(job.created)),
        ]
        if job.state == .queued, let position = models[job.model]?.position(of: job) { fields["position"] = MessageValue(position) }
        return fields
    }

    func cancelJob(_ request: Request) throws(ProtocolError) -> [String: MessageValue] {
        let job = try job(for: request)
        let progress = job.progress
        switch job.state {
        case .queued:
            for instance in instances.values { instance.pending.removeAll { $0 === job } }
            finish(job, .failure(ProtocolError(.cancelled, "cancelled before it started")))
        case .running where job.op == "models.load":
            stopLoad(job, ProtocolError(.cancelled, "the load was cancelled"))
        case .running:
            cancelRunning(job)
        default:
            break
        }
        return ["job": MessageValue(job.id), "state": .string(job.control.isCancelled && job.state == .running ? "cancelling" : job.state.rawValue),
                "progress": progress]
    }

    /// The outcome now, or when the job ends; `mode: stream` hears the job's state at once.
    func jobResult(_ request: Request) throws(ProtocolError) {
        let job = try job(for: request)
        if let outcome = job.outcome { return send(outcome, to: request.requester) }
        let streams = try request.mode() == .stream
        job.subscribers.append(Subscriber(requester: request.requester, streams: streams))
        if streams { reply(to: request.requester, status: ReplyStatus(rawValue: job.state.rawValue) ?? .running, ["job": MessageValue(job.id)]) }
    }

    /// `debug.fail`: a job whose work throws what no handler expects.
    func debugFail(_ request: Request) throws(ProtocolError) {
        struct Unexpected: Error, CustomStringConvertible { var description: String { "debug.fail was asked to fail" } }
        let job = try makeJob(op: request.op, model: "", for: request)
        start(job)
        let (inbox, jobID) = (self.inbox, job.id)
        DispatchQueue.global().async {
            inbox.post { loop in
                guard let job = loop.jobs[jobID] else { return }
                loop.finish(job, .failure(ProtocolError.running(Unexpected())))
            }
        }
    }
}
