import ArgumentParser
import BuiltInPlugins
import Foundation
import Logging
import LoupeDaemon
import LoupeTensor
import LoupeWire

/// `loupe serve`: the daemon, in the foreground until SIGTERM, SIGINT or `loupe stop`.
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the Loupe daemon: keep models warm and serve requests over ZeroMQ.")

    @Option(help: "Where to listen: tcp://HOST:PORT or ipc:///PATH.")
    var endpoint = ProcessInfo.processInfo.environment["LOUPE_ENDPOINT"] ?? WireProtocol.defaultEndpoint

    @Option(help: "Where bare model file names are looked up (default: $LOUPE_MODELS or ~/.cache/loupe/models).")
    var modelsDir: String?

    @Option(help: "Unload a model after this many idle seconds (0: keep until unloaded).")
    var keepAlive: Double = 0

    @Option(help: ArgumentHelp("Load a model at start (repeatable).", valueName: "NAME=SOURCE"))
    var preload: [String] = []

    @Option(help: "Seconds a finished job's result stays fetchable with jobs.result.")
    var resultTTL: Double = 600

    @Option(help: "Jobs that may wait on one model before new ones are refused.")
    var maxQueue = 64

    @Option(help: "Token slots (rows x padded length) one forward pass may compute.")
    var maxBatchTokens = 65_536

    @Option(help: "New tokens one generation may make, over all its invocations (max_new_tokens x invocations).")
    var maxGenerateTokens = 16_384

    @Option(help: "Largest message accepted or sent, in MiB.")
    var maxMessageMB = 256

    @Option(help: "Bytes one trace's saved values may take, in MiB.")
    var maxSavedMB = 256

    @Option(help: "Bytes one trace's backward may hold (what it keeps of the forward pass, and its gradients), in MiB.")
    var maxBackwardMB = 2048

    @Option(help: "Seconds one forward pass, sweep or trace may run before it is stopped (0: no limit).")
    var maxJobSeconds: Double = 3600

    @Option(help: "The float32 size of one model's weights, in MiB, past which a load is refused before any weight is read (default: three quarters of the machine's memory).")
    var maxModelMB: Int?

    @Option(help: "Jobs one client may have queued or running at once.")
    var maxClientJobs = 64

    @Option(help: ArgumentHelp("Models are read only below this directory, symlinks and '..' resolved (repeatable; default: the HF cache, $LOUPE_MODELS or ~/.cache/loupe/models, and --models-dir).", valueName: "DIR"))
    var modelRoot: [String] = []

    @Option(help: ArgumentHelp("Load a plugin library: architectures and interventions built against the plugin API (repeatable; Plugins/README.md). One that cannot be loaded is logged and listed by hello, and the daemon serves without it.", valueName: "PATH"))
    var plugin: [String] = []

    @Option(help: ArgumentHelp("Load every plugin library (*.so) in a directory (repeatable).", valueName: "DIR"))
    var pluginsDir: [String] = []

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "info"

    @Option(help: "Threads for matrix multiplies (default: every core).")
    var threads: Int?

    @Option(help: ArgumentHelp("The daemon's CURVE secret key (from loupe keygen; owner-only). Required, with --allow-keys, for an endpoint other machines can reach.", valueName: "FILE"))
    var curveSecretKey: String?

    @Option(help: ArgumentHelp("The client public keys let in, one per line (owner-only).", valueName: "FILE"))
    var allowKeys: String?

    @Flag(help: "Serve an endpoint other machines can reach without CURVE: anyone who connects can use the daemon.")
    var insecure = false

    @Flag(help: .hidden)
    var debugOps = false

    func run() throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("--log-level takes trace, debug, info, notice, warning, error or critical")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        Parallel.configureBLAS(threads: threads ?? Parallel.cores)

        var settings = DaemonConfiguration()
        settings.endpoint = endpoint
        if let modelsDir { settings.modelsDirectory = modelsDir }
        settings.keepAlive = keepAlive
        settings.resultTTL = resultTTL
        settings.maxQueue = maxQueue
        settings.maxBatchTokens = maxBatchTokens
        settings.maxGenerateTokens = maxGenerateTokens
        settings.limits.maxBytes = maxMessageMB << 20
        settings.maxSavedBytes = maxSavedMB << 20
        settings.maxBackwardBytes = maxBackwardMB << 20
        settings.maxJobSeconds = maxJobSeconds
        settings.maxClientJobs = maxClientJobs
        if let maxModelMB {
            guard maxModelMB > 0 else { throw ValidationError("--max-model-mb takes a size above 0") }
            settings.maxModelBytes = maxModelMB << 20
        }
        settings.modelRoots = modelRoot
        settings.debugOps = debugOps
        settings.insecure = insecure
        switch (curveSecretKey, allowKeys) {
        case (nil, nil): break
        case (let secret?, let allowed?):
            do { settings.curve = try CurveServerSettings.load(secretKeyFile: secret, allowListFile: allowed) } catch {
                throw ValidationError("\(error)")
            }
        default: throw ValidationError("--curve-secret-key and --allow-keys go together")
        }
        let (registry, interventions) = (BuiltInPlugins.architectureRegistry(), BuiltInPlugins.interventionRegistry())
        let plugins = loadPlugins(into: registry, interventions)
        settings.preload = try preload.map { entry in
            guard let equals = entry.firstIndex(of: "="), equals != entry.startIndex else {
                throw ValidationError("--preload takes NAME=SOURCE, got '\(entry)'")
            }
            return (String(entry[..<equals]), String(entry[entry.index(after: equals)...]))
        }

        let daemon = Daemon(configuration: settings, registry: registry, interventions: interventions, plugins: plugins)
        do {
            try daemon.start()
        } catch let error as DaemonError {
            throw ValidationError("\(error)")
        } catch {
            throw ValidationError("cannot listen on \(endpoint): \(error) (is another daemon running there?)")
        }
        daemon.stopOnSignals()
        daemon.wait()
    }
}
