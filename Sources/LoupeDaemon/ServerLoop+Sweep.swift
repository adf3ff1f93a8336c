import LoupeModels
import LoupeSweeps
import LoupeWire

/// `sweep`: checked here, queued on the model, run by `PatchingSweep` on its worker.
extension ServerLoop {
    func sweep(_ request: Request) throws(ProtocolError) {
        let instance = try warmModel(request)
        let spec = try SweepSpec(request, model: instance, configuration: configuration)
        let name = try request.string("model")
        try checkRoom(on: instance, name: name)
        let job = try makeJob(op: "sweep", model: name, for: request)
        let layers = instance.model.dimensions.layers
        job.control.setTotal(layers)
        let (inbox, jobID, interval, loaded) = (self.inbox, job.id, configuration.progressInterval, instance.loaded)
        enqueue(job, on: instance) { control in
            if control.isCancelled { throw ProtocolError(.cancelled, "the job was cancelled") }
            let check: CancellationCheck = { control.isCancelled }
            let result = try PatchingSweep(model: loaded.model).run(spec.request, progress: { done, _ in
                control.setDone(done)
                if control.shouldReport(every: interval) { inbox.post { loop in loop.reportProgress(jobID) } }
            }, cancelled: check)
            return try Self.sweepReply(result, spec: spec, layers: layers)
        }
    }

    /// The reply's fields (PROTOCOL.md, `sweep`).
    static func sweepReply(_ result: SweepResult, spec: SweepSpec, layers: Int) throws(ProtocolError) -> [String: MessageValue] {
        let request = spec.request
        if request.normalized && result.clean == result.corrupted {
            throw ProtocolError(.badRequest, "the metric is \(result.clean) on both the clean and the corrupted run, so the normalized value (patched - corrupted) / (clean - corrupted) is undefined; ask for normalized: false", field: "normalized")
        }
        return [
            "kind": .string(request.kind.rawValue),
            "metric": spec.metric,
            "normalized": .bool(request.normalized),
            "values": .array(result.values.map { row in .array(row.map { MessageValue($0) }) }),
            "rows": MessageValue((0..<layers).map(String.init)),
            "cols": MessageValue(spec.columns),
            "row_axis": "Layer",
            "col_axis": .string([SweepKind.residual: "Position", .heads: "Head", .headPositions: "Head @ position"][request.kind]!),
            "clean": MessageValue(result.clean),
            "corrupted": MessageValue(result.corrupted),
            "clean_tokens": MessageValue(request.clean),
            "corrupted_tokens": MessageValue(request.corrupted),
            "first_difference": MessageValue(result.firstDifference),
            "token_layers": MessageValue(result.tokenLayers),
            "plain_token_layers": MessageValue(result.plainTokenLayers),
            "seconds": MessageValue(result.seconds),
        ]
    }
}
