import Foundation
import LoupeFormats
import LoupeTensor
import XCTest

/// Tests/Fixtures/formats, made by scripts/make_format_fixtures.py.
let fixtures = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/formats").path

/// $LOUPE_MODELS, else ~/.cache/loupe/models (where scripts/fetch-models.sh puts models).
let modelsDirectory: String = {
    if let dir = ProcessInfo.processInfo.environment["LOUPE_MODELS"], !dir.isEmpty { return dir }
    return NSHomeDirectory() + "/.cache/loupe/models"
}()

/// A fresh directory under the system temporary directory, removed by the test's teardown.
func makeTemporaryDirectory(_ test: XCTestCase) throws -> String {
    let path = NSTemporaryDirectory() + "loupe-formats-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
    return path
}

/// Writes `bytes` to a new file in a temporary directory and returns its path.
func writeTemporaryFile(_ test: XCTestCase, _ bytes: [UInt8], name: String = "file.bin") throws -> String {
    let path = try makeTemporaryDirectory(test) + "/" + name
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    return path
}

/// Asserts that `body` throws a FormatError of `kind` naming `file` and `item` (nil: no item
/// expected), and whose message contains `message` when given.
func assertFormatError<T>(
    _ kind: FormatError.Kind, file: String, item: String?, _ body: @autoclosure () throws -> T,
    message: String? = nil, line: UInt = #line
) {
    do {
        _ = try body()
        XCTFail("expected a \(kind) error, but nothing was thrown", line: line)
    } catch let error as FormatError {
        XCTAssertEqual(error.kind, kind, "\(error)", line: line)
        XCTAssertEqual(error.file, file, "\(error)", line: line)
        XCTAssertEqual(error.item, item, "\(error)", line: line)
        if let message { XCTAssertTrue(error.message.contains(message), "\(error)", line: line) }
        XCTAssertTrue(error.description.hasPrefix(file), "\(error)", line: line)
    } catch {
        XCTFail("expected a FormatError, got \(error)", line: line)
    }
}

/// The float32 values the reference Python packages read from a fixture, by tensor name
/// (`<fixture>.expected.f32` and `.expected.json`).
struct ExpectedTensors {
    let shapes: [String: [Int]]
    let values: [String: [Float]]

    init(fixture: String) throws {
        let index = try JSONValue.parse(contentsOf: fixture + ".expected.json")
        let data = try Data(contentsOf: URL(fileURLWithPath: fixture + ".expected.f32"))
        let all: [Float] = data.withUnsafeBytes { raw in
            (0..<(raw.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        }
        var shapes: [String: [Int]] = [:], values: [String: [Float]] = [:]
        for (name, entry) in try XCTUnwrap(index.objectValue) {
            let offset = try XCTUnwrap(entry["offset"]?.intValue), count = try XCTUnwrap(entry["count"]?.intValue)
            shapes[name] = try XCTUnwrap(entry["shape"]?.arrayValue).compactMap(\.intValue)
            values[name] = Array(all[offset..<(offset + count)])
        }
        self.shapes = shapes
        self.values = values
    }
}

/// Asserts bit-for-bit equality (so NaNs, infinities and signed zeros count too).
func assertSameBits(_ actual: [Float], _ expected: [Float], _ what: String, line: UInt = #line) {
    XCTAssertEqual(actual.count, expected.count, "\(what): element count", line: line)
    let mismatches = zip(actual, expected).enumerated().filter { $0.element.0.bitPattern != $0.element.1.bitPattern }
    if let first = mismatches.first {
        XCTFail("\(what): \(mismatches.count) values differ; first at \(first.offset): \(first.element.0) vs expected \(first.element.1)", line: line)
    }
}

/// Little-endian bytes for hand-built files.
struct Bytes {
    var bytes: [UInt8] = []

    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func f32(_ v: Float) { u32(v.bitPattern) }
    /// A GGUF string: u64 length, UTF-8 bytes.
    mutating func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes.append(contentsOf: s.utf8) }
    mutating func pad(to alignment: Int) { while bytes.count % alignment != 0 { bytes.append(0) } }
}

/// A small valid GGUF v3 file: one string key, one F32 tensor "w" of shape [2, 32] (values
/// 0..63), unless the arguments say otherwise. Also returns where each part starts.
func makeGGUF(
    magic: UInt32 = 0x4655_4747, version: UInt32 = 3, typeID: UInt32 = 0, dimensions: [UInt64] = [32, 2],
    dataOffset: UInt64 = 0, data: [UInt8]? = nil, metadata: ((inout Bytes) -> Void)? = nil
) -> (bytes: [UInt8], metadataStart: Int, tensorInfoStart: Int, dataStart: Int) {
    var b = Bytes()
    b.u32(magic)
    b.u32(version)
    b.u64(1)  // tensors
    b.u64(1)  // metadata entries
    let metadataStart = b.bytes.count
    if let metadata {
        metadata(&b)
    } else {
        b.string("general.architecture")
        b.u32(8)
        b.string("llama")
    }
    let tensorInfoStart = b.bytes.count
    b.string("w")
    b.u32(UInt32(dimensions.count))
    dimensions.forEach { b.u64($0) }
    b.u32(typeID)
    b.u64(dataOffset)
    b.pad(to: 32)
    let dataStart = b.bytes.count
    if let data {
        b.bytes += data
    } else {
        (0..<64).forEach { b.f32(Float($0)) }
    }
    return (b.bytes, metadataStart, tensorInfoStart, dataStart)
}

/// A safetensors file from a header written as JSON text and raw data bytes.
func makeSafetensors(header: String, data: [UInt8]) -> [UInt8] {
    var b = Bytes()
    b.u64(UInt64(header.utf8.count))
    b.bytes += Array(header.utf8) + data
    return b.bytes
}
