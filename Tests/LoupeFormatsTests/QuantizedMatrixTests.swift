import Foundation
@testable import LoupeFormats
import LoupeTensor
import LoupeTestSupport
import XCTest

/// The fused quantized product against the dequantizer: the same float for every weight,
/// and products equal to dequantize-then-multiply up to the order of the sums.
final class QuantizedMatrixTests: XCTestCase {
    private var generator = SeededGenerator(seed: 13)

    /// Byte offsets of each format's f16 scales within a block.
    private func scaleOffsets(_ format: BlockFormat) -> [Int] {
        switch format {
        case .q4_0, .q5_0, .q8_0: return [0]
        case .q4_1, .q4_K: return [0, 2]
        case .q6_K: return [208]
        }
    }

    /// `rows` rows of `blocksPerRow` random blocks: random bytes, with finite scales (normal
    /// and subnormal halves of either sign) so that the sums are numbers.
    private func randomBlocks(_ format: BlockFormat, rows: Int, blocksPerRow: Int) -> [UInt8] {
        var bytes = (0..<rows * blocksPerRow * format.typeSize).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for block in 0..<rows * blocksPerRow {
            for offset in scaleOffsets(format) {
                let half = UInt16.random(in: 0...0x7FFF, using: &generator) % (20 << 10) | (Bool.random(using: &generator) ? 0x8000 : 0)
                bytes[block * format.typeSize + offset] = UInt8(half & 0xFF)
                bytes[block * format.typeSize + offset + 1] = UInt8(half >> 8)
            }
        }
        return bytes
    }

    func testEveryWeightAndProductMatchTheDequantizer() throws {
        for format in BlockFormat.allCases {
            let type = try XCTUnwrap(GGMLType.allCases.first { $0.blockFormat == format })
            let (rows, columns) = (6, 3 * format.blockSize)
            let bytes = randomBlocks(format, rows: rows, blocksPerRow: 3)
            let matrix = bytes.withUnsafeBytes { QuantizedMatrix(format: format, rows: rows, columns: columns, copying: $0.baseAddress!) }
            XCTAssertEqual(matrix.byteCount, bytes.count)
            let expected = bytes.withUnsafeBytes { try! XCTUnwrap(type.converter).tensor(shape: [rows, columns], from: $0.baseAddress!) }

            // Weight for weight, the same float32 (compared as bits).
            var row = [Float](repeating: 0, count: columns)
            for r in 0..<rows {
                row.withUnsafeMutableBufferPointer { matrix.dequantizeRow(r, into: $0.baseAddress!) }
                let want = UnsafeBufferPointer(start: expected.data + r * columns, count: columns)
                let mismatch = (0..<columns).first { row[$0].bitPattern != want[$0].bitPattern }
                XCTAssertNil(mismatch, "\(format) row \(r): weight \(mismatch ?? 0) is \(row[mismatch ?? 0]), the dequantizer's \(want[mismatch ?? 0])")
            }

            // Products of 1 and 3 rows against the dequantized matrix's, summed in Double.
            for count in [1, 3] {
                let x = (0..<count * columns).map { _ in Float.random(in: -1...1, using: &generator) }
                var y = [Float](repeating: .nan, count: count * rows)
                x.withUnsafeBufferPointer { x in
                    y.withUnsafeMutableBufferPointer { matrix.multiply(x.baseAddress!, count: count, into: $0.baseAddress!) }
                }
                for i in 0..<count {
                    for o in 0..<rows {
                        var sum = 0.0, magnitude = 0.0
                        for j in 0..<columns {
                            let term = Double(expected.data[o * columns + j]) * Double(x[i * columns + j])
                            sum += term
                            magnitude += abs(term)
                        }
                        XCTAssertEqual(Double(y[i * rows + o]), sum, accuracy: 1e-5 * magnitude, "\(format) y[\(i), \(o)]")
                    }
                }
            }
        }
    }

    /// Llama's row permutation, a fused q/k/v of mixed formats and the input-major copy keep
    /// the blocks in step with the float32 matrix: few rows (blocks) and many (sgemm) agree.
    func testBlocksFollowTheLinearThroughPermutationAndFusion() throws {
        let columns = 256
        func part(_ format: BlockFormat, rows: Int, bias: Bool) throws -> Linear {
            let type = try XCTUnwrap(GGMLType.allCases.first { $0.blockFormat == format })
            let bytes = randomBlocks(format, rows: rows, blocksPerRow: columns / format.blockSize)
            let matrix = bytes.withUnsafeBytes { QuantizedMatrix(format: format, rows: rows, columns: columns, copying: $0.baseAddress!) }
            let weight = bytes.withUnsafeBytes { try! XCTUnwrap(type.converter).tensor(shape: [rows, columns], from: $0.baseAddress!) }
            let order = (0..<rows).reversed().map { $0 }
            let b = bias ? Tensor(shape: [rows], values: (0..<rows).map { Float($0) / 4 }) : nil
            return Linear(weight: weight.gatheringRows(order), bias: b, layout: .outputMajor, blocks: matrix.permutingRows(order))
        }
        let fused = Linear.fused([try part(.q4_K, rows: 8, bias: true), try part(.q6_K, rows: 4, bias: true),
                                  try part(.q8_0, rows: 4, bias: false)])
        XCTAssertEqual(fused.blocks?.rows, 16)
        let down = try part(.q5_0, rows: 5, bias: false).inputMajor()
        XCTAssertNotNil(down.blocks)
        for linear in [fused, down] {
            for rows in [1, Linear.quantizedRowLimit] {
                let x = Tensor(shape: [rows, columns], values: (0..<rows * columns).map { _ in Float.random(in: -1...1, using: &generator) })
                let quantized = linear(x)
                Linear.quantizedProducts = false
                defer { Linear.quantizedProducts = true }
                let float32 = linear(x)
                // A misplaced row would be off by as much as the values; the order of the sums by 1e-6 of them.
                let scale = float32.toArray().map(abs).max() ?? 1
                XCTAssertLessThanOrEqual(maxDifference(quantized, float32), 1e-4 * scale, "\(linear.outputSize) outputs, \(rows) rows")
            }
        }
    }
}
