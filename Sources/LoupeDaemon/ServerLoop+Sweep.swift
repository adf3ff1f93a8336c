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
        let (inbox, jobID, interval, loaded, interventions) = (self.inbox, job.id, configuration.progressInterval, instance.loaded, self.interventions)
        enqueue(job, on: instance) { control in
            if control.isCancelled { throw ProtocolError(.cancelled, "the job was cancelled") }
            let check: CancellationCheck = { control.isCancelled }
            let result = try PatchingSweep(model: loaded.model, interventions: interventions).run(spec.request, progress: { done, _ in
                control.setDone(done)
                if control.shouldReport(every: interval) { inbox.post { loop in loop.reportProgress(jobID) } }
            }, cancelled: check)
            return try Self.sweepReply(result, spec: spec, layers: spec.request.sweptLayers(loaded.model.dimensions))
        }
    }

    /// The reply's fields (PROTOCOL.md, `sweep`).
    static func sweepReply(_ result: SweepResult, spec: SweepSpec, layers: [Int]) throws(ProtocolError) -> [String: MessageValue] {
        let request = spec.request
        if request.normalized {
            // (edited - corrupted) / (clean - corrupted), with 0 for the corrupted value when there is no corrupted prompt.
            let undefined = [(result.clean, result.corrupted, "the mean over the pairs")]
                + result.pairs.enumerated().map { ($1.clean, $1.corrupted, "pair \($0)") }
            if let (clean, corrupted, which) = undefined.first(where: { $0.0 == ($0.1 ?? 0) }) {
                let formula = corrupted == nil ? "edited / clean" : "(edited - corrupted) / (clean - corrupted)"
                throw ProtocolError(.badRequest, "the metric of \(which) is \(clean) on the clean run and \(corrupted ?? 0) as its baseline, so the normalized value \(formula) is undefined; ask for normalized: false", field: "normalized")
            }
        }
        func matrix(_ values: [[Float]]) -> MessageValue { .array(values.map { row in .array(row.map { MessageValue($0) }) }) }
        var reply: [String: MessageValue] = [
            "kind": .string(request.kind.rawValue),
            "metric": spec.metric,
            "normalized": .bool(request.normalized),
            "values": matrix(result.values),
            "rows": MessageValue(layers.map(String.init)),
            "cols": MessageValue(spec.columns),
            "row_axis": "Layer",
            "col_axis": .string([SweepKind.residual: "Position", .mlp: "Position", .heads: "Head", .headPositions: "Head @ position"][request.kind]!),
            "clean": MessageValue(result.clean),
            "corrupted": result.corrupted.map { MessageValue($0) } ?? .null,
            "clean_tokens": MessageValue(request.clean),
            "corrupted_tokens": request.corrupted.map { MessageValue($0) } ?? .null,
            "first_difference": MessageValue(result.firstDifference),
            "token_layers": MessageValue(result.tokenLayers),
            "plain_token_layers": MessageValue(result.plainTokenLayers),
            "seconds": MessageValue(result.seconds),
        ]
        switch request.intervention {
        case .patch: reply["intervention"] = "patch"
        case .ablate(let method):
            reply["intervention"] = "ablate"
            reply["params"] = ["mode": .string(method.rawValue)]
            if method == .mean { reply["reference_tokens"] = .array(request.reference.map { MessageValue($0) }) }
        }
        if spec.listsPairs {
            reply["pairs"] = .array(zip(request.pairs, result.pairs).enumerated().map { index, entry in
                let (pair, sweep) = entry
                return [
                    "values": matrix(sweep.values),
                    "clean": MessageValue(sweep.clean),
                    "corrupted": sweep.corrupted.map { MessageValue($0) } ?? .null,
                    "clean_tokens": MessageValue(pair.clean),
                    "corrupted_tokens": pair.corrupted.map { MessageValue($0) } ?? .null,
                    "first_difference": MessageValue(sweep.firstDifference),
                    "metric": spec.pairMetrics[index],
                ]
            })
        }
        return reply
    }
}
