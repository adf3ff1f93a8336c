import Foundation
import LoupeFormats
import LoupeModels
import LoupeWire

/// Warm models: `models.load`, `models.unload`, `models.list`, `models.describe`, preloads
/// and idle unloading.
extension ServerLoop {
    /// The loaded model a request names in `field`.
    func warmModel(_ request: Request, field: String = "model") throws(ProtocolError) -> WarmModel {
        let name = try request.string(field)
        if let instance = models[name] { return instance }
        if loadingNames[name] != nil {
            throw ProtocolError(.unknownModel, "model '\(name)' is still loading; wait for its models.load reply", field: field)
        }
        let known = models.keys.sorted()
        throw ProtocolError(.unknownModel, "no model named '\(name)' is loaded (loaded: \(known.isEmpty ? "none" : known.joined(separator: ", "))); load it with models.load", field: field)
    }

    func load(_ request: Request) throws(ProtocolError) {
        let name = try request.modelName()
        let source = try request.string("source")
        guard !source.isEmpty else { throw ProtocolError(.badRequest, "'source' is empty", field: "source") }
        let keepAlive = try request.optionalDouble("keep_alive")
        if let keepAlive, keepAlive < 0 { throw ProtocolError(.badRequest, "'keep_alive' must be 0 or more seconds", field: "keep_alive") }
        let stalls = configuration.debugOps && source == Self.stallingSource
        let key = stalls ? source : try resolver.key(for: source)

        if let instance = models[name] {
            guard instance.key == key else {
                throw ProtocolError(.badRequest, "'\(name)' is already loaded from \(instance.key); unload it first or pick another name", field: "name")
            }
            if let keepAlive { instance.keepAlive = keepAlive }
            return reply(to: request.requester, ok: loadReply(name, instance, seconds: 0, shared: true))
        }
        if let pending = loadingNames[name], pending.key != key {
            throw ProtocolError(.badRequest, "'\(name)' is being loaded from \(pending.source); pick another name", field: "name")
        }
        if let instance = instances.values.first(where: { $0.key == key || $0.loaded.resolvedPath == key }) {
            bind(name, to: instance, keepAlive: keepAlive)
            return reply(to: request.requester, ok: loadReply(name, instance, seconds: 0, shared: true))
        }
        let job = try makeJob(op: "models.load", model: name, for: request)
        start(job)
        if let inFlight = loads[key] {
            inFlight.waiting.append((job, name, keepAlive))
            loadingNames[name] = inFlight
            return
        }
        let inFlight = LoadInFlight(key: key, source: source)
        inFlight.waiting.append((job, name, keepAlive))
        loads[key] = inFlight
        loadingNames[name] = inFlight
        // A thread of its own: a load that stalls (a file on a hung mount, say) holds up no
        // other load, and nothing here waits for it.
        let (inbox, registry, control, maxBytes) = (self.inbox, self.registry, inFlight.control, configuration.maxModelBytes)
        let thread = Thread {
            // With --debug-ops, a read that never returns, as on a hung mount: for tests.
            if stalls { while true { sleep(3600) } }
            let result = Result<LoadResult, any Error> {
                let loaded = try LoadedModel.load(key, registry: registry, maxBytes: maxBytes, control: control)
                return LoadResult(loaded: loaded, sites: try loaded.model.discoverSites())
            }
            inbox.post { loop in loop.loadEnded(key: key, control: control, result) }
        }
        thread.name = "loupe.load"
        thread.start()
    }

    /// With `--debug-ops`, the source whose load never ends and never looks at its control.
    static let stallingSource = "debug:stall"

    /// Ends a running load's job now (cancelled, or past its time), without waiting for the
    /// reading thread; the load itself stops once no job waits for it.
    func stopLoad(_ job: Job, _ error: ProtocolError) {
        finish(job, .failure(error))
        guard let inFlight = loads.values.first(where: { $0.waiting.contains { $0.job === job } }) else { return }
        inFlight.waiting.removeAll { $0.job === job }
        for (name, pending) in loadingNames where pending === inFlight && !inFlight.waiting.contains(where: { $0.name == name }) {
            loadingNames[name] = nil
        }
        if inFlight.waiting.isEmpty { abandon(inFlight) }
        stopIfIdle()
    }

    /// Forgets a load nobody waits for and tells its thread to stop; whatever it still
    /// delivers is dropped, and a new load of the same source starts afresh.
    func abandon(_ inFlight: LoadInFlight) {
        inFlight.control.cancel()
        if loads[inFlight.key] === inFlight { loads[inFlight.key] = nil }
        for (name, pending) in loadingNames where pending === inFlight { loadingNames[name] = nil }
    }

    /// `--preload NAME=SOURCE`: a load nobody waits for.
    func preload(name: String, source: String) {
        let request = Request(
            requester: Requester(identity: [], delimited: false, id: .null, wantsFrames: false, sequence: 0),
            op: "models.load", fields: ["name": .string(name), "source": .string(source), "mode": "detach"], attachments: [])
        do { try load(request) } catch {
            logger.error("preload failed", metadata: ["name": "\(name)", "error": "\(error.message)"])
        }
    }

    /// The end of the load that `control` belongs to, unless it was abandoned meanwhile.
    private func loadEnded(key: String, control: LoadControl, _ result: Result<LoadResult, any Error>) {
        guard let inFlight = loads[key], inFlight.control === control else { return }
        loads[key] = nil
        for entry in inFlight.waiting where loadingNames[entry.name] === inFlight { loadingNames[entry.name] = nil }
        switch result {
        case .failure(let error):
            let failure = ProtocolError.loading(error, source: inFlight.source)
            for entry in inFlight.waiting { finish(entry.job, .failure(failure)) }
        case .success(let loaded):
            // Another key (an HF id and its snapshot path, say) may have loaded the same files.
            let existing = instances.values.first { $0.loaded.resolvedPath == loaded.loaded.resolvedPath }
            let instance = existing ?? WarmModel(id: nextInstance, key: key, loaded: loaded.loaded, sites: loaded.sites,
                                                 keepAlive: configuration.keepAlive)
            if existing == nil {
                nextInstance += 1
                instances[instance.id] = instance
                logger.info("model loaded", metadata: ["path": "\(loaded.loaded.resolvedPath)",
                                                        "seconds": "\(String(format: "%.2f", loaded.loaded.loadSeconds))"])
            }
            var first = existing == nil
            // Jobs cancelled meanwhile have left `waiting` already (`stopLoad`).
            for entry in inFlight.waiting {
                bind(entry.name, to: instance, keepAlive: entry.keepAlive)
                finish(entry.job, .success(loadReply(entry.name, instance, seconds: first ? loaded.loaded.loadSeconds : 0, shared: !first)))
                first = false
            }
            releaseIfUnused(instance)
        }
        stopIfIdle()
    }

    private func bind(_ name: String, to instance: WarmModel, keepAlive: Double?) {
        models[name] = instance
        instance.names.insert(name)
        instance.lastUsed = Date()
        if let keepAlive { instance.keepAlive = keepAlive }
    }

    private func loadReply(_ name: String, _ instance: WarmModel, seconds: Double, shared: Bool) -> [String: MessageValue] {
        ["name": .string(name), "architecture": .string(instance.model.architecture), "path": .string(instance.loaded.resolvedPath),
         "dimensions": dimensions(of: instance.model), "load_seconds": MessageValue(seconds), "shared": .bool(shared)]
    }

    func unload(_ request: Request) throws(ProtocolError) -> [String: MessageValue] {
        let instance = try warmModel(request, field: "name")
        let name = try request.string("name")
        models[name] = nil
        instance.names.remove(name)
        let freed = instance.names.isEmpty
        releaseIfUnused(instance)
        logger.info("model unloaded", metadata: ["name": "\(name)", "freed": "\(freed)"])
        return ["name": .string(name), "freed": .bool(freed)]
    }

    /// Forgets an instance that no name holds once its jobs are done; the memory goes with it.
    func releaseIfUnused(_ instance: WarmModel) {
        guard instance.names.isEmpty, instance.isIdle else { return }
        instances[instance.id] = nil
    }

    func unloadIdleModels(now: Date) {
        for instance in instances.values where instance.keepAlive > 0 && instance.isIdle
            && now.timeIntervalSince(instance.lastUsed) > instance.keepAlive {
            logger.info("unloading idle model", metadata: ["names": "\(instance.names.sorted())",
                                                           "idle_seconds": "\(Int(now.timeIntervalSince(instance.lastUsed)))"])
            for name in instance.names { models[name] = nil }
            instance.names.removeAll()
            releaseIfUnused(instance)
        }
    }

    func listModels() -> [String: MessageValue] {
        let now = Date()
        let entries: [MessageValue] = models.keys.sorted().map { name in
            let instance = models[name]!
            return ["name": .string(name), "source": .string(instance.key), "path": .string(instance.loaded.resolvedPath),
                    "architecture": .string(instance.model.architecture), "weight_bytes": MessageValue(instance.model.weightBytes),
                    "shares_weights_with": MessageValue(instance.names.subtracting([name]).sorted()),
                    "idle_seconds": MessageValue(instance.isIdle ? now.timeIntervalSince(instance.lastUsed) : 0),
                    "queued": MessageValue(instance.pending.count), "running": .bool(instance.running != nil)]
        }
        return ["models": .array(entries)]
    }

    func describe(_ request: Request) throws(ProtocolError) -> [String: MessageValue] {
        let instance = try warmModel(request, field: "name")
        let model = instance.model
        var fields: [String: MessageValue] = [
            "name": .string(try request.string("name")), "architecture": .string(model.architecture),
            "source": .string(instance.key), "path": .string(instance.loaded.resolvedPath),
            "weight_bytes": MessageValue(model.weightBytes), "dimensions": dimensions(of: model),
            "printed": .string(model.moduleTree.rendered()), "tree": tree(model.moduleTree), "tokenizer": .null,
        ]
        if try request.bool("sites", default: true) {
            fields["sites"] = .array(instance.sites.map { site in
                ["site": .string(site.site), "io": .string(site.io.rawValue), "shape": MessageValue(site.shape), "tuple": .bool(site.tuple)]
            })
        }
        if let tokenizer = instance.loaded.tokenizer {
            fields["tokenizer"] = ["vocab_size": MessageValue(tokenizer.vocabularySize),
                                   "bos": tokenizer.bosTokenID.map { MessageValue($0) } ?? .null,
                                   "eos": tokenizer.eosTokenID.map { MessageValue($0) } ?? .null,
                                   "adds_bos": .bool(tokenizer.addsBOS)]
        }
        return fields
    }

    /// `models.weights`: parameters by HF name (`names`), or their names and shapes (`list: true`).
    func weights(_ request: Request) throws(ProtocolError) -> [String: MessageValue] {
        let modules = try warmModel(request).model.modules
        if try request.bool("list", default: false) {
            return ["parameters": .array(modules.parameterNames.map { name in
                ["name": .string(name), "shape": MessageValue(modules.parameter(name)!.shape)]
            })]
        }
        var weights = [String: MessageValue]()
        for (index, item) in try request.array("names").enumerated() {
            guard let name = item.stringValue else {
                throw ProtocolError(.badRequest, "names.\(index) must be a parameter's name (a string)", field: "names.\(index)")
            }
            guard let parameter = modules.parameter(name) else {
                throw ProtocolError(.unknownSite, "the model has no parameter \(name) (list: true lists them)", field: "names.\(index)")
            }
            weights[name] = WireTensor(parameter).messageValue
        }
        return ["weights": .map(weights)]
    }

    func dimensions(of model: any LanguageModel) -> MessageValue {
        let d = model.dimensions
        return ["layers": MessageValue(d.layers), "hidden": MessageValue(d.hidden), "heads": MessageValue(d.heads),
                "kv_heads": MessageValue(d.keyValueHeads), "head_dim": MessageValue(d.headDim),
                "vocab": MessageValue(d.vocabulary), "context": MessageValue(d.context)]
    }

    private func tree(_ node: ModuleNode) -> MessageValue {
        ["name": .string(node.name), "path": .string(node.path), "type": .string(node.type), "extra": .string(node.extra),
         "children": .array(node.children.map(tree))]
    }
}
