import Foundation
import Synchronization

// Reverse-mode gradients of activations (never of weights), recorded while a forward pass
// runs. Every kernel that computes with activations records, when a tape is recording on
// its thread and one of its inputs is tracked, how to send its output's gradient back to
// its inputs; `GradientTape.backward` then replays those records in reverse.
//
// Tensors are views of shared storage and many kernels work in place, so gradients are kept
// per storage, not per tensor: each tracked storage has one gradient buffer of its size, and a
// view's gradient is the same view of that buffer. Views therefore need no record at all. An
// op that writes a storage in place turns, going backwards, the gradient of the storage after
// the write into the gradient before it, in the same buffer. What a backward needs of an
// input is copied when the op runs (`save`), because the input may be written later.

/// A view of a storage as a record keeps it: which storage, and where in it. It does not keep
/// the storage alive (a record must not hold on to the forward pass's memory).
public struct GradientView: Sendable {
    let storage: UInt64
    let storageCount: Int
    public let shape: [Int]
    let strides: [Int]
    let offset: Int

    public init(_ t: Tensor) {
        storage = t.storage.id
        storageCount = t.storage.count
        shape = t.shape
        strides = t.strides
        offset = t.offset
    }

    var count: Int { shape.reduce(1, *) }
}

/// Why a backward could not run, naming what stopped it.
public struct GradientError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The gradients a backward pass has accumulated so far, one buffer per tracked storage.
public final class Gradients {
    private var buffers: [UInt64: TensorStorage] = [:]
    private(set) var bytes = 0
    private(set) var peakBytes = 0

    /// The gradient that has reached `view`, as a view of its storage's buffer (written
    /// through: in-place ops transform it there); nil when none has.
    public func of(_ view: GradientView) -> Tensor? {
        guard let buffer = buffers[view.storage] else { return nil }
        return Tensor(storage: buffer, shape: view.shape, strides: view.strides, offset: view.offset)
    }

    /// The gradient buffer's view for `view`, created (zero) if none has reached it yet.
    public func buffer(_ view: GradientView) -> Tensor {
        if buffers[view.storage] == nil {
            buffers[view.storage] = TensorStorage(count: view.storageCount)
            bytes += 4 * view.storageCount
            peakBytes = max(peakBytes, bytes)
        }
        return of(view)!
    }

    /// Adds `gradient` (of `view`'s shape, any strides) to the gradient of `view`. Elements a
    /// view repeats (stride 0: a broadcast) receive the sum of theirs.
    public func add(_ gradient: Tensor, to view: GradientView) {
        precondition(gradient.shape == view.shape, "gradient \(gradient.shape) for a value of shape \(view.shape)")
        let target = buffer(view)
        if target.isContiguous && gradient.isContiguous {
            let t = target.data, g = gradient.data
            for i in 0..<target.count { t[i] += g[i] }
            return
        }
        if target.rank == 2 && target.strides[1] == 1 && target.strides[0] > 0 && gradient.isContiguous {  // a column slice
            let (rows, columns, stride) = (target.shape[0], target.shape[1], target.strides[0])
            for row in 0..<rows {
                let t = target.data + row * stride, g = gradient.data + row * columns
                for i in 0..<columns { t[i] += g[i] }
            }
            return
        }
        let to = TensorMath.offsets(target), from = TensorMath.offsets(gradient)
        let t = target.storage.pointer, g = gradient.storage.pointer
        for i in 0..<to.count { t[to[i]] += g[from[i]] }
    }

    /// Accumulates into `view`'s gradient through a contiguous matrix: `body` adds (+=) into
    /// the matrix it is given, which is the buffer itself when the view is contiguous.
    public func accumulate(_ view: GradientView, _ body: (Tensor) -> Void) {
        let target = buffer(view)
        if target.isContiguous {
            body(target)
        } else {
            let scratch = Tensor(zeros: view.shape)
            body(scratch)
            add(scratch, to: view)
        }
    }

    /// Sets the gradient of `view` to zero (a value overwritten in the forward pass had no
    /// effect past that point).
    public func clear(_ view: GradientView) {
        of(view)?.fill(0)
    }

    func release(_ storage: UInt64) {
        if let buffer = buffers.removeValue(forKey: storage) { bytes -= 4 * buffer.count }
    }
}

/// The records of one forward pass, and its backward.
public final class GradientTape: @unchecked Sendable {
    /// How one op sends gradient back; `touches` are the storages it reads or writes the gradient of.
    private struct Record {
        let touches: [UInt64]
        let backward: (Gradients) throws -> Void
    }

    private var records: [Record] = []
    private var tracked: Set<UInt64> = []
    /// Bytes of inputs copied for the backward, now and at most.
    public private(set) var savedBytes = 0
    /// The most memory the records and gradient buffers held at once.
    public private(set) var peakBytes = 0
    /// The ops recorded (probes included, marks not).
    public private(set) var recordCount = 0

    public init() {}

    /// Runs `body` with this tape recording every op on this thread.
    public func recording<T>(_ body: () throws -> T) rethrows -> T {
        precondition(GradientTape.current == nil, "one tape records at a time on a thread")
        GradientTape.setCurrent(self)
        defer { GradientTape.setCurrent(nil) }
        return try body()
    }

    /// The tape recording on this thread, if any.
    public static var current: GradientTape? {
        guard let pointer = pthread_getspecific(tapeKey) else { return nil }
        return Unmanaged<GradientTape>.fromOpaque(pointer).takeUnretainedValue()
    }

    private static func setCurrent(_ tape: GradientTape?) {
        pthread_setspecific(tapeKey, tape.map { Unmanaged.passUnretained($0).toOpaque() })
    }

    /// True when `t`'s values depend on the pass's activations.
    public func isTracked(_ t: Tensor) -> Bool { tracked.contains(t.storage.id) }

    /// Marks `t`'s storage as an activation: what the gradient is taken with respect to
    /// starts here (the token embeddings).
    public func track(_ t: Tensor) { tracked.insert(t.storage.id) }

    /// A private copy of `t` for a backward to read later, counted in `savedBytes`.
    public func save(_ t: Tensor) -> Tensor {
        let copy = Tensor(zeros: t.shape)
        copy.assignElements(from: t)
        savedBytes += 4 * t.count
        peakBytes = max(peakBytes, savedBytes)
        return copy
    }

    /// Records an op that read `inputs` and wrote `output` (a new tensor, or one of the
    /// inputs written in place), when a tape records on this thread and any input is tracked.
    /// `make` builds the backward then (saving what it needs); it gets the gradients and
    /// returns nothing.
    @inline(__always)
    public static func record(_ output: Tensor, from inputs: [Tensor],
                              _ make: (GradientTape) -> (Gradients) throws -> Void) {
        guard let tape = current, inputs.contains(where: tape.isTracked) else { return }
        tape.append(output: output, inputs: inputs, make(tape))
    }

    /// Records a probe: `body` runs at this point of the backward (a trace reading or
    /// replacing the gradient of a value as it flows past).
    public func probe(_ value: Tensor, _ body: @escaping (Gradients) throws -> Void) {
        append(output: value, inputs: [], body)
    }

    /// Records a point of the backward where `body` runs, touching no gradient: a caller
    /// marking where its own ops begin and end (to say whose op a failing record was), or
    /// where a layer's backward is done (to stop a cancelled one). Not counted in `recordCount`.
    public func mark(_ body: @escaping () throws -> Void) {
        records.append(Record(touches: [], backward: { _ in try body() }))
    }

    private func append(output: Tensor, inputs: [Tensor], _ backward: @escaping (Gradients) throws -> Void) {
        tracked.insert(output.storage.id)
        records.append(Record(touches: [output.storage.id] + inputs.map(\.storage.id), backward: backward))
        recordCount += 1
    }

    /// Sends the gradient `seed` of `output` (usually 1, of a scalar) back through every
    /// record, newest first, freeing each record and each gradient buffer once nothing
    /// earlier needs it. Records copy nothing more; the tape is spent afterwards.
    public func backward(from output: Tensor, seed: Tensor) throws {
        precondition(GradientTape.current !== self, "backward runs after recording")
        guard isTracked(output) else { throw GradientError("the value does not depend on the model's activations") }
        let gradients = Gradients()
        gradients.add(seed, to: GradientView(output))
        // The first record touching each storage: once the backward, going from the last
        // record to the first, has run it, the storage's gradient is not needed again.
        var firstUse = [UInt64: Int]()
        for (i, record) in records.enumerated() {
            for storage in record.touches where firstUse[storage] == nil { firstUse[storage] = i }
        }
        var releaseAt = [Int: [UInt64]]()
        for (storage, i) in firstUse { releaseAt[i, default: []].append(storage) }
        let saved = savedBytes
        while let record = records.popLast() {
            try record.backward(gradients)
            for storage in releaseAt[records.count] ?? [] { gradients.release(storage) }
            peakBytes = max(peakBytes, saved + gradients.peakBytes)
        }
        tracked.removeAll()
    }
}

private let tapeKey: pthread_key_t = {
    var key = pthread_key_t()
    pthread_key_create(&key, nil)
    return key
}()
