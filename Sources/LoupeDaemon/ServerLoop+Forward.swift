import LoupeWire

/// `forward`: checked here, queued on the model, run by `ForwardRunner` on its worker.
extension ServerLoop {
    func forward(_ request: Request) throws(ProtocolError) {
        let instance = try warmModel(request)
        let spec = try ForwardSpec(request, model: instance, configuration: configuration)
        let name = try request.string("model")
        try checkRoom(on: instance, name: name)
        let job = try makeJob(op: "forward", model: name, for: request)
        job.control.setTotal(instance.model.dimensions.layers)
        let (inbox, control, jobID, interval, loaded) = (self.inbox, job.control, job.id, configuration.progressInterval, instance.loaded)
        let runner = ForwardRunner(spec: spec, loaded: loaded) {
            _ = control.advance()
            if control.shouldReport(every: interval) { inbox.post { loop in loop.reportProgress(jobID) } }
            return control.isCancelled
        }
        enqueue(job, on: instance) { control in
            // Cancelled while queued for the worker: do not start.
            if control.isCancelled { throw ProtocolError(.cancelled, "the job was cancelled") }
            return try runner.run()
        }
    }
}
