import Foundation
import LoupeFormats
import LoupeModels
import LoupeTensor

extension EngineBenchmark {
    /// A decode step's products read from a GGUF's quantized blocks against sgemm on the
    /// float32 matrices, in the same run: every linear layer (as the engine fuses and lays them
    /// out) on a few rows, and a one-token forward pass, with the quantized products on and off.
    func benchmarkQuantizedProducts(_ loaded: LoadedModel) throws {
        guard model.hasSuffix(".gguf") else {
            print("quantized products: the model is not a GGUF file")
            return
        }
        let linears = try ggufLinears(GGUFFile(path: model))
        let blockBytes = linears.reduce(0) { $0 + ($1.blocks?.byteCount ?? 0) }
        let floatBytes = linears.reduce(0) { $0 + 4 * $1.weight.count }
        print(String(format: "quantized products: %d matrix products a token; blocks kept %.1f MB beside %.1f MB of float32 matrices (+%.0f%%)",
                     linears.count, Double(blockBytes) / 1e6, Double(floatBytes) / 1e6, 100 * Double(blockBytes) / Double(floatBytes)))
        // The kernels alone, into outputs allocated beforehand: where the blocks stop paying.
        var lines = [String]()
        for rows in [1, 2, 4, 8, 16, 32] {
            let operands = linears.map { linear in
                (linear, Tensor(shape: [rows, linear.inputSize], values: (0..<rows * linear.inputSize).map { Float($0 % 17) * 0.01 - 0.08 }),
                 Tensor(zeros: [rows, linear.outputSize]))
            }
            let float32 = median(repeats) {
                for (linear, x, y) in operands {
                    gemm(rows: rows, columns: linear.outputSize, inner: linear.inputSize, a: x.data, lda: linear.inputSize, transposeA: false,
                         b: linear.weight.data, ldb: linear.weight.shape[1], transposeB: linear.layout == .outputMajor,
                         c: y.data, ldc: linear.outputSize)
                }
            }
            let blocks = median(repeats) { for (linear, x, y) in operands { linear.blocks!.multiply(x.data, count: rows, into: y.data) } }
            lines.append(String(format: "%d: %.2f / %.2f ms (%.2fx)", rows, blocks * 1000, float32 * 1000, float32 / blocks))
        }
        print("  every product on R rows, blocks / sgemm, wall time (row limit \(Linear.quantizedRowLimit)): " + lines.joined(separator: "; "))
        defer { Linear.quantizedProducts = true }
        let token = TokenBatch([[1]])
        func forward(quantized: Bool, _ measure: (Int, () -> Void) -> Double) -> Double {
            Linear.quantizedProducts = quantized
            return measure(repeats) { _ = try! loaded.model.forward(token, logits: .all) }
        }
        for (what, measure) in [("wall", median), ("CPU", cpuMedian)] as [(String, (Int, () -> Void) -> Double)] {
            let (float32, blocks) = (forward(quantized: false, measure), forward(quantized: true, measure))
            print(String(format: "  forward 1x1 (a decode step: the products, norms, lm_head), %@ time: quantized %.2f ms, float32 %.2f ms (%.2fx)",
                         what, blocks * 1000, float32 * 1000, float32 / blocks))
        }
        let check = TokenBatch([[2322]])
        Linear.quantizedProducts = false
        let float32Logits = try loaded.model.forward(check, logits: .all)
        Linear.quantizedProducts = true
        let quantizedLogits = try loaded.model.forward(check, logits: .all)
        let difference = zip(float32Logits.toArray(), quantizedLogits.toArray()).map { abs($0 - $1) }.max() ?? 0
        print(String(format: "  one-token logits, quantized against float32 products: max difference %.2e", difference))
    }

    /// The GGUF's matrices as the Llama and Gemma adapters hold them: q, k, v and gate, up
    /// fused per layer, projections input-major, the tied unembedding the output-major
    /// embedding table.
    private func ggufLinears(_ file: GGUFFile) throws -> [Linear] {
        func linear(_ name: String) throws -> Linear {
            Linear(weight: try file.tensor(name), layout: .outputMajor, blocks: file.blocks(name))
        }
        var linears = [Linear]()
        for layer in 0... {
            let prefix = "blk.\(layer)."
            guard file.shape(of: prefix + "attn_q.weight") != nil else { break }
            linears.append(Linear.fused(try ["attn_q", "attn_k", "attn_v"].map { try linear(prefix + $0 + ".weight") }))
            linears.append(try linear(prefix + "attn_output.weight").inputMajor())
            linears.append(Linear.fused(try ["ffn_gate", "ffn_up"].map { try linear(prefix + $0 + ".weight") }))
            linears.append(try linear(prefix + "ffn_down.weight").inputMajor())
        }
        linears.append(file.shape(of: "output.weight") != nil ? try linear("output.weight").inputMajor() : try linear("token_embd.weight"))
        return linears
    }
}

/// Median CPU time (user and system, every thread of the process) of `repeats` runs after one
/// warm-up: what a run costs the machine, steadier than wall time when the machine is shared.
func cpuMedian(_ repeats: Int, _ body: () -> Void) -> Double {
    func cpu() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
    body()
    var times = [Double]()
    for _ in 0..<repeats {
        let start = cpu()
        body()
        times.append(cpu() - start)
    }
    return times.sorted()[times.count / 2]
}
