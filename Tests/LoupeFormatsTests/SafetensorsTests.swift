import Foundation
import LoupeFormats
import LoupeTensor
import LoupeTestSupport
import XCTest

final class SafetensorsTests: XCTestCase {
    let tiny = fixtures + "/tiny.safetensors"

    func testFixtureMatchesTheSafetensorsPackage() throws {
        let file = try SafetensorsFile(path: tiny)
        let expected = try ExpectedTensors(fixture: tiny)
        XCTAssertEqual(file.metadata, ["format": "pt", "note": "Loupe test fixture"])
        XCTAssertEqual(file.tensorNames, ["weight.f32", "weight.f16", "weight.bf16", "ids.i64", "scalar.f32"], "data order")
        XCTAssertEqual(file.description, tiny)
        XCTAssertEqual(file.dtypeName(of: "weight.bf16"), "BF16")
        for name in ["weight.f32", "weight.f16", "weight.bf16", "scalar.f32"] {
            let shape = try XCTUnwrap(expected.shapes[name])
            XCTAssertEqual(file.shape(of: name), shape)
            let tensor = try file.tensor(name, shape: shape)
            XCTAssertEqual(tensor.shape, shape)
            assertSameBits(tensor.toArray(), try XCTUnwrap(expected.values[name]), name)
        }
        XCTAssertEqual(file.shape(of: "ids.i64"), [4])
        XCTAssertNil(file.shape(of: "nothing"))
    }

    func testF32IsZeroCopyAndPrivate() throws {
        let file = try SafetensorsFile(path: tiny)
        let a = try file.tensor("weight.f32"), b = try file.tensor("weight.f32")
        XCTAssertEqual(a.storage.pointer, b.storage.pointer, "both views borrow the same mapped bytes")
        a[0, 0] = 42
        XCTAssertEqual(b[0, 0], 42)
        XCTAssertNotEqual(try SafetensorsFile(path: tiny).tensor("weight.f32")[0, 0], 42, "writes never reach the file")
    }

    func testMisalignedF32IsCopied() throws {
        // An odd header length puts the data where floats cannot be borrowed in place.
        var data = Bytes()
        [1.5, -2, 3.25].forEach { data.f32($0) }
        let header = #"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#.padding(toLength: 59, withPad: " ", startingAt: 0)
        let path = try writeTemporaryFile(self, makeSafetensors(header: header, data: data.bytes))
        XCTAssertEqual(try SafetensorsFile(path: path).tensor("x").toArray(), [1.5, -2, 3.25])
    }

    func testLargeF32FileLoadsWithoutTouchingItsData() throws {
        // 512 MB of float32 zeros in a sparse file: opening it and reading the tensor must not
        // convert or copy anything.
        let count = 128 << 20
        var header = #"{"big":{"dtype":"F32","shape":[\#(count / 1024),1024],"data_offsets":[0,\#(count * 4)]}}"#
        header += String(repeating: " ", count: (8 - header.utf8.count % 8) % 8)  // as writers pad it
        let path = try writeTemporaryFile(self, makeSafetensors(header: header, data: []), name: "big.safetensors")
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: path))
        try handle.truncate(atOffset: UInt64(8 + header.utf8.count + count * 4))
        try handle.close()

        let start = Date()
        let file = try SafetensorsFile(path: path)
        let tensor = try file.tensor("big", shape: [count / 1024, 1024])
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertEqual(try file.tensor("big").storage.pointer, tensor.storage.pointer, "a view, not a copy")
        XCTAssertEqual(tensor[count / 1024 - 1, 1023], 0)
        XCTAssertLessThan(elapsed, 0.1, "a 512 MB F32 tensor should be a view of the mapping")
    }

    func testDirectoryWithOneFile() throws {
        let directory = try makeTemporaryDirectory(self)
        try FileManager.default.copyItem(atPath: tiny, toPath: directory + "/model.safetensors")
        let weights = try SafetensorsDirectory(directory: directory)
        XCTAssertEqual(weights.description, directory)
        XCTAssertEqual(weights.tensorNames.count, 5)
        XCTAssertEqual(weights.shape(of: "weight.f16"), [4, 6])
        XCTAssertEqual(try weights.tensor("weight.f32").toArray(), try SafetensorsFile(path: tiny).tensor("weight.f32").toArray())
        assertFormatError(.missingTensor, file: directory, item: "lm_head.weight", try weights.tensor("lm_head.weight"))
    }

    func testShardedDirectory() throws {
        let directory = try makeTemporaryDirectory(self)
        var one = Bytes(), two = Bytes()
        [1, 2].forEach { one.f32($0) }
        [3, 4, 5].forEach { two.f32($0) }
        try Data(makeSafetensors(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: one.bytes))
            .write(to: URL(fileURLWithPath: directory + "/model-00001-of-00002.safetensors"))
        try Data(makeSafetensors(header: #"{"b":{"dtype":"F32","shape":[1,3],"data_offsets":[0,12]}}"#, data: two.bytes))
            .write(to: URL(fileURLWithPath: directory + "/model-00002-of-00002.safetensors"))
        let index = #"{"metadata":{"total_size":20},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#
        try index.write(toFile: directory + "/model.safetensors.index.json", atomically: true, encoding: .utf8)

        let weights = try SafetensorsDirectory(directory: directory)
        XCTAssertEqual(weights.tensorNames, ["a", "b"])
        XCTAssertEqual(try weights.tensor("b", shape: [1, 3]).toArray(), [3, 4, 5])
        XCTAssertEqual(try weights.tensor("a").toArray(), [1, 2])

        // The index promising a tensor its shard lacks.
        let promising = #"{"weight_map":{"a":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}}"#
        try promising.write(toFile: directory + "/model.safetensors.index.json", atomically: true, encoding: .utf8)
        assertFormatError(.missingTensor, file: directory + "/model-00002-of-00002.safetensors", item: "c",
                          try SafetensorsDirectory(directory: directory))
    }

    /// The directory is there, its weights are not: a broken model (load_failed), not a
    /// source that names nothing (not_found).
    func testDirectoryWithoutWeights() throws {
        let directory = try makeTemporaryDirectory(self)
        assertFormatError(.missingTensor, file: directory, item: "model.safetensors", try SafetensorsDirectory(directory: directory))
    }

    // MARK: Bad files

    func testTruncatedFiles() throws {
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: tiny)))
        let short = try writeTemporaryFile(self, Array(bytes.prefix(5)), name: "short.safetensors")
        assertFormatError(.truncated, file: short, item: "header length", try SafetensorsFile(path: short))
        // Cut in the data: the last tensor's offsets now run past the end.
        let cut = try writeTemporaryFile(self, Array(bytes.dropLast(2)), name: "cut.safetensors")
        assertFormatError(.truncated, file: cut, item: "scalar.f32", try SafetensorsFile(path: cut), message: "past the end")
        // Cut in the header.
        let header = try writeTemporaryFile(self, Array(bytes.prefix(40)), name: "header.safetensors")
        assertFormatError(.truncated, file: header, item: "header", try SafetensorsFile(path: header))
    }

    func testHeaderLengthLargerThanFile() throws {
        var b = Bytes()
        b.u64(1 << 40)
        b.bytes += Array("{}".utf8)
        let path = try writeTemporaryFile(self, b.bytes)
        assertFormatError(.truncated, file: path, item: "header", try SafetensorsFile(path: path))
    }

    func testHeaderNotJSON() throws {
        let path = try writeTemporaryFile(self, makeSafetensors(header: #"{"a": {"dtype": "F32",,}}"#, data: []))
        assertFormatError(.badValue, file: path, item: nil, try SafetensorsFile(path: path), message: "not valid JSON")
        let array = try writeTemporaryFile(self, makeSafetensors(header: "[1, 2]", data: []), name: "array.safetensors")
        assertFormatError(.badValue, file: array, item: "header", try SafetensorsFile(path: array))
        let field = try writeTemporaryFile(self, makeSafetensors(header: #"{"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}}"#, data: []), name: "field.safetensors")
        assertFormatError(.badValue, file: field, item: "w", try SafetensorsFile(path: field), message: "shape")
    }

    func testUnknownDType() throws {
        let path = try writeTemporaryFile(self, makeSafetensors(header: #"{"w":{"dtype":"Q7","shape":[2],"data_offsets":[0,2]}}"#, data: [0, 0]))
        assertFormatError(.unknownDType, file: path, item: "w", try SafetensorsFile(path: path), message: "Q7")
        // A known dtype Loupe does not convert fails when that tensor is asked for.
        assertFormatError(.unknownDType, file: tiny, item: "ids.i64", try SafetensorsFile(path: tiny).tensor("ids.i64"), message: "I64")
    }

    func testOffsetsOutOfRange() throws {
        let zeros = [UInt8](repeating: 0, count: 8)
        let past = try writeTemporaryFile(self, makeSafetensors(header: #"{"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, data: zeros))
        assertFormatError(.truncated, file: past, item: "w", try SafetensorsFile(path: past), message: "past the end")
        let huge = try writeTemporaryFile(self, makeSafetensors(header: #"{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}"#, data: []), name: "huge.safetensors")
        assertFormatError(.truncated, file: huge, item: "w", try SafetensorsFile(path: huge))
        let backwards = try writeTemporaryFile(self, makeSafetensors(header: #"{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#, data: zeros), name: "backwards.safetensors")
        assertFormatError(.badValue, file: backwards, item: "w", try SafetensorsFile(path: backwards))
        let size = try writeTemporaryFile(self, makeSafetensors(header: #"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: zeros), name: "size.safetensors")
        assertFormatError(.badValue, file: size, item: "w", try SafetensorsFile(path: size), message: "needs 12")
        let overlap = try writeTemporaryFile(self, makeSafetensors(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, data: zeros + [0, 0, 0, 0]), name: "overlap.safetensors")
        assertFormatError(.badValue, file: overlap, item: "b", try SafetensorsFile(path: overlap), message: "overlaps")
        let absurd = try writeTemporaryFile(self, makeSafetensors(header: #"{"w":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}"#, data: []), name: "absurd.safetensors")
        assertFormatError(.badValue, file: absurd, item: "w", try SafetensorsFile(path: absurd), message: "absurd")
    }

    func testMissingTensorAndShapeMismatch() throws {
        let file = try SafetensorsFile(path: tiny)
        assertFormatError(.missingTensor, file: tiny, item: "nothing", try file.tensor("nothing"))
        assertFormatError(.shapeMismatch, file: tiny, item: "weight.f32", try file.tensor("weight.f32", shape: [5, 3]),
                          message: "expected shape [5, 3], found [3, 5]")
    }

    func testCorruptFilesNeverCrash() throws {
        let original = try [UInt8](Data(contentsOf: URL(fileURLWithPath: tiny)))
        let directory = try makeTemporaryDirectory(self)
        var generator = SeededGenerator(seed: 11)
        for round in 0..<300 {
            var bytes = original
            for _ in 0..<(1 + Int(generator.next() % 3)) {
                bytes[Int(generator.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: generator.next())
            }
            let path = directory + "/corrupt-\(round).safetensors"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                let file = try SafetensorsFile(path: path)
                for name in file.tensorNames { _ = try? file.tensor(name) }
            } catch let error as FormatError {
                XCTAssertEqual(error.file, path)
            }
            try FileManager.default.removeItem(atPath: path)
        }
    }
}
