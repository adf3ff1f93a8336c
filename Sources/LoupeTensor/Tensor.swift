import Foundation
import Synchronization

/// The memory behind one or more tensors: float32, either owned (zeroed)
/// or borrowed from something that outlives it (an mmap'd weight file, say).
public final class TensorStorage: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int
    /// Unique for the life of the process: gradients are kept per storage (Gradients.swift).
    public let id: UInt64 = TensorStorage.nextID.add(1, ordering: .relaxed).newValue
    private static let nextID = Atomic<UInt64>(0)
    /// Keeps a borrowed region alive (an mmap'd file); nil when the storage owns its memory.
    private let owner: AnyObject?

    /// Fresh, zero-filled memory for `count` floats. calloc hands out large blocks as fresh
    /// zero pages, so a big output that a kernel overwrites is not written twice.
    public init(count: Int) {
        guard let raw = calloc(max(count, 1), MemoryLayout<Float>.stride) else {
            fatalError("out of memory allocating \(count) floats")
        }
        self.pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        self.count = count
        self.owner = nil
    }

    /// Memory that belongs to `owner`, which this storage keeps alive.
    public init(borrowing pointer: UnsafeMutablePointer<Float>, count: Int, owner: AnyObject) {
        self.pointer = pointer
        self.count = count
        self.owner = owner
    }

    deinit {
        if owner == nil { free(pointer) }
    }
}

/// A float32 tensor: a strided, row-major view onto shared storage.
///
/// Views (`reshaped`, `transposed`, `slice`, `permuted`) share storage and copy nothing;
/// writing through one view is seen by every other view of the same storage. Kernels take
/// contiguous tensors; `contiguous()` copies only when the view is not.
public struct Tensor: @unchecked Sendable, CustomStringConvertible {
    public let storage: TensorStorage
    public private(set) var shape: [Int]
    public private(set) var strides: [Int]
    public private(set) var offset: Int

    public init(storage: TensorStorage, shape: [Int], strides: [Int]? = nil, offset: Int = 0) {
        self.storage = storage
        self.shape = shape
        self.strides = strides ?? Tensor.contiguousStrides(for: shape)
        self.offset = offset
    }

    /// A new zero-filled tensor.
    public init(zeros shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.init(storage: TensorStorage(count: shape.reduce(1, *)), shape: shape)
    }

    /// A new tensor holding a copy of `values` (row-major).
    public init(shape: [Int], values: [Float]) {
        precondition(shape.reduce(1, *) == values.count, "shape \(shape) does not hold \(values.count) values")
        self.init(zeros: shape)
        values.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { storage.pointer.update(from: base, count: values.count) }
        }
    }

    public static func contiguousStrides(for shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var step = 1
        for axis in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[axis] = step
            step *= shape[axis]
        }
        return strides
    }

    public var rank: Int { shape.count }
    public var count: Int { shape.reduce(1, *) }
    public var isContiguous: Bool { strides == Tensor.contiguousStrides(for: shape) || count <= 1 }

    /// The first element of this view. Kernels that read or write a contiguous tensor use it.
    public var data: UnsafeMutablePointer<Float> { storage.pointer + offset }

    /// Rows when the tensor is seen as a matrix of its last dimension.
    public var rowCount: Int { shape.isEmpty ? 1 : count / max(shape[shape.count - 1], 1) }
    public var columnCount: Int { shape.last ?? 1 }

    // MARK: Element access (slow; for tests and small glue code)

    public subscript(_ index: [Int]) -> Float {
        get { storage.pointer[flatOffset(index)] }
        nonmutating set { storage.pointer[flatOffset(index)] = newValue }
    }

    public subscript(_ index: Int...) -> Float {
        get { self[index] }
        nonmutating set { self[index] = newValue }
    }

    private func flatOffset(_ index: [Int]) -> Int {
        precondition(index.count == rank, "index \(index) for shape \(shape)")
        var position = offset
        for (axis, i) in index.enumerated() {
            precondition(i >= 0 && i < shape[axis], "index \(index) out of range for shape \(shape)")
            position += i * strides[axis]
        }
        return position
    }

    /// All elements in row-major order.
    public func toArray() -> [Float] {
        if isContiguous { return Array(UnsafeBufferPointer(start: data, count: count)) }
        return contiguous().toArray()
    }

    // MARK: Views

    /// The same elements under another shape; one dimension may be -1. Copies only if the
    /// view is not contiguous.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var resolved = newShape
        if let wildcard = newShape.firstIndex(of: -1) {
            let known = newShape.enumerated().filter { $0.offset != wildcard }.map(\.element).reduce(1, *)
            precondition(known > 0 && count % known == 0, "cannot reshape \(shape) to \(newShape)")
            resolved[wildcard] = count / known
        }
        precondition(resolved.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        let source = isContiguous ? self : contiguous()
        return Tensor(storage: source.storage, shape: resolved, offset: source.offset)
    }

    /// Swaps two axes (a view).
    public func transposed(_ a: Int, _ b: Int) -> Tensor {
        var order = Array(0..<rank)
        order.swapAt(a, b)
        return permuted(order)
    }

    /// Reorders the axes (a view): axis i of the result is axis `order[i]` of this tensor.
    public func permuted(_ order: [Int]) -> Tensor {
        precondition(order.sorted() == Array(0..<rank), "bad permutation \(order) for rank \(rank)")
        return Tensor(storage: storage, shape: order.map { shape[$0] }, strides: order.map { strides[$0] }, offset: offset)
    }

    /// Elements `range` along `axis` (a view).
    public func slice(axis: Int, _ range: Range<Int>) -> Tensor {
        precondition(range.lowerBound >= 0 && range.upperBound <= shape[axis], "slice \(range) out of range for axis \(axis) of \(shape)")
        var result = self
        result.offset += range.lowerBound * strides[axis]
        result.shape[axis] = range.count
        return result
    }

    /// Element `index` along `axis`, removing that axis (a view).
    public func select(axis: Int, _ index: Int) -> Tensor {
        var result = slice(axis: axis, index..<(index + 1))
        result.shape.remove(at: axis)
        result.strides.remove(at: axis)
        return result
    }

    /// A contiguous copy (or self when already contiguous).
    public func contiguous() -> Tensor {
        if isContiguous { return self }
        return copy()
    }

    /// A contiguous copy that shares nothing with this tensor.
    public func copy() -> Tensor {
        let result = Tensor(zeros: shape)
        result.assign(from: self)
        return result
    }

    /// A new tensor whose row i (along the first axis) is this one's row `order[i]`.
    public func gatheringRows(_ order: [Int]) -> Tensor {
        let source = contiguous(), width = count / max(shape.first ?? 1, 1)
        precondition(order.count == shape.first ?? 1, "\(order.count) rows for shape \(shape)")
        let result = Tensor(zeros: shape)
        for (to, from) in order.enumerated() { (result.data + to * width).update(from: source.data + from * width, count: width) }
        return result
    }

    /// A contiguous copy that no gradient passes through: what a recorder keeps.
    public func detachedCopy() -> Tensor {
        let result = Tensor(zeros: shape)
        result.assignElements(from: self)
        return result
    }

    /// Writes `source` (same shape, any strides) into this view. Going backwards, the
    /// gradient of what this view held goes to `source`, and the view's own becomes zero.
    public func assign(from source: Tensor) {
        precondition(source.shape == shape, "cannot assign \(source.shape) into \(shape)")
        GradientTape.record(self, from: [source, self]) { _ in
            let (target, from) = (GradientView(self), GradientView(source))
            return { g in
                guard let flowing = g.of(target) else { return }
                g.add(flowing, to: from)
                flowing.fill(0)
            }
        }
        assignElements(from: source)
    }

    /// `assign` without recording a gradient.
    func assignElements(from source: Tensor) {
        if isContiguous && source.isContiguous {
            data.update(from: source.data, count: count)
            return
        }
        guard count > 0 else { return }
        // Walk all but the last axis; copy the innermost run with its own strides.
        let inner = shape.last ?? 1
        let dstInner = strides.last ?? 1, srcInner = source.strides.last ?? 1
        var index = [Int](repeating: 0, count: max(rank - 1, 0))
        let outerCount = count / max(inner, 1)
        for _ in 0..<outerCount {
            var dst = offset, src = source.offset
            for (axis, i) in index.enumerated() {
                dst += i * strides[axis]
                src += i * source.strides[axis]
            }
            let d = storage.pointer + dst, s = source.storage.pointer + src
            for j in 0..<inner { d[j * dstInner] = s[j * srcInner] }
            // Advance the multi-index, last outer axis fastest.
            var axis = index.count - 1
            while axis >= 0 {
                index[axis] += 1
                if index[axis] < shape[axis] { break }
                index[axis] = 0
                axis -= 1
            }
        }
    }

    /// Sets every element of this view to `value` (its gradient, going backwards, to zero).
    public func fill(_ value: Float) {
        GradientTape.record(self, from: [self]) { _ in
            let target = GradientView(self)
            return { g in g.clear(target) }
        }
        if isContiguous {
            data.update(repeating: value, count: count)
        } else {
            assignElements(from: Tensor(shape: shape, values: [Float](repeating: value, count: count)))
        }
    }

    public var description: String {
        let preview = toArray().prefix(8).map { String(format: "%.4f", $0) }.joined(separator: ", ")
        return "Tensor(\(shape)) [\(preview)\(count > 8 ? ", ..." : "")]"
    }
}
