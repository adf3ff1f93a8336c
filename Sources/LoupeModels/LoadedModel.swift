import CMalloc
import Foundation
import LoupeFormats
import LoupeTokenizers

/// A model in memory with its tokenizer: what `models.load` makes and the daemon keeps warm.
public final class LoadedModel: Sendable {
    /// What the model was loaded from, as given (a path or an HF id).
    public let source: String
    /// The file or directory it resolved to.
    public let resolvedPath: String
    public let model: any LanguageModel
    /// Nil for a checkpoint that ships no tokenizer (the test fixtures); such a model takes token ids only.
    public let tokenizer: Tokenizer?
    public let loadSeconds: Double
    /// The ids that end a generated sequence, as HF's generation config gives them: an HF
    /// directory's generation_config.json `eos_token_id` (an id or a list), else its
    /// config.json's, else the tokenizer's EOS; a GGUF file's tokenizer EOS.
    public let eosTokenIDs: [Int]

    init(source: String, resolvedPath: String, model: any LanguageModel, tokenizer: Tokenizer?, loadSeconds: Double,
         eosTokenIDs: [Int] = []) {
        self.source = source
        self.resolvedPath = resolvedPath
        self.model = model
        self.tokenizer = tokenizer
        self.loadSeconds = loadSeconds
        self.eosTokenIDs = eosTokenIDs
    }

    /// Loads a GGUF file, an HF directory (config.json + safetensors), or an HF id found in
    /// the local HF cache (never the network), with whichever registered architecture runs it.
    /// A model whose tensors, as float32, would take more than `maxBytes` is refused from its
    /// headers, before any weight is read; `control` can stop the load between two tensors.
    public static func load(_ source: String, registry: ArchitectureRegistry, maxBytes: Int = .max,
                            control: LoadControl? = nil) throws -> LoadedModel {
        let start = Date()
        _ = keepActivationBuffers
        // Loading frees large temporaries, and a refused or cancelled load what it had read:
        // either way that memory goes back to the system.
        defer { releaseFreedMemory() }
        do {
            let path = try resolve(source)
            let checkpoint: Checkpoint
            let weights: any WeightSource
            if path.hasSuffix(".gguf") {
                let file = try GGUFFile(path: path, control: control)
                (checkpoint, weights) = (.gguf(file), file)
            } else {
                let config = try HFConfig(path: path + "/config.json")
                let directory = try SafetensorsDirectory(directory: path, control: control)
                (checkpoint, weights) = (.huggingFace(config: config, weights: directory), directory)
            }
            let bytes = weights.declaredFloat32Bytes
            guard let bytes, bytes <= maxBytes else { throw ModelError.modelTooLarge(file: path, bytes: bytes, limit: maxBytes) }
            // A tokenizer may know more ids than the embedding has rows (as HF allows): such an
            // id gets index_out_of_range when a request uses it.
            let tokenizer: Tokenizer?
            switch checkpoint {
            case .gguf(let file): tokenizer = try Tokenizer.load(ggufMetadata: file.metadata, file: path)
            case .huggingFace: tokenizer = hasTokenizerFiles(path) ? try Tokenizer.load(directory: path) : nil
            }
            guard let type = checkpoint.modelType else {
                throw ModelError.format(FormatError(.missingKey, file: path, item: "model_type", "the checkpoint does not say its model type"))
            }
            try control?.check()
            let model = try registry.adapter(forModelType: type).load(checkpoint)
            var eos = tokenizer?.eosTokenID.map { [$0] } ?? []
            if case .huggingFace(let config, _) = checkpoint {
                let generation = try? HFConfig(path: path + "/generation_config.json")
                eos = eosIDs(generation) ?? eosIDs(config) ?? eos
            }
            return LoadedModel(source: source, resolvedPath: path, model: model, tokenizer: tokenizer,
                               loadSeconds: Date().timeIntervalSince(start), eosTokenIDs: eos)
        } catch let error as FormatError {
            throw ModelError.format(error)
        }
    }

    /// A config's `eos_token_id`: an id or a list of them; nil when absent or null.
    private static func eosIDs(_ config: HFConfig?) -> [Int]? {
        guard let value = config?.values["eos_token_id"] else { return nil }
        if let id = value.intValue { return [id] }
        return value.arrayValue.map { $0.compactMap(\.intValue) }
    }

    /// A path that exists, or an HF id ("org/name") resolved in the local cache.
    static func resolve(_ source: String) throws -> String {
        let expanded = (source as NSString).expandingTildeInPath
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: expanded, isDirectory: &isDirectory) {
            return URL(fileURLWithPath: expanded).standardizedFileURL.path
        }
        let parts = source.split(separator: "/")
        if parts.count == 2, !source.hasPrefix("."), !source.hasPrefix("/") {
            return try HFCache.snapshotDirectory(forModelID: source)
        }
        throw FormatError(.notFound, file: source, "no such file or directory, and not an HF id (org/name)")
    }

    /// Loading frees large temporaries (dequantized tensors before their transposition), and a
    /// job its activations; hand that memory back to the system so a warm model costs only its
    /// weights (the thresholds below keep it only for the passes within one job).
    public static func releaseFreedMemory() {
        malloc_trim(0)
    }

    /// Fixes glibc's allocation thresholds once per process, before the first load. Left
    /// dynamic, its mmap threshold ends wherever the load's last large free left it: below an
    /// activation's size, every forward pass maps its buffers afresh and pays a page fault per
    /// 4 KiB (1.26x on SmolLM2 at 64x16). Buffers up to 32 MiB come from the heap instead, and
    /// up to 64 MiB of free heap is kept for the next pass; `releaseFreedMemory` still hands
    /// back what a load frees.
    private static let keepActivationBuffers: Void = {
        mallopt(M_MMAP_THRESHOLD, 32 << 20)
        mallopt(M_TRIM_THRESHOLD, 64 << 20)
    }()

    /// Whether an HF directory ships a tokenizer (the test fixtures do not).
    private static func hasTokenizerFiles(_ directory: String) -> Bool {
        ["tokenizer.json", "vocab.json", "encoder.json"].contains { FileManager.default.fileExists(atPath: directory + "/" + $0) }
    }
}
