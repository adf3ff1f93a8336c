import LoupeFormats
import LoupeTensor

/// A GGUF file's tensors under HF's names: llama.cpp names a decoder's tensors `blk.N.attn_q`
/// where HF has `model.layers.N.self_attn.q_proj`. `adjust` undoes, tensor by tensor (by GGUF
/// name), what llama.cpp's converter changed beyond the name.
public struct GGUFWeights: WeightSource, @unchecked Sendable {
    public let file: GGUFFile
    private let names: [String: String]  // HF name → GGUF name
    private let adjust: (_ ggufName: String, _ tensor: Tensor) -> Tensor

    /// `model`: HF name → GGUF name of the tensors outside the layers (without `.weight`);
    /// `perLayer`: HF module path within a layer → llama.cpp's (`self_attn.q_proj` → `attn_q`),
    /// each with its weight and bias. Only names the file holds are kept.
    public init(_ file: GGUFFile, layers: Int, model: [String: String], perLayer: [String: String],
                adjust: @escaping (_ ggufName: String, _ tensor: Tensor) -> Tensor = { $1 }) {
        self.file = file
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
        return adjust(ggufName, try file.tensor(ggufName))
    }
}
