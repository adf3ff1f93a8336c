import Foundation
import LoupeTensor

/// A whole file mapped into memory (PROT_READ|PROT_WRITE, MAP_PRIVATE): tensors can borrow
/// it without copying, and writes through such a tensor stay private to this process.
/// Unmapped when the last tensor borrowing it (and the reader) are gone.
final class MappedFile: @unchecked Sendable {
    let path: String
    /// The file's bytes; empty (nil base) for an empty file, which mmap cannot map.
    let bytes: UnsafeRawBufferPointer
    /// The load reading this file, if any may cancel it.
    let control: LoadControl?

    init(path: String, control: LoadControl? = nil) throws {
        self.path = path
        self.control = control
        let (fd, size) = try openRegularFile(path)
        defer { close(fd) }
        guard size > 0 else {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0), base != MAP_FAILED else {
            throw FormatError(.io, file: path, "cannot map \(size) bytes: \(String(cString: strerror(errno)))")
        }
        bytes = UnsafeRawBufferPointer(start: base, count: size)
    }

    var count: Int { bytes.count }

    /// Tensor `name` of `shape` stored at `offset` (bounds-checked by the caller), converted to
    /// float32 by `converter`, once its load is known to go on.
    func tensor(_ name: String, shape: [Int], at offset: Int, converter: BlockConverter) throws -> Tensor {
        try control?.check()
        return converter.tensor(shape: shape, at: offset, in: self)
    }

    /// A pointer `offset` bytes in; the caller has checked `offset + length <= count`.
    func pointer(at offset: Int) -> UnsafeRawPointer { bytes.baseAddress! + offset }

    /// Hands back to the kernel the pages wholly inside `count` bytes at `offset` (bounds-checked
    /// by the caller), which a tensor was converted from and nothing borrows: they leave the
    /// resident set. Still readable: an untouched private page is read again from the file.
    func release(at offset: Int, count: Int) {
        guard let base = bytes.baseAddress, count > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (Int(bitPattern: base) + offset + page - 1) / page * page
        let end = (Int(bitPattern: base) + offset + count) / page * page
        guard end > start, let pointer = UnsafeMutableRawPointer(bitPattern: start) else { return }
        madvise(pointer, end - start, MADV_DONTNEED)
    }

    deinit {
        if let base = bytes.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), bytes.count) }
    }
}

/// Opens `path` for reading when it is a regular file, and says its size. Anything else (a
/// FIFO, a socket, a device, a directory) is refused before it is read: opening a FIFO
/// without O_NONBLOCK waits for a writer that may never come, and a device may never end.
func openRegularFile(_ path: String) throws -> (descriptor: Int32, size: Int) {
    let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
    guard fd >= 0 else { throw FormatError(.io, file: path, "cannot open: \(String(cString: strerror(errno)))") }
    var info = stat()
    guard fstat(fd, &info) == 0 else {
        let message = String(cString: strerror(errno))
        close(fd)
        throw FormatError(.io, file: path, "cannot stat: \(message)")
    }
    guard (info.st_mode & S_IFMT) == S_IFREG else {
        close(fd)
        throw FormatError(.io, file: path, "not a regular file (\(fileKind(info.st_mode))); Loupe reads model files only from regular files")
    }
    return (fd, Int(info.st_size))
}

private func fileKind(_ mode: mode_t) -> String {
    switch mode & S_IFMT {
    case S_IFDIR: return "a directory"
    case S_IFIFO: return "a FIFO"
    case S_IFSOCK: return "a socket"
    case S_IFCHR: return "a character device"
    case S_IFBLK: return "a block device"
    default: return "mode \(String(mode, radix: 8))"
    }
}

/// The whole of a small regular file (a config, an index or a tokenizer file); refused
/// without reading when it is not a regular file or is over `limit` bytes.
public func readRegularFile(_ path: String, limit: Int = maximumTextFileBytes) throws -> [UInt8] {
    let (fd, size) = try openRegularFile(path)
    defer { close(fd) }
    guard size <= limit else {
        throw FormatError(.badValue, file: path, "\(size) bytes is more than the \(limit) a file of this kind may hold")
    }
    var bytes = [UInt8](repeating: 0, count: size)
    var filled = 0
    while filled < size {
        let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + filled, size - filled) }
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else {
            throw FormatError(.io, file: path, count == 0 ? "the file ended after \(filled) of \(size) bytes" : "cannot read: \(String(cString: strerror(errno)))")
        }
        filled += count
    }
    return bytes
}

/// The largest config or tokenizer file read: the largest real tokenizer.json files are tens
/// of megabytes (Gemma 3's is 33 MB).
public let maximumTextFileBytes = 512 << 20

/// Float memory that a tensor's storage borrows: allocated without zero-filling, because the
/// converters overwrite every element (a memset would double the cost of a large tensor).
final class FloatBuffer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>

    init(count: Int) {
        var raw: UnsafeMutableRawPointer? = nil
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else { fatalError("out of memory allocating \(bytes) bytes") }
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
    }

    deinit { free(pointer) }
}
