import Foundation
import LoupeFormats
import LoupeTensor
import LoupeTestSupport
import XCTest

final class GGUFTests: XCTestCase {
    let v3 = fixtures + "/all_types.gguf"
    let v2 = fixtures + "/all_types_v2.gguf"

    // MARK: The fixture written by gguf-py

    func testMetadataOfEveryValueType() throws {
        for (path, version) in [(v3, 3), (v2, 2)] {
            let file = try GGUFFile(path: path)
            XCTAssertEqual(file.version, version)
            XCTAssertEqual(file.path, path)
            let m = file.metadata
            XCTAssertEqual(m["general.architecture"], .string("loupe-test"))
            XCTAssertEqual(m["test.u8"], .uint8(200))
            XCTAssertEqual(m["test.i8"], .int8(-100))
            XCTAssertEqual(m["test.u16"], .uint16(60000))
            XCTAssertEqual(m["test.i16"], .int16(-30000))
            XCTAssertEqual(m["test.u32"], .uint32(4_000_000_000))
            XCTAssertEqual(m["test.i32"], .int32(-2_000_000_000))
            XCTAssertEqual(m["test.u64"], .uint64(1 << 63 + 5))
            XCTAssertEqual(m["test.i64"], .int64(-(1 << 62)))
            XCTAssertEqual(m["test.f32"], .float32(0.15625))
            XCTAssertEqual(m["test.f64"], .float64(2.718281828459045))
            XCTAssertEqual(m["test.bool_true"], .bool(true))
            XCTAssertEqual(m["test.bool_false"], .bool(false))
            XCTAssertEqual(m["test.string"], .string("héllo ✓"))
            XCTAssertEqual(m["test.ints"], .array([.int32(1), .int32(-2), .int32(3)]))
            XCTAssertEqual(m["test.ints"]?.intArray, [1, -2, 3])
            XCTAssertEqual(m["test.strings"]?.stringArray, ["a", "", "ünïcode"])
            XCTAssertEqual(m["test.nested"], .array([.array([.int32(1), .int32(2)]), .array([.int32(3)])]))
            XCTAssertEqual(m["test.floats"], .array([.float32(0.5), .float32(-1.25)]))
            XCTAssertEqual(m["test.u64"]?.intValue, nil, "2^63 + 5 does not fit an Int")
        }
    }

    func testEveryTensorTypeMatchesGGUFPyBitForBit() throws {
        let manifest = try XCTUnwrap(JSONValue.parse(contentsOf: v3 + ".manifest.json").arrayValue)
        let expected = try ExpectedTensors(fixture: v3)
        XCTAssertEqual(Set(manifest.compactMap { $0["type"]?.stringValue }),
                       ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"])
        for path in [v3, v2] {
            let file = try GGUFFile(path: path)
            XCTAssertEqual(file.tensorNames, manifest.compactMap { $0["name"]?.stringValue }, "file order")
            for entry in manifest {
                let name = try XCTUnwrap(entry["name"]?.stringValue)
                let shape = try XCTUnwrap(entry["shape"]?.arrayValue).compactMap(\.intValue)
                XCTAssertEqual(file.typeName(of: name), entry["type"]?.stringValue)
                XCTAssertEqual(file.shape(of: name), shape, name)
                XCTAssertEqual(expected.shapes[name], shape, name)
                let tensor = try file.tensor(name, shape: shape)
                XCTAssertEqual(tensor.shape, shape)
                XCTAssertTrue(tensor.isContiguous)
                assertSameBits(tensor.toArray(), try XCTUnwrap(expected.values[name]), "\(name) in \(path)")
            }
        }
    }

    func testShapeIsRowMajor() throws {
        // ne = [4, 3, 2] in the file; element [i, j, k] is the (i*12 + j*4 + k)th stored float.
        let file = try GGUFFile(path: v3)
        let tensor = try file.tensor("f32")
        XCTAssertEqual(tensor.shape, [2, 3, 4])
        XCTAssertEqual(tensor[1, 2, 3], tensor.toArray()[23])
        XCTAssertEqual(file.shape(of: "q4_k"), [2, 256])
        XCTAssertNil(file.shape(of: "nope"))
        XCTAssertNil(file.typeName(of: "nope"))
    }

    func testTensorsOutliveTheFileObject() throws {
        // A tensor keeps its mapping alive after the GGUFFile that made it is gone.
        var file: GGUFFile? = try GGUFFile(path: v3)
        let tensor = try XCTUnwrap(file).tensor("f32")
        let before = tensor.toArray()
        file = nil
        XCTAssertEqual(tensor.toArray(), before)
        // Writes go to a private copy, never to the file.
        tensor[0, 0, 0] = 1234
        XCTAssertNotEqual(try GGUFFile(path: v3).tensor("f32")[0, 0, 0], 1234)
    }

    /// The byte layout of every ggml type (id, block size, bytes per block) agrees with
    /// gguf-py's table: a tensor of two blocks must fit a file that ends right after it,
    /// and be reported truncated one byte shorter.
    func testTypeTableAgreesWithGGUFPy() throws {
        let table = try XCTUnwrap(JSONValue.parse(contentsOf: fixtures + "/ggml_types.json").objectValue)
        XCTAssertGreaterThan(table.count, 30)
        for (name, entry) in table {
            let numbers = try XCTUnwrap(entry.arrayValue).compactMap(\.intValue)
            let (id, blockSize, typeSize) = (numbers[0], numbers[1], numbers[2])
            if ["NVFP4", "Q1_0"].contains(name) { continue }  // newer than Loupe's table
            let whole = makeGGUF(typeID: UInt32(id), dimensions: [UInt64(blockSize), 2], data: [UInt8](repeating: 0, count: 2 * typeSize))
            let path = try writeTemporaryFile(self, whole.bytes, name: "\(name).gguf")
            let file = try GGUFFile(path: path)
            XCTAssertEqual(file.typeName(of: "w"), name)
            let short = try writeTemporaryFile(self, Array(whole.bytes.dropLast()), name: "\(name)-short.gguf")
            assertFormatError(.truncated, file: short, item: "w", try GGUFFile(path: short))
        }
    }

    // MARK: Bad files

    func testTruncatedInHeader() throws {
        let bytes = makeGGUF().bytes
        let path = try writeTemporaryFile(self, Array(bytes.prefix(12)))
        assertFormatError(.truncated, file: path, item: "tensor count", try GGUFFile(path: path))
        let tiny = try writeTemporaryFile(self, Array(bytes.prefix(3)), name: "tiny.gguf")
        assertFormatError(.truncated, file: tiny, item: "magic", try GGUFFile(path: tiny))
        let empty = try writeTemporaryFile(self, [], name: "empty.gguf")
        assertFormatError(.truncated, file: empty, item: "magic", try GGUFFile(path: empty))
    }

    func testTruncatedInMetadata() throws {
        let gguf = makeGGUF()
        // Cut inside the value of general.architecture ("llama").
        let path = try writeTemporaryFile(self, Array(gguf.bytes.prefix(gguf.tensorInfoStart - 2)))
        assertFormatError(.truncated, file: path, item: "general.architecture", try GGUFFile(path: path))
        // Cut inside the key itself: the entry is named by its position.
        let key = try writeTemporaryFile(self, Array(gguf.bytes.prefix(gguf.metadataStart + 10)), name: "key.gguf")
        assertFormatError(.truncated, file: key, item: "metadata key #0", try GGUFFile(path: key))
        // Cut inside the tensor table.
        let info = try writeTemporaryFile(self, Array(gguf.bytes.prefix(gguf.tensorInfoStart + 14)), name: "info.gguf")
        assertFormatError(.truncated, file: info, item: "w", try GGUFFile(path: info))
    }

    func testTruncatedInTensorData() throws {
        let path = try writeTemporaryFile(self, Array(makeGGUF().bytes.dropLast(5)))
        assertFormatError(.truncated, file: path, item: "w", try GGUFFile(path: path), message: "past the end")
    }

    func testEveryPrefixOfTheFixtureFailsCleanly() throws {
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: v3)))
        let directory = try makeTemporaryDirectory(self)
        // gguf-py pads the last tensor to the alignment (32); cutting only padding is harmless.
        for length in stride(from: 0, to: bytes.count - 32, by: 7) {
            let path = directory + "/prefix.gguf"
            try Data(bytes.prefix(length)).write(to: URL(fileURLWithPath: path))
            do {
                _ = try GGUFFile(path: path)
                XCTFail("a \(length)-byte prefix opened")
            } catch let error as FormatError {
                XCTAssertEqual(error.kind, .truncated, "\(length): \(error)")
                XCTAssertNotNil(error.item, "\(length): \(error)")
            }
        }
    }

    func testWrongMagic() throws {
        let path = try writeTemporaryFile(self, makeGGUF(magic: 0x4655_4748).bytes)
        assertFormatError(.badMagic, file: path, item: "magic", try GGUFFile(path: path))
        // A safetensors file is not a GGUF file.
        let other = fixtures + "/tiny.safetensors"
        assertFormatError(.badMagic, file: other, item: "magic", try GGUFFile(path: other))
    }

    func testUnsupportedVersions() throws {
        for version: UInt32 in [1, 99, 0x0300_0000] {
            let path = try writeTemporaryFile(self, makeGGUF(version: version).bytes)
            assertFormatError(.unsupportedVersion, file: path, item: "version", try GGUFFile(path: path), message: "\(version)")
        }
    }

    func testUnknownTensorTypeFailsWhenTheTensorIsRead() throws {
        let path = try writeTemporaryFile(self, makeGGUF(typeID: 99).bytes)
        let file = try GGUFFile(path: path)
        XCTAssertEqual(file.typeName(of: "w"), "TYPE_99")
        XCTAssertEqual(file.shape(of: "w"), [2, 32])
        assertFormatError(.unknownDType, file: path, item: "w", try file.tensor("w"), message: "99")
        // A ggml type whose layout Loupe knows but does not convert (Q2_K).
        let q2k = try writeTemporaryFile(self, makeGGUF(typeID: 10, dimensions: [256, 1], data: .init(repeating: 0, count: 84)).bytes, name: "q2k.gguf")
        assertFormatError(.unknownDType, file: q2k, item: "w", try GGUFFile(path: q2k).tensor("w"), message: "Q2_K")
    }

    func testAbsurdStringLength() throws {
        // A metadata value claiming 2^40 bytes.
        let value = try writeTemporaryFile(self, makeGGUF(metadata: { b in
            b.string("general.name")
            b.u32(8)
            b.u64(1 << 40)
            b.bytes += Array("short".utf8)
        }).bytes)
        assertFormatError(.truncated, file: value, item: "general.name", try GGUFFile(path: value))
        // A key claiming 2^40 bytes.
        let key = try writeTemporaryFile(self, makeGGUF(metadata: { b in b.u64(1 << 40) }).bytes, name: "key.gguf")
        assertFormatError(.truncated, file: key, item: "metadata key #0", try GGUFFile(path: key))
    }

    func testAbsurdArrayLengthAndCounts() throws {
        let array = try writeTemporaryFile(self, makeGGUF(metadata: { b in
            b.string("tokenizer.ggml.tokens")
            b.u32(9)
            b.u32(8)
            b.u64(1 << 40)
        }).bytes)
        assertFormatError(.truncated, file: array, item: "tokenizer.ggml.tokens", try GGUFFile(path: array))

        func header(tensors: UInt64, metadata: UInt64) -> [UInt8] {
            var header = Bytes()
            header.u32(0x4655_4747)
            header.u32(3)
            header.u64(tensors)
            header.u64(metadata)
            return header.bytes
        }
        // More tensors than any model has: refused from the count alone.
        let tensors = try writeTemporaryFile(self, header(tensors: 1 << 40, metadata: 0), name: "count.gguf")
        assertFormatError(.badValue, file: tensors, item: "tensor count", try GGUFFile(path: tensors), message: "1099511627776 tensors")
        // A count within bounds that the file does not hold: the first tensor info is missing.
        let missing = try writeTemporaryFile(self, header(tensors: 1 << 20, metadata: 0), name: "missing.gguf")
        assertFormatError(.truncated, file: missing, item: "tensor info #0", try GGUFFile(path: missing))
        let keys = try writeTemporaryFile(self, header(tensors: 0, metadata: 1 << 40), name: "keys.gguf")
        assertFormatError(.badValue, file: keys, item: "metadata count", try GGUFFile(path: keys), message: "1099511627776 keys")
    }

    func testMetadataValuesAreBounded() throws {
        // An array of two bool arrays that together hold more values than Loupe reads (2^24):
        // each element is one byte in the file and 24 in memory, so a large file of them would
        // otherwise cost gigabytes. Refused at the second array's count, before it is read.
        let half = 1 << 23
        let path = try writeTemporaryFile(self, makeGGUF(metadata: { b in
            b.string("nested")
            b.u32(9)
            b.u32(9)
            b.u64(2)
            for fill in [UInt8(1), 0] {
                b.u32(7)
                b.u64(UInt64(half))
                b.bytes += [UInt8](repeating: fill, count: half)
            }
        }).bytes)
        assertFormatError(.badValue, file: path, item: "nested", try GGUFFile(path: path), message: "past the 16777216 values")
    }

    func testDeeplyNestedArraysAreRejected() throws {
        let path = try writeTemporaryFile(self, makeGGUF(metadata: { b in
            b.string("deep")
            b.u32(9)
            for _ in 0..<100 { b.u32(9); b.u64(1) }
            b.u32(0)
            b.u64(0)
        }).bytes)
        assertFormatError(.badValue, file: path, item: "deep", try GGUFFile(path: path), message: "nested")
    }

    func testDataOffsetOutsideTheFile() throws {
        let path = try writeTemporaryFile(self, makeGGUF(dataOffset: 1 << 40).bytes)
        assertFormatError(.truncated, file: path, item: "w", try GGUFFile(path: path), message: "outside the file")
        let misaligned = try writeTemporaryFile(self, makeGGUF(dataOffset: 4).bytes, name: "misaligned.gguf")
        assertFormatError(.badValue, file: misaligned, item: "w", try GGUFFile(path: misaligned), message: "alignment")
    }

    func testAbsurdShapes() throws {
        let huge = try writeTemporaryFile(self, makeGGUF(dimensions: [0, 1 << 31 - 1, 1 << 31 - 1, 1 << 31 - 1]).bytes)
        assertFormatError(.badValue, file: huge, item: "w", try GGUFFile(path: huge), message: "absurd")
        let rank = try writeTemporaryFile(self, makeGGUF(dimensions: [1, 1, 1, 1, 1]).bytes, name: "rank.gguf")
        assertFormatError(.badValue, file: rank, item: "w", try GGUFFile(path: rank), message: "rank")
        let ragged = try writeTemporaryFile(self, makeGGUF(typeID: 2, dimensions: [20, 2]).bytes, name: "ragged.gguf")
        assertFormatError(.badValue, file: ragged, item: "w", try GGUFFile(path: ragged), message: "block size")
    }

    func testMissingTensorAndShapeMismatch() throws {
        let file = try GGUFFile(path: v3)
        assertFormatError(.missingTensor, file: v3, item: "blk.0.nothing", try file.tensor("blk.0.nothing"))
        assertFormatError(.missingTensor, file: v3, item: "nothing", try file.tensor("nothing", shape: [1]))
        assertFormatError(.shapeMismatch, file: v3, item: "q4_k", try file.tensor("q4_k", shape: [256, 2]),
                          message: "expected shape [256, 2], found [2, 256]")
    }

    func testRandomCorruptionNeverCrashes() throws {
        let original = try [UInt8](Data(contentsOf: URL(fileURLWithPath: v3)))
        let directory = try makeTemporaryDirectory(self)
        var generator = SeededGenerator(seed: 7)
        for round in 0..<300 {
            var bytes = original
            // Corrupt a few bytes, mostly in the header and tables where the structure lives.
            for _ in 0..<(1 + Int(generator.next() % 4)) {
                let limit = generator.next() % 2 == 0 ? 900 : bytes.count
                bytes[Int(generator.next() % UInt64(limit))] = UInt8(truncatingIfNeeded: generator.next())
            }
            let path = directory + "/corrupt-\(round).gguf"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                let file = try GGUFFile(path: path)
                for name in file.tensorNames { _ = try? file.tensor(name) }
            } catch let error as FormatError {
                XCTAssertEqual(error.file, path)
                XCTAssertNotNil(error.item, "\(error)")
            }
            try FileManager.default.removeItem(atPath: path)
        }
    }

    func testAlignmentFromMetadata() throws {
        // general.alignment = 64: tensor data starts at the next multiple of 64.
        var b = Bytes()
        b.u32(0x4655_4747); b.u32(3); b.u64(1); b.u64(1)
        b.string("general.alignment"); b.u32(4); b.u32(64)
        b.string("w"); b.u32(1); b.u64(4); b.u32(0); b.u64(0)
        b.pad(to: 64)
        [1, 2, 3, 4].forEach { b.f32($0) }
        let path = try writeTemporaryFile(self, b.bytes)
        XCTAssertEqual(try GGUFFile(path: path).tensor("w").toArray(), [1, 2, 3, 4])

        var bad = Bytes()
        bad.u32(0x4655_4747); bad.u32(3); bad.u64(0); bad.u64(1)
        bad.string("general.alignment"); bad.u32(4); bad.u32(48)
        let badPath = try writeTemporaryFile(self, bad.bytes, name: "bad.gguf")
        assertFormatError(.badValue, file: badPath, item: "general.alignment", try GGUFFile(path: badPath))
    }
}
