import LoupeModels
import LoupeTrace
import LoupeWire

/// The daemon's request path without a socket: a message's frames decoded, its op and
/// fields read and checked against one loaded model by the code the server runs, and, when
/// asked, a forward pass or trace run as its job would run and its reply encoded. The
/// fuzzer (Sources/loupe-fuzz) drives it; nothing carries over from one message to the next
/// but the model's trace runner, which holds no request's state.
public final class RequestCheck {
    let configuration: DaemonConfiguration
    let interventions: InterventionRegistry
    let instance: WarmModel
    let resolver: SourceResolver
    /// The name the model answers to in requests (`model`, `name`).
    public let name: String

    public init(name: String, model: LoadedModel, configuration: DaemonConfiguration,
                interventions: InterventionRegistry) throws {
        self.name = name
        self.configuration = configuration
        self.interventions = interventions
        instance = WarmModel(id: 1, key: model.resolvedPath, loaded: model, sites: try model.model.discoverSites(), keepAlive: 0)
        instance.names.insert(name)
        resolver = SourceResolver(modelsDirectory: configuration.modelsDirectory, roots: configuration.modelRoots)
    }

    /// The reply's fields when the message would be accepted (with `run`, a forward pass's or
    /// trace's result; else empty), or the error the server would answer.
    public func check(_ frames: [[UInt8]], run: Bool) -> Result<[String: MessageValue], ProtocolError> {
        let message: WireMessage
        do { message = try WireMessage(frames: frames, limits: configuration.limits) } catch {
            return .failure(ProtocolError(error))
        }
        var requester = Requester(identity: [], delimited: false, id: .null, wantsFrames: false, sequence: 0)
        do throws(ProtocolError) {
            let request = try Request(message, requester: &requester)
            try request.checkProtocolVersion()
            let reply = try check(request, run: run)
            // What the server would send: the reply encoded, tensors in frames if asked.
            var encoded = WireMessage(.map(reply))
            if requester.wantsFrames { encoded = encoded.withTensorDataInFrames() }
            _ = encoded.frames
            return .success(reply)
        } catch {
            return .failure(error)
        }
    }

    private func check(_ request: Request, run: Bool) throws(ProtocolError) -> [String: MessageValue] {
        switch request.op {
        case "forward":
            let spec = try ForwardSpec(request, model: try model(request, "model"), configuration: configuration)
            guard run else { return [:] }
            do { return try ForwardRunner(spec: spec, loaded: instance.loaded, onLayer: { false }).run() } catch {
                throw ProtocolError.running(error)
            }
        case "trace":
            let spec = try TraceSpec(request, model: try model(request, "model"), configuration: configuration, interventions: interventions)
            guard run else { return [:] }
            do {
                if let generation = spec.generation { return TraceSpec.reply(try spec.runner.generate(generation)) }
                return TraceSpec.reply(try spec.runner.run(spec.compiled!))
            } catch { throw ProtocolError.running(error) }
        case "sweep":
            _ = try SweepSpec(request, model: try model(request, "model"), configuration: configuration)
        case "models.load":
            _ = try request.modelName()
            _ = try resolver.key(for: try request.string("source"))
            _ = try request.mode()
        case "models.describe", "models.unload":
            _ = try model(request, "name")
        case "models.weights":
            _ = try model(request, "model")
        case "jobs.status", "jobs.cancel", "jobs.result":
            _ = try request.int("job")
            _ = try request.mode()
        default:
            break
        }
        return [:]
    }

    /// The one model, when the request names it in `field`.
    private func model(_ request: Request, _ field: String) throws(ProtocolError) -> WarmModel {
        let asked = try request.string(field)
        guard asked == name else { throw ProtocolError(.unknownModel, "no model named '\(asked)' is loaded", field: field) }
        return instance
    }
}
