import LoupeTestSupport
import XCTest
@testable import LoupeWire

/// Broken and malicious bytes must give a typed error, never a crash or an allocation
/// sized by what the bytes claim.
final class HostileInputTests: XCTestCase {
    private func assertRejects(_ bytes: [UInt8], _ kind: WireError.Kind, limits: DecodeLimits = .standard,
                               file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try MessageDecoder.decode(bytes, limits: limits), file: file, line: line) { error in
            XCTAssertEqual((error as? WireError)?.kind, kind, "\(error)", file: file, line: line)
        }
    }

    func testLengthClaimsBeyondTheBytes() {
        assertRejects([0xdd, 0xff, 0xff, 0xff, 0xff], .truncated)          // array of 4 billion
        assertRejects([0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0], .truncated)    // map of 4 billion
        assertRejects([0xdb, 0xff, 0xff, 0xff, 0xf0, 0x61], .tooLarge)     // 4 GB string: over the string limit
        assertRejects([0xdb, 0x00, 0x00, 0x10, 0x00, 0x61], .truncated)    // 4 KB string, 1 byte present
        assertRejects([0xc6, 0x7f, 0xff, 0xff, 0xff], .tooLarge)           // 2 GB binary
        assertRejects([0xc6, 0x00, 0x00, 0x10, 0x00, 1, 2], .truncated)
        assertRejects([0xc9, 0x7f, 0xff, 0xff, 0xff, 1], .tooLarge)        // ext
        assertRejects([0x92, 0x01], .truncated)
        assertRejects([0xcb, 0x3f], .truncated)
        assertRejects([0xd9], .truncated)
        assertRejects([], .truncated)
    }

    func testDeepNesting() {
        assertRejects([UInt8](repeating: 0x91, count: 100_000) + [0xc0], .tooLarge)
        var limits = DecodeLimits.standard
        limits.maxDepth = 3
        assertRejects([0x91, 0x91, 0x91, 0x91, 0xc0], .tooLarge, limits: limits)
        XCTAssertNoThrow(try MessageDecoder.decode([0x91, 0x91, 0x91, 0xc0], limits: limits))
    }

    func testCountAndSizeLimits() {
        var limits = DecodeLimits.standard
        limits.maxValues = 10
        assertRejects(MessageEncoder.encode(.array((0..<20).map { .int(Int64($0)) })), .tooLarge, limits: limits)
        limits = .standard
        limits.maxBytes = 8
        assertRejects(MessageEncoder.encode("a string of more than eight bytes"), .tooLarge, limits: limits)
        limits = .standard
        limits.maxStringBytes = 4
        assertRejects(MessageEncoder.encode("hello"), .tooLarge, limits: limits)
        limits = .standard
        limits.maxBinaryBytes = 4
        assertRejects(MessageEncoder.encode(.binary([1, 2, 3, 4, 5])), .tooLarge, limits: limits)
    }

    func testMalformed() {
        assertRejects([0xc1], .malformed)
        assertRejects([0x01, 0x02], .trailingBytes)
        assertRejects([0x81, 0x01, 0x02], .badKey)                         // integer key
        assertRejects([0x82, 0xa1, 0x61, 0x01, 0xa1, 0x61, 0x02], .badKey) // duplicate key
        assertRejects([0xa2, 0xc3, 0x28], .badUTF8)
    }

    /// Random bytes and random corruptions of a real message: any outcome but a crash.
    func testRandomBytesNeverCrash() {
        var generator = SeededGenerator(seed: 42)
        let valid = MessageEncoder.encode(["id": 1, "op": "forward", "prompts": ["After John and Mary"], "top_k": 5,
                                           "nested": [["a": .binary([1, 2, 3])], 1.5, -7]])
        for round in 0..<20_000 {
            var bytes: [UInt8]
            if round % 2 == 0 {
                bytes = (0..<Int(generator.next() % 64)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            } else {
                bytes = valid
                for _ in 0..<(1 + Int(generator.next() % 4)) {
                    bytes[Int(generator.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: generator.next())
                }
                if generator.next() % 4 == 0 { bytes.removeLast(Int(generator.next() % UInt64(bytes.count))) }
            }
            _ = try? MessageDecoder.decode(bytes)
        }
    }
}
