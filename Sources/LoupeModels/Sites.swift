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

/// The sites every architecture may provide under one name, whatever its HF module paths:
/// TransformerLens's hook points, each the output of a place in block `L` (`blocks.L.*`) or
/// of the whole model (`logits`). An adapter declares the kinds it provides
/// (`LanguageModel.canonicalSites`); asking a model for one it does not provide is a typed
/// error naming the site and the architecture.
public enum CanonicalSite: Hashable, Sendable, CustomStringConvertible {
    case residPre(Int), residMid(Int), residPost(Int), attnOut(Int), mlpOut(Int), mlpHidden(Int)
    case q(Int), k(Int), v(Int), z(Int), pattern(Int)
    case logits

    /// The hook points, with what each holds and its shape as hooks see it.
    public enum Kind: String, CaseIterable, Sendable {
        case residPre = "resid_pre", residMid = "resid_mid", residPost = "resid_post"
        case attnOut = "attn_out", mlpOut = "mlp_out", mlpHidden = "mlp.hidden"
        case q = "attn.q", k = "attn.k", v = "attn.v", z = "attn.z", pattern = "attn.pattern"
        case logits

        public var meaning: String {
            switch self {
            case .residPre: return "the residual stream entering the block"
            case .residMid: return "the residual stream between attention and MLP (with a parallel block, where the architecture documents it)"
            case .residPost: return "the residual stream leaving the block"
            case .attnOut: return "what attention adds to the residual stream (after any post-norm)"
            case .mlpOut: return "what the MLP adds to the residual stream (after any post-norm)"
            case .mlpHidden: return "the MLP's hidden units (its neurons): the output projection's input, after the activation and any gate"
            case .q: return "queries per head, after RoPE"
            case .k: return "keys per key/value head, after RoPE"
            case .v: return "values per key/value head"
            case .z: return "each head's attention-weighted values: the output projection's input"
            case .pattern: return "attention probabilities per head"
            case .logits: return "the model's logits: the unembedding's output, after any final soft-cap"
            }
        }

        /// The shape hooks see, symbolically.
        public var shape: String {
            switch self {
            case .residPre, .residMid, .residPost, .attnOut, .mlpOut: return "[batch, pos, d_model]"
            case .q, .z: return "[batch, pos, head, d_head]"
            case .k, .v: return "[batch, pos, kv_head, d_head]"
            case .pattern: return "[batch, head, query_pos, key_pos]"
            case .mlpHidden: return "[batch, pos, d_mlp]"
            case .logits: return "[batch, pos, d_vocab]"
            }
        }

        /// The shape with SiteInfo's symbolic dims (`batchDim`, `sequenceDim`) and the model's sizes.
        public func shape(_ d: ModelDimensions) -> [Int] {
            let (batch, pos) = (SiteInfo.batchDim, SiteInfo.sequenceDim)
            switch self {
            case .residPre, .residMid, .residPost, .attnOut, .mlpOut: return [batch, pos, d.hidden]
            case .q, .z: return [batch, pos, d.heads, d.headDim]
            case .k, .v: return [batch, pos, d.keyValueHeads, d.headDim]
            case .pattern: return [batch, d.heads, pos, pos]
            case .mlpHidden: return [batch, pos, d.intermediate]
            case .logits: return [batch, pos, d.vocabulary]
            }
        }

        /// Every kind but `logits` sits in a block.
        public static let perLayer = allCases.filter { $0 != .logits }
    }

    public init(_ kind: Kind, layer: Int) {
        switch kind {
        case .residPre: self = .residPre(layer)
        case .residMid: self = .residMid(layer)
        case .residPost: self = .residPost(layer)
        case .attnOut: self = .attnOut(layer)
        case .mlpOut: self = .mlpOut(layer)
        case .mlpHidden: self = .mlpHidden(layer)
        case .q: self = .q(layer)
        case .k: self = .k(layer)
        case .v: self = .v(layer)
        case .z: self = .z(layer)
        case .pattern: self = .pattern(layer)
        case .logits: self = .logits
        }
    }

    /// A canonical site's output, parsed from its name; nil for any other site.
    public init?(_ site: Site) {
        guard site.io == .output else { return nil }
        if site.path == Kind.logits.rawValue { self = .logits; return }
        let parts = site.path.split(separator: ".", maxSplits: 2).map(String.init)
        guard parts.count == 3, parts[0] == "blocks", let layer = Int(parts[1]), layer >= 0, String(layer) == parts[1],
              let kind = Kind(rawValue: parts[2]), kind != .logits else { return nil }
        self.init(kind, layer: layer)
    }

    public var kind: Kind {
        switch self {
        case .residPre: return .residPre
        case .residMid: return .residMid
        case .residPost: return .residPost
        case .attnOut: return .attnOut
        case .mlpOut: return .mlpOut
        case .mlpHidden: return .mlpHidden
        case .q: return .q
        case .k: return .k
        case .v: return .v
        case .z: return .z
        case .pattern: return .pattern
        case .logits: return .logits
        }
    }

    /// The block it sits in; nil for `logits`.
    public var layer: Int? {
        switch self {
        case .residPre(let l), .residMid(let l), .residPost(let l), .attnOut(let l), .mlpOut(let l), .mlpHidden(let l),
             .q(let l), .k(let l), .v(let l), .z(let l), .pattern(let l): return l
        case .logits: return nil
        }
    }

    public var path: String { layer.map { "blocks.\($0).\(kind.rawValue)" } ?? kind.rawValue }
    public var site: Site { Site(path, .output) }
    public var description: String { path }
}
