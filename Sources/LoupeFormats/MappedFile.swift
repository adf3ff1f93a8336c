import Foundation

/// A whole file mapped into memory (PROT_READ|PROT_WRITE, MAP_PRIVATE): tensors can borrow
/// it without copying, and writes through such a tensor stay private to this process.
/// Unmapped when the last tensor borrowing it (and the reader) are gone.
final class MappedFile: @unchecked Sendable {
    let path: String
    /// The file's bytes; empty (nil base) for an empty file, which mmap cannot map.
    let bytes: UnsafeRawBufferPointer

    init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw FormatError(.io, file: path, "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw FormatError(.io, file: path, "cannot stat: \(String(cString: strerror(errno)))") }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw FormatError(.io, file: path, "not a regular file") }
        let size = Int(info.st_size)
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

    /// A pointer `offset` bytes in; the caller has checked `offset + length <= count`.
    func pointer(at offset: Int) -> UnsafeRawPointer { bytes.baseAddress! + offset }

    deinit {
        if let base = bytes.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), bytes.count) }
    }
}

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
