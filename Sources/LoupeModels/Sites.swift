import LoupeTensor

/// Which side of a module a site sits on: the value going in or the value coming out.
public enum SiteIO: String, Sendable, Codable, CaseIterable {
    case input, output
}

/// A place in the forward pass where an activation can be read or replaced: a module's
/// HF path (`transformer.h.5.attn.c_proj`) or a canonical name (`blocks.5.attn.z`) and a side.
public struct Site: Hashable, Sendable, CustomStringConvertible {
    public let path: String
    public let io: SiteIO

    public init(_ path: String, _ io: SiteIO) {
        self.path = path
        self.io = io
    }

    public var description: String { "\(path).\(io.rawValue)" }
}

/// Observes, and may change, activations while a forward pass runs.
///
/// The forward pass asks `wants` before it builds anything for a site, so sites nobody
/// asked for cost one call. `visit` is called at every wanted site in the model's order,
/// with the whole batch's value; it may write into `value` or replace it with a tensor of
/// the same shape.
public protocol ForwardHooks: AnyObject {
    func wants(_ site: Site) -> Bool
    func visit(_ site: Site, _ value: inout Tensor) throws
}

/// A hook set that records a copy of the value at each site it was given.
public final class ActivationRecorder: ForwardHooks {
    public let sites: Set<Site>
    public private(set) var values: [Site: Tensor] = [:]

    public init(_ sites: [Site]) { self.sites = Set(sites) }

    public func wants(_ site: Site) -> Bool { sites.contains(site) }

    public func visit(_ site: Site, _ value: inout Tensor) throws {
        values[site] = value.copy()
    }
}
