import XCTest
@testable import LoupeWire

final class CodecTests: XCTestCase {
    private func roundTrip(_ value: MessageValue, file: StaticString = #filePath, line: UInt = #line) throws {
        let bytes = MessageEncoder.encode(value)
        XCTAssertEqual(try MessageDecoder.decode(bytes), value, file: file, line: line)
    }

    func testEveryKindRoundTrips() throws {
        let values: [MessageValue] = [
            .null, true, false, 0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, -129, -32769,
            .int(Int64.max), .int(Int64.min), .uint(UInt64.max), 0.5, -1e300, .double(.infinity),
            "", "héllo wörld ✓", .string(String(repeating: "x", count: 70_000)),
            .binary([]), .binary([0, 1, 2, 255]), .binary([UInt8](repeating: 7, count: 70_000)),
            [], [1, "two", [3.0, nil]], .array((0..<70_000).map { .int(Int64($0)) }),
            [:], ["a": 1, "b": ["c": [true]]],
            .ext(5, [1, 2, 3]), .ext(-1, []), .ext(1, [9]), .ext(2, [1, 2, 3, 4, 5, 6, 7, 8]),
        ]
        for value in values { try roundTrip(value) }
        try roundTrip(.array(values))
    }

    func testKnownEncodings() {
        // Values from the MessagePack specification; map keys come out sorted.
        XCTAssertEqual(MessageEncoder.encode(["op": "hello", "id": 1]),
                       [0x82, 0xa2, 0x69, 0x64, 0x01, 0xa2, 0x6f, 0x70, 0xa5, 0x68, 0x65, 0x6c, 0x6c, 0x6f])
        XCTAssertEqual(MessageEncoder.encode(-1), [0xff])
        XCTAssertEqual(MessageEncoder.encode(200), [0xcc, 200])
        XCTAssertEqual(MessageEncoder.encode(.binary([1])), [0xc4, 1, 1])
        XCTAssertEqual(MessageEncoder.encode(1.5), [0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0])
    }

    func testFloat32DecodesAsDouble() throws {
        XCTAssertEqual(try MessageDecoder.decode([0xca, 0x3f, 0xc0, 0x00, 0x00]), .double(1.5))
    }

    func testPositiveIntegersDecodeAsInt() throws {
        // msgpack-c reports every non-negative integer as unsigned; fitting ones become .int.
        XCTAssertEqual(try MessageDecoder.decode([0xcf, 0, 0, 0, 0, 0, 0, 0, 5]), .int(5))
        XCTAssertEqual(try MessageDecoder.decode([0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), .uint(UInt64.max))
    }

    func testAccessors() {
        let value: MessageValue = ["n": 3, "s": "x", "list": [1, 2], "f": 2.5, "u": .uint(7)]
        XCTAssertEqual(value["n"]?.intValue, 3)
        XCTAssertEqual(value["u"]?.intValue, 7)
        XCTAssertEqual(value["n"]?.doubleValue, 3)
        XCTAssertEqual(value["f"]?.doubleValue, 2.5)
        XCTAssertNil(value["f"]?.intValue)
        XCTAssertEqual(value["s"]?.stringValue, "x")
        XCTAssertEqual(value["list"]?.arrayValue?.count, 2)
        XCTAssertNil(value["missing"])
        XCTAssertNil(MessageValue.int(1)["n"])
    }

    func testWireMessageFrames() throws {
        let message = WireMessage(["id": 4, "op": "x"], attachments: [[1, 2, 3]])
        let decoded = try WireMessage(frames: message.frames)
        XCTAssertEqual(decoded, message)
        XCTAssertThrowsError(try WireMessage(frames: [MessageEncoder.encode([1, 2])])) { error in
            XCTAssertEqual((error as? WireError)?.kind, .malformed)
        }
    }
}

final class JSONTextTests: XCTestCase {
    func testJSONText() {
        let value: MessageValue = ["b": .binary([1, 2]), "a": [1, -2.5, nil, true], "s": "q\"\n\u{1}é", "x": .double(.nan)]
        XCTAssertEqual(value.jsonText(), #"{"a":[1,-2.5,null,true],"b":{"$binary":"AQI="},"s":"q\"\n\u0001é","x":null}"#)
        XCTAssertEqual(MessageValue.array([1, [:]]).jsonText(pretty: true), "[\n  1,\n  {}\n]")
    }
}
