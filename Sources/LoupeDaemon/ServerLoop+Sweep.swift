import LoupeModels
import LoupeSweeps
import LoupeWire

/// `sweep`: checked here, queued on the model, run by `PatchingSweep` (method activation) or
/// `AttributionSweep` (method attribution) on its worker.
extension ServerLoop {
    func sweep(_ request: Request) throws(ProtocolError) {
        let instance = try warmModel(request)
        let spec = try SweepSpec(request, model: instance, configuration: configuration)
        let name = try request.string("model")
        try checkRoom(on: instance, name: name)
        let job = try makeJob(op: "sweep", model: name, for: request)
        // Progress counts layers: the exact sweep's, or attribution's two passes and each compared exact sweep's.
        let layers = instance.model.dimensions.layers
        job.control.setTotal(spec.method == .activation ? layers : layers * (2 + (spec.compare ? spec.kinds.count : 0)))
        let (inbox, jobID, interval, loaded, interventions) = (self.inbox, job.id, configuration.progressInterval, instance.loaded, self.interventions)
        enqueue(job, on: instance) { control in
            if control.isCancelled { throw ProtocolError(.cancelled, "the job was cancelled") }
            let check: CancellationCheck = { control.isCancelled }
            let report = { (done: Int) in
                control.setDone(done)
                if control.shouldReport(every: interval) { inbox.post { loop in loop.reportProgress(jobID) } }
            }
            let exact = PatchingSweep(model: loaded.model, interventions: interventions)
            let swept = spec.request.sweptLayers(loaded.model.dimensions)
            guard spec.method == .attribution else {
                let result = try exact.run(spec.request, progress: { done, _ in report(done) }, cancelled: check)
                return try Self.sweepReply(result, kind: spec.request.kind, spec: spec, layers: swept)
            }
            let attribution = try AttributionSweep(model: loaded.model).run(spec.request, kinds: spec.kinds, progress: { done, _ in report(done) },
                                                                             cancelled: check)
            var replies = [MessageValue]()
            for (index, (kind, result)) in zip(spec.kinds, attribution.results).enumerated() {
                var reply = try Self.sweepReply(result, kind: kind, spec: spec, layers: swept)
                reply["backward"] = Self.backwardReply(attribution)
                if spec.compare {
                    let compared = try exact.run(spec.request.with(kind: kind), progress: { done, total in
                        report(layers * (2 + index) + done * layers / max(total, 1))
                    }, cancelled: check)
                    reply.merge(Self.comparisonReply(result, compared)) { $1 }
                }
                replies.append(.map(reply))
            }
            guard spec.listsKinds else { return replies[0].mapValue! }
            return ["method": "attribution", "approximation": true, "kinds": MessageValue(spec.kinds.map(\.rawValue)),
                    "results": .map(Dictionary(uniqueKeysWithValues: zip(spec.kinds.map(\.rawValue), replies))),
                    "backward": Self.backwardReply(attribution), "seconds": MessageValue(attribution.seconds)]
        }
    }

    /// The backward's memory: the bytes its records copied, the most it held at once, and the
    /// bound the limit checked.
    static func backwardReply(_ result: AttributionResult) -> MessageValue {
        ["saved_bytes": MessageValue(result.savedBytes), "peak_bytes": MessageValue(result.peakBytes),
         "bound_bytes": MessageValue(result.boundBytes)]
    }

    /// An attribution result's comparison with the exact sweep of its kind.
    static func comparisonReply(_ attribution: SweepResult, _ exact: SweepResult) -> [String: MessageValue] {
        let comparison = SweepComparison(attribution: attribution.values, exact: exact.values)
        let worst = comparison.worst
        return [
            "exact": ["values": matrix(exact.values), "seconds": MessageValue(exact.seconds), "token_layers": MessageValue(exact.tokenLayers)],
            "comparison": ["correlation": comparison.correlation.map { MessageValue($0) } ?? .null,
                           "worst": ["row": MessageValue(worst.row), "col": MessageValue(worst.column), "attribution": MessageValue(worst.attribution),
                                     "exact": MessageValue(worst.exact), "difference": MessageValue(worst.difference)]],
        ]
    }

    static func matrix(_ values: [[Float]]) -> MessageValue { .array(values.map { row in .array(row.map { MessageValue($0) }) }) }

    /// One kind's reply fields (PROTOCOL.md, `sweep`): the same for both methods but `method`
    /// and `approximation`.
    static func sweepReply(_ result: SweepResult, kind: SweepKind, spec: SweepSpec, layers: [Int]) throws(ProtocolError) -> [String: MessageValue] {
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
        var reply: [String: MessageValue] = [
            "kind": .string(kind.rawValue),
            "method": .string(spec.method.rawValue),
            "approximation": .bool(spec.method == .attribution),
            "metric": spec.metric,
            "normalized": .bool(request.normalized),
            "values": matrix(result.values),
            "rows": MessageValue(layers.map(String.init)),
            "cols": MessageValue(spec.columns[kind]!),
            "row_axis": "Layer",
            "col_axis": .string([SweepKind.residual: "Position", .mlp: "Position", .heads: "Head", .headPositions: "Head @ position",
                                 .neurons: "Neuron"][kind]!),
            "clean": MessageValue(result.clean),
            "corrupted": result.corrupted.map { MessageValue($0) } ?? .null,
            "clean_tokens": MessageValue(request.clean),
            "corrupted_tokens": request.corrupted.map { MessageValue($0) } ?? .null,
            "first_difference": MessageValue(result.firstDifference),
            "token_layers": MessageValue(result.tokenLayers),
            "plain_token_layers": MessageValue(result.plainTokenLayers),
            "seconds": MessageValue(result.seconds),
        ]
        if kind == .neurons { reply["neuron_positions"] = .string(request.neuronPositions.rawValue) }
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
