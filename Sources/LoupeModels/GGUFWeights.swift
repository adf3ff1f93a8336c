import LoupeFormats
import LoupeTensor

/// A GGUF file's tensors under HF's names: llama.cpp names a decoder's tensors `blk.N.attn_q`
/// where HF has `model.layers.N.self_attn.q_proj`. `adjust` undoes, tensor by tensor (by GGUF
/// name), what llama.cpp's converter changed beyond the name: `rowOrder` a reordering of a
/// tensor's rows (applied to its quantized blocks too), `adjust` its float32 values (never a
/// linear layer's matrix, whose blocks would then disagree with it).
public struct GGUFWeights: WeightSource, @unchecked Sendable {
    public let file: GGUFFile
    private let names: [String: String]  // HF name → GGUF name
    private let rowOrder: (_ ggufName: String, _ rows: Int) -> [Int]?
    private let adjust: (_ ggufName: String, _ tensor: Tensor) -> Tensor

    /// `model`: HF name → GGUF name of the tensors outside the layers (without `.weight`);
    /// `perLayer`: HF module path within a layer → llama.cpp's (`self_attn.q_proj` → `attn_q`),
    /// each with its weight and bias. Only names the file holds are kept. `rowOrder`: row i
    /// of the tensor as HF has it is the file's row `order[i]`; nil keeps the file's order.
    public init(_ file: GGUFFile, layers: Int, model: [String: String], perLayer: [String: String],
                rowOrder: @escaping (_ ggufName: String, _ rows: Int) -> [Int]? = { _, _ in nil },
                adjust: @escaping (_ ggufName: String, _ tensor: Tensor) -> Tensor = { $1 }) {
        self.file = file
        self.rowOrder = rowOrder
        self.adjust = adjust
        var names = [String: String]()
        for (hf, gguf) in model { names[hf + ".weight"] = gguf + ".weight" }
        for layer in 0..<layers {
            for (hf, gguf) in perLayer {
                for kind in ["weight", "bias"] {
                    names["model.layers.\(layer).\(hf).\(kind)"] = "blk.\(layer).\(gguf).\(kind)"
                }
            }
        }
        self.names = names.filter { file.shape(of: $0.value) != nil }
    }

    public var description: String { file.path }
    public var tensorNames: [String] { Array(names.keys) }
    public func shape(of name: String) -> [Int]? { names[name].flatMap(file.shape(of:)) }

    public func tensor(_ name: String) throws -> Tensor {
        guard let ggufName = names[name] else {
            throw FormatError(.missingTensor, file: file.path, item: name, "no tensor for it in the GGUF file")
        }
        var tensor = try file.tensor(ggufName)
        if let order = rowOrder(ggufName, tensor.shape.first ?? 1) { tensor = tensor.gatheringRows(order) }
        return adjust(ggufName, tensor)
    }

    public func blocks(_ name: String) -> QuantizedMatrix? {
        guard let ggufName = names[name], let blocks = file.blocks(ggufName) else { return nil }
        return rowOrder(ggufName, blocks.rows).map(blocks.permutingRows) ?? blocks
    }
}
