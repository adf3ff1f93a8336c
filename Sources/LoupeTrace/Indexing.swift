import LoupeTensor

/// One element of an index key, as numpy and PyTorch read `x[...]`.
public enum IndexItem: Sendable, Equatable {
    case int(Int)
    /// start, stop, step (nil: the default); step must be positive.
    case slice(Int?, Int?, Int?)
    case ellipsis
    /// None / newaxis: a new axis of size 1.
    case newAxis
    /// An integer list (advanced indexing): gathers, and so copies.
    case list([Int])

    /// Reads one key item: an integer, nil (newaxis), `"..."` or `{ellipsis: true}`, `":"`,
    /// `{slice: [start, stop, step]}` (each an integer or nil, 1 to 3 entries), or an array
    /// of integers.
    static func parse(_ value: TraceValue, node: Int, field: String) throws(TraceError) -> IndexItem {
        switch value {
        case .null: return .newAxis
        case .int, .double:
            guard let i = value.intValue else { throw TraceError(.badRequest, node: node, field: field, "an index must be an integer, got \(value)") }
            return .int(i)
        case .string("..."): return .ellipsis
        case .string(":"): return .slice(nil, nil, nil)
        case .array(let entries):
            var list = [Int]()
            for (i, entry) in entries.enumerated() {
                guard let n = entry.intValue else {
                    throw TraceError(.badRequest, node: node, field: "\(field).\(i)", "an integer list index holds integers only, got \(entry.typeName)")
                }
                list.append(n)
            }
            return .list(list)
        case .map(let fields):
            if fields["ellipsis"] != nil, fields.count == 1 { return .ellipsis }
            if let parts = fields["slice"], fields.count == 1 {
                guard let array = parts.arrayValue, (1...3).contains(array.count) else {
                    throw TraceError(.badRequest, node: node, field: field + ".slice", "a slice is [start, stop, step] with 1 to 3 entries, each an integer or nil")
                }
                var bounds = [Int?]()
                for (i, part) in array.enumerated() {
                    if part.isNull { bounds.append(nil); continue }
                    guard let n = part.intValue else {
                        throw TraceError(.badRequest, node: node, field: "\(field).slice.\(i)", "slice bounds are integers or nil, got \(part.typeName)")
                    }
                    bounds.append(n)
                }
                while bounds.count < 3 { bounds.append(nil) }
                // [stop] alone reads as Python's slice(stop).
                if array.count == 1 { return .slice(nil, bounds[0], nil) }
                if let step = bounds[2], step <= 0 {
                    throw TraceError(.badRequest, node: node, field: "\(field).slice.2", "slice step must be positive, got \(step)")
                }
                return .slice(bounds[0], bounds[1], bounds[2])
            }
            throw TraceError(.badRequest, node: node, field: field, "an index item is an integer, nil, \"...\", {slice: [...]} or an integer list; got a map with keys \(fields.keys.sorted())")
        default:
            throw TraceError(.badRequest, node: node, field: field, "an index item is an integer, nil, \"...\", {slice: [...]} or an integer list; got \(value.typeName)")
        }
    }

    /// A key: an array of items, or one item.
    static func parseKey(_ value: TraceValue, node: Int, field: String) throws(TraceError) -> [IndexItem] {
        if case .array(let items) = value {
            var key = [IndexItem]()
            for (i, item) in items.enumerated() { key.append(try parse(item, node: node, field: "\(field).\(i)")) }
            return key
        }
        return [try parse(value, node: node, field: field)]
    }
}

/// A key resolved against a shape: every index checked, slices clamped as Python does.
struct ResolvedIndex {
    enum Step: Equatable {
        case select(Int)
        case range(start: Int, count: Int, step: Int)
        case newAxis
        case list([Int])
    }

    let steps: [Step]
    /// The result's shape.
    let shape: [Int]
    /// With integer lists: each list's axis in the view that keeps it whole, the number of
    /// entries they pick (lists broadcast together, numpy's rule), and where that gathered
    /// axis goes in the result (in place when the advanced indices are adjacent, else first).
    let gather: (lists: [(viewAxis: Int, entries: [Int])], count: Int, resultAxis: Int)?

    /// True when the result is a view of the input (no integer list).
    var isView: Bool { gather == nil }

    init(_ key: [IndexItem], shape input: [Int], node: Int, field: String) throws(TraceError) {
        let consuming = key.filter { if case .newAxis = $0 { return false }; if case .ellipsis = $0 { return false }; return true }.count
        let ellipses = key.filter { $0 == .ellipsis }.count
        guard ellipses <= 1 else { throw TraceError(.badRequest, node: node, field: field, "an index key may hold one ellipsis") }
        guard consuming <= input.count else {
            throw TraceError(.indexOutOfRange, node: node, field: field, "too many indices (\(consuming)) for a tensor of shape \(input)")
        }
        var expanded = [IndexItem]()
        for item in key {
            if item == .ellipsis {
                expanded += Array(repeating: .slice(nil, nil, nil), count: input.count - consuming)
            } else {
                expanded.append(item)
            }
        }
        if ellipses == 0 { expanded += Array(repeating: .slice(nil, nil, nil), count: input.count - consuming) }

        var steps = [Step](), shape = [Int]()
        var axis = 0, viewDims = 0
        var lists = [(viewAxis: Int, entries: [Int])](), firstListAt: Int?
        var advanced = [Int]()  // positions in `expanded` of advanced items (lists, and integers when a list is present)
        let hasList = expanded.contains { if case .list = $0 { return true }; return false }
        for (position, item) in expanded.enumerated() {
            switch item {
            case .newAxis:
                steps.append(.newAxis)
                shape.append(1)
                viewDims += 1
            case .int(let i):
                let n = input[axis]
                let resolved = i < 0 ? i + n : i
                guard resolved >= 0 && resolved < n else {
                    throw TraceError(.indexOutOfRange, node: node, field: field, "index \(i) is out of range for dimension \(axis) of size \(n) (shape \(input))")
                }
                steps.append(.select(resolved))
                if hasList { advanced.append(position) }
                axis += 1
            case .slice(let start, let stop, let step):
                let n = input[axis], by = step ?? 1
                func clamp(_ v: Int?, _ fallback: Int) -> Int {
                    guard var v else { return fallback }
                    if v < 0 { v += n }
                    return Swift.min(Swift.max(v, 0), n)
                }
                let s = clamp(start, 0), e = clamp(stop, n)
                let count = e > s ? 1 + (e - s - 1) / by : 0
                steps.append(.range(start: s, count: count, step: by))
                shape.append(count)
                viewDims += 1
                axis += 1
            case .list(let entries):
                let n = input[axis]
                var resolved = [Int]()
                for i in entries {
                    let r = i < 0 ? i + n : i
                    guard r >= 0 && r < n else {
                        throw TraceError(.indexOutOfRange, node: node, field: field, "index \(i) is out of range for dimension \(axis) of size \(n) (shape \(input))")
                    }
                    resolved.append(r)
                }
                steps.append(.list(resolved))
                if firstListAt == nil { firstListAt = shape.count }
                lists.append((viewDims, resolved))
                advanced.append(position)
                viewDims += 1
                axis += 1
            case .ellipsis:
                break
            }
        }
        self.steps = steps
        if let firstListAt {
            let lengths = Set(lists.map(\.entries.count)).subtracting([1])
            guard lengths.count <= 1 else {
                throw TraceError(.shapeMismatch, node: node, field: field, "integer lists of lengths \(lists.map(\.entries.count)) cannot be broadcast together")
            }
            let count = lengths.first ?? 1
            let adjacent = advanced.max()! - advanced.min()! + 1 == advanced.count
            let resultAxis = adjacent ? firstListAt : 0
            var result = shape
            result.insert(count, at: resultAxis)
            self.shape = result
            self.gather = (lists, count, resultAxis)
        } else {
            self.shape = shape
            self.gather = nil
        }
    }

    /// The view the basic items select (an integer list's axis kept whole).
    func view(of t: Tensor) -> Tensor {
        var shape = t.shape, strides = t.strides, offset = t.offset
        var axis = 0
        for step in steps {
            switch step {
            case .select(let i):
                offset += i * strides[axis]
                shape.remove(at: axis)
                strides.remove(at: axis)
            case .range(let start, let count, let by):
                offset += start * strides[axis]
                shape[axis] = count
                if count > 1 { strides[axis] *= by }
                axis += 1
            case .newAxis:
                shape.insert(1, at: axis)
                strides.insert(0, at: axis)
                axis += 1
            case .list:
                axis += 1
            }
        }
        return Tensor(storage: t.storage, shape: shape, strides: strides, offset: offset)
    }

    /// Entry k of the lists picked out of the view (list axes selected, last axis first).
    private func pick(_ v: Tensor, _ k: Int) -> Tensor {
        var t = v
        for (axis, entries) in gather!.lists.sorted(by: { $0.viewAxis > $1.viewAxis }) {
            t = t.select(axis: axis, entries.count == 1 ? entries[0] : entries[k])
        }
        return t
    }

    /// x[key]: a view, or a gathered copy with integer lists.
    func read(_ t: Tensor) -> Tensor {
        let v = view(of: t)
        guard let gather else { return v }
        if gather.count == 0 { return Tensor(zeros: shape) }
        let parts = (0..<gather.count).map { TensorMath.unsqueeze(pick(v, $0), gather.resultAxis) }
        return TensorMath.cat(parts, dim: gather.resultAxis)
    }

    /// x[key] = value (value already checked to broadcast to `shape`).
    func write(_ value: Tensor, into t: Tensor) {
        let v = view(of: t)
        let source = TensorMath.broadcast(value, to: shape)
        guard let gather else {
            assignSafely(v, source)
            return
        }
        let sources = (0..<gather.count).map { source.select(axis: gather.resultAxis, $0).copy() }
        for (k, s) in sources.enumerated() { assignSafely(pick(v, k), s) }
    }
}

/// target.assign(from: source), through a copy when the two share storage (so an
/// overlapping read never sees a half-written value).
func assignSafely(_ target: Tensor, _ source: Tensor) {
    guard target.count > 0 else { return }
    if source.storage === target.storage {
        if source.offset == target.offset && source.strides == target.strides && source.shape == target.shape { return }
        target.assign(from: source.copy())
    } else {
        target.assign(from: source)
    }
}
