import LoupeModels
import LoupeTensor
import LoupeTrace
import LoupeWire

/// A `trace` request decoded, validated against the model and compiled on the socket
/// thread: every error, the limits' included, comes here, before a job exists.
struct TraceSpec {
    /// A plain trace's plan, or nil for a generation.
    let compiled: CompiledTrace?
    /// A trace with a `generate` section.
    let generation: GenerationPlan?
    let runner: TraceRunner

    init(_ request: Request, model instance: WarmModel, configuration: DaemonConfiguration,
         interventions: InterventionRegistry) throws(ProtocolError) {
        // Counted before anything is converted: a million invocations are refused for what
        // they are, not after a million arrays were built.
        if let invokes = request.fields["invokes"]?.arrayValue, invokes.count > configuration.maxBatchTokens {
            throw ProtocolError(.tooLarge, "\(invokes.count) invocations are more than the \(configuration.maxBatchTokens) token slots one forward pass may compute; split the trace", field: "invokes")
        }
        var fields = [String: TraceValue]()
        for key in ["invokes", "nodes"] {
            guard let value = request.fields[key] else {
                throw ProtocolError(.badRequest, "trace needs '\(key)' (an array)", field: key)
            }
            fields[key] = try TraceValue(wire: value, attachments: request.attachments, field: key)
        }
        let tokenizer = instance.loaded.tokenizer
        let trace: Trace
        do {
            trace = try Trace(.map(fields), tokenize: tokenizer.map { tokenizer in { tokenizer.encode($0) } })
        } catch {
            throw ProtocolError(error)
        }
        let length = trace.invocations.map(\.count).max() ?? 0
        if trace.invocations.count * length > configuration.maxBatchTokens {
            throw ProtocolError(.tooLarge, "\(trace.invocations.count) invocations x \(length) tokens is more than the \(configuration.maxBatchTokens) token slots one forward pass may compute; split the trace", field: "invokes")
        }
        if let existing = instance.traceRunner {
            runner = existing
        } else {
            do {
                runner = try TraceRunner(model: instance.model, sites: instance.sites, interventions: interventions)
            } catch {
                throw ProtocolError.running(error)
            }
            instance.traceRunner = runner
        }
        if let section = request.fields["generate"], section != .null {
            let value = try TraceValue(wire: section, attachments: request.attachments, field: "generate")
            do throws(TraceError) {
                let settings = try GenerateRequest(value, eos: instance.loaded.eosTokenIDs, vocabulary: instance.model.dimensions.vocabulary).settings
                let total = settings.maxNewTokens.multipliedReportingOverflow(by: trace.invocations.count)
                if total.overflow || total.partialValue > configuration.maxGenerateTokens {
                    throw TraceError(.tooLarge, field: "generate.max_new_tokens",
                                     "\(settings.maxNewTokens) new tokens for each of \(trace.invocations.count) invocations pass the \(configuration.maxGenerateTokens) one trace may generate (loupe serve --max-generate-tokens)")
                }
                generation = try runner.compileGeneration(trace, settings: settings)
            } catch {
                throw ProtocolError(error)
            }
            compiled = nil
            try Self.checkSaved(generation!.savedBytes, configuration)
            return
        }
        generation = nil
        let compiled: CompiledTrace
        do { compiled = try runner.compile(trace) } catch { throw ProtocolError(error) }
        self.compiled = compiled
        try Self.checkSaved(compiled.savedBytes, configuration)
        if let bytes = compiled.backwardBytes, bytes > configuration.maxBackwardBytes, let node = compiled.backwardNode {
            throw ProtocolError(.tooLarge, "the backward could hold up to \(bytes) bytes, more than the \(configuration.maxBackwardBytes) one trace's backward may (loupe serve --max-backward-mb); use fewer or shorter invocations",
                                field: "nodes.\(node.position)", node: node.id)
        }
    }

    /// Refuses saved values over `--max-saved-mb` (for a generation, its bound over every step).
    private static func checkSaved(_ bytes: Int, _ configuration: DaemonConfiguration) throws(ProtocolError) {
        if bytes > configuration.maxSavedBytes {
            throw ProtocolError(.tooLarge, "the saved values would take \(bytes) bytes, more than the \(configuration.maxSavedBytes) one trace may save (loupe serve --max-saved-mb); save less or index first", field: "nodes")
        }
    }

    /// The reply's fields for a generation (PROTOCOL.md, `trace`, "Generation").
    static func reply(_ result: GenerationTraceResult) -> [String: MessageValue] {
        var saved = [String: MessageValue](), steps = [String: MessageValue]()
        for (key, tensors) in result.saved {
            if result.single.contains(key), let tensor = tensors.first {
                saved[key] = WireTensor(tensor).messageValue
            } else {
                saved[key] = .array(tensors.map { WireTensor($0).messageValue })
                steps[key] = MessageValue(result.savedSteps[key] ?? [])
            }
        }
        return ["saved": .map(saved), "saved_steps": .map(steps), "names": MessageValue(result.names),
                "generation": ["steps": MessageValue(result.steps), "tokens": .array(result.tokens.map { MessageValue($0) }),
                               "output": .array(result.output.map { MessageValue($0) }),
                               "finish": MessageValue(result.finish.map(\.rawValue))]]
    }

    /// The reply's fields (PROTOCOL.md, `trace`).
    static func reply(_ result: TraceResult) -> [String: MessageValue] {
        var saved = [String: MessageValue]()
        for (key, tensor) in result.saved { saved[key] = WireTensor(tensor).messageValue }
        var reply: [String: MessageValue] = [
            "saved": .map(saved), "names": MessageValue(result.names), "logits": .string(result.logits.rawValue),
            "slots": MessageValue(result.slots), "rows": MessageValue(result.rows),
            "token_layers": MessageValue(result.tokenLayers), "plain_token_layers": MessageValue(result.plainTokenLayers)]
        if let backward = result.backward {
            reply["backward"] = ["saved_bytes": MessageValue(backward.savedBytes), "peak_bytes": MessageValue(backward.peakBytes),
                                 "records": MessageValue(backward.records), "bound_bytes": MessageValue(backward.boundBytes)]
        }
        return reply
    }
}
