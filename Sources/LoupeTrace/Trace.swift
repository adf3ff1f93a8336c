import LoupeTensor

/// A trace: invocations (token ids) and nodes in order. Built from a `TraceValue` (a
/// decoded request) or directly in Swift; `TRACE.md` is the schema.
public struct Trace {
    public var invocations: [[Int]]
    /// Each node a map: `{id, op, ...fields}`.
    public var nodes: [TraceValue]

    public init(invocations: [[Int]], nodes: [TraceValue]) {
        self.invocations = invocations
        self.nodes = nodes
    }

    /// Reads `{invokes: [...], nodes: [...]}`. An invocation is `{tokens: [ids]}`, a bare
    /// array of ids, or `{prompt: text}` when `tokenize` is given (the caller's tokenizer).
    public init(_ value: TraceValue, tokenize: ((String) throws -> [Int])? = nil) throws(TraceError) {
        guard case .map(let fields) = value else {
            throw TraceError(.badRequest, "a trace is a map with invokes and nodes, got \(value.typeName)")
        }
        guard let invokes = fields["invokes"]?.arrayValue, !invokes.isEmpty else {
            throw TraceError(.badRequest, field: "invokes", "invokes must be a non-empty array of invocations")
        }
        var invocations = [[Int]]()
        for (i, invoke) in invokes.enumerated() {
            let field = "invokes.\(i)"
            var tokensValue: TraceValue? = invoke.arrayValue != nil ? invoke : invoke["tokens"]
            if tokensValue == nil, let prompt = invoke["prompt"]?.stringValue {
                guard let tokenize else {
                    throw TraceError(.badRequest, field: field + ".prompt", "this model takes token ids only: send tokens, not a prompt")
                }
                do { tokensValue = .array(try tokenize(prompt).map { .int($0) }) } catch {
                    throw TraceError(.badRequest, field: field + ".prompt", "could not tokenize the prompt: \(error)")
                }
            }
            // Token ids sent as a tensor ([n] or [1, n]; an i32/i64 tensor arrives as whole floats).
            if let tensor = tokensValue?.tensorValue {
                guard tensor.rank == 1 || (tensor.rank == 2 && tensor.shape[0] == 1) else {
                    throw TraceError(.badRequest, field: field + ".tokens", "a tokens tensor has shape [n] or [1, n], got \(tensor.shape)")
                }
                tokensValue = .array(tensor.toArray().map { $0.rounded() == $0 && abs($0) < 1e9 ? .int(Int($0)) : .double(Double($0)) })
            }
            guard let list = tokensValue?.arrayValue else {
                throw TraceError(.badRequest, field: field, "an invocation is {tokens: [ids]} or {prompt: text}")
            }
            var ids = [Int]()
            for (j, token) in list.enumerated() {
                guard let id = token.intValue else {
                    throw TraceError(.badRequest, field: "\(field).tokens.\(j)", "token ids are integers, got \(token.typeName)")
                }
                ids.append(id)
            }
            invocations.append(ids)
        }
        guard let nodes = fields["nodes"]?.arrayValue else {
            throw TraceError(.badRequest, field: "nodes", "nodes must be an array of node maps")
        }
        self.init(invocations: invocations, nodes: nodes)
    }
}

/// What a trace run returns.
public struct TraceResult: @unchecked Sendable {
    /// Saved values by name, each a contiguous copy.
    public let saved: [String: Tensor]
    /// The names in the order their `save` nodes appear.
    public let names: [String]
    /// Where logits were computed: every position, only the last, or nowhere.
    public let logits: LogitMode
    /// Token slots of the batch: invocations x padded length.
    public let slots: Int
    /// Batch rows in the last layer (invocations with equal tokens share a row until
    /// something writes one of them).
    public let rows: Int
    /// Token-layers computed (rows x padded length, summed over layers), and what the plain
    /// batch, one row per invocation, computes.
    public let tokenLayers: Int
    public let plainTokenLayers: Int
    /// What the backward held, when the trace has one.
    public let backward: BackwardStats?

    public subscript(name: String) -> Tensor? { saved[name] }
}

/// A backward's memory, as its gradient tape counted it.
public struct BackwardStats: Sendable {
    /// Bytes the records copied for the backward.
    public let savedBytes: Int
    /// The most the records and the gradients held at once.
    public let peakBytes: Int
    /// Ops recorded.
    public let records: Int
    /// The bound a limit checked before the pass (`CompiledTrace.backwardBytes`).
    public let boundBytes: Int
}

public enum LogitMode: String, Sendable {
    case all, last, none
}
