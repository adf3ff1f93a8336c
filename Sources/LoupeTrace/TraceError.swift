/// Why a trace was refused or failed. `code` is one of the protocol's error codes, so the
/// daemon passes it through unchanged; `node` is the id of the node at fault (nil when the
/// fault is in the invocations or the trace as a whole); `field` is a dotted path into the
/// request (`nodes.3.key.1`).
public struct TraceError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable, CaseIterable {
        /// A field missing or of the wrong type or value; a reference to a node not defined
        /// before it (which also rules out cycles); a node without a value used as one.
        case badRequest = "bad_request"
        /// A node's `op` is not in the trace language.
        case unknownOp = "unknown_op"
        /// A site the model does not have.
        case unknownSite = "unknown_site"
        /// An intervention name nobody registered.
        case unknownIntervention = "unknown_intervention"
        /// Shapes that cannot be combined: assignment, broadcasting, matmul, reshape, cat.
        case shapeMismatch = "shape_mismatch"
        /// An index, position, layer, head, dimension or invocation outside its range.
        case indexOutOfRange = "index_out_of_range"
        /// A write to a site's value that could only happen after the forward pass has
        /// passed that site (its value depends on a later site, or a later invocation's
        /// value at an earlier site).
        case outOfOrder = "out_of_order"
        /// Over a limit (too many tokens, too many nodes).
        case tooLarge = "too_large"
    }

    public let code: Code
    public let node: Int?
    public let field: String?
    public let message: String

    public init(_ code: Code, node: Int? = nil, field: String? = nil, _ message: String) {
        self.code = code
        self.node = node
        self.field = field
        self.message = message
    }

    public var description: String {
        (node.map { "node \($0): " } ?? "") + message + " [\(code.rawValue)" + (field.map { ", \($0)" } ?? "") + "]"
    }
}
