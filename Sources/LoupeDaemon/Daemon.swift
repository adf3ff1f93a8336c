import Dispatch
import Foundation
import Logging
import LoupeModels
import LoupePlugin
import LoupeTrace
import LoupeWire
import Synchronization

/// The Loupe daemon: binds the endpoint, serves on a thread of its own, and stops on
/// `server.shutdown`, a signal, or `stop()`.
///
/// The socket thread is a plain thread, not a Swift task: it blocks in `zmq_poll`, and a
/// blocked task would hold one of the few threads of the cooperative pool.
public final class Daemon: Sendable {
    public let configuration: DaemonConfiguration
    private let registry: ArchitectureRegistry
    private let interventions: InterventionRegistry
    private let plugins: PluginCatalog
    private let logger: Logger
    private let inbox = Inbox()
    private let boundEndpoint = Mutex<String?>(nil)
    private let finished = DispatchSemaphore(value: 0)
    private let signalSources = Mutex<[SignalSource]>([])

    /// `interventions`: what a trace's `intervene` nodes may name (none when not given).
    /// `plugins`: where each architecture and intervention came from and the plugin libraries
    /// refused, for `hello` (when not given: everything built in, nothing refused).
    public init(configuration: DaemonConfiguration, registry: ArchitectureRegistry,
                interventions: InterventionRegistry = InterventionRegistry(),
                plugins: PluginCatalog? = nil,
                logger: Logger = Logger(label: "loupe.daemon")) {
        self.configuration = configuration
        self.registry = registry
        self.interventions = interventions
        self.plugins = plugins ?? PluginCatalog(architectures: registry, interventions: interventions)
        self.logger = logger
    }

    /// Binds the socket and starts serving; returns the endpoint as bound (a `tcp://...:*`
    /// endpoint gets its port). Throws when the endpoint cannot be bound.
    @discardableResult
    public func start() throws -> String {
        try ServerAccess.check(configuration, logger: logger)
        try Self.checkNoDaemon(at: configuration.endpoint)
        let ready = DispatchSemaphore(value: 0)
        let bindResult = Mutex<Result<String, ZMQError>?>(nil)
        let (configuration, registry, interventions, plugins, logger, inbox) = (self.configuration, self.registry, self.interventions, self.plugins, self.logger, self.inbox)
        let thread = Thread { [self] in
            // The loop (and with it the socket) is released when this returns, before the
            // socket file is removed.
            func serve() -> String? {
                let loop: ServerLoop
                do {
                    loop = try ServerLoop(configuration: configuration, registry: registry, interventions: interventions,
                                          plugins: plugins, inbox: inbox, logger: logger)
                } catch {
                    bindResult.withLock { $0 = .failure(error) }
                    ready.signal()
                    return nil
                }
                bindResult.withLock { $0 = .success(loop.endpoint) }
                ready.signal()
                logger.info("serving", metadata: ["endpoint": "\(loop.endpoint)", "pid": "\(ProcessInfo.processInfo.processIdentifier)"])
                loop.run()
                return loop.endpoint
            }
            if let endpoint = serve() {
                Self.removeSocketFile(endpoint)
                logger.info("stopped", metadata: ["endpoint": "\(endpoint)"])
            }
            finished.signal()
        }
        thread.name = "loupe-socket"
        thread.start()
        ready.wait()
        switch bindResult.withLock({ $0 }) {
        case .success(let endpoint)?:
            boundEndpoint.withLock { $0 = endpoint }
            return endpoint
        case .failure(let error)?:
            throw error
        case nil:
            fatalError("the socket thread reported nothing")
        }
    }

    /// The endpoint as bound, once started.
    public var endpoint: String? { boundEndpoint.withLock { $0 } }

    /// Asks the daemon to shut down as `server.shutdown` does, without waiting.
    public func requestStop(reason: String = "stop requested") {
        inbox.post { loop in loop.beginShutdown(reason: reason) }
    }

    /// Blocks until the daemon has stopped.
    public func wait() {
        finished.wait()
        finished.signal() // later waiters return at once too
    }

    public func stop() {
        requestStop()
        wait()
    }

    /// SIGTERM and SIGINT start a graceful shutdown.
    public func stopOnSignals(_ signals: [Int32] = [SIGTERM, SIGINT]) {
        let sources = signals.map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [self] in requestStop(reason: "signal \(number)") }
            source.resume()
            return SignalSource(source: source)
        }
        signalSources.withLock { $0.append(contentsOf: sources) }
    }

    /// libzmq binds an `ipc://` path over an existing socket file, which would silently take
    /// the endpoint from a daemon already serving there; ask it first.
    private static func checkNoDaemon(at endpoint: String) throws {
        guard endpoint.hasPrefix("ipc://"), FileManager.default.fileExists(atPath: String(endpoint.dropFirst("ipc://".count))) else { return }
        if let client = try? WireClient(endpoint: endpoint, timeout: 0.5), (try? client.call("hello")) != nil {
            throw DaemonError.endpointInUse(endpoint)
        }
    }

    /// An `ipc://` endpoint's file, once the socket has closed.
    private static func removeSocketFile(_ endpoint: String) {
        guard endpoint.hasPrefix("ipc://") else { return }
        let path = String(endpoint.dropFirst("ipc://".count))
        if FileManager.default.fileExists(atPath: path) { try? FileManager.default.removeItem(atPath: path) }
    }
}

/// A signal source, held only to keep it alive; Dispatch runs its handler.
private struct SignalSource: @unchecked Sendable {
    let source: any DispatchSourceSignal
}

public enum DaemonError: Error, CustomStringConvertible {
    case endpointInUse(String)
    /// A non-loopback endpoint without CURVE keys or `insecure`.
    case reachableWithoutCurve(String)

    public var description: String {
        switch self {
        case .endpointInUse(let endpoint): return "a Loupe daemon is already serving at \(endpoint)"
        case .reachableWithoutCurve(let endpoint):
            return "\(endpoint) can be reached from other machines: give --curve-secret-key and --allow-keys (make keys with `loupe keygen`), or --insecure to serve it without authentication"
        }
    }
}
