import LoupeModels
import LoupeTensor
import LoupeTrace
import LoupeWire

/// `trace`: decoded and validated by `TraceSpec` (errors name the node), run as a job on
/// the model's worker by LoupeTrace's executor.
extension ServerLoop {
    func trace(_ request: Request) throws(ProtocolError) {
        let instance = try warmModel(request)
        let name = try request.string("model")
        let spec = try TraceSpec(request, model: instance, configuration: configuration, interventions: interventions)
        try checkRoom(on: instance, name: name)
        let job = try makeJob(op: "trace", model: name, for: request)
        let (inbox, jobID, interval, runner) = (self.inbox, job.id, configuration.progressInterval, spec.runner)
        // Counts a layer, reports progress now and then, and says whether to stop.
        let checking: @Sendable (JobControl) -> CancellationCheck = { control in
            {
                _ = control.advance()
                if control.shouldReport(every: interval) { inbox.post { loop in loop.reportProgress(jobID) } }
                return control.isCancelled
            }
        }
        if let generation = spec.generation {
            // Layers of every step.
            job.control.setTotal(instance.model.dimensions.layers * generation.settings.maxNewTokens)
            let plan = Unchecked(generation), tokenizer = instance.loaded.tokenizer
            enqueue(job, on: instance) { control in
                if control.isCancelled { throw ProtocolError(.cancelled, "the job was cancelled") }
                var deltas = TextDeltas(tokenizer: tokenizer, rows: plan.value.invocations)
                let result = try runner.generate(plan.value, cancelled: checking(control)) { step, chosen, generation in
                    let text = deltas.advance(generation.tokens, stopped: generation.finish.map { $0 != nil })
                    let fields: [String: MessageValue] = [
                        "step": MessageValue(step), "tokens": .array(chosen.map { $0.map { MessageValue($0) } ?? .null }),
                        "text": MessageValue(text)]
                    inbox.post { loop in loop.reportTokens(jobID, fields) }
                }
                return TraceSpec.reply(result)
            }
            return
        }
        let compiled = spec.compiled!
        // Layers of the forward pass, then of the backward when there is one.
        job.control.setTotal(instance.model.dimensions.layers * (compiled.backwardNode == nil ? 1 : 2))
        let plan = Unchecked(compiled)
        enqueue(job, on: instance) { control in
            if control.isCancelled { throw ProtocolError(.cancelled, "the job was cancelled") }
            return TraceSpec.reply(try runner.run(plan.value, cancelled: checking(control)))
        }
    }

    /// Sends a generation step's `tokens` to streaming subscribers: every step, never throttled.
    func reportTokens(_ jobID: Int, _ fields: [String: MessageValue]) {
        guard let job = jobs[jobID], job.state == .running else { return }
        notify(job, .tokens, fields)
    }
}

/// A compiled trace or generation plan handed to the worker; nothing else touches it once queued.
private struct Unchecked<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

extension TraceValue {
    /// A decoded request value as LoupeTrace's plain value: tensors (`{dtype, shape, data}`)
    /// become float32 tensors, integer dtypes included; `field` names where a fault is.
    init(wire value: MessageValue, attachments: [[UInt8]], field: String) throws(ProtocolError) {
        switch value {
        case .null: self = .null
        case .bool(let flag): self = .bool(flag)
        case .int(let number): self = .int(Int(number))
        case .uint(let number):
            guard let exact = Int(exactly: number) else { throw ProtocolError(.badRequest, "integer \(number) is too large", field: field) }
            self = .int(exact)
        case .double(let number): self = .double(number)
        case .string(let text): self = .string(text)
        case .array(let items):
            var values = [TraceValue]()
            values.reserveCapacity(items.count)
            for (index, item) in items.enumerated() {
                values.append(try TraceValue(wire: item, attachments: attachments, field: "\(field).\(index)"))
            }
            self = .array(values)
        case .map(let entries):
            if entries["dtype"] != nil, entries["shape"] != nil, entries["data"] != nil {
                do {
                    let tensor = try WireTensor(value, attachments: attachments)
                    let floats = tensor.dtype == .f32 ? try tensor.floats() : try tensor.integers().map(Float.init)
                    self = .tensor(Tensor(shape: tensor.shape, values: floats))
                } catch {
                    throw ProtocolError(error, field: field)
                }
                return
            }
            var values = [String: TraceValue]()
            for (key, item) in entries { values[key] = try TraceValue(wire: item, attachments: attachments, field: "\(field).\(key)") }
            self = .map(values)
        case .binary:
            throw ProtocolError(.badRequest, "binary data is allowed only as a tensor's data", field: field)
        case .ext:
            throw ProtocolError(.badRequest, "MessagePack extension types are not part of the protocol", field: field)
        }
    }
}

extension MessageValue {
    /// LoupeTrace's plain value on the wire (tensors as f32 `{dtype, shape, data}`).
    init(trace value: TraceValue) {
        switch value {
        case .null: self = .null
        case .bool(let flag): self = .bool(flag)
        case .int(let number): self = MessageValue(number)
        case .double(let number): self = .double(number)
        case .string(let text): self = .string(text)
        case .array(let items): self = .array(items.map { MessageValue(trace: $0) })
        case .map(let entries): self = .map(entries.mapValues { MessageValue(trace: $0) })
        case .tensor(let tensor): self = WireTensor(tensor).messageValue
        }
    }
}
