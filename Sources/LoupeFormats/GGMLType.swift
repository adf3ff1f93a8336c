import LoupeTensor

/// ggml's tensor data types (ggml.h's `ggml_type`), with their block layouts: `blockSize`
/// elements stored in `typeSize` bytes. All are listed so that a GGUF file holding any of them
/// can be opened and bounds-checked; `tensor(_:)` converts those with a `converter`.
enum GGMLType: UInt32, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_XXS = 16, iq2_XS = 17, iq3_XXS = 18, iq1_S = 19, iq4_NL = 20, iq3_S = 21, iq2_S = 22, iq4_XS = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_M = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39

    /// The name gguf-py and llama.cpp print ("Q4_K", "BF16").
    var name: String {
        String(describing: self).uppercased()
    }

    var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .i8, .i16, .i32, .i64, .f64: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .iq4_NL, .mxfp4: return 32
        default: return 256  // the k-quants, i-quants and t-quants: QK_K
        }
    }

    var typeSize: Int {
        switch self {
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .i8: return 1
        case .i64, .f64: return 8
        case .q4_0, .iq4_NL: return 2 + 16
        case .q4_1: return 2 + 2 + 16
        case .q5_0: return 2 + 4 + 16
        case .q5_1: return 2 + 2 + 4 + 16
        case .q8_0: return 2 + 32
        case .q8_1: return 4 + 4 + 32
        case .mxfp4: return 1 + 16
        case .q2_K: return 2 + 2 + 256 / 16 + 256 / 4
        case .q3_K: return 2 + 256 / 4 + 256 / 8 + 12
        case .q4_K: return 2 + 2 + 256 / 2 + 12
        case .q5_K: return 2 + 2 + 256 / 2 + 256 / 8 + 12
        case .q6_K: return 2 + 256 / 2 + 256 / 4 + 256 / 16
        case .q8_K: return 4 + 256 + 256 / 8
        case .iq2_XXS: return 2 + 256 / 4
        case .iq2_XS: return 2 + 256 / 4 + 256 / 32
        case .iq3_XXS: return 2 + 256 / 4 + 256 / 8
        case .iq1_S: return 2 + 256 / 8 + 256 / 16
        case .iq3_S: return 2 + 256 / 4 + 256 / 8 + 256 / 32 + 4
        case .iq2_S: return 2 + 256 / 4 + 256 / 16
        case .iq4_XS: return 2 + 2 + 256 / 2 + 256 / 64
        case .iq1_M: return 256 / 8 + 256 / 16 + 256 / 32
        case .tq1_0: return 2 + 4 * 13
        case .tq2_0: return 2 + 64
        }
    }

    /// The block decoder for this type, nil for types Loupe does not convert.
    var converter: BlockConverter? {
        switch self {
        case .f32: return .init(blockSize: 1, typeSize: 4, decode: Dequantize.f32, isFloat32: true)
        case .f16: return .init(blockSize: 1, typeSize: 2, decode: Dequantize.f16)
        case .bf16: return .init(blockSize: 1, typeSize: 2, decode: Dequantize.bf16)
        case .q4_0: return .init(blockSize: 32, typeSize: typeSize, decode: Dequantize.q4_0)
        case .q4_1: return .init(blockSize: 32, typeSize: typeSize, decode: Dequantize.q4_1)
        case .q5_0: return .init(blockSize: 32, typeSize: typeSize, decode: Dequantize.q5_0)
        case .q5_1: return .init(blockSize: 32, typeSize: typeSize, decode: Dequantize.q5_1)
        case .q8_0: return .init(blockSize: 32, typeSize: typeSize, decode: Dequantize.q8_0)
        case .q4_K: return .init(blockSize: 256, typeSize: typeSize, decode: Dequantize.q4_K)
        case .q5_K: return .init(blockSize: 256, typeSize: typeSize, decode: Dequantize.q5_K)
        case .q6_K: return .init(blockSize: 256, typeSize: typeSize, decode: Dequantize.q6_K)
        default: return nil
        }
    }

    /// The format the fused quantized product reads this type in, nil for types it does not.
    var blockFormat: BlockFormat? {
        switch self {
        case .q4_0: return .q4_0
        case .q4_1: return .q4_1
        case .q5_0: return .q5_0
        case .q8_0: return .q8_0
        case .q4_K: return .q4_K
        case .q6_K: return .q6_K
        default: return nil
        }
    }
}
