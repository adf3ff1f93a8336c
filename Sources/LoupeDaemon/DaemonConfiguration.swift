import Foundation
import LoupeWire

/// Everything `loupe serve` can be told; the defaults are what it does when told nothing.
public struct DaemonConfiguration: Sendable {
    public var endpoint = WireProtocol.defaultEndpoint
    /// Where bare file names given as model sources are looked up.
    public var modelsDirectory = DaemonConfiguration.loupeModelsDirectory
    /// Loupe's own model directory: $LOUPE_MODELS, else ~/.cache/loupe/models.
    public static var loupeModelsDirectory: String {
        ProcessInfo.processInfo.environment["LOUPE_MODELS"] ?? (NSHomeDirectory() + "/.cache/loupe/models")
    }
    /// Seconds a model may sit idle before it is unloaded; 0 keeps models until unloaded.
    public var keepAlive: Double = 0
    /// How long a finished job's reply stays fetchable with `jobs.result`.
    public var resultTTL: Double = 600
    public var maxRetainedResults = 64
    /// Bytes of retained results (full logits add up); the oldest go first.
    public var maxRetainedBytes = 512 << 20
    /// Jobs waiting on one model before new ones are refused with `busy`.
    public var maxQueue = 64
    /// Token slots (rows x padded length) one forward pass may compute.
    public var maxBatchTokens = 65_536
    /// New tokens one generation may make, over all its invocations (max_new_tokens x invocations).
    public var maxGenerateTokens = 16_384
    public var limits = DecodeLimits.standard
    /// Bytes one trace's saved values may take (RELIABILITY.md, "Limits").
    public var maxSavedBytes = 256 << 20
    /// Bytes one trace's backward may hold, by the bound known at validation.
    public var maxBackwardBytes = 2048 << 20
    /// Seconds one job may run before it is stopped with `too_large`; 0: no limit.
    public var maxJobSeconds: Double = 3600
    /// The float32 bytes one model's weights may declare: a larger model is refused from its
    /// headers, before anything is read. Three quarters of the machine's memory.
    public var maxModelBytes = Int(ProcessInfo.processInfo.physicalMemory / 4 * 3)
    /// Jobs one client (one connection) may have queued or running at once.
    public var maxClientJobs = 64
    /// Models are read only below these directories, symlinks and `..` resolved; empty:
    /// the HF cache, Loupe's own model directory and `modelsDirectory`.
    public var modelRoots: [String] = []
    /// Answers `debug.fail`, for tests of the `internal` error path.
    public var debugOps = false
    /// Models loaded at start: (name, source).
    public var preload: [(name: String, source: String)] = []
    /// CURVE keys; without them only loopback and ipc endpoints are served, unless `insecure`.
    public var curve: CurveServerSettings?
    /// Serve an endpoint other machines can reach without CURVE (logged as a warning).
    public var insecure = false
    /// Reported by `hello`.
    public var serverVersion = "0.1.0"
    /// The least time between two `progress` replies to one client.
    public var progressInterval: Double = 0.05

    public init() {}
}
