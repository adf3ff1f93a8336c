import CZMQ
import Dispatch
import Foundation
import Logging
import LoupeModels
import LoupePlugin
import LoupeSweeps
import LoupeTrace
import LoupeWire

/// The daemon's core, run by the one thread that owns the ROUTER socket.
///
/// Everything here is confined to that thread: requests are decoded and answered here,
/// small ones at once; jobs go to worker queues, whose results come back through the
/// `Inbox` as closures run on this thread. So the state needs no locks, and a long job never
/// delays a `hello`.
final class ServerLoop {
    let configuration: DaemonConfiguration
    let registry: ArchitectureRegistry
    let interventions: InterventionRegistry
    /// Where each architecture and intervention came from, and the plugin libraries refused.
    let plugins: PluginCatalog
    let inbox: Inbox
    let logger: Logger
    let socket: ZMQSocket
    /// The endpoint as bound (with the port filled in for `tcp://...:*`).
    let endpoint: String
    let resolver: SourceResolver
    let started = Date()
    /// Chosen at random at start: `hello` reports it, so clients can tell a restarted daemon.
    let instance: String
    /// The ZAP domain that checks CURVE clients, while the socket is open (nil without CURVE).
    private let access: ZAPAuthenticator.Registration?

    var requestsServed = 0
    var sequence = 0
    var stopping = false
    var stopped = false
    var stopDeadline: Date?

    /// Loaded models by name, and every instance (by serial) until it is unloaded and idle.
    var models: [String: WarmModel] = [:]
    var instances: [Int: WarmModel] = [:]
    var nextInstance = 1
    /// Loads under way, by source key, and by the names they will bind.
    var loads: [String: LoadInFlight] = [:]
    var loadingNames: [String: LoadInFlight] = [:]
    var jobs: [Int: Job] = [:]
    /// Finished jobs in the order they finished, and their outcomes' bytes, for retention.
    var finishedJobs: [Int] = []
    var retainedBytes = 0
    var nextJob = 1
    var lastHousekeeping = Date()

    init(configuration: DaemonConfiguration, registry: ArchitectureRegistry, interventions: InterventionRegistry,
         plugins: PluginCatalog, inbox: Inbox, logger: Logger) throws(ZMQError) {
        self.configuration = configuration
        self.registry = registry
        self.interventions = interventions
        self.plugins = plugins
        self.inbox = inbox
        self.logger = logger
        self.resolver = SourceResolver(modelsDirectory: configuration.modelsDirectory, roots: configuration.modelRoots)
        socket = try ZMQSocket(.router)
        // Report unroutable replies (a client that left) instead of dropping them unseen.
        try socket.setOption(ZMQ_ROUTER_MANDATORY, Int32(1))
        // A hard cap per frame, above the decode limit so that between the two the client
        // still gets a `too_large` reply; beyond it libzmq drops the connection.
        try socket.setOption(ZMQ_MAXMSGSIZE, Int64(configuration.limits.maxBytes) * 2)
        // A client that reconnects under its routing id takes over from its stale connection
        // (otherwise the ROUTER ignores it until the old one times out).
        try socket.setOption(ZMQ_ROUTER_HANDOVER, Int32(1))
        let instance = String(UInt64.random(in: .min ... .max), radix: 16)
        self.instance = instance
        access = try ServerAccess.secure(socket, configuration, instance: instance, logger: logger)
        try socket.bind(configuration.endpoint)
        endpoint = socket.lastEndpoint
    }

    /// Serves until shut down, then closes the socket.
    func run() {
        for (name, source) in configuration.preload { preload(name: name, source: source) }
        while !stopped {
            var wake = false
            do {
                let ready = try socket.poll(alsoFileDescriptor: inbox.fileDescriptor, timeoutMilliseconds: 250)
                wake = ready.fd
                if ready.socket { try receiveAvailable() }
            } catch {
                logger.error("socket failure; stopping", metadata: ["error": "\(error)"])
                beginShutdown(reason: "socket failure")
                stopped = true
            }
            // An event always comes with a byte in the pipe, so a quiet pipe means no events.
            if wake { for event in inbox.drain() { event(self) } }
            housekeeping()
        }
        // Give the last replies (the shutdown's own among them) a moment to leave.
        try? socket.setOption(ZMQ_LINGER, Int32(1000))
    }

    // MARK: Receiving

    /// Handles what is waiting, a bounded number at a time so worker results are not starved.
    private func receiveAvailable() throws {
        for _ in 0..<256 {
            guard let frames = try socket.receive(dontWait: true) else { return }
            handle(frames)
        }
    }

    /// `[identity, (empty delimiter,) body, attachments...]`.
    private func handle(_ frames: [[UInt8]]) {
        guard frames.count >= 2 else { return }
        sequence += 1
        requestsServed += 1
        let delimited = frames[1].isEmpty && frames.count >= 3
        let payload = Array(frames.dropFirst(delimited ? 2 : 1))
        var requester = Requester(identity: frames[0], delimited: delimited, id: .null, wantsFrames: false, sequence: sequence)

        let message: WireMessage
        do {
            message = try WireMessage(frames: payload, limits: configuration.limits)
        } catch {
            logger.info("undecodable message", metadata: ["seq": "\(sequence)", "error": "\(error.message)"])
            return reply(to: requester, error: ProtocolError(error))
        }
        let request: Request
        do throws(ProtocolError) {
            request = try Request(message, requester: &requester)
        } catch {
            logger.info("malformed request", metadata: ["seq": "\(sequence)", "error": "\(error.message)"])
            return reply(to: requester, error: error)
        }
        let op = request.op
        logger.debug("request", metadata: ["seq": "\(sequence)", "op": "\(op)", "id": "\(requester.id.jsonText())"])
        do throws(ProtocolError) {
            try request.checkProtocolVersion()
            if stopping { throw ProtocolError(.busy, "the server is shutting down") }
            try dispatch(request)
        } catch {
            logger.info("request failed", metadata: ["seq": "\(sequence)", "op": "\(op)", "code": "\(error.code.rawValue)",
                                                     "error": "\(error.message)"])
            reply(to: requester, error: error)
        }
    }

    /// Every op this server answers; `dispatch` routes them.
    var ops: [String] {
        ["hello", "models.list", "models.load", "models.unload", "models.describe", "models.weights", "tokenize", "detokenize", "forward",
         "sweep", "trace", "jobs.status", "jobs.cancel", "jobs.result", "server.stats", "server.shutdown"]
            + (configuration.debugOps ? ["debug.fail"] : [])
    }

    private func dispatch(_ request: Request) throws(ProtocolError) {
        switch request.op {
        case "hello": reply(to: request.requester, ok: hello(request))
        case "models.list": reply(to: request.requester, ok: listModels())
        case "models.load": try load(request)
        case "models.unload": reply(to: request.requester, ok: try unload(request))
        case "models.describe": reply(to: request.requester, ok: try describe(request))
        case "models.weights": reply(to: request.requester, ok: try weights(request))
        case "tokenize": reply(to: request.requester, ok: try tokenize(request))
        case "detokenize": reply(to: request.requester, ok: try detokenize(request))
        case "forward": try forward(request)
        case "sweep": try sweep(request)
        case "trace": try trace(request)
        case "jobs.status": reply(to: request.requester, ok: try jobStatus(request))
        case "jobs.cancel": reply(to: request.requester, ok: try cancelJob(request))
        case "jobs.result": try jobResult(request)
        case "server.stats": reply(to: request.requester, ok: stats())
        case "server.shutdown":
            reply(to: request.requester, ok: ["stopping": true])
            beginShutdown(reason: "server.shutdown request")
        case "debug.fail" where configuration.debugOps: try debugFail(request)
        default:
            throw ProtocolError(.unknownOp, "unknown op '\(request.op)'; this server answers \(ops.joined(separator: ", "))", field: "op")
        }
    }

    // MARK: Replying

    func reply(to requester: Requester, ok fields: [String: MessageValue]) {
        reply(to: requester, status: .ok, fields)
    }

    func reply(to requester: Requester, error: ProtocolError) {
        reply(to: requester, status: .error, ["error": error.messageValue])
    }

    func reply(to requester: Requester, status: ReplyStatus, _ fields: [String: MessageValue]) {
        var body = fields
        body["id"] = requester.id
        body["status"] = .string(status.rawValue)
        var message = WireMessage(.map(body))
        if requester.wantsFrames { message = message.withTensorDataInFrames() }
        var frames = message.frames
        let size = frames.reduce(0) { $0 + $1.count }
        if size > configuration.limits.maxBytes {
            let error = ProtocolError(.tooLarge, "the reply would be \(size) bytes, over the limit of \(configuration.limits.maxBytes); ask for less (fewer positions, no full logits)")
            frames = WireMessage(["id": requester.id, "status": "error", "error": error.messageValue]).frames
        }
        let envelope = [requester.identity] + (requester.delimited ? [[]] : []) + frames
        do {
            if try !socket.send(envelope, dontWait: true) {
                logger.debug("reply not delivered: the client has gone", metadata: ["seq": "\(requester.sequence)"])
            }
        } catch {
            logger.warning("reply failed", metadata: ["seq": "\(requester.sequence)", "error": "\(error)"])
        }
    }

    // MARK: Time

    private func housekeeping() {
        let now = Date()
        if stopping, stopDeadline.map({ now > $0 }) ?? false {
            logger.warning("jobs did not end in time; stopping anyway")
            stopped = true
        }
        stopOverdueJobs(now: now)
        guard now.timeIntervalSince(lastHousekeeping) >= 1 else { return }
        lastHousekeeping = now
        unloadIdleModels(now: now)
        expireResults(now: now)
    }

    /// Stops taking requests, cancels every job, and stops once none is left running.
    func beginShutdown(reason: String) {
        guard !stopping else { return }
        stopping = true
        stopDeadline = Date().addingTimeInterval(30)
        logger.info("shutting down", metadata: ["reason": "\(reason)"])
        for instance in instances.values {
            let waiting = instance.pending
            instance.pending.removeAll()
            for job in waiting { finish(job, .failure(ProtocolError(.cancelled, "cancelled: the server is shutting down"))) }
            if let running = instance.running { cancelRunning(running) }
        }
        // A load may be stuck in a read that never returns: its jobs end now, its thread is left behind.
        for load in Array(loads.values) {
            for entry in load.waiting { finish(entry.job, .failure(ProtocolError(.cancelled, "cancelled: the server is shutting down"))) }
            abandon(load)
        }
        stopIfIdle()
    }

    func stopIfIdle() {
        guard stopping else { return }
        if instances.values.allSatisfy(\.isIdle) && loads.isEmpty && !jobs.values.contains(where: { $0.state == .running }) {
            stopped = true
        }
    }
}
