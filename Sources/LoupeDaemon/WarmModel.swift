import LoupeFormats
import Dispatch
import Foundation
import LoupeModels
import LoupeTrace

/// One model in memory, under one or more names, with its job queue. Lives on the socket
/// thread; its jobs run one at a time on its own serial queue.
final class WarmModel {
    /// The daemon's number for this instance.
    let id: Int
    /// The resolved file or directory: two loads of the same key share this instance.
    let key: String
    let loaded: LoadedModel
    /// Every site, in forward-pass order, found once at load time.
    let sites: [SiteInfo]
    let siteNames: Set<String>
    let worker: DispatchQueue
    var names: Set<String> = []
    /// Jobs waiting, in arrival order, and the one running.
    var pending: [Job] = []
    var running: Job?
    var lastUsed = Date()
    /// Seconds idle before unloading (0: never).
    var keepAlive: Double
    /// Validates and runs traces; made at the first trace.
    var traceRunner: TraceRunner?

    init(id: Int, key: String, loaded: LoadedModel, sites: [SiteInfo], keepAlive: Double) {
        self.id = id
        self.key = key
        self.loaded = loaded
        self.sites = sites
        self.siteNames = Set(sites.map { "\($0.site).\($0.io.rawValue)" })
        self.worker = DispatchQueue(label: "loupe.model.\(key)", qos: .userInitiated)
        self.keepAlive = keepAlive
    }

    var model: any LanguageModel { loaded.model }
    var isIdle: Bool { running == nil && pending.isEmpty }

    /// 1 for the job that runs next.
    func position(of job: Job) -> Int? {
        pending.firstIndex { $0 === job }.map { $0 + 1 }
    }
}

/// What a finished load hands back to the socket thread.
struct LoadResult: Sendable {
    let loaded: LoadedModel
    let sites: [SiteInfo]
}

/// A load under way, and the requests for the same weights that wait on it.
final class LoadInFlight {
    let key: String
    let source: String
    /// Each waiting job with the name it loads.
    var waiting: [(job: Job, name: String, keepAlive: Double?)] = []
    /// Stops the reading thread between two tensors once no job waits for it.
    let control = LoadControl()

    init(key: String, source: String) {
        self.key = key
        self.source = source
    }
}
