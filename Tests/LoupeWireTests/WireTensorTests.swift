import LoupeTensor
import XCTest
@testable import LoupeWire

final class WireTensorTests: XCTestCase {
    func testFloatTensorRoundTrip() throws {
        let tensor = Tensor(shape: [2, 3], values: [1, -2, 3.5, 0, .greatestFiniteMagnitude, -0.25])
        let wire = WireTensor(tensor)
        XCTAssertEqual(wire.data.count, 24)
        XCTAssertEqual(Array(wire.data.prefix(4)), [0x00, 0x00, 0x80, 0x3f]) // 1.0f little-endian
        let decoded = try WireTensor(MessageDecoder.decode(MessageEncoder.encode(wire.messageValue)))
        XCTAssertEqual(decoded, wire)
        XCTAssertEqual(try decoded.tensor().toArray(), tensor.toArray())
        XCTAssertEqual(try decoded.tensor().shape, [2, 3])
    }

    func testStridedViewIsSentInRowMajorOrder() throws {
        let tensor = Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6]).transposed(0, 1)
        XCTAssertEqual(try WireTensor(tensor).floats(), [1, 4, 2, 5, 3, 6])
    }

    func testIntegerTensors() throws {
        let ids: [Int32] = [3260, 1757, -1]
        let data = ids.withUnsafeBytes { Array($0) }
        XCTAssertEqual(try WireTensor(dtype: .i32, shape: [1, 3], data: data).integers(), [3260, 1757, -1])
        let wide: [Int64] = [5, 1 << 40]
        XCTAssertEqual(try WireTensor(dtype: .i64, shape: [2], data: wide.withUnsafeBytes { Array($0) }).integers(), [5, 1 << 40])
    }

    func testDataInAnExtraFrame() throws {
        let wire = try WireTensor(shape: [2], floats: [1, 2])
        let value = wire.messageValue(frame: 1)
        XCTAssertEqual(try WireTensor(value, attachments: [wire.data]), wire)
        XCTAssertThrowsError(try WireTensor(value, attachments: [])) { XCTAssertEqual(($0 as? WireError)?.kind, .badTensor) }
    }

    func testDisagreementsAreTypedErrors() {
        func kind(_ value: MessageValue) -> WireError.Kind? {
            do { _ = try WireTensor(value); return nil } catch { return error.kind }
        }
        XCTAssertEqual(kind(["dtype": "f32", "shape": [2, 3], "data": .binary([0, 0, 0, 0])]), .shapeMismatch)
        XCTAssertEqual(kind(["dtype": "f32", "shape": [.int(1 << 62), 8], "data": .binary([])]), .shapeMismatch)
        XCTAssertEqual(kind(["dtype": "f32", "shape": [-1], "data": .binary([])]), .badTensor)
        XCTAssertEqual(kind(["dtype": "f16", "shape": [1], "data": .binary([0, 0])]), .badTensor)
        XCTAssertEqual(kind(["dtype": "f32", "shape": "2", "data": .binary([])]), .badTensor)
        XCTAssertEqual(kind(["dtype": "f32", "shape": [1, 1, 1, 1, 1, 1, 1, 1, 1], "data": .binary([0, 0, 0, 0])]), .badTensor)
        XCTAssertEqual(kind([1, 2]), .badTensor)
        XCTAssertEqual(kind(["dtype": "f32", "shape": [0], "data": .binary([])]), nil)
    }
}
